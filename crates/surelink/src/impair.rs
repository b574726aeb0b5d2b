//! A user-space network emulator for UDP: [`Impairer`].
//!
//! An impairer sits between UDP clients and one target. Clients send to its
//! listening address; it forwards to the target through a seeded
//! [`surelink_netem::Link`] per direction and per client, which drops, delays,
//! jitters, reorders, duplicates, rate-limits and cuts datagrams; replies
//! from the target go back to the client that caused them, through the
//! downstream link. It is what `surelink impair` runs, and what every
//! impaired real-socket test and benchmark of the project goes through.
//!
//! ```no_run
//! use surelink::impair::{ImpairConfig, Impairer};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let config = ImpairConfig::new("127.0.0.1:0".parse().unwrap(), "127.0.0.1:9000".parse().unwrap())
//!     .with_upstream("loss=2%,delay=10ms".parse().unwrap())
//!     .with_downstream("delay=10ms".parse().unwrap());
//! let impairer = Impairer::start(config)?;
//! println!("send to {}", impairer.local_addr());
//! impairer.set_cut(true); // a link failure, on demand
//! impairer.set_cut(false);
//! let stats = impairer.shutdown().await;
//! println!("{stats}");
//! # Ok(()) }
//! ```
//!
//! # Flows
//!
//! Each distinct client source address gets a *flow*: an upstream socket on
//! an ephemeral port, of the target's address family and connected to the
//! target, so that whatever the target sends to that port is the reply for
//! that client, plus one link per direction. The flow with index `i` (flows
//! are numbered in the order they are opened, from 0) draws its random
//! decisions from seeds derived from [`ImpairConfig::seed`], `i` and the
//! direction, so a run with the same seed, the same clients and the same
//! datagrams drops the same datagrams. At most [`ImpairConfig::max_flows`]
//! flows exist at once; a flow with no traffic for
//! [`ImpairConfig::idle_timeout`] is forgotten.
//!
//! Cut schedules (`cut-at`, `flap`) are measured from the moment the
//! impairer started ([`ImpairHandle::started_at`]), for every flow alike, so
//! a scheduled cut hits all clients at once, like a real link failure.
//! [`ImpairHandle::set_cut`] cuts both directions of every flow on demand.
//! Datagrams already in flight when a cut begins are still delivered, as in
//! [`Link::set_cut`](surelink_netem::Link::set_cut).
//!
//! # Timing
//!
//! Each flow has a single delivery timer, armed at the earlier of its two
//! links' [`next_delivery`](surelink_netem::Link::next_delivery); the flow
//! task sleeps until a datagram arrives or the timer fires, then releases
//! every datagram due. Datagrams are never released before their scheduled
//! time. On Linux the timer is a `timerfd`, so they leave within tens of
//! microseconds of it (plus scheduling delay on a loaded machine); elsewhere,
//! or if the `timerfd` cannot be used, the timer is tokio's and they may
//! leave up to about a millisecond late. Datagrams due immediately (no
//! delay) are sent at once.
//!
//! Nothing an impairer receives can make it panic, and I/O errors are
//! counted ([`DirectionStats`]) and logged with `tracing`, never fatal: a
//! failure on one flow does not affect the others.

mod config;
mod flow;
mod relay;
mod stats;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use surelink_netem::{self as netem, LinkConfig, LinkStats};

pub use config::{ImpairConfig, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FLOWS};
pub use stats::{DirectionStats, ImpairStats};

use flow::{clock_now, Shared};
use relay::Relay;

/// Starts impairers; see [`Impairer::start`] and the [module docs](self).
#[derive(Debug)]
#[non_exhaustive]
pub struct Impairer;

impl Impairer {
    /// Binds [`ImpairConfig::listen`] and starts forwarding to
    /// [`ImpairConfig::target`] on the current tokio runtime.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if the configuration does
    /// not [validate](ImpairConfig::validate), with an error if called
    /// outside a tokio runtime, and with the socket's error if the address
    /// cannot be bound. The returned handle controls the impairer; dropping
    /// it stops the impairer as [`ImpairHandle::shutdown`] does, without
    /// waiting.
    pub fn start(config: ImpairConfig) -> io::Result<ImpairHandle> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other("Impairer::start must be called within a tokio runtime")
        })?;
        let _entered = runtime.enter();
        let socket = crate::socket::bind_udp(config.listen, config.socket_buffer_size)?;
        let listen = Arc::new(UdpSocket::from_std(socket)?);
        let local_addr = listen.local_addr()?;
        let started_at = clock_now();
        let shared = Arc::new(Shared::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let target = config.target;
        tracing::debug!(
            %local_addr,
            %target,
            upstream = %config.upstream,
            downstream = %config.downstream,
            seed = config.seed,
            "impairer started"
        );
        let relay = Relay::new(config, started_at, listen, Arc::clone(&shared), shutdown_rx);
        let task = runtime.spawn(relay.run());
        Ok(ImpairHandle {
            local_addr,
            target,
            started_at,
            shared,
            shutdown,
            task,
        })
    }
}

/// Reads an impairer's counters; see [`ImpairHandle::stats_reader`].
#[derive(Debug, Clone)]
pub struct ImpairStatsReader {
    shared: Arc<Shared>,
}

impl ImpairStatsReader {
    /// Counters since start, as [`ImpairHandle::stats`].
    pub fn stats(&self) -> ImpairStats {
        self.shared.stats.snapshot(self.shared.is_cut())
    }
}

/// Controls a running impairer; returned by [`Impairer::start`].
///
/// Dropping the handle stops the impairer (without waiting for it).
#[derive(Debug)]
pub struct ImpairHandle {
    local_addr: SocketAddr,
    target: SocketAddr,
    started_at: Instant,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ImpairHandle {
    /// The address clients send to (with the actual port if
    /// [`ImpairConfig::listen`] had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where datagrams are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The instant the impairer started; cut schedules (`cut-at`, `flap`)
    /// are offsets from it. On tokio's clock, as a std instant.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Cuts (`true`) or restores (`false`) both directions of every flow,
    /// present and future, in addition to any scheduled cuts. Datagrams
    /// arriving while cut are dropped and counted as `dropped_cut`;
    /// datagrams already in flight are still delivered.
    pub fn set_cut(&self, cut: bool) {
        self.shared.cut.store(cut, Ordering::Relaxed);
        tracing::debug!(cut, "impairer on-demand cut");
    }

    /// Whether the on-demand cut is in force.
    pub fn is_cut(&self) -> bool {
        self.shared.is_cut()
    }

    /// Counters since start, summed over all flows. Each flow publishes its
    /// counters after every event, so this is up to date with every
    /// datagram received or released.
    pub fn stats(&self) -> ImpairStats {
        self.shared.stats.snapshot(self.is_cut())
    }

    /// A reader of the same counters that can be kept apart from the handle
    /// (by a metrics exporter, say); it reads the final counters once the
    /// impairer has stopped.
    pub fn stats_reader(&self) -> ImpairStatsReader {
        ImpairStatsReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops the impairer: closes every socket, discards datagrams still in
    /// flight, waits for the tasks to finish and returns the final counters.
    pub async fn shutdown(self) -> ImpairStats {
        // An error means every receiver is gone already: nothing to stop.
        let _ = self.shutdown.send(true);
        if let Err(error) = self.task.await {
            tracing::error!(%error, "impairer task failed");
        }
        self.shared.stats.snapshot(self.shared.is_cut())
    }
}
