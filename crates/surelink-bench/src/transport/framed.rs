//! Messages over a byte stream (TCP, a QUIC stream, KCP in stream mode):
//! each message is a 4-byte little-endian length followed by its bytes.
//!
//! The sender stages frames in one buffer and writes it out when it holds
//! 64 KiB, on [`Tx::flush`], and, in [`Mode::Realtime`], after every
//! message; that is how a competent application drives a stream (one write
//! per message would measure the write call, not the transport).

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{Mode, Rx, Tx};

/// Size at which staged frames are written out.
const STAGE: usize = 64 << 10;
/// Largest frame a reader accepts (a corrupted stream must not allocate gigabytes).
const MAX_FRAME: usize = 16 << 20;

/// Writes length-prefixed messages to `W`.
pub struct FramedTx<W> {
    writer: W,
    staged: BytesMut,
    mode: Mode,
}

impl<W: AsyncWrite + Unpin + Send + 'static> FramedTx<W> {
    /// Wraps a writer.
    pub fn new(writer: W, mode: Mode) -> Self {
        Self {
            writer,
            staged: BytesMut::with_capacity(STAGE + 1024),
            mode,
        }
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
        let len = u32::try_from(msg.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?;
        self.staged.put_u32_le(len);
        self.staged.extend_from_slice(&msg);
        if self.mode == Mode::Realtime || self.staged.len() >= STAGE {
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
}

/// Reads length-prefixed messages from `R`.
pub struct FramedRx<R> {
    reader: BufReader<R>,
}

impl<R: AsyncRead + Unpin + Send + 'static> FramedRx<R> {
    /// Wraps a reader (with a 64 KiB read buffer).
    pub fn new(reader: R) -> Self {
        Self {
            reader: BufReader::with_capacity(STAGE, reader),
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> Rx for FramedRx<R> {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        let len = match self.reader.read_u32_le().await {
            Ok(len) => len as usize,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes"),
            ));
        }
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf).await?;
        Ok(Some(Bytes::from(buf)))
    }
}
