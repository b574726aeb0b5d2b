//! The persistent secret a durable session's endpoint derives its stateless
//! reset tokens from.
//!
//! A process restarted after `kill -9` no longer knows its connections; its
//! peer would notice only at its peer timeout. With the same reset secret as
//! before the crash, the restarted endpoint answers the peer's next packet
//! with a stateless Reset the peer can verify (the token was exchanged in the
//! handshake), and the peer reconnects within one round trip. The secret is
//! kept in the session's state directory, next to the journal (which ignores
//! files that are not its segments), created on first use with owner-only
//! permissions.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

use rand::RngCore;

/// The file holding the secret inside a state directory.
pub const RESET_SECRET_FILE: &str = "reset-secret";
const TMP_FILE: &str = "reset-secret.new";

/// The reset secret kept in `dir`, created (random, fsynced) if there is none
/// yet. Put it in `Config::reset_secret` of the endpoint the session uses.
pub fn reset_secret(dir: &Path) -> io::Result<[u8; 32]> {
    let path = dir.join(RESET_SECRET_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            return bytes.try_into().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a 32-byte reset secret", path.display()),
                )
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(dir)?;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let tmp = dir.join(TMP_FILE);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(&secret)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back() {
        let dir = std::env::temp_dir().join(format!("surelink-secret-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = reset_secret(&dir).unwrap();
        assert_eq!(reset_secret(&dir).unwrap(), first);
        fs::write(dir.join(RESET_SECRET_FILE), b"short").unwrap();
        assert_eq!(
            reset_secret(&dir).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
