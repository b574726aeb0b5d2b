//! Replayable outboxes: a sender whose input can be read again journals
//! where each unconfirmed message lies in it, not the message's bytes.
//!
//! By default a [`DurableSender`](crate::DurableSender) copies every
//! message into its journal until the receiver confirms it, because input
//! such as stdin or a UDP socket cannot be read twice. When the input is
//! replayable (a file), [`DurableSender::open_with_source`] takes a
//! [`ReplaySource`] instead: each outbox record is a reference (the
//! message's end offset in the source, its length and its CRC-32C, 16
//! bytes), and the bytes of the messages re-sent after a reconnection or a
//! restart are read again from the source.
//!
//! Wrong bytes must never be sent as if they were the session's: the
//! session record keeps the source's [`SourceIdentity`] (length,
//! modification time, CRC-32C of its first and last [`IDENTITY_BLOCK`]
//! bytes) and the sender compares it with the source's current identity
//! when it opens and before every replay, and every message read again must
//! match its CRC. Either check failing is
//! [`SessionError::SourceChanged`](crate::SessionError::SourceChanged) /
//! [`SessionError::SourceBytesChanged`](crate::SessionError::SourceBytesChanged),
//! and nothing is sent.
//!
//! [`DurableSender::open_with_source`]: crate::DurableSender::open_with_source

use std::fmt;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;

/// Bytes at each end of a source that its [`SourceIdentity`] checksums.
pub const IDENTITY_BLOCK: u64 = 64 << 10;

/// Input a durable sender can read again: the bytes of a message are the
/// source's bytes ending at the message's cursor (so the application's
/// cursor must be the source offset after the message, as
/// `surelink send --in FILE` does).
pub trait ReplaySource: Send + fmt::Debug {
    /// What the source is now: compared with the identity recorded when the
    /// session started, to refuse a source that changed.
    fn identity(&mut self) -> io::Result<SourceIdentity>;

    /// Reads exactly `len` bytes at `offset`.
    fn read_at(&mut self, offset: u64, len: usize) -> io::Result<Bytes>;
}

/// What identifies the content of a [`ReplaySource`]: if any of it differs
/// from when the session started, the source changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceIdentity {
    /// Its length in bytes.
    pub len: u64,
    /// Its modification time in ns since the Unix epoch (0 if unknown).
    pub modified_ns: u64,
    /// CRC-32C of its first `min(len, IDENTITY_BLOCK)` bytes.
    pub head_crc: u32,
    /// CRC-32C of its last `min(len, IDENTITY_BLOCK)` bytes.
    pub tail_crc: u32,
}

impl SourceIdentity {
    /// Encoded length.
    pub(crate) const LEN: usize = 8 + 8 + 4 + 4;

    /// Little-endian: len, modified_ns, head_crc, tail_crc.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.modified_ns.to_le_bytes());
        out.extend_from_slice(&self.head_crc.to_le_bytes());
        out.extend_from_slice(&self.tail_crc.to_le_bytes());
    }

    /// Decodes [`LEN`](Self::LEN) bytes.
    pub(crate) fn decode(b: &[u8; Self::LEN]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        SourceIdentity {
            len: u64_at(0),
            modified_ns: u64_at(8),
            head_crc: u32_at(16),
            tail_crc: u32_at(20),
        }
    }
}

impl fmt::Display for SourceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes, modified at {} ns, first/last block CRC {:08x}/{:08x}",
            self.len, self.modified_ns, self.head_crc, self.tail_crc
        )
    }
}

/// One message of a replayable outbox, as journalled: where its bytes lie
/// in the source and their checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplayRef {
    /// The message's cursor: the source offset after its bytes.
    pub cursor: u64,
    /// Its length.
    pub len: u32,
    /// CRC-32C of its bytes.
    pub crc: u32,
}

impl ReplayRef {
    /// Encoded length (the cursor first, like a copied message's payload).
    pub(crate) const LEN: usize = 8 + 4 + 4;

    /// The reference to `data`, which ends at `cursor` in the source.
    pub(crate) fn of(cursor: u64, data: &[u8]) -> Self {
        ReplayRef {
            cursor,
            len: data.len() as u32,
            crc: crc32c::crc32c(data),
        }
    }

    /// The offset of the message's first byte.
    pub(crate) fn offset(&self) -> Option<u64> {
        self.cursor.checked_sub(u64::from(self.len))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&self.cursor.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// Decodes an outbox payload; `Err` says what is wrong.
    pub(crate) fn decode(payload: &[u8]) -> Result<Self, String> {
        let b: &[u8; Self::LEN] = payload.try_into().map_err(|_| {
            format!(
                "an outbox record of {} bytes where a reference to the input ({} bytes) was expected",
                payload.len(),
                Self::LEN
            )
        })?;
        let r = ReplayRef {
            cursor: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            crc: u32::from_le_bytes(b[12..].try_into().expect("4 bytes")),
        };
        if r.offset().is_none() {
            return Err(format!(
                "an outbox reference of {} bytes ending at offset {}",
                r.len, r.cursor
            ));
        }
        Ok(r)
    }
}

/// A file as a [`ReplaySource`].
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
}

impl FileSource {
    /// Opens `path` for reading.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path)?;
        Ok(FileSource { file, path })
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn crc_of(&mut self, offset: u64, len: u64) -> io::Result<u32> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        Ok(crc32c::crc32c(&self.read_at(offset, len)?))
    }
}

impl ReplaySource for FileSource {
    fn identity(&mut self) -> io::Result<SourceIdentity> {
        let meta = self.file.metadata()?;
        let len = meta.len();
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let block = len.min(IDENTITY_BLOCK);
        Ok(SourceIdentity {
            len,
            modified_ns,
            head_crc: self.crc_of(0, block)?,
            tail_crc: self.crc_of(len - block, block)?,
        })
    }

    fn read_at(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        self.file.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0; len];
        self.file.read_exact(&mut buf)?;
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn references_round_trip_and_damage_is_refused() {
        let r = ReplayRef::of(1000, b"hello");
        assert_eq!(r.offset(), Some(995));
        let bytes = r.encode();
        assert_eq!(bytes.len(), ReplayRef::LEN);
        assert_eq!(&bytes[..8], &1000u64.to_le_bytes(), "the cursor leads");
        assert_eq!(ReplayRef::decode(&bytes), Ok(r));
        for cut in 0..bytes.len() {
            assert!(ReplayRef::decode(&bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(ReplayRef::decode(&long).is_err());
        // A message longer than the input before its end.
        let impossible = ReplayRef {
            cursor: 3,
            len: 4,
            crc: 0,
        };
        assert!(ReplayRef::decode(&impossible.encode()).is_err());
    }

    #[test]
    fn identities_round_trip() {
        let id = SourceIdentity {
            len: 1 << 40,
            modified_ns: 1_700_000_000_123_456_789,
            head_crc: 0xdead_beef,
            tail_crc: 7,
        };
        let mut out = Vec::new();
        id.encode(&mut out);
        assert_eq!(SourceIdentity::decode(&out[..].try_into().unwrap()), id);
    }

    #[test]
    fn a_file_reads_back_and_its_identity_follows_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.bin");
        let data: Vec<u8> = (0..3 * IDENTITY_BLOCK as usize)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let mut source = FileSource::open(&path).unwrap();
        assert_eq!(&source.read_at(100, 5).unwrap()[..], &data[100..105]);
        assert!(source.read_at(data.len() as u64 - 2, 5).is_err());
        let before = source.identity().unwrap();
        assert_eq!(before.len, data.len() as u64);
        assert_eq!(before, source.identity().unwrap());

        // The same length and modification time, one byte changed in the
        // last block: still a different identity.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut changed = data.clone();
        *changed.last_mut().unwrap() ^= 1;
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(&changed).unwrap();
        f.set_modified(modified).unwrap();
        drop(f);
        let after = source.identity().unwrap();
        assert_eq!(
            (after.len, after.modified_ns),
            (before.len, before.modified_ns)
        );
        assert_eq!(after.head_crc, before.head_crc);
        assert_ne!(after.tail_crc, before.tail_crc);

        // An empty file has an identity too.
        std::fs::write(&path, b"").unwrap();
        assert_eq!(FileSource::open(&path).unwrap().identity().unwrap().len, 0);
    }
}
