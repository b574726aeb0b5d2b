//! Security: identities, the Noise handshake, packet protection, anti-replay,
//! stateless retry tokens and stateless reset tokens.
//!
//! surelink is encrypted and authenticated by default. Each endpoint has a
//! static X25519 identity ([`Identity`]); connections run the Noise `XX`
//! pattern (optionally `XXpsk3` with a pre-shared key) through the `snow`
//! crate, which authenticates both sides and yields one key per direction.
//! Every packet after the handshake is sealed with AES-256-GCM from `ring`
//! ([`PacketKey`]), the packet number as nonce and the header as associated
//! data; a [`ReplayWindow`] rejects packets seen before. Keys are rotated with
//! Noise's REKEY function after a configurable amount of data or time.
//! No cryptographic primitive is implemented here: only their composition.

mod keys;
mod noise;
mod packet;
mod replay;
mod reset;
mod retry;

pub use keys::{Identity, KeyError, PublicKey, KEY_LEN};
pub(crate) use noise::NoiseHandshake;
pub use packet::{PacketKey, TAG_LEN};
pub use replay::ReplayWindow;
pub(crate) use reset::token_matches;
pub use reset::{ResetKey, RESET_TOKEN_LEN};
pub use retry::{RetryTokens, TOKEN_LEN};

use std::time::Duration;

/// How connections are protected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Security {
    /// Noise handshake and AEAD on every packet (the default).
    Encrypted(CryptoConfig),
    /// No handshake cryptography and no packet protection. For debugging only:
    /// anyone on the path can read and forge traffic.
    InsecurePlaintext,
}

impl Default for Security {
    fn default() -> Self {
        Self::Encrypted(CryptoConfig::default())
    }
}

/// Keys and policies of an encrypted endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoConfig {
    /// This endpoint's static identity; `None` generates an ephemeral one.
    pub identity: Option<Identity>,
    /// Client side: the server's expected public key; `None` accepts any key
    /// (the application can inspect `Connection::peer_key` afterwards).
    pub peer_key: Option<PublicKey>,
    /// Server side: the client keys allowed to connect; `None` allows any.
    pub allow: Option<Vec<PublicKey>>,
    /// Optional 32-byte pre-shared key mixed into the handshake (Noise `psk3`);
    /// both sides must have the same one.
    pub psk: Option<[u8; 32]>,
    /// Rotate the sending key after this many bytes sealed.
    pub rekey_after_bytes: u64,
    /// Rotate the sending key after this much time.
    pub rekey_after: Duration,
}

impl Default for CryptoConfig {
    fn default() -> Self {
        Self {
            identity: None,
            peer_key: None,
            allow: None,
            psk: None,
            rekey_after_bytes: 1 << 36,
            rekey_after: Duration::from_secs(3600),
        }
    }
}

/// A failure of the security layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The Noise handshake failed (bad message, wrong pre-shared key, …).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A packet failed authentication.
    #[error("packet authentication failed")]
    Authentication,
}
