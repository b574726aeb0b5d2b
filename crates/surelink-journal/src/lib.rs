//! The durable checkpoint store of surelink.
//!
//! After `kill -9` of a sender or a receiver, surelink resumes the session
//! from a checkpoint: the sender's *outbox* of messages the receiver has not
//! yet confirmed as checkpointed, the receiver's per-channel *delivered
//! watermark*, and the session metadata. This crate keeps that state on
//! disk so that reopening gives back exactly what was durable: nothing
//! acknowledged as durable is lost, and a torn tail is repaired.
//!
//! It has three layers:
//!
//! * [`Storage`]: a flat directory of files behind a trait, with
//!   [`FsStorage`] (real files) and [`MemStorage`] (in memory, with crash
//!   simulation and fault injection, for tests).
//! * [`Journal`]: an append-only log of opaque records in CRC-32C-checked
//!   segment files, with group commit, a [`Durability`] policy, metrics,
//!   compaction and recovery on open ([`RecoveryReport`]).
//! * [`CheckpointStore`]: the typed state ([`Outbox`], [`Watermark`],
//!   [`SessionRecord`]) journaled as tagged records.
//!
//! Everything is synchronous `std` I/O and reads no clock for decisions:
//! time-based policy ([`Durability::Interval`]) takes `now` as an argument.
//! The on-disk format is described in [`mod@format`] and in `docs/JOURNAL.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod checkpoint;
pub mod durability;
pub mod error;
pub mod format;
pub mod journal;
pub mod metrics;
pub mod record;
pub mod recovery;
pub mod storage;

pub use checkpoint::{
    CheckpointRecord, CheckpointStore, Outbox, OutboxEntry, RecordDecodeError, SessionRecord,
    Watermark,
};
pub use durability::Durability;
pub use error::{CorruptReason, JournalError};
pub use journal::{CompactionReport, Journal, JournalOptions};
pub use metrics::{JournalMetrics, LatencyHistogram};
pub use record::{Record, RecordId};
pub use recovery::{RecoveryReport, TornTail};
pub use storage::{CrashMode, FsStorage, MemStorage, Storage, StorageOp};
