//! When committed records are made durable (`fsync`).
//!
//! The policy trades the cost of an `fsync` against how much acknowledged
//! work a power loss may take back. A *process* crash (kill -9) loses only
//! records not yet handed to the OS by [`Journal::commit`](crate::Journal::commit);
//! the policy is about losing the machine.

use std::time::Duration;

/// The journal's fsync policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Never fsync on commit; the OS writes back when it likes. Segment seals
    /// at rollover, compaction and recovery still fsync, because the
    /// structure of the log depends on them.
    None,
    /// Commits hand records to the OS; [`Journal::tick`](crate::Journal::tick)
    /// fsyncs once this long has passed since the previous fsync. A power
    /// loss loses at most about one interval.
    Interval(Duration),
    /// Every [`Journal::commit`](crate::Journal::commit) fsyncs before it
    /// returns (one fsync per commit, however many records it carries).
    #[default]
    Always,
}
