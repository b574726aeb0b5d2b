//! Opening a journal directory: finding the live segments, validating every
//! record, repairing a torn tail and reporting what was done.
//!
//! The procedure, in order:
//!
//! 1. Leftover compaction files (`*.log.tmp`) are removed: a compaction that
//!    did not reach its rename never happened.
//! 2. The highest-numbered segment whose header carries the `COMPACTED` flag
//!    supersedes every lower-numbered segment; those are removed (finishing
//!    a compaction that crashed after its rename).
//! 3. Every remaining segment is scanned in order. Any defect in a segment
//!    other than the last, or in the middle of the last, is
//!    [`JournalError::Corrupt`]. A torn tail of the last segment (see
//!    [`format`](mod@crate::format)) is truncated; a torn header of the last
//!    segment (a crash right after rollover created it) is rewritten.
//! 4. The last segment and the directory are fsynced, so the state handed
//!    back is durable whatever policy the journal runs with.

use crate::error::{CorruptReason, JournalError};
use crate::format::{
    is_tmp_name, parse_segment_name, scan_segment, segment_name, SegmentHeader, TailPolicy,
    HEADER_LEN,
};
use crate::record::{Record, RecordId};
use crate::storage::Storage;

/// A torn tail that was found and truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub file: String,
    /// Offset the file was truncated to.
    pub offset: u64,
    /// Bytes cut off.
    pub bytes: u64,
    /// What the damaged frame (or header) looked like.
    pub reason: CorruptReason,
}

/// What opening the journal found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files in the log after recovery.
    pub segments: usize,
    /// Records recovered.
    pub records: u64,
    /// Bytes truncated from a torn tail (0 if the log was clean).
    pub truncated_bytes: u64,
    /// The torn tail, if one was truncated.
    pub torn_tail: Option<TornTail>,
    /// Files removed: leftover compaction files and segments superseded by a
    /// compacted segment.
    pub removed_files: Vec<String>,
    /// True if the directory held no segment and a fresh log was created.
    pub created: bool,
}

/// The state of one segment as the journal tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentState {
    pub number: u64,
    pub name: String,
    /// Bytes in the file (header included).
    pub len: u64,
    /// Records in the file.
    pub records: u64,
    /// The header's base id: in a segment that is not compacted, every
    /// record has an id at least this, and every record of an earlier
    /// segment a lower one.
    pub base_id: u64,
}

/// Everything `Journal::open` needs.
pub(crate) struct Recovered {
    pub segments: Vec<SegmentState>,
    pub records: Vec<Record>,
    pub next_id: u64,
    pub report: RecoveryReport,
    /// Bytes handed to the storage and fsyncs done by the recovery itself.
    pub bytes_written: u64,
    pub fsyncs: u64,
    pub dir_syncs: u64,
}

fn io<'a>(op: &'static str, file: &'a str) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |e| JournalError::io(op, file, e)
}

pub(crate) fn recover<S: Storage>(storage: &mut S) -> Result<Recovered, JournalError> {
    let mut report = RecoveryReport::default();
    let mut bytes_written = 0u64;
    let mut fsyncs = 0u64;
    let mut dir_syncs = 0u64;

    let names = storage.list().map_err(io("list", ""))?;
    let mut numbers: Vec<u64> = Vec::new();
    for name in &names {
        if let Some(number) = parse_segment_name(name) {
            numbers.push(number);
        } else if is_tmp_name(name) {
            storage.remove(name).map_err(io("remove", name))?;
            report.removed_files.push(name.clone());
        }
    }
    numbers.sort_unstable();

    if numbers.is_empty() {
        let name = segment_name(1);
        let header = SegmentHeader {
            flags: 0,
            base_id: 1,
        }
        .encode();
        storage.create(&name).map_err(io("create", &name))?;
        storage
            .append(&name, &header)
            .map_err(io("append", &name))?;
        storage.sync(&name).map_err(io("sync", &name))?;
        storage.sync_dir().map_err(io("sync_dir", ""))?;
        report.segments = 1;
        report.created = true;
        return Ok(Recovered {
            segments: vec![SegmentState {
                number: 1,
                name,
                len: HEADER_LEN as u64,
                records: 0,
                base_id: 1,
            }],
            records: Vec::new(),
            next_id: 1,
            report,
            bytes_written: HEADER_LEN as u64,
            fsyncs: 1,
            dir_syncs: 1,
        });
    }

    // 2. The newest compacted segment supersedes everything below it.
    let last_number = *numbers.last().expect("not empty");
    let mut base_index = 0;
    for (index, &number) in numbers.iter().enumerate().rev() {
        let name = segment_name(number);
        let mut buf = [0u8; HEADER_LEN];
        let n = storage
            .read_at(&name, 0, &mut buf)
            .map_err(io("read", &name))?;
        match SegmentHeader::decode(&buf[..n]) {
            Ok(header) if header.is_compacted() => {
                base_index = index;
                break;
            }
            Ok(_) => {}
            // A damaged header of the last segment is judged by the scan
            // below (torn or corrupt); lower ones are corrupt.
            Err(_) if number == last_number => {}
            Err(reason) => {
                return Err(JournalError::Corrupt {
                    file: name,
                    offset: 0,
                    reason,
                })
            }
        }
    }
    if base_index > 0 {
        for &number in &numbers[..base_index] {
            let name = segment_name(number);
            storage.remove(&name).map_err(io("remove", &name))?;
            report.removed_files.push(name);
        }
    }
    let numbers = &numbers[base_index..];

    // 3. Scan.
    let mut segments = Vec::with_capacity(numbers.len());
    let mut records = Vec::new();
    let mut previous_id: Option<u64> = None;
    let mut next_id = 1u64;
    for (index, &number) in numbers.iter().enumerate() {
        let name = segment_name(number);
        let is_last = index + 1 == numbers.len();
        let data = storage.read_all(&name).map_err(io("read", &name))?;
        let policy = if is_last {
            TailPolicy::RepairTorn
        } else {
            TailPolicy::Strict
        };
        let scan = scan_segment(&name, &data, previous_id, policy)?;
        for scanned in &scan.records {
            records.push(Record {
                id: RecordId(scanned.id),
                data: scanned.data(&data).to_vec(),
                segment: number,
                offset: scanned.offset as u64,
            });
        }
        if let Some(last) = scan.records.last() {
            previous_id = Some(last.id);
            next_id = next_id.max(last.id + 1);
        }
        let mut len = scan.valid_len as u64;
        let base_id = scan.header.map_or(next_id, |h| h.base_id);
        match scan.header {
            Some(header) => next_id = next_id.max(header.base_id),
            None => {
                // Torn header of the last segment: rewrite it.
                let header = SegmentHeader {
                    flags: 0,
                    base_id: next_id,
                }
                .encode();
                storage.truncate(&name, 0).map_err(io("truncate", &name))?;
                storage
                    .append(&name, &header)
                    .map_err(io("append", &name))?;
                bytes_written += HEADER_LEN as u64;
                len = HEADER_LEN as u64;
            }
        }
        if let Some(reason) = scan.torn {
            let bytes = data.len() as u64 - scan.valid_len as u64;
            if scan.header.is_some() {
                storage
                    .truncate(&name, scan.valid_len as u64)
                    .map_err(io("truncate", &name))?;
            }
            report.truncated_bytes += bytes;
            report.torn_tail = Some(TornTail {
                file: name.clone(),
                offset: scan.valid_len as u64,
                bytes,
                reason,
            });
        }
        segments.push(SegmentState {
            number,
            name,
            len,
            records: scan.records.len() as u64,
            base_id,
        });
    }

    // 4. Make what we hand back durable.
    let last = segments.last().expect("at least one segment");
    storage.sync(&last.name).map_err(io("sync", &last.name))?;
    fsyncs += 1;
    storage.sync_dir().map_err(io("sync_dir", ""))?;
    dir_syncs += 1;

    report.segments = segments.len();
    report.records = records.len() as u64;
    Ok(Recovered {
        segments,
        records,
        next_id,
        report,
        bytes_written,
        fsyncs,
        dir_syncs,
    })
}
