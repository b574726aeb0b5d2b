//! Key material on disk and on the command line: private key files, public
//! keys, allow-list files and pre-shared keys.
//!
//! * A private key file is what `surelink keygen` writes
//!   ([`Identity::to_file_string`]): a header line and 64 hex digits. It is
//!   created with mode 0600, and on Unix a key file that the group or others
//!   can access is refused (as `ssh` does), with the `chmod` that fixes it.
//! * A public key is 64 hex digits; its fingerprint (`xxxx:xxxx:xxxx:xxxx`)
//!   is for humans to compare, never for configuration.
//! * An allow-list file has one public key per line; `#` starts a comment,
//!   blank lines are ignored, and anything after the key on its line (a name)
//!   is ignored too.
//! * A pre-shared key is 64 hex digits (32 bytes), given inline or as
//!   `@FILE` (the file holds the hex; it is checked like a private key file).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use surelink::{Identity, PublicKey};

/// Parses a public key given on the command line (64 hex digits).
pub fn parse_public_key(text: &str) -> Result<PublicKey, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "invalid public key {:?}: expected the 64 hex digits `surelink keygen` prints \
             (not the short fingerprint)",
            text.chars().take(80).collect::<String>()
        )
    })
}

/// A pre-shared key given as 64 hex digits or `@FILE`.
#[derive(Clone, PartialEq, Eq)]
pub enum PskSource {
    /// Given inline.
    Inline([u8; 32]),
    /// To be read from this file.
    File(PathBuf),
}

impl std::fmt::Debug for PskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("PskSource::Inline(redacted)"),
            Self::File(p) => write!(f, "PskSource::File({})", p.display()),
        }
    }
}

impl PskSource {
    /// The key: parsed already, or read from its file now.
    pub fn load(&self) -> anyhow::Result<[u8; 32]> {
        match self {
            Self::Inline(k) => Ok(*k),
            Self::File(path) => {
                let text = read_secret_file(path, "pre-shared key file")?;
                parse_psk_hex(text.trim()).map_err(|e| anyhow!("{}: {e}", path.display()))
            }
        }
    }
}

/// Parses `--psk HEX|@FILE`.
pub fn parse_psk(text: &str) -> Result<PskSource, String> {
    match text.strip_prefix('@') {
        Some("") => Err("--psk @FILE needs a file name after @".to_owned()),
        Some(path) => Ok(PskSource::File(PathBuf::from(path))),
        None => parse_psk_hex(text.trim()).map(PskSource::Inline),
    }
}

fn parse_psk_hex(text: &str) -> Result<[u8; 32], String> {
    let bad = || {
        "a pre-shared key is 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`".to_owned()
    };
    if text.len() != 64 || !text.is_ascii() {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(key)
}

/// Reads our identity from a private key file written by `surelink keygen`.
pub fn read_identity(path: &Path) -> anyhow::Result<Identity> {
    let text = read_secret_file(path, "private key file")?;
    Identity::from_file_str(&text).with_context(|| format!("cannot load key {}", path.display()))
}

/// Reads an allow-list file: one public key per line, `#` comments.
pub fn read_allow_list(path: &Path) -> anyhow::Result<Vec<PublicKey>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read allow-list {}", path.display()))?;
    let keys = parse_allow_list(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if keys.is_empty() {
        bail!(
            "allow-list {} contains no keys: it would refuse every sender",
            path.display()
        );
    }
    Ok(keys)
}

/// Parses the text of an allow-list file (see the module documentation).
pub fn parse_allow_list(text: &str) -> Result<Vec<PublicKey>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(key) = line.split_whitespace().next() else {
            continue;
        };
        let key = parse_public_key(key).map_err(|e| format!("line {}: {e}", n + 1))?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Reads a file holding a secret, refusing one that others can access.
fn read_secret_file(path: &Path, what: &str) -> anyhow::Result<String> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open {what} {}", path.display()))?;
    check_private_mode(path, &file, what)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &file, &mut text)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    Ok(text)
}

#[cfg(unix)]
fn check_private_mode(path: &Path, file: &std::fs::File, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = file
        .metadata()
        .with_context(|| format!("cannot inspect {what} {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{what} {} is accessible by group or others (mode {:04o}); refusing to use it. \
             Fix it with: chmod 600 {}",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_: &Path, _: &std::fs::File, _: &str) -> anyhow::Result<()> {
    Ok(())
}

/// Writes `identity` to a new private key file readable by its owner only.
/// Refuses to replace an existing file unless `force`.
pub fn write_identity(path: &Path, identity: &Identity, force: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!(
                "{} already exists; not overwriting a key (use --force to replace it)",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
        }
    })?;
    // A replaced file keeps its old mode: tighten it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict permissions of {}", path.display()))?;
    }
    file.write_all(identity.to_file_string().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The lines `keygen` prints: the public key and its fingerprint.
pub fn describe_public_key(key: &PublicKey) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "public-key: {key}");
    let _ = writeln!(s, "fingerprint: {}", key.fingerprint());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn allow_lists_take_comments_names_and_blank_lines() {
        let other = "f".repeat(64);
        let text = format!("# team keys\n\n{KEY}  alice # laptop\n  {other}\n{KEY}\n");
        let keys = parse_allow_list(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].to_string(), KEY);
        let err = parse_allow_list("# ok\nnot-a-key\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn psks_are_hex_or_a_file() {
        assert_eq!(parse_psk(KEY).unwrap().load().unwrap()[0], 0x01);
        assert_eq!(parse_psk("@k.psk"), Ok(PskSource::File("k.psk".into())));
        assert!(parse_psk("@").is_err());
        assert!(parse_psk("abc").is_err());
        assert!(parse_psk(&"z".repeat(64)).is_err());
        assert!(!format!("{:?}", parse_psk(KEY).unwrap()).contains("0123"));
    }

    #[test]
    fn fingerprints_are_refused_as_keys() {
        let err = parse_public_key("1a2b:3c4d:5e6f:7a8b").unwrap_err();
        assert!(err.contains("not the short fingerprint"), "{err}");
        assert!(parse_public_key(KEY).is_ok());
    }
}
