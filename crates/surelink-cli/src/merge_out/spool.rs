//! The spool of one sender's session under `recv --merge --state`: every
//! message the session delivers, with its send time and error bound, in an
//! append-only file that the merge reads.
//!
//! [`SpoolSink`] is the session's [`DurableSink`]: the durable receiver
//! writes each message to it and checkpoints its length with the session's
//! watermark, so the sender is told a message is safe only once it is
//! spooled. When a checkpoint is committed the sink publishes its position
//! ([`SpoolProgress`]) and wakes the merge, which reads records up to that
//! position and never beyond ([`read_records`]): what it reads is never
//! undone by a restart (a restart cuts the spool back to its last
//! checkpoint only).
//!
//! Layout: an 8-byte header (`SLSPOOL1`), then one record per message; all
//! integers big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | the message's id in the session |
//! | 8 | its send time on this host's clock, µs since the Unix epoch |
//! | 8 | when it arrived, µs since the Unix epoch |
//! | 4 | error bound of the send time, µs (`0xffffffff`: no clock estimate) |
//! | 4 | message length |
//!
//! followed by the message. Positions (the sink's and the merge's cursors)
//! count from the end of the header.
//!
//! Records the merge is done with are freed in place ([`trim`]): a hole is
//! punched over them (Linux `fallocate(PUNCH_HOLE)`), which keeps the file's
//! length and so every position; the merge never reads below its cursor.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use surelink::Bytes;
use surelink_session::{AppendFile, Delivery, DurableSink};

use super::UNKNOWN_BOUND;
use tokio::sync::Notify;

/// The spool file's magic bytes.
const MAGIC: &[u8; 8] = b"SLSPOOL1";
/// Length of the spool file's header.
pub const HEADER_LEN: u64 = 8;
/// Length of a record's header.
pub const RECORD_HEADER_LEN: usize = 32;

/// One spooled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    /// Where the record starts (after the header).
    pub offset: u64,
    /// The message's id in its session.
    pub id: u64,
    /// Its send time on this host's clock, µs since the Unix epoch.
    pub time_us: u64,
    /// When it arrived, µs since the Unix epoch.
    pub arrived_us: u64,
    /// The error bound of `time_us`, µs ([`UNKNOWN_BOUND`]: none).
    pub error_bound_us: u32,
    /// The message.
    pub data: Bytes,
}

/// How far a spool's checkpoints reach, shared by its sink (which moves it
/// when a checkpoint is committed) and the merge (which reads up to it).
#[derive(Debug)]
pub struct SpoolProgress {
    committed: AtomicU64,
    wake: Arc<Notify>,
}

impl SpoolProgress {
    /// A spool with nothing committed; `wake` is notified when that changes.
    pub fn new(wake: Arc<Notify>) -> Arc<Self> {
        Arc::new(SpoolProgress {
            committed: AtomicU64::new(0),
            wake,
        })
    }

    /// The position the last committed checkpoint covers.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Records a committed checkpoint at `position` and wakes the merge.
    pub fn set(&self, position: u64) {
        self.committed.store(position, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The spool as a session's sink; see the [module docs](self).
#[derive(Debug)]
pub struct SpoolSink {
    /// The records, after the header.
    file: AppendFile,
    progress: Arc<SpoolProgress>,
}

impl SpoolSink {
    /// Opens the spool at `path`, or creates it.
    pub fn open(path: &Path, progress: Arc<SpoolProgress>) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < HEADER_LEN {
            // New, or created by a crash before its header was whole.
            file.set_len(0)?;
            file.write_all(MAGIC)?;
            file.sync_all()?;
        } else {
            read_header(&mut file, path)?;
        }
        Ok(SpoolSink {
            file: AppendFile::new(file, path.to_path_buf(), HEADER_LEN)?,
            progress,
        })
    }
}

/// Reads and checks a spool's header.
fn read_header(file: &mut File, path: &Path) -> io::Result<()> {
    let mut header = [0u8; HEADER_LEN as usize];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut header)?;
    if &header != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a merge spool", path.display()),
        ));
    }
    Ok(())
}

impl DurableSink for SpoolSink {
    fn write(&mut self, channel: u64, _data: &[u8]) -> io::Result<()> {
        // The receiver always calls write_delivery; a bare write has no id.
        Err(io::Error::other(format!(
            "a message of channel {channel} without its delivery details"
        )))
    }

    fn write_delivery(&mut self, delivery: &Delivery, data: &[u8]) -> io::Result<()> {
        let len = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message over 4 GiB"))?;
        let bound = delivery.error_bound_us.map_or(UNKNOWN_BOUND, |b| {
            u32::try_from(b).unwrap_or(UNKNOWN_BOUND - 1)
        });
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[..8].copy_from_slice(&delivery.id.to_be_bytes());
        header[8..16].copy_from_slice(&delivery.source_time_us.to_be_bytes());
        header[16..24].copy_from_slice(&delivery.arrived_us.to_be_bytes());
        header[24..28].copy_from_slice(&bound.to_be_bytes());
        header[28..32].copy_from_slice(&len.to_be_bytes());
        self.file.append(&header)?;
        self.file.append(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync()
    }

    fn position(&self) -> u64 {
        self.file.position()
    }

    fn restore(&mut self, position: u64) -> io::Result<()> {
        self.file.restore(position)
    }

    fn committed(&mut self, position: u64) {
        self.progress.set(position);
    }

    fn describe(&self) -> String {
        self.file.path().display().to_string()
    }
}

/// Reads the records of the spool at `path` from position `from` up to
/// `to` (a committed position: a record boundary). A record that does not
/// parse, or crosses `to`, means the spool was damaged: an error naming it.
pub fn read_records(path: &Path, from: u64, to: u64) -> io::Result<Vec<SpoolRecord>> {
    let mut records = Vec::new();
    if from >= to {
        return Ok(records);
    }
    let mut file = File::open(path)?;
    read_header(&mut file, path)?;
    file.seek(SeekFrom::Start(HEADER_LEN + from))?;
    let mut reader = BufReader::new(file.take(to - from));
    let mut offset = from;
    let damaged = |offset: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is damaged: no whole record at byte {} before its checkpointed end {}",
                path.display(),
                HEADER_LEN + offset,
                HEADER_LEN + to
            ),
        )
    };
    while offset < to {
        let mut header = [0u8; RECORD_HEADER_LEN];
        reader
            .read_exact(&mut header)
            .map_err(|_| damaged(offset))?;
        let field = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let word = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let len = word(28) as usize;
        if (RECORD_HEADER_LEN + len) as u64 > to - offset {
            return Err(damaged(offset));
        }
        let mut data = vec![0u8; len];
        reader.read_exact(&mut data).map_err(|_| damaged(offset))?;
        records.push(SpoolRecord {
            offset,
            id: field(0),
            time_us: field(8),
            arrived_us: field(16),
            error_bound_us: word(24),
            data: Bytes::from(data),
        });
        offset += (RECORD_HEADER_LEN + len) as u64;
    }
    Ok(records)
}

/// Frees the disk space of the records between positions `from` and `to`
/// of the spool at `path` (the merge has journaled a cursor at or after
/// `to`), keeping the file's length and every position. A file system that
/// cannot punch holes (or another system than Linux) keeps the bytes: the
/// spool then goes only with its session.
pub fn trim(path: &Path, from: u64, to: u64) -> io::Result<()> {
    if from >= to {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{fallocate, FallocateFlags};
        let file = OpenOptions::new().write(true).open(path)?;
        let offset = i64::try_from(HEADER_LEN + from).map_err(io::Error::other)?;
        let len = i64::try_from(to - from).map_err(io::Error::other)?;
        fallocate(
            &file,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .map_err(io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: u64) -> Delivery {
        Delivery {
            channel: 0,
            id,
            source_time_us: 1_000 + id,
            arrived_us: 2_000 + id,
            error_bound_us: Some(7),
        }
    }

    #[test]
    fn a_spool_reads_back_what_was_committed_and_restores_to_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let wake = Arc::new(Notify::new());
        let progress = SpoolProgress::new(wake);
        let mut sink = SpoolSink::open(&path, progress.clone()).unwrap();
        sink.write_delivery(&delivery(0), b"abc").unwrap();
        sink.write_delivery(&delivery(1), b"").unwrap();
        sink.flush().unwrap();
        let checkpoint = sink.position();
        sink.committed(checkpoint);
        assert_eq!(progress.committed(), checkpoint);
        sink.write_delivery(&delivery(2), b"lost in a crash")
            .unwrap();
        sink.flush().unwrap();
        drop(sink);

        let records = read_records(&path, 0, checkpoint).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].offset, records[0].id, records[0].time_us),
            (0, 0, 1_000)
        );
        assert_eq!(&records[0].data[..], b"abc");
        assert_eq!((records[1].offset, records[1].id), (35, 1));
        assert_eq!(read_records(&path, 35, checkpoint).unwrap().len(), 1);
        // A limit inside a record is damage, not a short read.
        let err = read_records(&path, 0, checkpoint - 1).unwrap_err();
        assert!(err.to_string().contains("is damaged"), "{err}");

        // Reopened and restored to the checkpoint: the tail goes.
        let mut sink = SpoolSink::open(&path, SpoolProgress::new(Arc::default())).unwrap();
        sink.restore(checkpoint).unwrap();
        assert_eq!(sink.position(), checkpoint);
        assert!(sink.restore(checkpoint + 1).is_err());
        std::fs::write(&path, b"not a spool at all").unwrap();
        let err = SpoolSink::open(&path, SpoolProgress::new(Arc::default())).unwrap_err();
        assert!(err.to_string().contains("not a merge spool"), "{err}");
    }
}
