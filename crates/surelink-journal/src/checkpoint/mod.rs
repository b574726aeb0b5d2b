//! The typed checkpoint state on top of the [`Journal`]: the sender's
//! [`Outbox`], the receiver's [`Watermark`]s and the [`SessionRecord`].
//!
//! A [`CheckpointStore`] keeps the state in memory and journals every change
//! as one tagged [`CheckpointRecord`] (format in its docs and in
//! `docs/JOURNAL.md`). Records that no longer contribute to the state are
//! declared dead to the journal, so compaction keeps only:
//!
//! * one PUSH per pending (unconfirmed) message,
//! * the latest CONFIRM per channel (the floor for later pushes),
//! * the latest WATERMARK per channel,
//! * the latest SESSION, unless the session was cleared.
//!
//! Mutations take effect in memory at once and become durable with
//! [`commit`](CheckpointStore::commit). Opening the store replays the log:
//! after a crash the state is exactly the state as of the last durable
//! commit, plus possibly some of the changes made after it, in order (a
//! prefix of them; with [`Durability::Always`](crate::Durability::Always)
//! and nothing written since, exactly the committed state).
//!
//! ```
//! use surelink_journal::{CheckpointStore, JournalOptions, MemStorage};
//!
//! let storage = MemStorage::new();
//! let mut store = CheckpointStore::open(storage.clone(), JournalOptions::default())?;
//! store.push(7, 1, b"hello")?;
//! store.push(7, 2, b"world")?;
//! store.set_watermark(3, 41)?;
//! store.commit()?;
//! store.confirm(7, 1)?; // the receiver checkpointed message 1
//! store.commit()?;
//! drop(store);
//!
//! let store = CheckpointStore::open(storage, JournalOptions::default())?;
//! let pending: Vec<_> = store.outbox().pending().map(|e| e.seq).collect();
//! assert_eq!(pending, [2]);
//! assert_eq!(store.watermarks().get(3), Some(41));
//! # Ok::<(), surelink_journal::JournalError>(())
//! ```

mod outbox;
mod record;
mod session;
mod watermark;

pub use outbox::{Outbox, OutboxEntry};
pub use record::{CheckpointRecord, RecordDecodeError};
pub use session::SessionRecord;
pub use watermark::Watermark;

use std::time::Instant;

use crate::error::{CorruptReason, JournalError};
use crate::journal::{CompactionReport, Journal, JournalOptions};
use crate::metrics::JournalMetrics;
use crate::record::{Record, RecordId};
use crate::storage::Storage;

/// The durable checkpoint state of one endpoint. See the [module docs](self).
#[derive(Debug)]
pub struct CheckpointStore<S: Storage> {
    journal: Journal<S>,
    outbox: Outbox,
    watermarks: Watermark,
    session: Option<(RecordId, SessionRecord)>,
}

fn bad_record(record: &Record, reason: String) -> JournalError {
    JournalError::Corrupt {
        file: record.file_name(),
        offset: record.offset,
        reason: CorruptReason::BadPayload(reason),
    }
}

impl<S: Storage> CheckpointStore<S> {
    /// Opens (or creates) the store on `storage` and replays its journal.
    ///
    /// A record that is checksum-valid but not a valid checkpoint record, or
    /// that contradicts the state before it (a push out of order, a
    /// watermark moving back), is [`JournalError::Corrupt`].
    pub fn open(storage: S, options: JournalOptions) -> Result<Self, JournalError> {
        let (journal, records) = Journal::open(storage, options)?;
        let mut store = CheckpointStore {
            journal,
            outbox: Outbox::default(),
            watermarks: Watermark::default(),
            session: None,
        };
        let mut dead = Vec::new();
        for record in records {
            let decoded = CheckpointRecord::decode(&record.data)
                .map_err(|e| bad_record(&record, e.to_string()))?;
            store
                .replay(record.id, decoded, &mut dead)
                .map_err(|reason| bad_record(&record, reason))?;
        }
        for id in dead {
            store.journal.mark_dead(id);
        }
        Ok(store)
    }

    /// Applies one recovered record, with the same checks as the live path;
    /// `Err` says why the record contradicts the state before it.
    fn replay(
        &mut self,
        id: RecordId,
        record: CheckpointRecord,
        dead: &mut Vec<RecordId>,
    ) -> Result<(), String> {
        match record {
            CheckpointRecord::Push {
                channel,
                seq,
                payload,
            } => {
                self.outbox
                    .check_push(channel, seq)
                    .map_err(|e| e.to_string())?;
                self.outbox.apply_push(
                    id,
                    OutboxEntry {
                        channel,
                        seq,
                        payload,
                    },
                );
            }
            CheckpointRecord::Confirm { channel, up_to } => {
                if !self.outbox.confirm_advances(channel, up_to) {
                    return Err(format!(
                        "confirmation of channel {channel} up to {up_to} does not advance"
                    ));
                }
                self.outbox.apply_confirm(id, channel, up_to, dead);
            }
            CheckpointRecord::Watermark { channel, seq } => {
                if !self
                    .watermarks
                    .check_set(channel, seq)
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("watermark of channel {channel} set to {seq} twice"));
                }
                dead.extend(self.watermarks.apply_set(id, channel, seq));
            }
            CheckpointRecord::Session(session) => {
                dead.extend(self.session.replace((id, session)).map(|(id, _)| id));
            }
            CheckpointRecord::SessionCleared => {
                dead.extend(self.session.take().map(|(id, _)| id));
                dead.push(id);
            }
        }
        Ok(())
    }

    /// Queues message `seq` of `channel` in the outbox. `seq` must be above
    /// [`Outbox::high_seq`] of the channel.
    /// The payload is moved into the outbox (pass a `Vec` to avoid a copy).
    pub fn push(
        &mut self,
        channel: u64,
        seq: u64,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), JournalError> {
        self.outbox.check_push(channel, seq)?;
        let payload = payload.into();
        let header = record::push_header(channel, seq);
        let id = self.journal.append_parts(&[&header, &payload])?;
        self.outbox.apply_push(
            id,
            OutboxEntry {
                channel,
                seq,
                payload,
            },
        );
        Ok(())
    }

    /// The receiver confirmed every message `<= up_to` on `channel` as
    /// checkpointed: releases them from the outbox and returns how many. A
    /// confirmation at or below the current one changes nothing (returns 0,
    /// writes nothing).
    pub fn confirm(&mut self, channel: u64, up_to: u64) -> Result<usize, JournalError> {
        if !self.outbox.confirm_advances(channel, up_to) {
            return Ok(0);
        }
        let data = CheckpointRecord::Confirm { channel, up_to }.to_bytes();
        let id = self.journal.append(&data)?;
        let mut dead = Vec::new();
        let released = self.outbox.apply_confirm(id, channel, up_to, &mut dead);
        for id in dead {
            self.journal.mark_dead(id);
        }
        Ok(released)
    }

    /// Sets the delivered watermark of `channel`. Returns false (and writes
    /// nothing) if it is already `seq`; a lower value is
    /// [`JournalError::WatermarkRegressed`].
    pub fn set_watermark(&mut self, channel: u64, seq: u64) -> Result<bool, JournalError> {
        if !self.watermarks.check_set(channel, seq)? {
            return Ok(false);
        }
        let data = CheckpointRecord::Watermark { channel, seq }.to_bytes();
        let id = self.journal.append(&data)?;
        if let Some(previous) = self.watermarks.apply_set(id, channel, seq) {
            self.journal.mark_dead(previous);
        }
        Ok(true)
    }

    /// Stores the session metadata, replacing any previous one.
    pub fn set_session(&mut self, session: SessionRecord) -> Result<(), JournalError> {
        let data = CheckpointRecord::Session(session.clone()).to_bytes();
        let id = self.journal.append(&data)?;
        if let Some((previous, _)) = self.session.replace((id, session)) {
            self.journal.mark_dead(previous);
        }
        Ok(())
    }

    /// Forgets the session metadata. Returns false (and writes nothing) if
    /// there was none.
    pub fn clear_session(&mut self) -> Result<bool, JournalError> {
        if self.session.is_none() {
            return Ok(false);
        }
        let id = self
            .journal
            .append(&CheckpointRecord::SessionCleared.to_bytes())?;
        if let Some((previous, _)) = self.session.take() {
            self.journal.mark_dead(previous);
        }
        // The tombstone only cancels a record that is itself dead, so it
        // contributes nothing to a compacted log.
        self.journal.mark_dead(id);
        Ok(true)
    }

    /// The sender's pending messages.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The receiver's delivered watermarks.
    pub fn watermarks(&self) -> &Watermark {
        &self.watermarks
    }

    /// The session metadata, if any.
    pub fn session(&self) -> Option<&SessionRecord> {
        self.session.as_ref().map(|(_, session)| session)
    }

    /// Writes the changes made since the last commit; see
    /// [`Journal::commit`]. Returns the highest durable record id.
    pub fn commit(&mut self) -> Result<Option<RecordId>, JournalError> {
        self.journal.commit()
    }

    /// Writes and fsyncs, whatever the policy; see [`Journal::sync`].
    pub fn sync(&mut self) -> Result<Option<RecordId>, JournalError> {
        self.journal.sync()
    }

    /// Drives [`Durability::Interval`](crate::Durability::Interval); see
    /// [`Journal::tick`].
    pub fn tick(&mut self, now: Instant) -> Result<bool, JournalError> {
        self.journal.tick(now)
    }

    /// Rewrites the log down to the current state; see [`Journal::compact`].
    pub fn compact(&mut self) -> Result<CompactionReport, JournalError> {
        self.journal.compact()
    }

    /// Compacts if [`Journal::should_compact`] says it is worth it.
    pub fn maybe_compact(&mut self) -> Result<Option<CompactionReport>, JournalError> {
        if self.journal.should_compact() {
            self.journal.compact().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The journal underneath (durable id, recovery report, poisoning).
    pub fn journal(&self) -> &Journal<S> {
        &self.journal
    }

    /// The journal's counters.
    pub fn metrics(&self) -> JournalMetrics {
        self.journal.metrics()
    }
}

#[cfg(test)]
mod tests;
