//! Forward error correction for deadline channels: the codec and its policy.
//!
//! A sender protects a stream of *source symbols* (packet payloads, each
//! numbered by a sequence number of the FEC source stream) by grouping
//! consecutive symbols and sending *repair symbols* computed over each group.
//! A receiver that lost some source symbols of a group rebuilds them from the
//! symbols that did arrive, without waiting a round trip for a retransmission.
//!
//! Everything here is sans-IO and deterministic:
//!
//! - [`FecEncoder`] is fed source symbols ([`FecEncoder::push_source`]) and
//!   returns the repair symbols to send when a group closes; a group that fills
//!   too slowly is closed by a timer ([`FecEncoder::poll_timeout`],
//!   [`FecEncoder::handle_timeout`]) so a slow stream's last packets are not
//!   left unprotected.
//! - [`FecDecoder`] is fed the source and repair symbols that arrived and
//!   returns the source symbols it recovered, byte-exact with their lengths.
//!   Its memory is bounded: old symbols and groups are evicted.
//! - [`RepairSymbol`] has a wire encoding ([`RepairSymbol::encode`],
//!   [`RepairSymbol::decode`]); the packet core carries it in a frame.
//! - [`FecScheme`] names the code of a group: Reed-Solomon (`k` source, `m`
//!   repair; any `m` losses in a group are repaired) or row/column XOR parity
//!   in the manner of SMPTE 2022-1 (`rows × cols`).
//! - [`FecConfig`] is the policy: off, a fixed scheme, or `auto`, which sizes
//!   the redundancy from the measured loss, its burstiness and the latency
//!   budget versus the round-trip time ([`FecConfig::choose`]).
//!
//! Lengths are recovered too: every source symbol is coded as a 2-byte length
//! followed by the payload, zero-padded to the longest in its group.
//! docs/FEC.md has the measurements behind the choice of code and the frame
//! layout.

mod codec;
mod decoder;
mod encoder;
mod policy;
mod scheme;
mod symbol;

pub use decoder::{FecDecoder, FecDecoderLimits, FecDecoderStats, RecoveredSymbol};
pub use encoder::FecEncoder;
pub use policy::{AutoFec, FecConfig, LinkEstimate};
pub use scheme::{FecScheme, MAX_GROUP_REPAIRS, MAX_GROUP_SOURCES};
pub use symbol::{RepairSymbol, MAX_SOURCE_LEN, REPAIR_HEADER_LEN};

/// Errors of the FEC codec, its wire encoding and its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FecError {
    /// A scheme's shape is outside the supported range.
    #[error("unsupported FEC scheme: {0}")]
    UnsupportedScheme(String),
    /// A source symbol is longer than [`MAX_SOURCE_LEN`].
    #[error("source symbol of {len} bytes exceeds the maximum of {MAX_SOURCE_LEN}")]
    SourceTooLong {
        /// Length of the offending symbol.
        len: usize,
    },
    /// The encoder was given a sequence number that does not continue the
    /// open group.
    #[error("source sequence {got} does not continue the open group (expected {expected})")]
    SequenceGap {
        /// The sequence number the open group needs next.
        expected: u64,
        /// The sequence number given.
        got: u64,
    },
    /// A repair symbol on the wire is truncated or has out-of-range fields.
    #[error("malformed repair symbol: {0}")]
    Malformed(&'static str),
    /// A repair symbol contradicts the repair symbols already held for its
    /// group (different scheme, size or length).
    #[error("repair symbol inconsistent with its group")]
    Inconsistent,
    /// A `--fec` value that is not `off`, `auto`, `ROWSxCOLS` or `K+M`.
    #[error(
        "invalid FEC setting {0:?}: expected off, auto, ROWSxCOLS (XOR) or K+M (Reed-Solomon)"
    )]
    InvalidSetting(String),
}
