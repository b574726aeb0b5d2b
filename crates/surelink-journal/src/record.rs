//! What a [`Journal`](crate::Journal) holds: [`RecordId`] and the
//! [`Record`] that recovery reads back.
//!
//! Shared by the journal (which assigns ids) and recovery (which reads
//! records from segments), so neither depends on the other for them.

use std::fmt;

use crate::format::segment_name;

/// The id of a record: assigned by [`Journal::append`](crate::Journal::append), strictly increasing
/// through the log, starting at 1. Ids of records that never became durable
/// may be handed out again after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(pub u64);

impl RecordId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A record recovered when the journal was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its id.
    pub id: RecordId,
    /// Its data, as passed to [`Journal::append`](crate::Journal::append).
    pub data: Vec<u8>,
    /// Number of the segment it was read from.
    pub segment: u64,
    /// Offset of its frame in that segment.
    pub offset: u64,
}

impl Record {
    /// File name of the segment it was read from.
    pub fn file_name(&self) -> String {
        segment_name(self.segment)
    }
}
