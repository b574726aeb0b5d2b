//! Plain UDP sockets of the gateway modes, with large kernel buffers, and
//! sockets sharing one port (`SO_REUSEPORT`) for `perf server --drivers`.

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

/// Binds `count` UDP sockets to the same address with `SO_REUSEPORT`: the
/// kernel spreads the peers over them by a hash of their address, so each
/// socket (each endpoint and its driver) serves a share of the connections.
/// Port 0 picks one free port for all of them.
pub fn bind_reuse_port(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    let mut sockets: Vec<std::net::UdpSocket> = Vec::with_capacity(count);
    let mut bind_to = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .context("cannot create a UDP socket")?;
        socket
            .set_reuse_port(true)
            .context("cannot set SO_REUSEPORT")?;
        socket
            .bind(&bind_to.into())
            .with_context(|| format!("cannot bind UDP socket to {bind_to}"))?;
        let socket: std::net::UdpSocket = socket.into();
        bind_to = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}
