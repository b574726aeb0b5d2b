//! The driver's datagram I/O: the [`DatagramIo`] trait, its UDP
//! implementation [`UdpIo`], and creating UDP sockets (large kernel buffers,
//! non-blocking). The other implementation is the simulated network's socket
//! (`crate::sim`).
//!
//! The driver is generic over the trait, so each backend gets its own
//! monomorphised driver: no dynamic dispatch and no extra copy per datagram.

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Where an endpoint's driver reads and writes datagrams: one or more local
/// sockets, numbered from 0 (the index the core's paths use), with tokio
/// readiness. All methods are non-blocking.
pub(crate) trait DatagramIo: Send + Sync + 'static {
    /// How many local sockets there are (at least one).
    fn sockets(&self) -> usize;

    /// Reads one datagram from socket `local` into `buf`: its length and
    /// sender, or [`io::ErrorKind::WouldBlock`] when none is waiting.
    fn try_recv_from(&self, local: usize, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;

    /// Writes one datagram to `dest` from socket `local`, or fails with
    /// [`io::ErrorKind::WouldBlock`] when the socket cannot take it now.
    fn try_send_to(&self, local: usize, data: &[u8], dest: SocketAddr) -> io::Result<usize>;

    /// Ready when some socket may have a datagram to read.
    fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ready when some socket may take a datagram.
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// The real backend: tokio UDP sockets.
#[derive(Debug)]
pub(crate) struct UdpIo(pub(crate) Vec<UdpSocket>);

impl DatagramIo for UdpIo {
    fn sockets(&self) -> usize {
        self.0.len()
    }

    #[inline]
    fn try_recv_from(&self, local: usize, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.0[local].try_recv_from(buf)
    }

    #[inline]
    fn try_send_to(&self, local: usize, data: &[u8], dest: SocketAddr) -> io::Result<usize> {
        self.0[local.min(self.0.len() - 1)].try_send_to(data, dest)
    }

    fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0
            .iter()
            .find_map(|s| match s.poll_recv_ready(cx) {
                Poll::Ready(r) => Some(Poll::Ready(r)),
                Poll::Pending => None,
            })
            .unwrap_or(Poll::Pending)
    }

    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0
            .iter()
            .find_map(|s| match s.poll_send_ready(cx) {
                Poll::Ready(r) => Some(Poll::Ready(r)),
                Poll::Pending => None,
            })
            .unwrap_or(Poll::Pending)
    }
}

/// Binds a non-blocking UDP socket to `addr`, asking for `buffer_size` bytes of
/// kernel send and receive buffer. A refused buffer size is logged, not fatal.
pub(crate) fn bind_udp(addr: SocketAddr, buffer_size: usize) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    configure(&socket, buffer_size);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Raises the kernel buffers of an existing socket and makes it non-blocking.
pub(crate) fn prepare_std(
    socket: std::net::UdpSocket,
    buffer_size: usize,
) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::from(socket);
    configure(&socket, buffer_size);
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn configure(socket: &Socket, buffer_size: usize) {
    if buffer_size == 0 {
        return;
    }
    if let Err(e) = socket.set_recv_buffer_size(buffer_size) {
        tracing::warn!(error = %e, buffer_size, "could not set SO_RCVBUF");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer_size) {
        tracing::warn!(error = %e, buffer_size, "could not set SO_SNDBUF");
    }
    tracing::debug!(
        requested = buffer_size,
        rcvbuf = socket.recv_buffer_size().ok(),
        sndbuf = socket.send_buffer_size().ok(),
        "socket buffers"
    );
}
