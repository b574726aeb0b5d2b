//! Who a sender is, for the outputs that keep senders apart: `recv
//! --out-dir` names files after it, `recv --to udp:// --tag-source` and
//! `recv --merge` put it in front of every message.
//!
//! A source is identified by the sender's public key: its fingerprint, the
//! first 8 bytes of the key's SHA-256 (printed `xxxx:xxxx:xxxx:xxxx` by both
//! commands). A sender in insecure plaintext mode has no key; all such senders
//! share the id 0 and the name `insecure`.
//!
//! The tagged datagram of `--tag-source` is the 16-byte [`SourceHeader`]
//! followed by the message: the 8-byte source id, then the message's sequence
//! number on its connection (big-endian `u64`, from 0), so a consumer can
//! tell the senders apart and spot a gap or a restart.

use surelink::Connection;

/// A sender, as identified by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    /// The key fingerprint's 8 bytes (all zero without a key).
    pub id: [u8; 8],
}

impl Source {
    /// The source behind `conn` (its peer's key).
    pub fn of(conn: &Connection) -> Self {
        let mut id = [0u8; 8];
        if let Some(key) = conn.peer_key() {
            let hex: String = key.fingerprint().chars().filter(|c| *c != ':').collect();
            for (byte, pair) in id.iter_mut().zip(hex.as_bytes().chunks(2)) {
                *byte = std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .unwrap_or(0);
            }
        }
        Source { id }
    }

    /// A name fit for a file name and a log line: the fingerprint with dashes
    /// (`1a2b-3c4d-5e6f-7a8b`), or `insecure` without a key.
    pub fn name(&self) -> String {
        if self.id == [0; 8] {
            return "insecure".to_owned();
        }
        let hex: String = self.id.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}",
            &hex[0..4],
            &hex[4..8],
            &hex[8..12],
            &hex[12..16]
        )
    }
}

/// The header `recv --to udp:// --tag-source` puts before each datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceHeader {
    /// The sender.
    pub source: Source,
    /// The message's sequence number on its connection.
    pub seq: u64,
}

impl SourceHeader {
    /// Encoded length in bytes.
    pub const LEN: usize = 16;

    /// Appends the header to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.source.id);
        out.extend_from_slice(&self.seq.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_headers_round_trip() {
        let source = Source {
            id: [0x1a, 0x2b, 0x3c, 0x4d, 0x5e, 0x6f, 0x7a, 0x8b],
        };
        assert_eq!(source.name(), "1a2b-3c4d-5e6f-7a8b");
        assert_eq!(Source { id: [0; 8] }.name(), "insecure");
        let mut datagram = Vec::new();
        SourceHeader { source, seq: 7 }.encode_into(&mut datagram);
        assert_eq!(datagram.len(), SourceHeader::LEN);
        assert_eq!(&datagram[..8], &source.id);
        assert_eq!(&datagram[8..], &7u64.to_be_bytes());
    }
}
