//! Stateless reset tokens: how an endpoint that lost a connection (a
//! restarted process) tells the peer so within one round trip.
//!
//! Each connection's reset token is
//! `HMAC-SHA256(reset key, "surelink reset v1" || connection id)`, truncated to
//! [`RESET_TOKEN_LEN`] bytes, for the connection id the endpoint issued. Each side
//! sends its token to the other inside the handshake (encrypted in encrypted
//! mode), and an endpoint that receives a Data packet for a connection id it
//! does not know answers with a Reset packet carrying the token it computes for
//! that id. Only the peer that learned the token in the handshake can check it;
//! an off-path attacker can neither compute it (it needs the key) nor has seen
//! it.
//!
//! The reset key survives a restart only if it derives from something the
//! process keeps: [`ResetKey::from_secret`] (a persistent secret, e.g. in a
//! session's state directory) or [`ResetKey::from_identity`] (the static key
//! of an identity loaded from a file), both through HKDF-SHA256. A random key
//! ([`ResetKey::random`]) still protects against forged resets, but a restarted
//! process cannot produce the old tokens: its peers fall back to their idle
//! timeout.

use rand::{CryptoRng, RngCore};
use ring::{hkdf, hmac};
use subtle::ConstantTimeEq;

use super::Identity;

/// Length of a reset token in bytes.
pub const RESET_TOKEN_LEN: usize = 16;

const TOKEN_LABEL: &[u8] = b"surelink reset v1";
const HKDF_SALT: &[u8] = b"surelink stateless reset key v1";

/// The key reset tokens are derived from.
pub struct ResetKey {
    key: hmac::Key,
}

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey(redacted)")
    }
}

impl ResetKey {
    /// A key derived (HKDF-SHA256) from a persistent 32-byte secret.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        let okm = prk
            .expand(&[b"reset"], hmac::HMAC_SHA256)
            .expect("HMAC-SHA256 key length is a valid HKDF output length");
        Self {
            key: hmac::Key::from(okm),
        }
    }

    /// A key derived from an identity's static private key.
    pub fn from_identity(identity: &Identity) -> Self {
        Self::from_secret(identity.private())
    }

    /// A random key, lost with the process.
    pub fn random(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self::from_secret(&secret)
    }

    /// The reset token of the connection this endpoint knows as `cid`.
    pub fn token(&self, cid: u64) -> [u8; RESET_TOKEN_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(TOKEN_LABEL);
        ctx.update(&cid.to_be_bytes());
        let tag = ctx.sign();
        let mut t = [0u8; RESET_TOKEN_LEN];
        t.copy_from_slice(&tag.as_ref()[..RESET_TOKEN_LEN]);
        t
    }
}

/// Compares a received reset token with the expected one in constant time.
pub(crate) fn token_matches(expected: &[u8; RESET_TOKEN_LEN], received: &[u8]) -> bool {
    received.len() == RESET_TOKEN_LEN && bool::from(expected[..].ct_eq(received))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn tokens_depend_on_key_and_id_and_survive_a_restart() {
        let a = ResetKey::from_secret(&[1; 32]);
        let again = ResetKey::from_secret(&[1; 32]);
        let b = ResetKey::from_secret(&[2; 32]);
        assert_eq!(a.token(7), again.token(7), "same secret, same token");
        assert_ne!(a.token(7), a.token(8));
        assert_ne!(a.token(7), b.token(7));
        let id = Identity::from_private([3; 32]);
        assert_eq!(
            ResetKey::from_identity(&id).token(9),
            ResetKey::from_identity(&Identity::from_private([3; 32])).token(9)
        );
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        assert_ne!(ResetKey::random(&mut rng).token(7), a.token(7));
    }

    #[test]
    fn comparison() {
        let t = ResetKey::from_secret(&[1; 32]).token(1);
        assert!(token_matches(&t, &t));
        let mut bad = t;
        bad[15] ^= 1;
        assert!(!token_matches(&t, &bad));
        assert!(!token_matches(&t, &t[..15]));
        assert!(!token_matches(&t, &[]));
    }
}
