//! [`Endpoint`]: a UDP socket with its driver task, making and accepting connections.
//!
//! An endpoint is created inside a tokio runtime; it spawns a driver task
//! (see the `driver` module) that owns the socket (a UDP socket, or a host
//! on a [`SimNetwork`](crate::sim::SimNetwork) for [`Endpoint::simulated`]),
//! or several, one per shard, each with its own sockets on the same
//! addresses and its share of the connections (see the `shard` module and
//! [`EndpointConfig::drivers`]). Handles are cheap clones.
//! When the last handle is dropped the endpoint stops accepting (connections
//! waiting in the accept queue are aborted), while connections already handed
//! out keep working; the driver ends when they have all drained.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::RngCore;
use surelink_proto::config::MESSAGE_CREDIT_OVERHEAD;
use surelink_proto::stats_schema::{Metric, StatsVisitor, Unit, Value, VisitStats};
use tokio::net::UdpSocket;
use tokio::sync::Notify;

use crate::connection::Connection;
use crate::error::{BindError, ConnectError};
use crate::handshake_event::HandshakeEvent;
use crate::shard::Router;
use crate::socket::{DatagramIo, UdpIo};
use crate::state::{ConnState, IoCounters, Shared, State};
use crate::{driver, socket, EndpointConfig};

/// Endpoint-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// The protocol core's counters (malformed datagrams, unknown connections, …).
    pub protocol: surelink_proto::EndpointStats,
    /// Datagrams read from the socket.
    pub datagrams_received: u64,
    /// Bytes read from the socket.
    pub bytes_received: u64,
    /// Datagrams written to the socket.
    pub datagrams_sent: u64,
    /// Bytes written to the socket.
    pub bytes_sent: u64,
    /// Calls that wrote datagrams to the sockets (system calls on UDP). With
    /// batched I/O one call carries a run of datagrams, so
    /// `datagrams_sent / send_calls` is the batching factor.
    pub send_calls: u64,
    /// Calls that read datagrams from the sockets (system calls on UDP; with
    /// GRO and `recvmmsg`, one may bring many datagrams).
    pub recv_calls: u64,
    /// Datagrams the operating system refused to send (lost, and recovered by the protocol).
    pub send_errors: u64,
    /// Errors reading from the socket.
    pub recv_errors: u64,
    /// Datagrams one driver read for a connection of another (an endpoint
    /// with several [`drivers`](crate::EndpointConfig::drivers): a peer's
    /// new path, the answers to a client connection) and handed over.
    pub datagrams_handed_over: u64,
    /// Connections not yet drained.
    pub connections: usize,
    /// Most connections held at once since the endpoint started (live, or
    /// drained and not yet released): what bounds the memory kept per peer.
    pub peak_connections: usize,
    /// Incoming connections that ended before their handshake completed
    /// (refused, failed or abandoned); see [`Endpoint::next_handshake_event`].
    pub handshakes_failed: u64,
    /// The same attempts, by reason.
    pub handshake_failures: crate::HandshakeFailures,
    /// Handshake events dropped because nobody took them and the queue
    /// ([`HANDSHAKE_EVENT_CAPACITY`](crate::HANDSHAKE_EVENT_CAPACITY)) was full.
    pub handshake_events_dropped: u64,
}

impl VisitStats for EndpointStats {
    fn visit<V: StatsVisitor + ?Sized>(&self, v: &mut V) {
        use Unit::{Bytes, Count};
        let c = Metric::counter;
        self.protocol.visit(v);
        v.counter(
            &c(
                "udp_rx_datagrams",
                "socket_datagrams_received",
                Count,
                "Datagrams read from the socket.",
            ),
            self.datagrams_received,
        );
        v.counter(
            &c(
                "udp_rx_bytes",
                "socket_received",
                Bytes,
                "Bytes read from the socket.",
            ),
            self.bytes_received,
        );
        v.counter(
            &c(
                "udp_tx_datagrams",
                "socket_datagrams_sent",
                Count,
                "Datagrams written to the socket.",
            ),
            self.datagrams_sent,
        );
        v.counter(
            &c(
                "udp_tx_bytes",
                "socket_sent",
                Bytes,
                "Bytes written to the socket.",
            ),
            self.bytes_sent,
        );
        v.counter(
            &c(
                "udp_tx_syscalls",
                "socket_send_calls",
                Count,
                "Calls that wrote datagrams to the socket (one may carry a batch).",
            ),
            self.send_calls,
        );
        v.counter(
            &c(
                "udp_rx_syscalls",
                "socket_recv_calls",
                Count,
                "Calls that read datagrams from the socket (one may bring a batch).",
            ),
            self.recv_calls,
        );
        v.counter(
            &c(
                "udp_tx_errors",
                "socket_send_errors",
                Count,
                "Datagrams the operating system refused to send.",
            ),
            self.send_errors,
        );
        v.counter(
            &c(
                "udp_rx_errors",
                "socket_recv_errors",
                Count,
                "Errors reading from the socket.",
            ),
            self.recv_errors,
        );
        v.counter(
            &c(
                "handed_over_datagrams",
                "endpoint_handed_over_datagrams",
                Count,
                "Datagrams one driver read for another driver's connection and handed over.",
            ),
            self.datagrams_handed_over,
        );
        v.gauge(
            &Metric::gauge(
                "connections",
                "endpoint_connections",
                Count,
                "Connections not yet drained.",
            ),
            Value::Integer(self.connections as u64),
        );
        v.gauge(
            &Metric::gauge(
                "peak_connections",
                "endpoint_peak_connections",
                Count,
                "Most connections held at once.",
            ),
            Value::Integer(self.peak_connections as u64),
        );
        let failed = "Incoming connections that ended before their handshake completed, by reason.";
        let failures = &self.handshake_failures;
        for (key, reason, value) in [
            (
                "handshakes_failed_not_allowed",
                "not_allowed",
                failures.not_allowed,
            ),
            (
                "handshakes_failed_failed",
                "handshake_failed",
                failures.failed,
            ),
            (
                "handshakes_failed_refused_by_peer",
                "refused_by_peer",
                failures.refused_by_peer,
            ),
            (
                "handshakes_failed_timed_out",
                "timed_out",
                failures.timed_out,
            ),
            ("handshakes_failed_other", "other", failures.other),
        ] {
            v.counter(
                &c(key, "endpoint_handshakes_failed", Count, failed).with_label("reason", reason),
                value,
            );
        }
        v.counter(
            &c(
                "handshake_events_dropped",
                "endpoint_handshake_events_dropped",
                Count,
                "Handshake events dropped because the queue was full.",
            ),
            self.handshake_events_dropped,
        );
    }
}

/// A surelink endpoint: one UDP socket, many connections.
///
/// Create a server with [`Endpoint::bind`] (it accepts connections) or a client
/// with [`Endpoint::client`]; both can [`connect`](Endpoint::connect).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use surelink::{Endpoint, EndpointConfig};
/// let server = Endpoint::bind("127.0.0.1:4433".parse()?, EndpointConfig::default())?;
/// let client = Endpoint::client("127.0.0.1:0".parse()?)?;
/// let conn = client.connect(server.local_addr()).await?;
/// conn.send("hello".into()).await?;
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<EndpointInner>,
}

/// Owned by every clone of an [`Endpoint`]; dropping the last one closes the endpoint.
struct EndpointInner {
    /// One per driver task (at least one); a connection lives in exactly one.
    shards: Vec<Arc<Shared>>,
    /// Counts `connect` calls, which take the shards in turn.
    connects: AtomicUsize,
}

impl EndpointInner {
    /// The first shard: the addresses and settings are the same in all.
    fn first(&self) -> &Shared {
        &self.shards[0]
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.inner.first().local_addr)
            .field("drivers", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A server endpoint on `addr`: it accepts incoming connections (see
    /// [`accept`](Endpoint::accept)) and can also connect out.
    ///
    /// Must be called inside a tokio runtime. Port 0 picks a free port; see
    /// [`local_addr`](Endpoint::local_addr).
    pub fn bind(addr: SocketAddr, config: EndpointConfig) -> Result<Self, BindError> {
        Self::create(&[addr], config, true)
    }

    /// A client endpoint on `addr` (typically `0.0.0.0:0` or `[::]:0`) with the
    /// default configuration; it does not accept connections.
    pub fn client(addr: SocketAddr) -> Result<Self, BindError> {
        Self::client_with_config(addr, EndpointConfig::default())
    }

    /// A client endpoint on `addr` with `config`; it does not accept connections.
    pub fn client_with_config(addr: SocketAddr, config: EndpointConfig) -> Result<Self, BindError> {
        Self::create(&[addr], config, false)
    }

    /// An endpoint over a socket the caller created (already bound). It accepts
    /// incoming connections if `accept` is true. The socket is made non-blocking
    /// and its buffers are raised as `config` says.
    pub fn from_std_socket(
        socket: std::net::UdpSocket,
        config: EndpointConfig,
        accept: bool,
    ) -> Result<Self, BindError> {
        let addr = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BindError::NoRuntime)?;
        let socket = socket::prepare_std(socket, config.socket_buffer_size)
            .map_err(|source| BindError::Io { addr, source })?;
        if accept {
            warn_if_recv_buffer_capped(&[&socket], config.socket_buffer_size);
        }
        let mut config = config;
        fit_window(&mut config, &[&socket]);
        Self::start(runtime, vec![vec![(socket, addr)]], config, accept)
    }

    /// A server endpoint listening on several addresses at once (one socket
    /// each): a connection can then have one path per address (see
    /// `Connection::add_path` on the client side). The first address is the
    /// endpoint's [`local_addr`](Endpoint::local_addr). With several
    /// [`drivers`](EndpointConfig::drivers), each has a socket on every address.
    pub fn bind_many(addrs: &[SocketAddr], config: EndpointConfig) -> Result<Self, BindError> {
        Self::create(addrs, config, true)
    }

    /// A server endpoint over sockets the caller created and bound, one per
    /// address, as [`bind_many`](Endpoint::bind_many) would have made them:
    /// a caller can hold its ports before it serves, and datagrams that
    /// arrive meanwhile wait in the sockets instead of being refused. They
    /// are made non-blocking and their buffers raised as `config` says. The
    /// endpoint has one driver, whatever `config.drivers` says.
    pub fn from_std_sockets(
        sockets: Vec<std::net::UdpSocket>,
        config: EndpointConfig,
    ) -> Result<Self, BindError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BindError::NoRuntime)?;
        let mut prepared = Vec::new();
        for socket in sockets {
            let addr = socket
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let socket = socket::prepare_std(socket, config.socket_buffer_size)
                .map_err(|source| BindError::Io { addr, source })?;
            prepared.push((socket, addr));
        }
        let sockets = prepared.iter().map(|(s, _)| s).collect::<Vec<_>>();
        warn_if_recv_buffer_capped(&sockets, config.socket_buffer_size);
        let mut config = config;
        fit_window(&mut config, &sockets);
        Self::start(runtime, vec![prepared], config, true)
    }

    /// An endpoint with a socket on each of `addrs` per driver
    /// ([`EndpointConfig::driver_count`]).
    fn create(
        addrs: &[SocketAddr],
        config: EndpointConfig,
        accept: bool,
    ) -> Result<Self, BindError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BindError::NoRuntime)?;
        let drivers = config.driver_count(accept);
        let mut shards: Vec<Vec<(std::net::UdpSocket, SocketAddr)>> =
            (0..drivers).map(|_| Vec::new()).collect();
        for &addr in addrs {
            let sockets = socket::bind_udp_group(addr, config.socket_buffer_size, drivers)
                .map_err(|source| BindError::Io { addr, source })?;
            for (shard, socket) in shards.iter_mut().zip(sockets) {
                shard.push((socket, addr));
            }
        }
        let sockets = shards.iter().flatten().map(|(s, _)| s).collect::<Vec<_>>();
        if accept {
            warn_if_recv_buffer_capped(&sockets, config.socket_buffer_size);
        }
        let mut config = config;
        fit_window(&mut config, &sockets);
        Self::start(runtime, shards, config, accept)
    }

    /// Starts a driver per shard over bound, prepared sockets (each shard
    /// has one per listening address, in the same order), with cores made
    /// from one seed drawn from the operating system.
    fn start(
        runtime: tokio::runtime::Handle,
        shards: Vec<Vec<(std::net::UdpSocket, SocketAddr)>>,
        config: EndpointConfig,
        accept: bool,
    ) -> Result<Self, BindError> {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let (now, clock_us) = (crate::util::now(), crate::util::wall_clock_us());
        let count = shards.len();
        let mut drivers = Vec::with_capacity(count);
        for (index, sockets) in shards.into_iter().enumerate() {
            let mut local_addrs = Vec::new();
            let mut tokio_sockets = Vec::new();
            for (socket, addr) in sockets {
                let io_err = |source| BindError::Io { addr, source };
                local_addrs.push(socket.local_addr().map_err(io_err)?);
                let _entered = runtime.enter();
                tokio_sockets.push(UdpSocket::from_std(socket).map_err(io_err)?);
            }
            let core = new_core(&config, accept, seed, now, clock_us, (index, count))?;
            let io = UdpIo::new(tokio_sockets, config.batched_io);
            drivers.push((io, local_addrs, core));
        }
        Ok(Self::launch(&runtime, drivers, config, accept))
    }

    /// Spawns a driver per shard: over its I/O, whose sockets have the given
    /// local addresses, with its core.
    fn launch<T: DatagramIo>(
        runtime: &tokio::runtime::Handle,
        drivers: Vec<(T, Vec<SocketAddr>, surelink_proto::Endpoint)>,
        config: EndpointConfig,
        accept: bool,
    ) -> Self {
        let inboxes = Router::inboxes(drivers.len());
        let endpoint_changed = Arc::new(Notify::new());
        let mut shards = Vec::with_capacity(drivers.len());
        for (index, (io, local_addrs, core)) in drivers.into_iter().enumerate() {
            let shared = Arc::new(Shared::new(
                State::new(core, accept),
                local_addrs,
                config.clone(),
                inboxes[index].wake.clone(),
                endpoint_changed.clone(),
            ));
            let router = Router::new(index, inboxes.clone());
            runtime.spawn(driver::run(shared.clone(), io, router));
            shards.push(shared);
        }
        tracing::debug!(local_addr = %shards[0].local_addr, accept, drivers = shards.len(), "endpoint started");
        Self {
            inner: Arc::new(EndpointInner {
                shards,
                connects: AtomicUsize::new(0),
            }),
        }
    }

    /// An endpoint on the simulated network `network`, at `addr`: the same
    /// endpoint as [`bind`](Endpoint::bind) (with `accept`) or
    /// [`client_with_config`](Endpoint::client_with_config), but its
    /// datagrams travel through `network`'s seeded links instead of UDP
    /// sockets, on tokio's clock. `seed` replaces the operating system's
    /// randomness (connection ids, keys): with the same seeds, the same
    /// application code and a paused clock, a run is reproducible. See
    /// [`sim`](crate::sim).
    ///
    /// `addr` needs a specific IP (it is what peers see); port 0 picks a free
    /// port. Fails with [`BindError::Io`] if the address is taken (until the
    /// endpoint holding it has stopped, or [`SimNetwork::crash`](crate::sim::SimNetwork::crash)
    /// freed it) or unspecified, and [`BindError::NoRuntime`] outside a
    /// tokio runtime.
    pub fn simulated(
        network: &crate::sim::SimNetwork,
        addr: SocketAddr,
        config: EndpointConfig,
        accept: bool,
        seed: u64,
    ) -> Result<Self, BindError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BindError::NoRuntime)?;
        let _entered = runtime.enter();
        let now = crate::util::now();
        let proto = new_core(
            &config,
            accept,
            seed,
            now,
            network.wall_clock_us(now),
            (0, 1),
        )?;
        let socket = network
            .bind(addr, config.socket_buffer_size)
            .map_err(|source| BindError::Io { addr, source })?;
        let local = socket.local_addr();
        Ok(Self::launch(
            &runtime,
            vec![(socket, vec![local], proto)],
            config,
            accept,
        ))
    }

    /// The address the (first) socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.first().local_addr
    }

    /// The addresses of every socket of the endpoint (see [`bind_many`](Endpoint::bind_many)).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner.first().local_addrs.clone()
    }

    /// How many driver tasks (shards) the endpoint runs (see
    /// [`EndpointConfig::drivers`]).
    pub fn drivers(&self) -> usize {
        self.inner.shards.len()
    }

    /// This endpoint's static public key, which peers authenticate it by
    /// (`None` in insecure plaintext mode).
    pub fn public_key(&self) -> Option<crate::PublicKey> {
        self.inner
            .first()
            .lock()
            .endpoint
            .identity()
            .map(|id| id.public())
    }

    /// The endpoint's settings.
    pub fn config(&self) -> &EndpointConfig {
        &self.inner.first().config
    }

    /// Connects to `remote` and waits for the handshake to complete.
    ///
    /// Fails with [`ConnectError::TimedOut`] when the peer does not answer within
    /// [`EndpointConfig::connect_timeout`], and with [`ConnectError::Failed`] when
    /// it refuses or the connection dies during the handshake.
    ///
    /// A refusal the server can only make after our last handshake message
    /// (our key is not on its allow-list, a pre-shared key mismatch) arrives
    /// after this returned: the connection then ends with
    /// [`ConnectionError::Rejected`](crate::ConnectionError::Rejected), which
    /// the next `send`, `recv`, `close` or `closed` reports.
    ///
    /// With several drivers, connections are made on each in turn.
    pub async fn connect(&self, remote: SocketAddr) -> Result<Connection, ConnectError> {
        let shards = &self.inner.shards;
        let shared = &shards[self.inner.connects.fetch_add(1, Ordering::Relaxed) % shards.len()];
        let timeout = shared.config.connect_timeout;
        let conn = {
            let mut st = shared.lock();
            if !st.driver_running {
                return Err(ConnectError::EndpointClosed);
            }
            let (handle, core) = st.endpoint.connect(crate::util::now(), remote);
            let cs = ConnState::new(core, true);
            let notify = cs.notify.clone();
            st.conns.insert(handle, cs);
            st.touch(handle);
            Connection::new(shared.clone(), handle, notify, remote)
        };
        shared.wake_driver.notify_one();
        tracing::debug!(%remote, "connecting");
        match tokio::time::timeout(timeout, conn.wait_connected()).await {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(e)) => Err(e),
            // Dropping `conn` aborts the half-made connection.
            Err(_) => Err(ConnectError::TimedOut {
                remote,
                after: timeout,
            }),
        }
    }

    /// Waits for the next incoming connection.
    ///
    /// Returns `None` on a client endpoint (which does not accept), or once the
    /// endpoint's driver has stopped.
    pub async fn accept(&self) -> Option<Connection> {
        self.wait_for(|shards| {
            for shared in shards {
                let mut st = shared.lock();
                while let Some(handle) = st.incoming.pop_front() {
                    if let Some(cs) = st.conns.get_mut(&handle) {
                        cs.queued = false;
                        cs.has_handle = true;
                        let remote = cs.conn.remote();
                        tracing::debug!(%remote, "connection accepted");
                        let notify = cs.notify.clone();
                        st.touch(handle);
                        return Some(Some(Connection::new(
                            shared.clone(),
                            handle,
                            notify,
                            remote,
                        )));
                    }
                }
            }
            shards
                .iter()
                .any(|shared| {
                    let st = shared.lock();
                    !st.accepting || !st.driver_running
                })
                .then_some(None)
        })
        .await
    }

    /// Waits for the outcome of the next incoming connection attempt: accepted
    /// (with the client's key), failed during the handshake (not on the
    /// allow-list, pre-shared key mismatch, the client refused our key, …) or
    /// refused statelessly (security mode mismatch, connection limit).
    ///
    /// For logging and auditing; reading them is optional. The events are
    /// kept in a bounded queue ([`HANDSHAKE_EVENT_CAPACITY`](crate::HANDSHAKE_EVENT_CAPACITY),
    /// the oldest are dropped). Returns `None` on a client endpoint, or once
    /// the endpoint's driver has stopped and every event was taken.
    ///
    /// ```no_run
    /// # async fn demo(server: surelink::Endpoint) {
    /// let log = server.clone();
    /// tokio::spawn(async move {
    ///     while let Some(event) = log.next_handshake_event().await {
    ///         eprintln!("{event}");
    ///     }
    /// });
    /// # }
    /// ```
    pub async fn next_handshake_event(&self) -> Option<HandshakeEvent> {
        self.wait_for(|shards| {
            if let Some(event) = shards
                .iter()
                .find_map(|shared| shared.lock().handshakes.pop())
            {
                return Some(Some(event));
            }
            shards
                .iter()
                .any(|shared| {
                    let st = shared.lock();
                    !st.driver_running || !st.accepting
                })
                .then_some(None)
        })
        .await
    }

    /// Waits until every connection of this endpoint has drained: closed, and
    /// done answering the peer's last packets. Call it before exiting the
    /// process after a close, so the peer's close completes too.
    pub async fn wait_idle(&self) {
        self.wait_for(|shards| {
            shards
                .iter()
                .all(|shared| {
                    let st = shared.lock();
                    !st.driver_running || st.conns.values().all(|cs| cs.conn.is_drained())
                })
                .then_some(())
        })
        .await
    }

    /// Waits until `check`, run over the shards (locking each as it needs)
    /// whenever the endpoint changes, returns a value. The waiter registers
    /// before it checks, so a change in between still wakes it.
    async fn wait_for<T>(&self, mut check: impl FnMut(&[Arc<Shared>]) -> Option<T>) -> T {
        let shards = &self.inner.shards;
        loop {
            let notified = shards[0].endpoint_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(out) = check(shards) {
                return out;
            }
            notified.await;
        }
    }

    /// Endpoint-wide counters (the sum over the drivers; `peak_connections`
    /// sums each driver's peak).
    pub fn stats(&self) -> EndpointStats {
        let mut total = EndpointStats::default();
        for shared in &self.inner.shards {
            {
                let st = shared.lock();
                total.protocol.add(st.endpoint.stats());
                total.connections += st.conns.values().filter(|cs| !cs.conn.is_drained()).count();
                total.peak_connections += st.peak_connections;
                total.handshake_failures.add(&st.handshakes_failed);
                total.handshake_events_dropped += st.handshakes.dropped;
            }
            let io = &shared.io;
            for (sum, counter) in [
                (&mut total.datagrams_received, &io.datagrams_received),
                (&mut total.bytes_received, &io.bytes_received),
                (&mut total.datagrams_sent, &io.datagrams_sent),
                (&mut total.bytes_sent, &io.bytes_sent),
                (&mut total.send_calls, &io.send_calls),
                (&mut total.recv_calls, &io.recv_calls),
                (&mut total.send_errors, &io.send_errors),
                (&mut total.recv_errors, &io.recv_errors),
                (&mut total.datagrams_handed_over, &io.handed_over),
            ] {
                *sum += IoCounters::get(counter);
            }
        }
        total.handshakes_failed = total.handshake_failures.total();
        total
    }
}

/// Warns when the kernel granted a listening endpoint's sockets less
/// receive buffer than configured: a server's socket queue is where a burst
/// of handshakes (thousands of clients connecting at once) or of data
/// waits while the driver catches up, and what does not fit is dropped.
fn warn_if_recv_buffer_capped(sockets: &[&std::net::UdpSocket], asked: usize) {
    if let Some(granted) = socket::capped_recv_buffer(sockets, asked) {
        tracing::warn!(
            asked,
            granted,
            "the kernel capped the socket receive buffer (granted as SO_RCVBUF reports it, \
             twice the usable size on Linux): bursts beyond it are dropped; raise \
             net.core.rmem_max, or run with CAP_NET_ADMIN"
        );
    }
}

/// Caps the protocol's receive window at what the sockets can queue: 3/4 of
/// the smallest receive buffer the kernel granted, never below one maximal
/// message. A window beyond the socket buffer lets the peer put more in
/// flight than the kernel can hold while the driver is busy, and the excess
/// is dropped (on clean loopback, with batched I/O, in whole GSO runs).
fn fit_window(config: &mut EndpointConfig, sockets: &[&std::net::UdpSocket]) {
    let Some(granted) = sockets
        .iter()
        .filter_map(|s| socket::granted_recv_buffer(s))
        .min()
    else {
        return;
    };
    let protocol = &mut config.protocol;
    let floor = (protocol.max_message_size as u64).saturating_add(MESSAGE_CREDIT_OVERHEAD);
    let window = (granted as u64 / 4 * 3).max(floor);
    if window < protocol.receive_window {
        tracing::debug!(
            asked = protocol.receive_window,
            granted,
            window,
            "receive window capped at the socket's receive buffer"
        );
        protocol.receive_window = window;
    }
}

/// The core endpoint of shard `index` of `count` (`(0, 1)`: the only one),
/// seeded with `seed` (the same for every shard of an endpoint: they share
/// its identity and keys), its connections timestamping with a wall clock
/// that reads `clock_us` at `now` (so that peers' clock estimates relate
/// real times), moved by the configured
/// [`clock_offset_us`](EndpointConfig::clock_offset_us). The connection
/// limits are split evenly over the shards.
fn new_core(
    config: &EndpointConfig,
    accept: bool,
    seed: impl Into<surelink_proto::Seed>,
    now: std::time::Instant,
    clock_us: u64,
    (index, count): (usize, usize),
) -> Result<surelink_proto::Endpoint, BindError> {
    let mut protocol = config.protocol.clone();
    protocol.max_connections = protocol.max_connections.div_ceil(count);
    protocol.retry_threshold = protocol.retry_threshold.div_ceil(count);
    let mut core = surelink_proto::Endpoint::new(protocol, seed, accept)?;
    core.set_shard(index, count);
    core.set_clock(now, clock_us.saturating_add_signed(config.clock_offset_us));
    Ok(core)
}

impl Drop for EndpointInner {
    fn drop(&mut self) {
        let now = crate::util::now();
        for shared in &self.shards {
            let mut st = shared.lock();
            st.open = false;
            st.accepting = false;
            let queued: Vec<_> = st.incoming.drain(..).collect();
            for handle in queued {
                if let Some(cs) = st.conns.get_mut(&handle) {
                    cs.queued = false;
                    cs.conn.abort(now, "the endpoint was closed");
                    cs.sync();
                }
                st.touch(handle);
            }
            drop(st);
            shared.wake_driver.notify_one();
        }
        self.first().endpoint_changed.notify_waiters();
    }
}
