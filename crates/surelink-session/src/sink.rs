//! [`DurableSink`]: where a [`DurableReceiver`](super::DurableReceiver)
//! puts the messages it delivers, and [`FileSink`], an append-only file.
//!
//! "Exactly once" at the receiver means: the effect of a message (bytes in a
//! file, a row in a table) and the watermark that says it was delivered are
//! made durable *together*. The receiver records the sink's
//! [`position`](DurableSink::position) in the same journal record as the
//! watermarks; after a crash it calls [`restore`](DurableSink::restore) with
//! the recorded position, which must undo whatever was written after it (a
//! file is truncated). Messages after the checkpoint are then delivered again,
//! once.
//!
//! A sink that needs more than the bytes (a spool that keeps each message's
//! send time for a time-ordered merge) overrides
//! [`write_delivery`](DurableSink::write_delivery), which gets the message's
//! [`Delivery`]; one that acts on what is durable (a reader that may consume
//! only checkpointed data) overrides [`committed`](DurableSink::committed).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What the receiver knows of a message it hands to a sink, beyond its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The channel it was sent on.
    pub channel: u64,
    /// Its message id in the session on that channel (from 0; stable across
    /// connections and restarts).
    pub id: u64,
    /// When it was sent, on this host's clock (µs since the Unix epoch),
    /// through the connection's clock estimate (`Message::source_time_us`).
    /// A message re-sent on a new connection carries the time of that send.
    pub source_time_us: u64,
    /// When it arrived, on this host's clock (µs since the Unix epoch).
    pub arrived_us: u64,
    /// The clock estimate's error bound on `source_time_us`, µs; `None`
    /// while the connection has no clock estimate yet.
    pub error_bound_us: Option<u64>,
}

/// The receiver's output, with a position that can be restored.
///
/// The order of calls at a checkpoint is [`flush`](Self::flush), then (when
/// the durability policy asks for it) [`sync`](Self::sync), then the journal
/// record with [`position`](Self::position) is written. A sink that cannot
/// undo writes (a socket) gives at-least-once delivery after a crash, not
/// exactly-once.
pub trait DurableSink: Send {
    /// Delivers one message's bytes (received on `channel`).
    fn write(&mut self, channel: u64, data: &[u8]) -> io::Result<()>;
    /// Delivers one message: its bytes and what the receiver knows of it.
    /// By default, [`write`](Self::write) of its bytes.
    fn write_delivery(&mut self, delivery: &Delivery, data: &[u8]) -> io::Result<()> {
        self.write(delivery.channel, data)
    }
    /// Hands everything written to the OS (a process crash must not lose it
    /// from here on).
    fn flush(&mut self) -> io::Result<()>;
    /// Makes everything written durable on stable storage (`fsync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Where the sink stands: recorded with the watermarks at each
    /// checkpoint. For a file, its length.
    fn position(&self) -> u64;
    /// Goes back to a recorded position, undoing everything written after
    /// it. Called when the receiver opens its state and when a first session
    /// starts (position 0). An error if the sink is *behind* `position` (it
    /// lost data the checkpoint covers).
    fn restore(&mut self, position: u64) -> io::Result<()>;
    /// The checkpoint recording `position` is committed to the receiver's
    /// store (see [`ReceiverStore::commit`](crate::ReceiverStore::commit)):
    /// everything up to it survives a crash and is never undone by a
    /// [`restore`](Self::restore). Nothing by default.
    fn committed(&mut self, position: u64) {
        let _ = position;
    }
    /// What the sink is, for error messages (`out.bin`); "the output" by default.
    fn describe(&self) -> String {
        "the output".to_owned()
    }
}

/// A file that messages are appended to; its length is the position.
///
/// Opening does not truncate: the receiver restores it to the checkpointed
/// length (cutting off bytes written after the last checkpoint) or, for a
/// first session, to zero.
#[derive(Debug)]
pub struct FileSink {
    file: AppendFile,
}

impl FileSink {
    /// Opens (or creates) `path` without truncating it.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        Ok(FileSink {
            file: AppendFile::new(file, path, 0)?,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl DurableSink for FileSink {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn write(&mut self, _channel: u64, data: &[u8]) -> io::Result<()> {
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
}

/// Bytes collected before a write to an [`AppendFile`].
const APPEND_BUFFER: usize = 1 << 20;

/// An append-only file written through a buffer, whose position is its
/// length after a fixed-size header: the storage of file sinks ([`FileSink`],
/// a spool of records). Positions count from the end of the header.
#[derive(Debug)]
pub struct AppendFile {
    file: File,
    path: PathBuf,
    /// Length of the header before the first position.
    header_len: u64,
    /// Bytes written to the file after the header.
    written: u64,
    /// Bytes accepted but not yet written.
    buffer: Vec<u8>,
}

impl AppendFile {
    /// Appends to `file` (opened for reading and writing, found at `path`),
    /// after its first `header_len` bytes and what follows them.
    pub fn new(mut file: File, path: PathBuf, header_len: u64) -> io::Result<Self> {
        let written = file.seek(SeekFrom::End(0))?.saturating_sub(header_len);
        Ok(AppendFile {
            file,
            path,
            header_len,
            written,
            buffer: Vec::new(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `data` (buffered; a large write goes straight to the file).
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.buffer.len() + data.len() > APPEND_BUFFER {
            self.flush()?;
        }
        if data.len() >= APPEND_BUFFER {
            self.file.write_all(data)?;
            self.written += data.len() as u64;
        } else {
            self.buffer.extend_from_slice(data);
        }
        Ok(())
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            self.file.write_all(&self.buffer)?;
            self.written += self.buffer.len() as u64;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Writes what is buffered and makes it durable (`fdatasync`).
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_data()
    }

    /// Bytes appended after the header, buffered ones included.
    pub fn position(&self) -> u64 {
        self.written + self.buffer.len() as u64
    }

    /// Cuts the file back to `position` (dropping what is buffered); an
    /// error if it holds less than that.
    pub fn restore(&mut self, position: u64) -> io::Result<()> {
        self.buffer.clear();
        let len = self.file.metadata()?.len().saturating_sub(self.header_len);
        if len < position {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds {len} bytes, fewer than the {position} bytes its checkpoint \
                     covers: it was modified, or lost writes in a power failure",
                    self.path.display()
                ),
            ));
        }
        if len > position {
            self.file.set_len(self.header_len + position)?;
        }
        self.file
            .seek(SeekFrom::Start(self.header_len + position))?;
        self.written = position;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_appends_and_restores() {
        let dir = std::env::temp_dir().join(format!("surelink-filesink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        std::fs::write(&path, b"old contents").unwrap();
        let mut sink = FileSink::open(&path).unwrap();
        assert_eq!(sink.position(), 12);
        sink.restore(0).unwrap();
        sink.write(0, b"hello ").unwrap();
        sink.write(0, b"world").unwrap();
        assert_eq!(sink.position(), 11);
        sink.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        drop(sink);

        let mut sink = FileSink::open(&path).unwrap();
        sink.restore(5).unwrap();
        sink.write(0, b"!").unwrap();
        sink.sync().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello!");
        let err = sink.restore(100).unwrap_err();
        assert!(
            err.to_string()
                .contains("fewer than the 100 bytes its checkpoint covers"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
