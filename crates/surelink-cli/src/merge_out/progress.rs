//! The merge's progress under `recv --merge --state`, journaled: how far the
//! merged output has consumed each session's spool, and how long the output
//! is.
//!
//! [`MergeProgress`] is one journal record (`surelink-journal`, CRC-framed),
//! written whole after the output is flushed; the previous record is then
//! dead, and segments whose records are all dead are dropped, so the
//! journal stays a segment long. Reopened after a crash, the last record
//! whole on disk is the progress: the output is cut back to its length and
//! the merge continues from its cursors. A journal that fails its checks is
//! a [`DamagedState`] (exit status 6) naming the directory; nothing is
//! changed then.
//!
//! Record layout (big-endian): version (1 byte, 1), output length (8), the
//! newest time released (1-byte flag, 8), the next source key (8), the
//! number of sessions (4), then per session its key (8), id (16), source
//! fingerprint (8), next id not yet released (8), spool position of that
//! id's record (8), and a flag byte (1: its spool and state are being
//! removed).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _};
use surelink_journal::{Durability, FsStorage, Journal, JournalOptions, RecordId};
use surelink_session::SessionId;

use crate::source::Source;
use crate::state::{DamagedState, Role};

/// The record's format version.
const VERSION: u8 = 1;
/// Bytes per session in a record.
const SESSION_LEN: usize = 8 + 16 + 8 + 8 + 8 + 1;

/// Where the merge of one session's spool stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCursor {
    /// The session's key in the merge (its tie-breaker among equal times).
    pub key: u64,
    /// The session.
    pub session: SessionId,
    /// The sender that started it.
    pub source: Source,
    /// The next message id not yet in the output (released or dropped).
    pub next_id: u64,
    /// Where that message's record starts in the spool (or the spool's
    /// consumed end).
    pub offset: u64,
    /// Merged completely: its spool and state are being removed.
    pub removing: bool,
}

/// The merge's journaled progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeProgress {
    /// The merged output's length.
    pub output_len: u64,
    /// The newest corrected time released in order, µs.
    pub released_up_to_us: Option<u64>,
    /// The key the next new session gets.
    pub next_key: u64,
    /// Every session the merge knows, by key.
    pub sessions: Vec<SessionCursor>,
}

impl MergeProgress {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(30 + self.sessions.len() * SESSION_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.output_len.to_be_bytes());
        out.push(u8::from(self.released_up_to_us.is_some()));
        out.extend_from_slice(&self.released_up_to_us.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.next_key.to_be_bytes());
        let count = u32::try_from(self.sessions.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for s in &self.sessions {
            out.extend_from_slice(&s.key.to_be_bytes());
            out.extend_from_slice(&s.session.0);
            out.extend_from_slice(&s.source.id);
            out.extend_from_slice(&s.next_id.to_be_bytes());
            out.extend_from_slice(&s.offset.to_be_bytes());
            out.push(u8::from(s.removing));
        }
        out
    }

    /// Parses a record; `None` if it is not one of ours.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.take::<1>()? != [VERSION] {
            return None;
        }
        let output_len = r.u64()?;
        let has_time = r.take::<1>()?[0];
        let time = r.u64()?;
        let next_key = r.u64()?;
        let count = u32::from_be_bytes(r.take()?) as usize;
        if r.0.len() != count.checked_mul(SESSION_LEN)? || has_time > 1 {
            return None;
        }
        let mut sessions = Vec::with_capacity(count);
        for _ in 0..count {
            sessions.push(SessionCursor {
                key: r.u64()?,
                session: SessionId(r.take()?),
                source: Source { id: r.take()? },
                next_id: r.u64()?,
                offset: r.u64()?,
                removing: match r.take::<1>()?[0] {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
            });
        }
        Some(MergeProgress {
            output_len,
            released_up_to_us: (has_time == 1).then_some(time),
            next_key,
            sessions,
        })
    }
}

/// Reads fixed-size fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }
}

/// The journal of a merge's progress, in its own directory.
#[derive(Debug)]
pub struct ProgressJournal {
    journal: Journal<FsStorage>,
    last: Option<RecordId>,
}

impl ProgressJournal {
    /// Opens (or creates) the journal in `dir` and returns it with the last
    /// progress recorded (`None` for a new merge). A damaged journal, or a
    /// record that is not a merge's progress, is an error naming `dir`.
    pub fn open(
        dir: &Path,
        durability: Durability,
    ) -> anyhow::Result<(Self, Option<MergeProgress>)> {
        // The advice names the whole state directory: the spools go with it.
        let damaged = |cause: String| DamagedState {
            dir: dir.parent().unwrap_or(dir).to_path_buf(),
            role: Role::Receiver,
            cause: format!(
                "the merge journal in {} is damaged ({cause}); the output and the spools \
                 were left untouched",
                dir.display()
            ),
        };
        let storage =
            FsStorage::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        let options = JournalOptions {
            durability,
            segment_size: 1 << 20,
            ..JournalOptions::default()
        };
        let (journal, records) =
            Journal::open(storage, options).map_err(|e| damaged(e.to_string()))?;
        let mut journal = ProgressJournal {
            journal,
            last: None,
        };
        let Some(last) = records.last() else {
            return Ok((journal, None));
        };
        let Some(progress) = MergeProgress::decode(&last.data) else {
            bail!(damaged("its last record is not a merge's progress".into()));
        };
        for record in &records {
            if record.id != last.id {
                journal.journal.mark_dead(record.id);
            }
        }
        journal.last = Some(last.id);
        Ok((journal, Some(progress)))
    }

    /// Records `progress`: handed to the OS on return (a process crash keeps
    /// it), fsynced too when `sync` or under [`Durability::Always`].
    pub fn commit(&mut self, progress: &MergeProgress, sync: bool) -> anyhow::Result<()> {
        let id = self
            .journal
            .append(&progress.encode())
            .context("cannot write the merge journal")?;
        if sync {
            self.journal.sync()
        } else {
            self.journal.commit()
        }
        .context("cannot write the merge journal")?;
        if let Some(previous) = self.last.replace(id) {
            self.journal.mark_dead(previous);
        }
        if self.journal.should_compact() {
            self.journal
                .compact()
                .context("cannot compact the merge journal")?;
        }
        Ok(())
    }

    /// When the interval fsync is due, if one is waiting.
    pub fn next_sync_at(&self, now: Instant) -> Option<Instant> {
        self.journal.next_sync_at(now)
    }

    /// Does the interval fsync if it is due; returns whether it did.
    pub fn tick(&mut self, now: Instant) -> anyhow::Result<bool> {
        self.journal
            .tick(now)
            .context("cannot sync the merge journal")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_the_journal_keeps_the_last_record() {
        let progress = MergeProgress {
            output_len: 1234,
            released_up_to_us: Some(99),
            next_key: 2,
            sessions: vec![SessionCursor {
                key: 1,
                session: SessionId([7; 16]),
                source: Source { id: [3; 8] },
                next_id: 10,
                offset: 400,
                removing: true,
            }],
        };
        let bytes = progress.encode();
        assert_eq!(MergeProgress::decode(&bytes), Some(progress.clone()));
        assert_eq!(MergeProgress::decode(&bytes[..bytes.len() - 1]), None);

        let dir = tempfile::tempdir().unwrap();
        let (mut journal, none) = ProgressJournal::open(dir.path(), Durability::Always).unwrap();
        assert_eq!(none, None);
        journal.commit(&MergeProgress::default(), false).unwrap();
        journal.commit(&progress, false).unwrap();
        drop(journal);
        let (_journal, last) = ProgressJournal::open(dir.path(), Durability::Always).unwrap();
        assert_eq!(last, Some(progress));
    }
}
