//! The Noise handshake (via `snow`): `XX` or `XXpsk3`, X25519, AES-GCM, SHA-256.
//!
//! Three messages: client → server `e`; server → client `e, ee, s, es`;
//! client → server `s, se` (+ `psk`). Both static keys are exchanged encrypted
//! and authenticated; each message carries a payload (transport parameters).
//! The prologue binds the protocol version. Randomness (the ephemeral keys)
//! comes from a seed supplied by the caller, so the core stays deterministic.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use super::{CryptoError, Identity, PublicKey, KEY_LEN};

const PROLOGUE: &[u8] = b"surelink v1";
/// Largest Noise message.
const MAX_MESSAGE: usize = 65535;

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// snow's default primitives, with randomness from our seed.
struct SeededResolver {
    seed: [u8; 32],
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// A handshake in progress.
pub(crate) struct NoiseHandshake {
    state: snow::HandshakeState,
    initiator: bool,
}

impl std::fmt::Debug for NoiseHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseHandshake")
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

/// The first `n` bytes of a [`MAX_MESSAGE`] scratch buffer in an allocation
/// of their own size: a connection keeps its handshake message until the
/// handshake completes (to repeat it), and with many handshakes in progress
/// 64 KiB of spare capacity each adds up.
fn exact(mut scratch: Vec<u8>, n: usize) -> Vec<u8> {
    scratch.truncate(n);
    scratch.shrink_to_fit();
    scratch
}

fn err(e: snow::Error) -> CryptoError {
    CryptoError::Handshake(e.to_string())
}

impl NoiseHandshake {
    /// Starts a handshake as initiator (client) or responder (server).
    pub fn new(
        initiator: bool,
        identity: &Identity,
        psk: Option<&[u8; 32]>,
        seed: [u8; 32],
    ) -> Result<Self, CryptoError> {
        let pattern = if psk.is_some() {
            "Noise_XXpsk3_25519_AESGCM_SHA256"
        } else {
            "Noise_XX_25519_AESGCM_SHA256"
        };
        let params: NoiseParams = pattern.parse().map_err(err)?;
        let mut b = snow::Builder::with_resolver(params, Box::new(SeededResolver { seed }))
            .local_private_key(identity.private())
            .map_err(err)?
            .prologue(PROLOGUE)
            .map_err(err)?;
        if let Some(psk) = psk {
            b = b.psk(3, psk).map_err(err)?;
        }
        let state = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(err)?;
        Ok(Self { state, initiator })
    }

    /// Writes our next message carrying `payload`.
    pub fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; MAX_MESSAGE];
        let n = self.state.write_message(payload, &mut out).map_err(err)?;
        Ok(exact(out, n))
    }

    /// Reads the peer's next message; returns its payload.
    pub fn read(&mut self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; MAX_MESSAGE];
        let n = self.state.read_message(message, &mut out).map_err(err)?;
        Ok(exact(out, n))
    }

    /// The peer's static key, once received.
    pub fn remote_static(&self) -> Option<PublicKey> {
        let s = self.state.get_remote_static()?;
        let mut k = [0u8; KEY_LEN];
        (s.len() == KEY_LEN).then(|| {
            k.copy_from_slice(s);
            PublicKey(k)
        })
    }

    /// True when all three messages were processed.
    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// The two transport keys: (ours to send, ours to receive).
    pub fn split(mut self) -> ([u8; 32], [u8; 32]) {
        let (i2r, r2i) = self.state.dangerously_get_raw_split();
        if self.initiator {
            (i2r, r2i)
        } else {
            (r2i, i2r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Identity {
        Identity::from_private([n; 32])
    }

    fn run(psk_c: Option<&[u8; 32]>, psk_s: Option<&[u8; 32]>) -> Result<(), CryptoError> {
        let (ci, si) = (id(1), id(2));
        let mut c = NoiseHandshake::new(true, &ci, psk_c, [9; 32])?;
        let mut s = NoiseHandshake::new(false, &si, psk_s, [8; 32])?;
        let m1 = c.write(b"hello")?;
        assert_eq!(s.read(&m1)?, b"hello");
        let m2 = s.write(b"params")?;
        assert_eq!(c.read(&m2)?, b"params");
        assert_eq!(c.remote_static(), Some(si.public()));
        let m3 = c.write(b"")?;
        s.read(&m3)?;
        assert_eq!(s.remote_static(), Some(ci.public()));
        assert!(c.is_finished() && s.is_finished());
        let (cs, cr) = c.split();
        let (ss, sr) = s.split();
        assert_eq!((cs, cr), (sr, ss));
        assert_ne!(cs, cr);
        Ok(())
    }

    #[test]
    fn handshake_matrix() {
        run(None, None).unwrap();
        run(Some(&[1; 32]), Some(&[1; 32])).unwrap();
        assert!(run(Some(&[1; 32]), Some(&[2; 32])).is_err(), "psk mismatch");
        assert!(run(None, Some(&[2; 32])).is_err(), "psk on one side only");
    }

    #[test]
    fn garbage_messages_are_errors() {
        let mut s = NoiseHandshake::new(false, &id(2), None, [8; 32]).unwrap();
        assert!(s.read(&[1, 2, 3]).is_err());
        let mut c = NoiseHandshake::new(true, &id(1), None, [9; 32]).unwrap();
        let _ = c.write(b"").unwrap();
        assert!(c.read(&[0u8; 200]).is_err());
    }
}
