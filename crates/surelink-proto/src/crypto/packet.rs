//! Packet protection: AES-256-GCM (from `ring`) with explicit nonces.
//!
//! The nonce is four zero bytes followed by the 64-bit packet number, so it is
//! unique per key (packet numbers are never reused and stay below 2^62); the
//! packet header is the associated data, so it cannot be altered either.
//! Because the nonce travels in the header, packets can be opened in any order.
//! [`PacketKey::next`] is Noise's REKEY: the first 32 bytes of the encryption
//! of 32 zero bytes under the maximum nonce.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use super::CryptoError;

/// Length of the authentication tag appended to each packet.
pub const TAG_LEN: usize = 16;

/// One direction's packet key.
pub struct PacketKey {
    raw: [u8; 32],
    key: LessSafeKey,
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKey(redacted)")
    }
}

fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

impl PacketKey {
    /// A key from 32 raw bytes (a Noise split output).
    pub fn new(raw: [u8; 32]) -> Self {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("32-byte key"));
        Self { raw, key }
    }

    /// Encrypts `packet[header_len..]` in place and appends the tag; the first
    /// `header_len` bytes are authenticated, not encrypted.
    pub fn seal(&self, pn: u64, packet: &mut Vec<u8>, header_len: usize) {
        let (header, payload) = packet.split_at_mut(header_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(pn), Aad::from(&*header), payload)
            .expect("payload within AES-GCM limits");
        packet.extend_from_slice(tag.as_ref());
    }

    /// Authenticates and decrypts `payload_and_tag` in place; returns the plaintext.
    pub fn open<'a>(
        &self,
        pn: u64,
        header: &[u8],
        payload_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        self.key
            .open_in_place(nonce(pn), Aad::from(header), payload_and_tag)
            .map_err(|_| CryptoError::Authentication)
    }

    /// The next key in the rotation (Noise REKEY).
    pub fn next(&self) -> Self {
        let mut block = [0u8; 32];
        let _tag = self
            .key
            .seal_in_place_separate_tag(nonce(u64::MAX), Aad::empty(), &mut block)
            .expect("32 bytes");
        Self::new(block)
    }

    /// The raw key (only for deriving the next one and for tests).
    pub fn raw(&self) -> &[u8; 32] {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let k = PacketKey::new([3; 32]);
        let mut pkt = b"HEADERsecret payload".to_vec();
        k.seal(9, &mut pkt, 6);
        assert_eq!(pkt.len(), 20 + TAG_LEN);
        assert!(!pkt.windows(6).any(|w| w == b"secret"));
        let (h, rest) = pkt.split_at(6);
        let mut body = rest.to_vec();
        assert_eq!(k.open(9, h, &mut body).unwrap(), b"secret payload");
        // Wrong nonce, header, key, or any flipped bit fails.
        assert!(k.open(10, h, &mut rest.to_vec()).is_err());
        assert!(k.open(9, b"HEADEr", &mut rest.to_vec()).is_err());
        assert!(k.next().open(9, h, &mut rest.to_vec()).is_err());
        for bit in 0..rest.len() * 8 {
            let mut t = rest.to_vec();
            t[bit / 8] ^= 1 << (bit % 8);
            assert!(k.open(9, h, &mut t).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn rekey_is_deterministic_and_different() {
        let k = PacketKey::new([5; 32]);
        assert_eq!(k.next().raw(), PacketKey::new([5; 32]).next().raw());
        assert_ne!(k.next().raw(), k.raw());
        assert_ne!(k.next().next().raw(), k.next().raw());
    }
}
