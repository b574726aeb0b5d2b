//! Static X25519 identities and their public keys, fingerprints and file format.
//!
//! A public key is written as 64 hexadecimal digits (copy-pasteable); a
//! fingerprint is the first 8 bytes of its SHA-256, as `xxxx:xxxx:xxxx:xxxx`,
//! for eyeballing like SSH's. A private key file holds a header line and the
//! hex private key.

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, RngCore};
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

/// Length of keys in bytes.
pub const KEY_LEN: usize = 32;

const FILE_HEADER: &str = "surelink-private-key-v1";

/// A malformed key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 64 hexadecimal digits.
    #[error("a key is 64 hexadecimal digits; got {0:?}")]
    BadHex(String),
    /// A private key file without the expected header line.
    #[error("not a surelink private key file (expected a first line {FILE_HEADER:?})")]
    BadFile,
}

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// Short fingerprint for humans: `xxxx:xxxx:xxxx:xxxx` (SHA-256 prefix).
    pub fn fingerprint(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let h = hex(&d.as_ref()[..8]);
        format!("{}:{}:{}:{}", &h[0..4], &h[4..8], &h[8..12], &h[12..16])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        parse_hex(s.trim()).map(Self)
    }
}

/// A static X25519 key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    private: [u8; KEY_LEN],
    public: PublicKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(public {:?}, private redacted)", self.public)
    }
}

impl Identity {
    /// A new identity drawn from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut private = [0u8; KEY_LEN];
        rng.fill_bytes(&mut private);
        Self::from_private(private)
    }

    /// The identity with this private key.
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("the default resolver provides X25519");
        dh.set(&private);
        let mut public = [0u8; KEY_LEN];
        public.copy_from_slice(dh.pubkey());
        Self {
            private,
            public: PublicKey(public),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The private key bytes (for the handshake).
    pub(crate) fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// The private key file contents.
    pub fn to_file_string(&self) -> String {
        format!("{FILE_HEADER}\n{}\n", hex(&self.private))
    }

    /// Parses a private key file.
    pub fn from_file_str(s: &str) -> Result<Self, KeyError> {
        let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(FILE_HEADER) {
            return Err(KeyError::BadFile);
        }
        let key = lines.next().ok_or(KeyError::BadFile)?;
        Ok(Self::from_private(parse_hex(key)?))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let bad = || KeyError::BadHex(s.chars().take(80).collect());
    if s.len() != 2 * KEY_LEN || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; KEY_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keys_round_trip_through_text() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let id = Identity::generate(&mut rng);
        let back = Identity::from_file_str(&id.to_file_string()).unwrap();
        assert_eq!(back, id);
        let pk: PublicKey = id.public().to_string().parse().unwrap();
        assert_eq!(pk, id.public());
        assert_eq!(pk.fingerprint().len(), 19);
        assert!(!format!("{id:?}").contains(&hex(id.private())));
    }

    #[test]
    fn bad_keys_are_errors() {
        for s in [
            "",
            "zz",
            &"g".repeat(64),
            &"a".repeat(63),
            "é".repeat(32).as_str(),
        ] {
            assert!(s.parse::<PublicKey>().is_err(), "{s}");
        }
        assert_eq!(Identity::from_file_str("hello\n"), Err(KeyError::BadFile));
        assert!(Identity::from_file_str(&format!("{FILE_HEADER}\nxyz\n")).is_err());
    }
}
