//! Creating the endpoint's UDP socket: large kernel buffers, non-blocking.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

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
