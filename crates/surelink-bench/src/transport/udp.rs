//! Raw UDP: one datagram per message (bulk data is cut into 1452-byte
//! datagrams, surelink's default datagram size). Nothing is retransmitted,
//! so this is the floor for latency and the ceiling for throughput.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use tokio::net::UdpSocket;

use super::{loopback, wire, Pair, Route, Rx, Tx};

/// Largest datagram sent, as surelink's default `max_datagram_size`.
pub const DATAGRAM: usize = 1452;
/// Kernel buffer size requested, as surelink's default.
const SOCKET_BUFFER: usize = 8 << 20;

/// Sends each message as datagrams to one address.
pub struct UdpTx {
    socket: UdpSocket,
}

impl UdpTx {
    /// A socket on 127.0.0.1 connected to `to`.
    pub async fn connect(to: SocketAddr) -> io::Result<Self> {
        let socket = bind(loopback(0))?;
        socket.connect(to).await?;
        Ok(Self { socket })
    }
}

impl Tx for UdpTx {
    async fn send(&mut self, msg: Bytes) -> io::Result<()> {
        for piece in msg.chunks(DATAGRAM) {
            self.socket.send(piece).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Receives datagrams on one socket.
pub struct UdpRx {
    socket: UdpSocket,
    buf: Vec<u8>,
}

impl UdpRx {
    /// Binds `addr` (port 0 picks one).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            socket: bind(addr)?,
            buf: vec![0; 65536],
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl Rx for UdpRx {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        let n = self.socket.recv(&mut self.buf).await?;
        Ok(Some(Bytes::copy_from_slice(&self.buf[..n])))
    }
}

/// A non-blocking tokio UDP socket with large kernel buffers (the kernel
/// caps them at `net.core.rmem_max` / `wmem_max`).
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort, as surelink does: a smaller grant is not an error.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The pair type of this system.
pub type UdpPair = Pair<UdpTx, UdpRx>;

/// A sender and a receiver socket, through an impairer if `route` asks.
pub async fn open(route: Option<&Route>) -> io::Result<UdpPair> {
    let rx = UdpRx::bind(loopback(0))?;
    let (to, impairer) = wire(rx.local_addr()?, route)?;
    let tx = UdpTx::connect(to).await?;
    Ok(Pair {
        tx,
        rx,
        impairer,
        keep: Vec::new(),
    })
}
