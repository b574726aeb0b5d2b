//! The surelink wire format, version 1 (specified in docs/PROTOCOL.md).
//!
//! A datagram carries exactly one packet: a fixed header ([`Header`]) followed by
//! a sequence of frames ([`Frame`]). Encoding appends to a `Vec<u8>`; decoding
//! reads from a byte slice through [`Reader`] and returns a [`WireError`] on any
//! malformed input — it never panics and never reads out of bounds.

mod frame;
mod header;
pub mod varint;

/// Frame generators for property tests elsewhere in the crate.
#[cfg(test)]
pub(crate) use frame::tests::{frame as any_frame, Owned as OwnedFrame};
pub use frame::{
    AckFrame, BundleFrame, BundleMessages, BundleWriter, Delivery, Frame, FrameIter, MsgFrame,
    TransportParams,
};
pub use header::{Header, PacketKind, FLAG_KEY_PHASE, FLAG_PLAINTEXT, HEADER_MAX_LEN, VERSION};

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended in the middle of a field.
    #[error("unexpected end of packet")]
    UnexpectedEnd,
    /// The version byte names a protocol version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The packet kind nibble is not a known kind.
    #[error("unknown packet kind {0}")]
    UnknownPacketKind(u8),
    /// The frame type byte is not a known (or not yet implemented) frame.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrame(u64),
    /// A field holds a value that is out of range or inconsistent with another.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A bounds-checked cursor over a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Reads one byte.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self.buf.split_first().ok_or(WireError::UnexpectedEnd)?;
        self.buf = rest;
        Ok(b)
    }

    /// Looks at the next byte without consuming it.
    pub fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Reads exactly `n` bytes.
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::UnexpectedEnd);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Reads a varint.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, WireError> {
        varint::read(self)
    }

    /// Reads a varint length followed by that many bytes.
    #[inline]
    pub fn len_prefixed(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| WireError::UnexpectedEnd)?;
        self.bytes(n)
    }
}
