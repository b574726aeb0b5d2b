//! Plain UDP sockets of the gateway modes, with large kernel buffers.

use std::net::SocketAddr;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Kernel buffer size asked for on gateway sockets (the kernel may grant less).
const BUFFER_SIZE: usize = 8 << 20;

/// Binds a non-blocking UDP socket on `addr` with large send and receive buffers.
pub fn bind_udp(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("cannot create a UDP socket")?;
    for (result, what) in [
        (socket.set_recv_buffer_size(BUFFER_SIZE), "SO_RCVBUF"),
        (socket.set_send_buffer_size(BUFFER_SIZE), "SO_SNDBUF"),
    ] {
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not raise {what}");
        }
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind UDP socket to {addr}"))?;
    Ok(UdpSocket::from_std(socket.into())?)
}
