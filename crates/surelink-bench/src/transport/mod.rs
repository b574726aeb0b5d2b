//! The systems under test, each behind the same two small traits.
//!
//! A workload ([`crate::workload`]) only ever sees a [`Pair`]: a sending half
//! ([`Tx`]) and a receiving half ([`Rx`]) of one connection, already
//! established, possibly through an in-process [`Impairer`]. Each module here
//! builds such a pair for one system:
//!
//! | module | what is measured |
//! |---|---|
//! | [`surelink`] | `surelink::Endpoint` / `Connection`, encrypted or plaintext |
//! | [`quic`] | quinn 0.11: one bidirectional stream with length-prefixed messages, or QUIC datagrams |
//! | [`kcp`] | `tokio_kcp` in stream mode with KCP's fast settings (nodelay, 10 ms interval, fast resend 2, no congestion window) |
//! | [`tcp`] | tokio TCP with `TCP_NODELAY`, length-prefixed messages |
//! | [`udp`] | raw UDP datagrams: no reliability at all |
//! | [`srt`] | Debian's `srt-live-transmit` / `srt-file-transmit` as child processes |
//!
//! Everything binds 127.0.0.1 only.

pub mod framed;
pub mod kcp;
pub mod quic;
pub mod srt;
pub mod surelink;
pub mod tcp;
pub mod udp;

use std::any::Any;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use ::surelink::impair::{ImpairConfig, ImpairHandle, Impairer, LinkConfig};
use bytes::Bytes;

/// What a pair is tuned for; stream transports buffer differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Large messages, throughput.
    Bulk,
    /// Many tiny messages, message rate; the sender hands them over in
    /// batches of 64 KiB (a staged write on a stream, `send_many` for surelink).
    Small,
    /// Many tiny messages, each handed over in its own call (`--per-message`).
    SmallPerMessage,
    /// Paced messages that must go out at once, latency.
    Realtime,
}

impl Mode {
    /// True if the sender collects messages into 64 KiB batches before
    /// handing them to the transport.
    pub fn batches(self) -> bool {
        matches!(self, Mode::Bulk | Mode::Small)
    }
}

/// The sending half of a connection: whole messages.
pub trait Tx: Send + 'static {
    /// Queues (or sends) one message; waits while the transport pushes back.
    fn send(&mut self, msg: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// [`send`](Tx::send) for a message the caller keeps: a system that
    /// copies each message into a staging buffer of its own copies it from
    /// here; by default it is sent as a clone of `msg`. The small-message
    /// workload sends one message over and over this way, so that no
    /// system pays for a handle of its own per message it only copies.
    fn send_ref(&mut self, msg: &Bytes) -> impl Future<Output = io::Result<()>> + Send {
        self.send(msg.clone())
    }
    /// Pushes out anything this half buffered itself.
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// The sending connection's own counters (losses, retransmissions,
    /// RTT), for systems that expose them; read at the end of a run.
    fn diagnostics(&self) -> Option<Diagnostics> {
        None
    }
}

/// Named counters of a sending connection.
pub type Diagnostics = std::collections::BTreeMap<&'static str, f64>;

/// The receiving half of a connection.
pub trait Rx: Send + 'static {
    /// The next message (for byte-stream peers such as `srt-file-transmit`:
    /// the next chunk of bytes); `None` when the connection ended.
    fn recv(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;
    /// Receives what is ready, at least one message, and hands each to
    /// `each` as a borrowed slice, in order; `false` when the connection
    /// ended. The batch form of [`recv`](Rx::recv) for the small-message
    /// workload: a system that can hand over many messages at once without
    /// a `Bytes` each (a byte stream cut into frames in place, surelink's
    /// `recv_batch`) does; by default it is one `recv`.
    fn recv_each<F: FnMut(&[u8]) + Send>(
        &mut self,
        each: &mut F,
    ) -> impl Future<Output = io::Result<bool>> + Send {
        async move {
            match self.recv().await? {
                Some(m) => {
                    each(&m);
                    Ok(true)
                }
                None => Ok(false),
            }
        }
    }
    /// The receiving connection's own counters (skipped or late messages),
    /// for systems that expose them; read at the end of a run.
    fn diagnostics(&self) -> Option<Diagnostics> {
        None
    }
}

/// Whether losing messages is part of a system's contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every message arrives, in order, exactly once (or the run failed).
    Reliable,
    /// Messages may be lost (raw UDP, QUIC datagrams).
    Unreliable,
}

/// One established connection, ready for a workload.
pub struct Pair<T, R> {
    /// The sending half.
    pub tx: T,
    /// The receiving half.
    pub rx: R,
    /// The impairer between the two, if the workload asked for one.
    pub impairer: Option<ImpairHandle>,
    /// Whatever must stay alive while the pair is used (endpoints,
    /// listeners, child processes).
    pub keep: Vec<Box<dyn Any + Send>>,
}

/// An impaired route: the link settings of each direction and the seed.
#[derive(Debug, Clone)]
pub struct Route {
    /// Applied to both directions, each with its own random decisions.
    pub link: LinkConfig,
    /// The impairer's seed (the same for every system).
    pub seed: u64,
}

/// Puts an impairer in front of `server` if `route` asks for one and
/// returns the address the client should talk to.
pub fn wire(
    server: SocketAddr,
    route: Option<&Route>,
) -> io::Result<(SocketAddr, Option<ImpairHandle>)> {
    match route {
        None => Ok((server, None)),
        Some(route) => {
            let config = ImpairConfig::new(loopback(0), server)
                .with_both(route.link.clone())
                .with_seed(route.seed);
            let handle = Impairer::start(config)?;
            Ok((handle.local_addr(), Some(handle)))
        }
    }
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A UDP port on 127.0.0.1 that was free a moment ago (for child processes
/// that need a port number up front).
pub fn free_udp_port() -> io::Result<u16> {
    let socket = std::net::UdpSocket::bind(loopback(0))?;
    Ok(socket.local_addr()?.port())
}
