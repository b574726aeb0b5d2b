//! The storage the journal lives on, behind the [`Storage`] trait.
//!
//! A storage is one flat directory of named files. The journal only ever
//! appends to files, reads them back, truncates a torn tail, renames a
//! finished compaction file into place and removes superseded files; the
//! trait offers exactly that, plus the two barriers a crash-safe log needs:
//! [`Storage::sync`] (make a file's data durable) and [`Storage::sync_dir`]
//! (make creations, renames and removals durable).
//!
//! Two implementations ship with the crate:
//!
//! * [`FsStorage`]: real files in a directory (`std::fs`).
//! * [`MemStorage`]: an in-memory directory for tests that models exactly
//!   what survives a crash (only synced data and synced directory
//!   operations, optionally plus a random prefix of what was not synced) and
//!   injects I/O errors and a full disk on demand.

use std::io;

mod fs;
mod mem;

pub use fs::FsStorage;
pub use mem::{CrashMode, MemStorage, StorageOp};

/// A flat directory of files, as the journal needs it.
///
/// Names are plain file names (no separators). Data written by
/// [`append`](Storage::append) is visible to reads at once but survives a
/// crash only after [`sync`](Storage::sync); a created, renamed or removed
/// name survives a crash only after [`sync_dir`](Storage::sync_dir).
pub trait Storage {
    /// Names of all files in the directory, in any order.
    fn list(&mut self) -> io::Result<Vec<String>>;

    /// Creates an empty file, truncating it if it exists.
    fn create(&mut self, name: &str) -> io::Result<()>;

    /// Current length of a file in bytes.
    fn file_len(&mut self, name: &str) -> io::Result<u64>;

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (0 at the end of the file).
    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Appends all of `data` at the end of a file. On error a prefix of
    /// `data` may have been written.
    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()>;

    /// Makes the data (and length) of a file durable.
    fn sync(&mut self, name: &str) -> io::Result<()>;

    /// Cuts a file to `len` bytes.
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;

    /// Renames a file, atomically replacing `to` if it exists.
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;

    /// Removes a file.
    fn remove(&mut self, name: &str) -> io::Result<()>;

    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&mut self) -> io::Result<()>;

    /// Reads a whole file.
    fn read_all(&mut self, name: &str) -> io::Result<Vec<u8>> {
        let len = self.file_len(name)?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            let n = self.read_at(name, filled as u64, &mut buf[filled..])?;
            if n == 0 {
                buf.truncate(filled);
                break;
            }
            filled += n;
        }
        Ok(buf)
    }
}

impl<S: Storage + ?Sized> Storage for Box<S> {
    fn list(&mut self) -> io::Result<Vec<String>> {
        (**self).list()
    }
    fn create(&mut self, name: &str) -> io::Result<()> {
        (**self).create(name)
    }
    fn file_len(&mut self, name: &str) -> io::Result<u64> {
        (**self).file_len(name)
    }
    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(name, offset, buf)
    }
    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        (**self).append(name, data)
    }
    fn sync(&mut self, name: &str) -> io::Result<()> {
        (**self).sync(name)
    }
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        (**self).truncate(name, len)
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        (**self).rename(from, to)
    }
    fn remove(&mut self, name: &str) -> io::Result<()> {
        (**self).remove(name)
    }
    fn sync_dir(&mut self) -> io::Result<()> {
        (**self).sync_dir()
    }
    fn read_all(&mut self, name: &str) -> io::Result<Vec<u8>> {
        (**self).read_all(name)
    }
}

/// Rejects names that are not plain file names.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a plain file name: {name:?}"),
        ));
    }
    Ok(())
}
