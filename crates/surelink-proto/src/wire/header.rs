//! The packet header: version, kind, destination connection id, packet number.
//!
//! ```text
//! byte 0      version (4)
//! byte 1      kind (low 4 bits) | flags (high 4 bits: key phase, plaintext)
//! bytes 2..10 destination connection id, big-endian u64
//! varint      packet number (never reused within a connection and direction)
//! ```

use super::{varint, Reader, WireError};

/// The protocol version this build speaks.
pub const VERSION: u8 = 4;

/// The largest encoded header: 10 fixed bytes plus an 8-byte varint.
pub const HEADER_MAX_LEN: usize = 18;

/// Header flag: the key phase of a protected packet (flips at each key update).
pub const FLAG_KEY_PHASE: u8 = 0x1;
/// Header flag: the connection runs in insecure plaintext mode.
pub const FLAG_PLAINTEXT: u8 = 0x2;
const KNOWN_FLAGS: u8 = FLAG_KEY_PHASE | FLAG_PLAINTEXT;

/// What a packet is for; decides how an endpoint routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// Client's first flight: routed by (source address, connection id). Carries CONNECT.
    Initial,
    /// Server's answer to an Initial. Carries ACCEPT.
    Handshake,
    /// Everything after the handshake: routed by destination connection id.
    Data,
    /// Server's stateless answer to an Initial under load: carries a TOKEN.
    Retry,
    /// Handshake refusal (wrong key, not allowed, mode mismatch): carries CLOSE.
    Reject,
    /// Stateless reset: the answer of an endpoint that does not know the
    /// connection id a Data packet was sent to. Carries one TOKEN, the reset
    /// token the peer learned in the handshake; routed by the peer's
    /// connection id the unknown packet named.
    Reset,
}

impl PacketKind {
    fn to_bits(self) -> u8 {
        match self {
            Self::Initial => 0,
            Self::Handshake => 1,
            Self::Data => 2,
            Self::Retry => 3,
            Self::Reject => 4,
            Self::Reset => 5,
        }
    }

    fn from_bits(b: u8) -> Result<Self, WireError> {
        match b {
            0 => Ok(Self::Initial),
            1 => Ok(Self::Handshake),
            2 => Ok(Self::Data),
            3 => Ok(Self::Retry),
            4 => Ok(Self::Reject),
            5 => Ok(Self::Reset),
            other => Err(WireError::UnknownPacketKind(other)),
        }
    }
}

/// A decoded packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the packet is for.
    pub kind: PacketKind,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// The receiver's connection id (for Initial: the client's own id).
    pub dcid: u64,
    /// The packet number.
    pub pn: u64,
}

impl Header {
    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.push(self.kind.to_bits() | (self.flags & KNOWN_FLAGS) << 4);
        out.extend_from_slice(&self.dcid.to_be_bytes());
        varint::write(out, self.pn);
    }

    /// Encoded length of this header.
    pub fn len(&self) -> usize {
        10 + varint::size(self.pn)
    }

    /// Always false: a header has at least ten bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Decodes a header, leaving `r` at the first frame.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let version = r.u8()?;
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let kind_flags = r.u8()?;
        let flags = kind_flags >> 4;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::Invalid("header flags"));
        }
        let kind = PacketKind::from_bits(kind_flags & 0x0f)?;
        let dcid = r.u64()?;
        let pn = r.varint()?;
        Ok(Self {
            kind,
            flags,
            dcid,
            pn,
        })
    }

    /// Reads just the routing fields (kind, connection id) without the packet number.
    pub fn peek_route(datagram: &[u8]) -> Result<(PacketKind, u64), WireError> {
        let mut r = Reader::new(datagram);
        let h = Self::decode(&mut r)?;
        Ok((h.kind, h.dcid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = PacketKind> {
        prop_oneof![
            Just(PacketKind::Initial),
            Just(PacketKind::Handshake),
            Just(PacketKind::Data),
            Just(PacketKind::Retry),
            Just(PacketKind::Reject),
            Just(PacketKind::Reset)
        ]
    }

    proptest! {
        #[test]
        fn round_trip(kind in kind(), flags in 0u8..4, dcid: u64, pn in 0..=varint::MAX) {
            let h = Header { kind, flags, dcid, pn };
            let mut buf = Vec::new();
            h.encode(&mut buf);
            prop_assert_eq!(buf.len(), h.len());
            prop_assert!(buf.len() <= HEADER_MAX_LEN);
            let mut r = Reader::new(&buf);
            prop_assert_eq!(Header::decode(&mut r).unwrap(), h);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Header::decode(&mut Reader::new(&bytes));
        }
    }

    #[test]
    fn rejects_bad_version_kind_flags() {
        let mut buf = Vec::new();
        Header {
            kind: PacketKind::Data,
            flags: 0,
            dcid: 7,
            pn: 1,
        }
        .encode(&mut buf);
        let mut b = buf.clone();
        b[0] = VERSION + 1;
        assert_eq!(
            Header::decode(&mut Reader::new(&b)),
            Err(WireError::UnsupportedVersion(VERSION + 1))
        );
        let mut b = buf.clone();
        b[1] = 9;
        assert_eq!(
            Header::decode(&mut Reader::new(&b)),
            Err(WireError::UnknownPacketKind(9))
        );
        let mut b = buf.clone();
        b[1] |= 0x40;
        assert!(Header::decode(&mut Reader::new(&b)).is_err());
        for n in 0..buf.len() {
            assert!(
                Header::decode(&mut Reader::new(&buf[..n])).is_err(),
                "prefix {n}"
            );
        }
    }
}
