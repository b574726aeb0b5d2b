//! Messages over a byte stream (TCP, a QUIC stream, KCP in stream mode):
//! each message is a 4-byte little-endian length followed by its bytes.
//!
//! The sender stages frames in one buffer and writes it out when it holds
//! 64 KiB, on [`Tx::flush`], and, in the modes that do not batch
//! ([`Mode::batches`]), after every message (flushing it in
//! [`Mode::Realtime`]); batching is how a competent application drives a
//! stream (one write per message measures the write call, not the transport).

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Diagnostics, Mode, Rx, Tx};

/// Size at which staged frames are written out.
const STAGE: usize = 64 << 10;
/// Largest frame a reader accepts (a corrupted stream must not allocate gigabytes).
const MAX_FRAME: usize = 16 << 20;

/// Writes length-prefixed messages to `W`.
pub struct FramedTx<W> {
    writer: W,
    staged: BytesMut,
    mode: Mode,
    diagnostics: Option<Box<dyn Fn() -> Diagnostics + Send>>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> FramedTx<W> {
    /// Wraps a writer.
    pub fn new(writer: W, mode: Mode) -> Self {
        Self {
            writer,
            staged: BytesMut::with_capacity(STAGE + 1024),
            mode,
            diagnostics: None,
        }
    }

    /// Where [`Tx::diagnostics`] comes from.
    pub fn with_diagnostics(mut self, f: impl Fn() -> Diagnostics + Send + 'static) -> Self {
        self.diagnostics = Some(Box::new(f));
        self
    }

    async fn write_staged(&mut self) -> io::Result<()> {
        if !self.staged.is_empty() {
            self.writer.write_all(&self.staged).await?;
            self.staged.clear();
        }
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Tx for FramedTx<W> {
    async fn send(&mut self, msg: Bytes) -> io::Result<()> {
        self.send_ref(&msg).await
    }

    async fn send_ref(&mut self, msg: &Bytes) -> io::Result<()> {
        let len = u32::try_from(msg.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?;
        self.staged.put_u32_le(len);
        self.staged.extend_from_slice(msg);
        if !self.mode.batches() || self.staged.len() >= STAGE {
            self.write_staged().await?;
            if self.mode == Mode::Realtime {
                self.writer.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.write_staged().await?;
        self.writer.flush().await
    }

    fn diagnostics(&self) -> Option<Diagnostics> {
        self.diagnostics.as_ref().map(|f| f())
    }
}

/// Reads length-prefixed messages from `R`.
///
/// [`Rx::recv`] is cancel-safe: bytes are only taken from the reader into
/// an internal buffer, and a message only leaves it whole, so a workload
/// may wrap `recv` in a timeout.
pub struct FramedRx<R> {
    reader: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin + Send + 'static> FramedRx<R> {
    /// Wraps a reader.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: BytesMut::with_capacity(2 * STAGE),
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> FramedRx<R> {
    /// The length of the frame starting at `at` of the buffer, if its
    /// length field is there.
    fn frame_len(&self, at: usize) -> io::Result<Option<usize>> {
        let Some(field) = self.buf.get(at..at + 4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([field[0], field[1], field[2], field[3]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes"),
            ));
        }
        Ok(Some(len))
    }

    /// Reads more of the stream, with room for a frame of `len` bytes
    /// whose start is buffered; `false` at the end of the stream (a partial
    /// frame at the end is dropped).
    async fn fill(&mut self, len: Option<usize>) -> io::Result<bool> {
        if let Some(len) = len {
            self.buf.reserve((4 + len).saturating_sub(self.buf.len()));
        }
        if self.buf.capacity() - self.buf.len() < STAGE / 4 {
            self.buf.reserve(STAGE);
        }
        Ok(self.reader.read_buf(&mut self.buf).await? > 0)
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> Rx for FramedRx<R> {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            let len = self.frame_len(0)?;
            if let Some(len) = len.filter(|&len| self.buf.len() >= 4 + len) {
                self.buf.advance(4);
                return Ok(Some(self.buf.split_to(len).freeze()));
            }
            if !self.fill(len).await? {
                return Ok(None);
            }
        }
    }

    /// Every whole frame buffered, each handed over in place, then dropped
    /// from the buffer at once.
    async fn recv_each<F: FnMut(&[u8]) + Send>(&mut self, each: &mut F) -> io::Result<bool> {
        loop {
            let mut at = 0;
            let mut len = self.frame_len(at)?;
            while let Some(l) = len.filter(|&l| self.buf.len() - at >= 4 + l) {
                each(&self.buf[at + 4..at + 4 + l]);
                at += 4 + l;
                len = self.frame_len(at)?;
            }
            if at > 0 {
                self.buf.advance(at);
                return Ok(true);
            }
            if !self.fill(len).await? {
                return Ok(false);
            }
        }
    }
}
