//! Stateless retry tokens: proof that a client can receive at its address.
//!
//! Under load, a server answers an Initial with a Retry carrying a token
//! `issued_ms (8 bytes) || HMAC-SHA256(secret, issued_ms || address || client id)`
//! and keeps no state. The client repeats its Initial with the token; the
//! server accepts it while it is fresh. The secret lives only in memory.

use std::net::SocketAddr;

use ring::hmac;

/// Length of a token in bytes.
pub const TOKEN_LEN: usize = 40;

/// Issues and validates retry tokens.
#[derive(Debug)]
pub struct RetryTokens {
    key: hmac::Key,
}

impl RetryTokens {
    /// Tokens keyed by `secret`.
    pub fn new(secret: [u8; 32]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }

    fn message(issued_ms: u64, addr: SocketAddr, cid: u64) -> Vec<u8> {
        let mut m = issued_ms.to_be_bytes().to_vec();
        match addr {
            SocketAddr::V4(a) => m.extend_from_slice(&a.ip().octets()),
            SocketAddr::V6(a) => m.extend_from_slice(&a.ip().octets()),
        }
        m.extend_from_slice(&addr.port().to_be_bytes());
        m.extend_from_slice(&cid.to_be_bytes());
        m
    }

    /// A token for `addr` and client id `cid`, issued at `now_ms`.
    pub fn issue(&self, now_ms: u64, addr: SocketAddr, cid: u64) -> Vec<u8> {
        let mut t = now_ms.to_be_bytes().to_vec();
        let tag = hmac::sign(&self.key, &Self::message(now_ms, addr, cid));
        t.extend_from_slice(tag.as_ref());
        t
    }

    /// True if `token` was issued by us for `addr`/`cid` within `max_age_ms`.
    pub fn validate(
        &self,
        now_ms: u64,
        max_age_ms: u64,
        addr: SocketAddr,
        cid: u64,
        token: &[u8],
    ) -> bool {
        if token.len() != TOKEN_LEN {
            return false;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&token[..8]);
        let issued = u64::from_be_bytes(ts);
        if issued > now_ms || now_ms - issued > max_age_ms {
            return false;
        }
        hmac::verify(&self.key, &Self::message(issued, addr, cid), &token[8..]).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_address_id_and_age() {
        let t = RetryTokens::new([7; 32]);
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let tok = t.issue(1000, a, 42);
        assert!(t.validate(1500, 10_000, a, 42, &tok));
        assert!(!t.validate(1500, 10_000, b, 42, &tok), "other address");
        assert!(!t.validate(1500, 10_000, a, 43, &tok), "other id");
        assert!(!t.validate(20_000, 10_000, a, 42, &tok), "expired");
        assert!(!t.validate(999, 10_000, a, 42, &tok), "from the future");
        let mut bad = tok.clone();
        bad[10] ^= 1;
        assert!(!t.validate(1500, 10_000, a, 42, &bad), "tampered");
        assert!(
            !RetryTokens::new([8; 32]).validate(1500, 10_000, a, 42, &tok),
            "other key"
        );
        assert!(!t.validate(1500, 10_000, a, 42, &tok[..5]));
    }
}
