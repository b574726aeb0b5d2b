//! [`Journal`]: the append-only, CRC-checked segment log with group commit,
//! a durability policy, compaction and crash recovery.
//!
//! Records are opaque bytes here. The journal is driven like this:
//!
//! ```
//! use surelink_journal::{Durability, Journal, JournalOptions, MemStorage};
//!
//! let storage = MemStorage::new();
//! let options = JournalOptions { durability: Durability::Always, ..JournalOptions::default() };
//! let (mut journal, recovered) = Journal::open(storage.clone(), options.clone())?;
//! assert!(recovered.is_empty());
//!
//! let a = journal.append(b"first")?;   // buffered in memory
//! let b = journal.append(b"second")?;
//! assert_eq!(journal.commit()?, Some(b)); // one write + one fsync for both
//! journal.mark_dead(a);                  // the layer above no longer needs it
//! journal.compact()?;                    // rewrite the live records only
//! drop(journal);
//!
//! let (_journal, recovered) = Journal::open(storage, options)?;
//! assert_eq!(recovered.len(), 1);
//! assert_eq!(recovered[0].data, b"second");
//! # Ok::<(), surelink_journal::JournalError>(())
//! ```
//!
//! # Group commit
//!
//! [`append`](Journal::append) only encodes the record into a write buffer
//! (writing the buffer through, unsynced, when it exceeds
//! [`JournalOptions::write_buffer`]). [`commit`](Journal::commit) writes the
//! buffer with as few storage writes as segment boundaries allow and, under
//! [`Durability::Always`], fsyncs once. [`durable_id`](Journal::durable_id)
//! is the highest record known to be on stable storage.
//!
//! # Failure semantics
//!
//! * A failed **write** (I/O error, full disk) is rolled back: the segment is
//!   truncated to its length before the write, the records stay buffered,
//!   the error is returned, and a later `commit` retries them. The journal
//!   stays usable (an `append` that returns `Err` did not add its record).
//! * A failed **fsync** (or directory fsync, or a rollback that itself
//!   fails) *poisons* the journal: after a failed fsync the kernel may have
//!   dropped the dirty pages, so retrying could report durability falsely.
//!   Every later call returns [`JournalError::Poisoned`]; drop the journal
//!   and [`open`](Journal::open) it again, which recovers exactly what
//!   reached the storage.
//!
//! # Compaction
//!
//! [`compact`](Journal::compact) first writes the buffer, then copies every
//! live record (read back from the segments, checksums verified again) into
//! `{n}.log.tmp` with a header flagged `COMPACTED`, fsyncs it, renames it to
//! `{n}.log`, fsyncs the directory (the commit point), and then removes the
//! older segments. A crash anywhere leaves either the old
//! segments (the tmp file is deleted on open) or the compacted segment, which
//! supersedes everything below it (leftovers are deleted on open): both open
//! to the same live state.
//!
//! Compaction copies, so most garbage is reclaimed without it: whenever
//! every record written so far is durable (after an fsync of the active
//! segment; under [`Durability::None`], once written), the oldest sealed
//! segments in which every record is dead are removed, oldest first, each
//! removal followed by a directory fsync. A record is only ever made dead
//! by a later one, so the records that made them dead are in the log and
//! durable: whatever removals a crash keeps, the log opens to the same live
//! state. In a log used as a FIFO (an outbox whose messages are confirmed in
//! order) this reclaims everything, and [`should_compact`](Journal::should_compact)
//! counts only garbage that live records have pinned for longer than a
//! segment of writes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::durability::Durability;
use crate::error::JournalError;
use crate::format::{
    encode_frame, frame_len, scan_segment, segment_name, tmp_name, SegmentHeader, TailPolicy,
    FLAG_COMPACTED, HEADER_LEN, ID_LEN, MAX_PAYLOAD_LEN,
};
use crate::metrics::JournalMetrics;
use crate::record::{Record, RecordId};
use crate::recovery::{recover, RecoveryReport, SegmentState};
use crate::storage::Storage;

/// Configuration of a [`Journal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// When commits are fsynced. Default: [`Durability::Always`].
    pub durability: Durability,
    /// A segment rolls over when the next record would take it past this
    /// size (a single record larger than this gets a segment of its own).
    /// Default 16 MiB; at least 64.
    pub segment_size: u64,
    /// Largest record data accepted by [`Journal::append`]. Default 16 MiB;
    /// at most 2^30 - 8.
    pub max_record_len: u32,
    /// Buffered bytes above which `append` writes the buffer through
    /// (unsynced) before buffering more. Default 1 MiB.
    pub write_buffer: usize,
    /// [`Journal::should_compact`] says yes once dead records in the
    /// segments older than the newest sealed one take more bytes than live
    /// ones and at least this many. Default 4 MiB.
    pub compact_min_garbage: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            durability: Durability::Always,
            segment_size: 16 << 20,
            max_record_len: 16 << 20,
            write_buffer: 1 << 20,
            compact_min_garbage: 4 << 20,
        }
    }
}

impl JournalOptions {
    fn validate(&self) -> Result<(), JournalError> {
        if self.segment_size < 64 {
            return Err(JournalError::InvalidOptions(
                "segment_size must be at least 64",
            ));
        }
        if self.max_record_len > MAX_PAYLOAD_LEN - ID_LEN as u32 {
            return Err(JournalError::InvalidOptions(
                "max_record_len must be at most 2^30 - 8",
            ));
        }
        if let Durability::Interval(d) = self.durability {
            if d.is_zero() {
                return Err(JournalError::InvalidOptions(
                    "a zero durability interval: use Durability::Always",
                ));
            }
        }
        Ok(())
    }
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionReport {
    /// The compacted segment.
    pub file: String,
    /// Records kept.
    pub records: u64,
    /// Size of the compacted segment.
    pub bytes: u64,
    /// Segment files removed.
    pub removed: Vec<String>,
    /// Old segments whose removal failed; they are superseded by the
    /// compacted segment and deleted the next time the journal is opened.
    pub leftover: Vec<String>,
}

/// The append-only segment log. See the [module docs](self).
#[derive(Debug)]
pub struct Journal<S: Storage> {
    storage: S,
    options: JournalOptions,
    /// Ascending by number; the last is the active segment.
    segments: Vec<SegmentState>,
    next_id: u64,
    /// Encoded frames not yet written.
    pending: Vec<u8>,
    /// (id, frame length) of each buffered frame.
    pending_frames: VecDeque<(u64, usize)>,
    /// Highest id handed to the storage (0: none).
    written_id: u64,
    /// Highest id known durable (0: none).
    durable_id: u64,
    /// The active segment has writes not yet fsynced.
    active_dirty: bool,
    /// Live records: id → frame length.
    live: BTreeMap<u64, u64>,
    live_bytes: u64,
    /// Frame bytes of all records in the log or the buffer.
    total_bytes: u64,
    last_sync: Option<Instant>,
    metrics: JournalMetrics,
    recovery: RecoveryReport,
    poisoned: Option<String>,
}

impl<S: Storage> Journal<S> {
    /// Opens (or creates) the journal on `storage`, recovering and repairing
    /// it (see [`recovery`](crate::recovery)), and returns it with every
    /// record in the log, in id order. All of them start out live.
    pub fn open(
        mut storage: S,
        options: JournalOptions,
    ) -> Result<(Self, Vec<Record>), JournalError> {
        options.validate()?;
        let recovered = recover(&mut storage)?;
        let mut live = BTreeMap::new();
        let mut live_bytes = 0;
        for record in &recovered.records {
            let len = frame_len(record.data.len()) as u64;
            live.insert(record.id.0, len);
            live_bytes += len;
        }
        let last_id = recovered.records.last().map_or(0, |r| r.id.0);
        let metrics = JournalMetrics {
            bytes_written: recovered.bytes_written,
            fsyncs: recovered.fsyncs,
            dir_syncs: recovered.dir_syncs,
            ..JournalMetrics::default()
        };
        let journal = Journal {
            storage,
            options,
            segments: recovered.segments,
            next_id: recovered.next_id,
            pending: Vec::new(),
            pending_frames: VecDeque::new(),
            written_id: last_id,
            durable_id: last_id,
            active_dirty: false,
            live,
            live_bytes,
            total_bytes: live_bytes,
            last_sync: None,
            metrics,
            recovery: recovered.report,
            poisoned: None,
        };
        Ok((journal, recovered.records))
    }

    fn check_poisoned(&self) -> Result<(), JournalError> {
        match &self.poisoned {
            Some(reason) => Err(JournalError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, error: JournalError) -> JournalError {
        if self.poisoned.is_none() {
            self.poisoned = Some(error.to_string());
        }
        error
    }

    /// Buffers a record and returns its id. Nothing is written unless the
    /// buffer is over [`JournalOptions::write_buffer`], in which case the
    /// buffer is written through first; if that fails, the error is returned
    /// and the record is not added.
    pub fn append(&mut self, data: &[u8]) -> Result<RecordId, JournalError> {
        self.append_parts(&[data])
    }

    /// Like [`append`](Self::append), for a record whose data is the
    /// concatenation of `parts` (saves the caller a copy into one buffer).
    pub fn append_parts(&mut self, parts: &[&[u8]]) -> Result<RecordId, JournalError> {
        self.check_poisoned()?;
        let data_len: usize = parts.iter().map(|p| p.len()).sum();
        if data_len > self.options.max_record_len as usize {
            return Err(JournalError::RecordTooLarge {
                len: data_len,
                max: self.options.max_record_len,
            });
        }
        let len = frame_len(data_len);
        if !self.pending.is_empty() && self.pending.len() + len > self.options.write_buffer {
            self.flush()?;
        }
        let id = self.next_id;
        self.next_id += 1;
        encode_frame(id, parts, &mut self.pending);
        self.pending_frames.push_back((id, len));
        self.live.insert(id, len as u64);
        self.live_bytes += len as u64;
        self.total_bytes += len as u64;
        self.metrics.records_appended += 1;
        Ok(RecordId(id))
    }

    /// Writes every buffered record and, under [`Durability::Always`],
    /// fsyncs; returns [`durable_id`](Self::durable_id) afterwards. Under the
    /// other policies the records are handed to the OS (they survive a
    /// process crash, not necessarily a power loss).
    pub fn commit(&mut self) -> Result<Option<RecordId>, JournalError> {
        self.check_poisoned()?;
        let had_records = !self.pending_frames.is_empty();
        self.flush()?;
        if self.options.durability == Durability::Always && self.active_dirty {
            self.sync_active()?;
        }
        if had_records {
            self.metrics.commits += 1;
        }
        self.drop_dead_segments()?;
        Ok(self.durable_id())
    }

    /// Writes every buffered record and fsyncs, whatever the policy; returns
    /// [`durable_id`](Self::durable_id) (then equal to the last appended id).
    pub fn sync(&mut self) -> Result<Option<RecordId>, JournalError> {
        self.check_poisoned()?;
        self.flush()?;
        if self.active_dirty {
            self.sync_active()?;
        }
        self.drop_dead_segments()?;
        Ok(self.durable_id())
    }

    /// Drives [`Durability::Interval`]: fsyncs committed-but-unsynced data if
    /// the interval has passed since the previous interval fsync (or if there
    /// was none). Returns whether it fsynced. A no-op under other policies.
    pub fn tick(&mut self, now: Instant) -> Result<bool, JournalError> {
        self.check_poisoned()?;
        let Durability::Interval(interval) = self.options.durability else {
            return Ok(false);
        };
        if !self.active_dirty {
            return Ok(false);
        }
        let due = self
            .last_sync
            .is_none_or(|last| now.saturating_duration_since(last) >= interval);
        if !due {
            return Ok(false);
        }
        self.sync_active()?;
        self.last_sync = Some(now);
        self.drop_dead_segments()?;
        Ok(true)
    }

    /// Under [`Durability::Interval`], when [`tick`](Self::tick) will next
    /// fsync: `None` if nothing is waiting for an fsync (or another policy),
    /// `now` if it is due already.
    pub fn next_sync_at(&self, now: Instant) -> Option<Instant> {
        let Durability::Interval(interval) = self.options.durability else {
            return None;
        };
        if !self.active_dirty {
            return None;
        }
        Some(
            self.last_sync
                .map_or(now, |last| (last + interval).max(now)),
        )
    }

    /// Declares a record dead: compaction will drop it. Returns false if it
    /// was not live. Only marks; nothing is written.
    pub fn mark_dead(&mut self, id: RecordId) -> bool {
        match self.live.remove(&id.0) {
            Some(len) => {
                self.live_bytes -= len;
                true
            }
            None => false,
        }
    }

    /// True if `id` is live.
    pub fn is_live(&self, id: RecordId) -> bool {
        self.live.contains_key(&id.0)
    }

    /// Writes the buffer to the active segment(s), rolling over as needed.
    fn flush(&mut self) -> Result<(), JournalError> {
        while !self.pending_frames.is_empty() {
            let active = self.segments.last().expect("at least one segment");
            let mut take = 0;
            let mut bytes = 0usize;
            for &(_, len) in &self.pending_frames {
                let fits = active.len + (bytes + len) as u64 <= self.options.segment_size;
                if !fits && (active.records > 0 || take > 0) {
                    break;
                }
                take += 1;
                bytes += len;
            }
            if take == 0 {
                self.roll_over()?;
                continue;
            }
            let name = active.name.clone();
            let before = active.len;
            if let Err(e) = self.storage.append(&name, &self.pending[..bytes]) {
                let error = JournalError::io("append", &name, e);
                // Roll back a short write so the segment ends on a frame.
                return match self.storage.truncate(&name, before) {
                    Ok(()) => Err(error),
                    Err(t) => {
                        self.poison(JournalError::io("truncate", &name, t));
                        Err(self.poison(error))
                    }
                };
            }
            let last_id = self.pending_frames[take - 1].0;
            self.pending_frames.drain(..take);
            self.pending.drain(..bytes);
            let active = self.segments.last_mut().expect("at least one segment");
            active.len += bytes as u64;
            active.records += take as u64;
            self.written_id = last_id;
            self.active_dirty = true;
            self.metrics.bytes_written += bytes as u64;
        }
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), JournalError> {
        let name = self
            .segments
            .last()
            .expect("at least one segment")
            .name
            .clone();
        let started = Instant::now();
        if let Err(e) = self.storage.sync(&name) {
            return Err(self.poison(JournalError::io("sync", &name, e)));
        }
        self.metrics.fsync_latency.record(started.elapsed());
        self.metrics.fsyncs += 1;
        self.active_dirty = false;
        self.durable_id = self.written_id;
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), JournalError> {
        self.storage
            .sync_dir()
            .map_err(|e| JournalError::io("sync_dir", "", e))?;
        self.metrics.dir_syncs += 1;
        Ok(())
    }

    /// Removes the oldest sealed segments whose records, and those of every
    /// segment before them, are all dead (see the [module docs](self#compaction)),
    /// if every record written is durable (under [`Durability::None`]:
    /// written). A removal that fails leaves that segment and the later ones
    /// in the log, which is harmless; a failed directory fsync poisons.
    fn drop_dead_segments(&mut self) -> Result<(), JournalError> {
        let safe = self.pending_frames.is_empty()
            && (self.options.durability == Durability::None || !self.active_dirty);
        if !safe {
            return Ok(());
        }
        // Segment `n` can go if no live record is below the next one's base id.
        while self.segments.len() > 1 {
            let bound = self.segments[1].base_id;
            if self.live.range(..bound).next().is_some() {
                break;
            }
            let name = self.segments[0].name.clone();
            if self.storage.remove(&name).is_err() {
                break;
            }
            let segment = self.segments.remove(0);
            self.total_bytes -= segment.len.saturating_sub(HEADER_LEN as u64);
            self.metrics.segments_dropped += 1;
            if let Err(e) = self.sync_dir() {
                return Err(self.poison(e));
            }
        }
        Ok(())
    }

    /// Seals the active segment (fsync) and starts the next one. Sealing
    /// always fsyncs, whatever the policy: a sealed segment must never end
    /// torn, or a later segment could hold records that follow lost ones.
    fn roll_over(&mut self) -> Result<(), JournalError> {
        if self.active_dirty {
            self.sync_active()?;
        }
        let number = self.segments.last().expect("at least one segment").number + 1;
        let name = segment_name(number);
        let base_id = self.pending_frames.front().map_or(self.next_id, |f| f.0);
        let header = SegmentHeader { flags: 0, base_id }.encode();
        self.storage
            .create(&name)
            .map_err(|e| JournalError::io("create", &name, e))?;
        if let Err(e) = self.storage.append(&name, &header) {
            // Not yet part of the log; a retry recreates it, and a leftover
            // (torn-header) file is repaired on open.
            let _ = self.storage.remove(&name);
            return Err(JournalError::io("append", &name, e));
        }
        self.metrics.bytes_written += HEADER_LEN as u64;
        if let Err(e) = self.sync_dir() {
            return Err(self.poison(e));
        }
        self.segments.push(SegmentState {
            number,
            name,
            len: HEADER_LEN as u64,
            records: 0,
            base_id,
        });
        self.active_dirty = true;
        self.metrics.segments_created += 1;
        Ok(())
    }

    /// Rewrites the live records into a fresh compacted segment and removes
    /// the old segments (see the [module docs](self#compaction)). Writes
    /// everything buffered first; the compacted segment is fsynced before it
    /// replaces the old ones, so afterwards every record appended so far is
    /// durable, whatever the policy. On an error before the commit point the
    /// old segments are untouched and the journal stays usable; a failed
    /// directory fsync at the commit point poisons it.
    pub fn compact(&mut self) -> Result<CompactionReport, JournalError> {
        self.check_poisoned()?;
        self.flush()?;
        let number = self.segments.last().expect("at least one segment").number + 1;
        let tmp = tmp_name(number);
        let name = segment_name(number);
        let (bytes, records) = match self.write_compacted(&tmp) {
            Ok(written) => written,
            Err(e) => {
                let _ = self.storage.remove(&tmp);
                return Err(e);
            }
        };
        let started = Instant::now();
        if let Err(e) = self.storage.sync(&tmp) {
            let _ = self.storage.remove(&tmp);
            return Err(JournalError::io("sync", &tmp, e));
        }
        self.metrics.fsync_latency.record(started.elapsed());
        self.metrics.fsyncs += 1;
        if let Err(e) = self.storage.rename(&tmp, &name) {
            let _ = self.storage.remove(&tmp);
            return Err(JournalError::io("rename", &tmp, e));
        }
        // The compacted segment is in place: from here on it is the log.
        let old = std::mem::replace(
            &mut self.segments,
            vec![SegmentState {
                number,
                name: name.clone(),
                len: bytes,
                records,
                base_id: self.next_id,
            }],
        );
        self.total_bytes = self.live_bytes;
        self.metrics.segments_created += 1;
        if let Err(e) = self.sync_dir() {
            return Err(self.poison(e));
        }
        // Every live record written so far is now in a synced segment, and
        // the dead ones are superseded by records that are too.
        self.active_dirty = false;
        self.durable_id = self.written_id;
        let mut removed = Vec::new();
        let mut leftover = Vec::new();
        for segment in old {
            match self.storage.remove(&segment.name) {
                Ok(()) => removed.push(segment.name),
                Err(_) => leftover.push(segment.name),
            }
        }
        // Losing these removals in a crash is harmless (the compacted
        // segment supersedes them), so a failure here is not an error.
        let _ = self.sync_dir();
        self.metrics.compactions += 1;
        Ok(CompactionReport {
            file: name,
            records,
            bytes,
            removed,
            leftover,
        })
    }

    /// Writes the compacted segment to `tmp`; returns its size and record
    /// count.
    fn write_compacted(&mut self, tmp: &str) -> Result<(u64, u64), JournalError> {
        const CHUNK: usize = 1 << 20;
        self.storage
            .create(tmp)
            .map_err(|e| JournalError::io("create", tmp, e))?;
        let header = SegmentHeader {
            flags: FLAG_COMPACTED,
            base_id: self.next_id,
        };
        let mut out = header.encode().to_vec();
        let mut bytes = 0u64;
        let mut records = 0u64;
        let mut previous = None;
        let names: Vec<String> = self.segments.iter().map(|s| s.name.clone()).collect();
        for name in names {
            let data = self
                .storage
                .read_all(&name)
                .map_err(|e| JournalError::io("read", &name, e))?;
            let scan = scan_segment(&name, &data, previous, TailPolicy::Strict)?;
            if let Some(last) = scan.records.last() {
                previous = Some(last.id);
            }
            for record in &scan.records {
                if !self.live.contains_key(&record.id) {
                    continue;
                }
                out.extend_from_slice(record.frame(&data));
                records += 1;
                if out.len() >= CHUNK {
                    self.write_chunk(tmp, &out)?;
                    bytes += out.len() as u64;
                    out.clear();
                }
            }
        }
        if !out.is_empty() {
            self.write_chunk(tmp, &out)?;
            bytes += out.len() as u64;
        }
        debug_assert_eq!(
            records,
            self.live.len() as u64,
            "every live record is in the log"
        );
        Ok((bytes, records))
    }

    fn write_chunk(&mut self, name: &str, data: &[u8]) -> Result<(), JournalError> {
        self.storage
            .append(name, data)
            .map_err(|e| JournalError::io("append", name, e))?;
        self.metrics.bytes_written += data.len() as u64;
        Ok(())
    }

    /// True when compaction is worth it: dead records in the segments
    /// older than the newest sealed one take more bytes than live ones, and
    /// at least [`JournalOptions::compact_min_garbage`]. That is garbage
    /// pinned by live records that outlived at least a whole segment of
    /// writes: removing whole dead segments cannot reclaim it. Garbage in
    /// the active and the newest sealed segment is left alone (in a FIFO
    /// log their live records die soon and the segments go without
    /// copying), so the log holds at most about two segments of it.
    pub fn should_compact(&self) -> bool {
        let garbage = self.pinned_garbage_bytes();
        garbage >= self.options.compact_min_garbage && garbage > self.live_bytes
    }

    /// Frame bytes of dead records in the segments before the newest sealed one.
    fn pinned_garbage_bytes(&self) -> u64 {
        let n = self.segments.len();
        if n < 3 {
            return 0;
        }
        let old = &self.segments[..n - 2];
        // The newest sealed segment is not the compacted one (that is always
        // the first), so its base id bounds the ids of every older record.
        let bound = self.segments[n - 2].base_id;
        let frames: u64 = old
            .iter()
            .map(|s| s.len.saturating_sub(HEADER_LEN as u64))
            .sum();
        let live: u64 = self.live.range(..bound).map(|(_, len)| len).sum();
        frames.saturating_sub(live)
    }

    /// Frame bytes of dead records still in the log or the buffer.
    pub fn garbage_bytes(&self) -> u64 {
        self.total_bytes - self.live_bytes
    }

    /// The highest record id known to be durable (fsynced), if any.
    pub fn durable_id(&self) -> Option<RecordId> {
        (self.durable_id > 0).then_some(RecordId(self.durable_id))
    }

    /// The highest record id handed to the storage (durable against a
    /// process crash, not necessarily against a power loss), if any.
    pub fn written_id(&self) -> Option<RecordId> {
        (self.written_id > 0).then_some(RecordId(self.written_id))
    }

    /// The id the next [`append`](Self::append) will return.
    pub fn next_id(&self) -> RecordId {
        RecordId(self.next_id)
    }

    /// Records appended but not yet written.
    pub fn buffered_records(&self) -> usize {
        self.pending_frames.len()
    }

    /// Number of live records.
    pub fn live_records(&self) -> usize {
        self.live.len()
    }

    /// The options the journal runs with.
    pub fn options(&self) -> &JournalOptions {
        &self.options
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> JournalMetrics {
        JournalMetrics {
            records_live: self.live.len() as u64,
            live_bytes: self.live_bytes,
            garbage_bytes: self.garbage_bytes(),
            segments: self.segments.len() as u64,
            ..self.metrics.clone()
        }
    }

    /// What opening the journal found and repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Why the journal is poisoned, if it is (see the
    /// [module docs](self#failure-semantics)).
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// The underlying storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Gives the storage back, dropping buffered (uncommitted) records.
    pub fn into_storage(self) -> S {
        self.storage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CrashMode, MemStorage, StorageOp};
    use std::time::Duration;

    fn options(durability: Durability) -> JournalOptions {
        JournalOptions {
            durability,
            segment_size: 128,
            write_buffer: 1 << 20,
            ..JournalOptions::default()
        }
    }

    fn data_of(records: &[Record]) -> Vec<Vec<u8>> {
        records.iter().map(|r| r.data.clone()).collect()
    }

    #[test]
    fn fresh_journal_is_created_durably() {
        let mut storage = MemStorage::new();
        let (journal, records) =
            Journal::open(storage.clone(), options(Durability::Always)).unwrap();
        assert!(records.is_empty());
        assert!(journal.recovery().created);
        assert_eq!(journal.durable_id(), None);
        assert_eq!(journal.next_id(), RecordId(1));
        drop(journal);
        storage.crash(CrashMode::DropUnsynced);
        assert_eq!(storage.files(), vec![segment_name(1)]);
    }

    #[test]
    fn group_commit_fsyncs_once_per_commit() {
        let storage = MemStorage::new();
        let (mut journal, _) = Journal::open(storage.clone(), options(Durability::Always)).unwrap();
        let before = journal.metrics();
        let ids: Vec<_> = (0..3u8).map(|i| journal.append(&[i]).unwrap()).collect();
        assert_eq!(ids, [RecordId(1), RecordId(2), RecordId(3)]);
        assert_eq!(journal.durable_id(), None);
        assert_eq!(journal.buffered_records(), 3);
        assert_eq!(journal.commit().unwrap(), Some(RecordId(3)));
        let after = journal.metrics();
        assert_eq!(after.fsyncs - before.fsyncs, 1);
        assert_eq!(after.commits, 1);
        assert_eq!(after.records_appended, 3);
        assert_eq!(after.records_live, 3);
        assert_eq!(after.fsync_latency.count(), 1);
        assert_eq!(
            after.bytes_written - before.bytes_written,
            3 * frame_len(1) as u64
        );
        // An empty commit neither writes nor counts.
        journal.commit().unwrap();
        assert_eq!(journal.metrics().commits, 1);
        assert_eq!(journal.metrics().fsyncs, after.fsyncs);
    }

    #[test]
    fn segments_roll_over_and_reopen_in_order() {
        let storage = MemStorage::new();
        let (mut journal, _) = Journal::open(storage.clone(), options(Durability::Always)).unwrap();
        let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 20]).collect();
        for p in &payloads {
            journal.append(p).unwrap();
        }
        journal.commit().unwrap();
        assert!(journal.metrics().segments > 3);
        // A record larger than a segment gets a segment of its own.
        journal.append(&[7; 300]).unwrap();
        journal.commit().unwrap();
        drop(journal);
        let (journal, records) =
            Journal::open(storage.clone(), options(Durability::Always)).unwrap();
        let mut expected = payloads.clone();
        expected.push(vec![7; 300]);
        assert_eq!(data_of(&records), expected);
        assert_eq!(journal.next_id(), RecordId(22));
        assert_eq!(journal.recovery().truncated_bytes, 0);
        for name in storage.files() {
            assert!(
                storage.file(&name).unwrap().len() <= 128
                    || name == segment_name(journal.metrics().segments)
            );
        }
    }

    #[test]
    fn durability_none_never_fsyncs_on_commit() {
        let mut storage = MemStorage::new();
        let (mut journal, _) = Journal::open(storage.clone(), options(Durability::None)).unwrap();
        let fsyncs = journal.metrics().fsyncs;
        journal.append(b"a").unwrap();
        assert_eq!(journal.commit().unwrap(), None);
        assert_eq!(journal.written_id(), Some(RecordId(1)));
        assert_eq!(journal.metrics().fsyncs, fsyncs);
        assert!(!journal.tick(Instant::now()).unwrap());
        // Written records survive a process crash (reopen without power loss)...
        drop(journal);
        let (journal, records) = Journal::open(storage.clone(), options(Durability::None)).unwrap();
        assert_eq!(records.len(), 1);
        drop(journal);
        // ...and recovery made them durable.
        storage.crash(CrashMode::DropUnsynced);
        let (mut journal, records) =
            Journal::open(storage.clone(), options(Durability::None)).unwrap();
        assert_eq!(records.len(), 1);
        // An explicit sync works under any policy.
        journal.append(b"b").unwrap();
        assert_eq!(journal.sync().unwrap(), Some(RecordId(2)));
    }

    #[test]
    fn interval_fsyncs_when_due() {
        let t0 = Instant::now();
        let d = Duration::from_millis(100);
        let storage = MemStorage::new();
        let (mut journal, _) = Journal::open(storage, options(Durability::Interval(d))).unwrap();
        assert_eq!(journal.next_sync_at(t0), None);
        assert!(!journal.tick(t0).unwrap(), "nothing to sync");
        journal.append(b"a").unwrap();
        assert!(!journal.tick(t0).unwrap(), "appended but not committed");
        assert_eq!(journal.commit().unwrap(), None);
        assert_eq!(journal.next_sync_at(t0), Some(t0));
        assert!(journal.tick(t0).unwrap(), "first sync is due at once");
        assert_eq!(journal.durable_id(), Some(RecordId(1)));
        journal.append(b"b").unwrap();
        journal.commit().unwrap();
        assert_eq!(journal.next_sync_at(t0 + d / 2), Some(t0 + d));
        assert!(!journal.tick(t0 + d / 2).unwrap());
        assert_eq!(journal.durable_id(), Some(RecordId(1)));
        assert!(journal.tick(t0 + d).unwrap());
        assert_eq!(journal.durable_id(), Some(RecordId(2)));
        assert!(!journal.tick(t0 + 3 * d).unwrap(), "clean");
    }

    #[test]
    fn invalid_options_are_rejected() {
        let bad = [
            JournalOptions {
                segment_size: 10,
                ..JournalOptions::default()
            },
            JournalOptions {
                max_record_len: u32::MAX,
                ..JournalOptions::default()
            },
            JournalOptions {
                durability: Durability::Interval(Duration::ZERO),
                ..JournalOptions::default()
            },
        ];
        for options in bad {
            assert!(matches!(
                Journal::open(MemStorage::new(), options),
                Err(JournalError::InvalidOptions(_))
            ));
        }
    }

    #[test]
    fn oversized_record_is_rejected() {
        let options = JournalOptions {
            max_record_len: 10,
            ..JournalOptions::default()
        };
        let (mut journal, _) = Journal::open(MemStorage::new(), options).unwrap();
        assert!(matches!(
            journal.append(&[0; 11]),
            Err(JournalError::RecordTooLarge { len: 11, max: 10 })
        ));
        journal.append(&[0; 10]).unwrap();
    }

    #[test]
    fn failed_write_is_rolled_back_and_retried() {
        let storage = MemStorage::new();
        let (mut journal, _) = Journal::open(storage.clone(), options(Durability::Always)).unwrap();
        journal.append(b"one").unwrap();
        journal.commit().unwrap();
        let len = storage.file(&segment_name(1)).unwrap().len();
        journal.append(b"two").unwrap();
        storage.fail(StorageOp::Append, 0);
        assert!(matches!(
            journal.commit(),
            Err(JournalError::Io { op: "append", .. })
        ));
        assert_eq!(journal.poisoned(), None);
        assert_eq!(
            storage.file(&segment_name(1)).unwrap().len(),
            len,
            "short write undone"
        );
        assert_eq!(journal.commit().unwrap(), Some(RecordId(2)));
        drop(journal);
        let (_, records) = Journal::open(storage, options(Durability::Always)).unwrap();
        assert_eq!(data_of(&records), [b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn failed_fsync_poisons() {
        let storage = MemStorage::new();
        let (mut journal, _) = Journal::open(storage.clone(), options(Durability::Always)).unwrap();
        journal.append(b"one").unwrap();
        storage.fail(StorageOp::Sync, 0);
        assert!(matches!(
            journal.commit(),
            Err(JournalError::Io { op: "sync", .. })
        ));
        assert!(journal.poisoned().is_some());
        assert!(matches!(
            journal.append(b"x"),
            Err(JournalError::Poisoned { .. })
        ));
        assert!(matches!(
            journal.commit(),
            Err(JournalError::Poisoned { .. })
        ));
        assert!(matches!(
            journal.compact(),
            Err(JournalError::Poisoned { .. })
        ));
        drop(journal);
        // Reopening recovers what reached the storage; MemStorage drops the
        // data a failed fsync was for, as a write-back error may.
        let (mut journal, records) = Journal::open(storage, options(Durability::Always)).unwrap();
        assert!(records.is_empty());
        assert_eq!(journal.durable_id(), None);
        journal.append(b"again").unwrap();
        assert_eq!(journal.commit().unwrap(), Some(RecordId(1)));
    }

    #[test]
    fn failed_append_through_does_not_add_the_record() {
        let storage = MemStorage::new();
        let opts = JournalOptions {
            write_buffer: 40,
            ..options(Durability::Always)
        };
        let (mut journal, _) = Journal::open(storage.clone(), opts.clone()).unwrap();
        journal.append(&[1; 10]).unwrap();
        storage.fail(StorageOp::Append, 0);
        assert!(journal.append(&[2; 10]).is_err());
        assert_eq!(journal.next_id(), RecordId(2));
        journal.append(&[3; 10]).unwrap();
        journal.commit().unwrap();
        drop(journal);
        let (_, records) = Journal::open(storage, opts).unwrap();
        assert_eq!(data_of(&records), [vec![1; 10], vec![3; 10]]);
        assert_eq!(records[1].id, RecordId(2));
    }

    #[test]
    fn compaction_keeps_live_records_only() {
        let storage = MemStorage::new();
        let opts = options(Durability::Always);
        let (mut journal, _) = Journal::open(storage.clone(), opts.clone()).unwrap();
        let ids: Vec<_> = (0..30u8)
            .map(|i| journal.append(&[i; 9]).unwrap())
            .collect();
        journal.commit().unwrap();
        for id in ids.iter().filter(|id| id.0 % 3 != 0) {
            assert!(journal.mark_dead(*id));
        }
        assert!(!journal.mark_dead(ids[1]), "already dead");
        assert!(journal.garbage_bytes() > 0);
        let segments_before = storage.files().len();
        assert!(segments_before > 1);
        let report = journal.compact().unwrap();
        assert_eq!(report.records, 10);
        assert_eq!(report.removed.len(), segments_before);
        assert_eq!(storage.files(), vec![report.file.clone()]);
        assert_eq!(journal.garbage_bytes(), 0);
        assert_eq!(journal.metrics().compactions, 1);
        // Appends continue after compaction, with fresh ids.
        assert_eq!(journal.append(b"after").unwrap(), RecordId(31));
        journal.commit().unwrap();
        drop(journal);
        let (journal, records) = Journal::open(storage, opts).unwrap();
        let ids: Vec<u64> = records.iter().map(|r| r.id.0).collect();
        assert_eq!(ids, [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31]);
        assert_eq!(journal.next_id(), RecordId(32));
    }

    #[test]
    fn ids_stay_monotonic_when_compaction_leaves_nothing() {
        let storage = MemStorage::new();
        let opts = options(Durability::Always);
        let (mut journal, _) = Journal::open(storage.clone(), opts.clone()).unwrap();
        for _ in 0..5 {
            let id = journal.append(b"x").unwrap();
            journal.mark_dead(id);
        }
        journal.compact().unwrap();
        drop(journal);
        let (mut journal, records) = Journal::open(storage, opts).unwrap();
        assert!(records.is_empty());
        assert_eq!(journal.append(b"y").unwrap(), RecordId(6));
    }

    #[test]
    fn should_compact_threshold() {
        let opts = JournalOptions {
            compact_min_garbage: 100,
            segment_size: 200,
            ..options(Durability::Always)
        };
        let (mut journal, _) = Journal::open(MemStorage::new(), opts).unwrap();
        let keep = journal.append(&[0; 50]).unwrap();
        assert!(!journal.should_compact());
        for _ in 0..10 {
            let id = journal.append(&[1; 10]).unwrap();
            journal.mark_dead(id);
        }
        // Garbage in the active (or newest sealed) segment does not count.
        assert!(!journal.should_compact());
        for _ in 0..20 {
            let id = journal.append(&[1; 10]).unwrap();
            journal.mark_dead(id);
            journal.commit().unwrap();
        }
        assert!(journal.metrics().segments > 1);
        // `keep` holds the first segment back: only compaction reclaims.
        assert_eq!(journal.metrics().segments_dropped, 0);
        assert!(journal.should_compact());
        journal.compact().unwrap();
        assert!(!journal.should_compact());
        assert!(journal.is_live(keep));
    }

    #[test]
    fn fully_dead_old_segments_are_dropped_without_copying() {
        for durability in [
            Durability::None,
            Durability::Interval(std::time::Duration::from_millis(1)),
            Durability::Always,
        ] {
            let opts = JournalOptions {
                segment_size: 200,
                ..options(durability)
            };
            let (mut journal, _) = Journal::open(MemStorage::new(), opts.clone()).unwrap();
            // A FIFO: each record dies once two later ones exist.
            let mut live = std::collections::VecDeque::new();
            for i in 0..100u8 {
                live.push_back(journal.append(&[i; 20]).unwrap());
                if live.len() > 2 {
                    journal.mark_dead(live.pop_front().unwrap());
                }
                journal.commit().unwrap();
                journal.tick(Instant::now()).unwrap();
            }
            journal.sync().unwrap();
            let m = journal.metrics();
            assert!(m.segments_dropped > 0, "{durability:?}: {m:?}");
            assert!(m.segments <= 3, "{durability:?}: {m:?}");
            assert_eq!(m.compactions, 0);
            assert!(!journal.should_compact());
            // Reopening finds exactly the live records (the rest are dead and
            // may or may not still be in the log).
            let storage = journal.into_storage();
            let (_, records) = Journal::open(storage, opts).unwrap();
            let ids: Vec<RecordId> = records.iter().map(|r| r.id).collect();
            for id in &live {
                assert!(ids.contains(id), "{durability:?}: {id:?} lost");
            }
            assert!(records.len() < 100);
        }
    }
}
