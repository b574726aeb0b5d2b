//! Errors of the journal and of the typed checkpoint layer.
//!
//! Every failure is an `Err` to the caller: an I/O error while appending or
//! committing, a corrupt record found while opening, a journal poisoned by an
//! earlier failed `fsync`. Nothing is skipped or dropped silently.

use std::io;

/// Why a segment or record failed validation.
///
/// Carried by [`JournalError::Corrupt`] (and by
/// [`TornTail`](crate::TornTail) when the damage was a repairable torn tail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptReason {
    /// The file is shorter than a segment header.
    #[error("truncated segment header ({len} of 24 bytes)")]
    TruncatedHeader {
        /// Bytes present.
        len: usize,
    },
    /// The segment header does not start with the journal magic.
    #[error("bad segment magic")]
    BadMagic,
    /// The segment was written by an unknown format version.
    #[error("unsupported segment format version {0}")]
    UnsupportedVersion(u16),
    /// The segment header checksum does not match.
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    /// Fewer than the 8 bytes of a record frame header remain.
    #[error("truncated record header ({available} of 8 bytes)")]
    TruncatedFrameHeader {
        /// Bytes present.
        available: usize,
    },
    /// The length field is below the minimum (8) or above the format limit.
    #[error("impossible record length {0}")]
    ImpossibleLength(u32),
    /// The record's declared length runs past the end of the file.
    #[error("record of {len} bytes runs past the end of the file ({available} bytes available)")]
    TruncatedRecord {
        /// Declared payload length.
        len: u32,
        /// Payload bytes present.
        available: usize,
    },
    /// The stored CRC-32C does not match the payload.
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch {
        /// CRC stored in the frame.
        stored: u32,
        /// CRC computed over the payload read back.
        computed: u32,
    },
    /// Record ids must strictly increase through the log.
    #[error("record id {id} does not follow record id {previous}")]
    IdNotIncreasing {
        /// Id of the previous record.
        previous: u64,
        /// Id of this record.
        id: u64,
    },
    /// A checksum-valid record whose contents the typed layer cannot accept.
    #[error("bad checkpoint record: {0}")]
    BadPayload(String),
}

/// An error of the journal or of the checkpoint store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A storage operation failed (including a full disk). Unless the
    /// journal says it is poisoned, nothing was lost and the operation may be
    /// retried.
    #[error("journal I/O error during {op} of {file:?}: {source}")]
    Io {
        /// The storage operation (`append`, `sync`, `rename`, …).
        op: &'static str,
        /// The file it was applied to (empty for directory-wide operations).
        file: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A segment header or a record inside the log is damaged in a way that is
    /// not a torn tail; the journal refuses to open rather than skip it.
    #[error("journal corrupt: {file} at offset {offset}: {reason}")]
    Corrupt {
        /// Segment file name.
        file: String,
        /// Byte offset of the damaged header or record frame in that file.
        offset: u64,
        /// What is wrong.
        reason: CorruptReason,
    },
    /// An earlier failure (a failed `fsync`, or a failed write that could not
    /// be rolled back) left the on-disk state uncertain. Every operation
    /// returns this error until the journal is dropped and reopened, which
    /// recovers the state that actually reached the storage.
    #[error("journal poisoned by an earlier failure ({reason}); drop and reopen it")]
    Poisoned {
        /// The failure that poisoned the journal.
        reason: String,
    },
    /// A record exceeds [`JournalOptions::max_record_len`](crate::JournalOptions::max_record_len).
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Size of the rejected record.
        len: usize,
        /// The configured limit.
        max: u32,
    },
    /// The options passed to `open` are inconsistent.
    #[error("invalid journal options: {0}")]
    InvalidOptions(&'static str),
    /// An outbox push whose sequence number is not above everything already
    /// pushed or confirmed on the channel.
    #[error("outbox push of seq {seq} on channel {channel} is not above {high}")]
    OutOfOrder {
        /// The channel.
        channel: u64,
        /// The rejected sequence number.
        seq: u64,
        /// The highest sequence number pushed or confirmed on the channel.
        high: u64,
    },
    /// A delivered watermark may only move forward.
    #[error("watermark of channel {channel} cannot move back from {current} to {seq}")]
    WatermarkRegressed {
        /// The channel.
        channel: u64,
        /// The rejected value.
        seq: u64,
        /// The current watermark.
        current: u64,
    },
}

impl JournalError {
    /// Wraps an I/O error with the operation and file it came from.
    pub(crate) fn io(op: &'static str, file: &str, source: io::Error) -> Self {
        JournalError::Io {
            op,
            file: file.to_owned(),
            source,
        }
    }

    /// True if the error came from the storage running out of space.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, JournalError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}
