//! A simulated network: test an application over surelink deterministically,
//! on virtual time, with no sockets.
//!
//! A [`SimNetwork`] connects simulated hosts (one per address). Each
//! direction between two addresses is a [`surelink_netem::Link`] — seeded
//! loss, bursts, delay, jitter, reordering, duplication, rate limits, cuts
//! — created on first use with the network's link configuration
//! ([`SimNetwork::set_default_link`], or per direction
//! [`SimNetwork::set_link`]) and a seed derived from the network's seed and
//! the two addresses. [`Endpoint::simulated`](crate::Endpoint::simulated)
//! creates an endpoint on the network: the same endpoint, connections and
//! sessions built on them (the `surelink-session` crate) as over UDP, only the datagrams go through the links.
//!
//! Time is tokio's clock. Under `#[tokio::test(start_paused = true)]` (a
//! current-thread runtime with a paused clock, tokio's `test-util` feature)
//! virtual time jumps to the next timer whenever every task is idle, so
//! minutes of simulated traffic take milliseconds. Randomness is an input
//! too: the network's seed, each endpoint's seed, and (for durable
//! sessions, their options' seed in the `surelink-session` crate).
//! With the same seeds and the same application code, a run on a paused
//! clock is reproducible: the same datagrams are lost, and every event
//! happens at the same virtual instant.
//!
//! ```
//! use std::time::Duration;
//! use surelink::sim::SimNetwork;
//! use surelink::{Endpoint, EndpointConfig};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // 5% loss and 20 ms of delay (±5 ms) in both directions, seed 7.
//! let network = SimNetwork::new(7);
//! network.set_default_link("loss=5%,delay=20ms,jitter=5ms".parse().unwrap());
//! let server_addr = "10.0.0.1:4433".parse().unwrap();
//! let server = Endpoint::simulated(&network, server_addr, EndpointConfig::default(), true, 1).unwrap();
//! let client = Endpoint::simulated(&network, "10.0.0.2:0".parse().unwrap(), EndpointConfig::default(), false, 2).unwrap();
//!
//! let receiver = tokio::spawn(async move {
//!     let conn = server.accept().await.unwrap();
//!     let mut total = 0;
//!     while let Ok(Some(msg)) = conn.recv().await {
//!         total += msg.len();
//!     }
//!     total
//! });
//! let started = tokio::time::Instant::now();
//! let conn = client.connect(server_addr).await.unwrap();
//! for _ in 0..100 {
//!     conn.send(vec![0u8; 1000].into()).await.unwrap();
//! }
//! conn.close().await.unwrap();
//! assert_eq!(receiver.await.unwrap(), 100_000);
//! // Virtual time: the same figure on every run with these seeds.
//! println!("done after {:?} of simulated time", started.elapsed());
//! assert!(network.stats().links.dropped() > 0);
//! # }
//! ```
//!
//! A host can [`crash`](SimNetwork::crash): its address is freed at once
//! (a restarted process can bind it again) and whatever the crashed
//! endpoint still sends is lost, so its peers hear nothing more, as after
//! `kill -9` of a real process.
//!
//! Hosts have a receive buffer of [`EndpointConfig::socket_buffer_size`](crate::EndpointConfig::socket_buffer_size)
//! bytes (datagrams arriving at a full buffer are dropped and counted in
//! [`SimStats::overflowed`]); sending never blocks (a link's bottleneck
//! queue, `queue=`, is where congestion drops happen). Datagrams addressed
//! to an address nobody has bound are counted in
//! [`SimStats::undeliverable`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use surelink_netem::{Fate, Link, LinkConfig, LinkStats, NetemError};
use tokio::time::Sleep;

use crate::socket::DatagramIo;

/// The simulated wall clock at the network's creation: 2026-01-01T00:00:00Z,
/// in µs since the Unix epoch (connections timestamp messages with it).
pub const SIM_WALL_CLOCK_START_US: u64 = 1_767_225_600_000_000;

/// First port handed out for port 0.
const FIRST_EPHEMERAL_PORT: u16 = 49_152;

/// Receive buffer of a host whose endpoint asked for none.
const DEFAULT_RECV_BUFFER: usize = 8 << 20;

/// A simulated network of hosts joined by seeded impaired links; see the
/// [module docs](self). Handles are cheap clones of one network.
#[derive(Clone)]
pub struct SimNetwork {
    net: Arc<Mutex<Net>>,
}

impl fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let net = self.lock();
        f.debug_struct("SimNetwork")
            .field("seed", &net.seed)
            .field("hosts", &net.hosts.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Counters of a [`SimNetwork`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Every link's counters, summed.
    pub links: LinkStats,
    /// Datagrams that arrived at an address nobody had bound.
    pub undeliverable: u64,
    /// Datagrams dropped at a host's full receive buffer.
    pub overflowed: u64,
    /// Datagrams a crashed host's endpoint tried to send (lost).
    pub sent_after_crash: u64,
    /// Hosts crashed with [`SimNetwork::crash`].
    pub crashes: u64,
}

/// The network's state, behind one lock.
struct Net {
    seed: u64,
    /// The network's creation, on tokio's clock: links start here (cut
    /// schedules are offsets from it).
    start: Instant,
    default_link: LinkConfig,
    /// Per-direction configurations, by (from, to).
    link_configs: BTreeMap<(SocketAddr, SocketAddr), LinkConfig>,
    /// Links by destination, then source.
    links: BTreeMap<SocketAddr, BTreeMap<SocketAddr, Link<Bytes>>>,
    /// Every link cut on demand.
    cut: bool,
    hosts: BTreeMap<SocketAddr, Host>,
    next_host_id: u64,
    next_port: u16,
    stats: SimStats,
}

/// A bound address.
struct Host {
    /// Tells this incarnation from a later one at the same address.
    id: u64,
    inbox: VecDeque<(SocketAddr, Bytes)>,
    inbox_bytes: usize,
    capacity: usize,
    /// The driver waiting for a datagram, and the delivery time its timer is
    /// armed for.
    waker: Option<Waker>,
    armed: Option<Instant>,
}

impl SimNetwork {
    /// A network whose links draw their randomness from `seed`, with clean
    /// links (no impairment) until [`set_default_link`](Self::set_default_link).
    /// Create it inside the runtime under test: links start at tokio's
    /// current instant.
    pub fn new(seed: u64) -> Self {
        SimNetwork {
            net: Arc::new(Mutex::new(Net {
                seed,
                start: crate::util::now(),
                default_link: LinkConfig::clean(),
                link_configs: BTreeMap::new(),
                links: BTreeMap::new(),
                cut: false,
                hosts: BTreeMap::new(),
                next_host_id: 0,
                next_port: FIRST_EPHEMERAL_PORT,
                stats: SimStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the configuration of every direction that has none of its own
    /// ([`set_link`](Self::set_link)), existing links included (they keep
    /// their packets in flight and random streams). The configuration was
    /// validated when parsed or built; an invalid one is rejected here.
    pub fn try_set_default_link(&self, config: LinkConfig) -> Result<(), NetemError> {
        config.validate()?;
        let mut net = self.lock();
        let Net {
            links,
            link_configs,
            ..
        } = &mut *net;
        for (to, from_links) in links.iter_mut() {
            for (from, link) in from_links.iter_mut() {
                if !link_configs.contains_key(&(*from, *to)) {
                    link.set_config(config.clone())?;
                }
            }
        }
        net.default_link = config;
        Ok(())
    }

    /// [`try_set_default_link`](Self::try_set_default_link) for a
    /// configuration known to be valid (parsed from a spec string or built
    /// with the `LinkConfig` helpers); an invalid one is ignored and logged.
    pub fn set_default_link(&self, config: LinkConfig) {
        if let Err(error) = self.try_set_default_link(config) {
            tracing::warn!(%error, "invalid simulated link configuration ignored");
        }
    }

    /// Sets the configuration of the direction `from` → `to` (created now
    /// if it does not exist yet).
    pub fn set_link(
        &self,
        from: SocketAddr,
        to: SocketAddr,
        config: LinkConfig,
    ) -> Result<(), NetemError> {
        config.validate()?;
        let mut net = self.lock();
        net.link(from, to)?.set_config(config.clone())?;
        net.link_configs.insert((from, to), config);
        Ok(())
    }

    /// Cuts (`true`) or restores (`false`) every link, present and future,
    /// in addition to any scheduled cuts. Datagrams already in flight are
    /// still delivered.
    pub fn set_cut(&self, cut: bool) {
        let mut net = self.lock();
        net.cut = cut;
        for link in net.links.values_mut().flat_map(|l| l.values_mut()) {
            link.set_cut(cut);
        }
    }

    /// The host at `addr` crashes: its address is freed at once (another
    /// endpoint may bind it: a restarted process), datagrams waiting in its
    /// receive buffer are lost, and everything its endpoint still sends is
    /// lost, so its peers hear nothing more. Datagrams in flight to the
    /// address reach whoever binds it next if they arrive after that, and
    /// are lost otherwise. Returns false if nothing was bound at `addr`.
    pub fn crash(&self, addr: SocketAddr) -> bool {
        let mut net = self.lock();
        let Some(host) = net.hosts.remove(&addr) else {
            return false;
        };
        net.stats.crashes += 1;
        if let Some(waker) = host.waker {
            waker.wake();
        }
        true
    }

    /// The addresses currently bound.
    pub fn hosts(&self) -> Vec<SocketAddr> {
        self.lock().hosts.keys().copied().collect()
    }

    /// The counters of the direction `from` → `to`, if it was used.
    pub fn link_stats(&self, from: SocketAddr, to: SocketAddr) -> Option<LinkStats> {
        self.lock()
            .links
            .get(&to)
            .and_then(|l| l.get(&from))
            .map(|l| *l.stats())
    }

    /// The network's counters.
    pub fn stats(&self) -> SimStats {
        let net = self.lock();
        let mut stats = net.stats;
        for link in net.links.values().flat_map(|l| l.values()) {
            add_link_stats(&mut stats.links, link.stats());
        }
        stats
    }

    /// The simulated wall clock (µs since the Unix epoch) at `now`: it
    /// reads [`SIM_WALL_CLOCK_START_US`] when the network was created.
    pub(crate) fn wall_clock_us(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.lock().start);
        SIM_WALL_CLOCK_START_US.saturating_add(u64::try_from(elapsed.as_micros()).unwrap_or(0))
    }

    /// Binds `addr` (port 0: a free port) for an endpoint with a receive
    /// buffer of `buffer_size` bytes.
    pub(crate) fn bind(&self, addr: SocketAddr, buffer_size: usize) -> io::Result<SimSocket> {
        if addr.ip().is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "a simulated endpoint needs a specific IP address",
            ));
        }
        let now = crate::util::now();
        let mut net = self.lock();
        let addr = if addr.port() == 0 {
            net.free_port(addr)?
        } else if net.hosts.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "the simulated address is in use",
            ));
        } else {
            addr
        };
        // Datagrams that arrived while nobody was bound here are lost.
        net.deliver(addr, now);
        let id = net.next_host_id;
        net.next_host_id += 1;
        net.hosts.insert(
            addr,
            Host {
                id,
                inbox: VecDeque::new(),
                inbox_bytes: 0,
                capacity: if buffer_size == 0 {
                    DEFAULT_RECV_BUFFER
                } else {
                    buffer_size
                },
                waker: None,
                armed: None,
            },
        );
        drop(net);
        Ok(SimSocket {
            net: self.net.clone(),
            addr,
            id,
            timer: Mutex::new(Box::pin(tokio::time::sleep(Duration::ZERO))),
        })
    }
}

impl Net {
    /// The link `from` → `to`, created with its configuration and seed if new.
    fn link(&mut self, from: SocketAddr, to: SocketAddr) -> Result<&mut Link<Bytes>, NetemError> {
        let config = self
            .link_configs
            .get(&(from, to))
            .unwrap_or(&self.default_link)
            .clone();
        let (seed, start, cut) = (link_seed(self.seed, from, to), self.start, self.cut);
        match self.links.entry(to).or_default().entry(from) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                let mut link = Link::new(config, seed, start)?;
                link.set_cut(cut);
                Ok(e.insert(link))
            }
        }
    }

    /// A free port on `addr`'s IP, counting up from the last one given.
    fn free_port(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        for _ in 0..=u16::MAX - FIRST_EPHEMERAL_PORT {
            let candidate = SocketAddr::new(addr.ip(), self.next_port);
            self.next_port = self
                .next_port
                .checked_add(1)
                .unwrap_or(FIRST_EPHEMERAL_PORT);
            if !self.hosts.contains_key(&candidate) {
                return Ok(candidate);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free simulated port",
        ))
    }

    /// Moves the datagrams due at `now` on the links to `to` into its
    /// receive buffer, in delivery-time order (ties by source address, then
    /// send order); without a host there, they are lost.
    fn deliver(&mut self, to: SocketAddr, now: Instant) {
        let Some(links) = self.links.get_mut(&to) else {
            return;
        };
        let mut due = Vec::new();
        for (from, link) in links.iter_mut() {
            while let Some(d) = link.poll_delivery(now) {
                due.push((d.at, *from, d.payload));
            }
        }
        if due.is_empty() {
            return;
        }
        due.sort_by_key(|(at, from, _)| (*at, *from));
        let Some(host) = self.hosts.get_mut(&to) else {
            self.stats.undeliverable += due.len() as u64;
            return;
        };
        for (_, from, data) in due {
            if host.inbox_bytes + data.len() > host.capacity {
                self.stats.overflowed += 1;
                continue;
            }
            host.inbox_bytes += data.len();
            host.inbox.push_back((from, data));
        }
    }

    /// When the next datagram to `to` becomes deliverable.
    fn next_delivery(&self, to: SocketAddr) -> Option<Instant> {
        self.links
            .get(&to)?
            .values()
            .filter_map(Link::next_delivery)
            .min()
    }

    /// The host at `addr` if it is still incarnation `id`.
    fn host(&mut self, addr: SocketAddr, id: u64) -> Option<&mut Host> {
        self.hosts.get_mut(&addr).filter(|h| h.id == id)
    }
}

/// The seed of the link `from` → `to`: the network's seed mixed with both
/// addresses (so it does not depend on the order links are first used).
fn link_seed(seed: u64, from: SocketAddr, to: SocketAddr) -> u64 {
    let mut h = splitmix(seed);
    for addr in [from, to] {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(ip) => ip.octets(),
        };
        h = splitmix(h ^ u64::from_le_bytes(ip[..8].try_into().expect("8 bytes")));
        h = splitmix(h ^ u64::from_le_bytes(ip[8..].try_into().expect("8 bytes")));
        h = splitmix(h ^ u64::from(addr.port()));
    }
    h
}

/// One step of SplitMix64: a fixed, well-mixing function of its input.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn add_link_stats(sum: &mut LinkStats, s: &LinkStats) {
    sum.sent += s.sent;
    sum.delivered += s.delivered;
    sum.dropped_loss += s.dropped_loss;
    sum.dropped_burst += s.dropped_burst;
    sum.dropped_cut += s.dropped_cut;
    sum.dropped_queue += s.dropped_queue;
    sum.duplicated += s.duplicated;
    sum.reordered += s.reordered;
    sum.bytes_in += s.bytes_in;
    sum.bytes_out += s.bytes_out;
}

/// An endpoint's socket on a [`SimNetwork`]: the driver's [`DatagramIo`].
pub(crate) struct SimSocket {
    net: Arc<Mutex<Net>>,
    addr: SocketAddr,
    id: u64,
    /// Fires when the next datagram to this address becomes deliverable.
    timer: Mutex<Pin<Box<Sleep>>>,
}

impl SimSocket {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl DatagramIo for SimSocket {
    fn sockets(&self) -> usize {
        1
    }

    fn max_segments(&self, _local: usize) -> usize {
        // One datagram per call, like a socket without offloads: simulated
        // runs do not depend on how the driver batched.
        1
    }

    fn try_recv(
        &mut self,
        _local: usize,
        mut sink: impl FnMut(SocketAddr, BytesMut),
    ) -> io::Result<usize> {
        let now = crate::util::now();
        let mut net = self.lock();
        if net
            .host(self.addr, self.id)
            .is_some_and(|h| h.inbox.is_empty())
        {
            net.deliver(self.addr, now);
        }
        // Crashed, or nothing due: would block.
        let Some(host) = net.host(self.addr, self.id) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let Some((from, data)) = host.inbox.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        host.inbox_bytes -= data.len();
        drop(net);
        sink(from, BytesMut::from(&data[..]));
        Ok(1)
    }

    fn try_send(
        &self,
        _local: usize,
        dest: SocketAddr,
        data: &[u8],
        _segment: usize, // one datagram per call: see `max_segments`
    ) -> io::Result<()> {
        let now = crate::util::now();
        let mut net = self.lock();
        if net.host(self.addr, self.id).is_none() {
            net.stats.sent_after_crash += 1;
            return Ok(());
        }
        let link = net
            .link(self.addr, dest)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let fate = link.send(now, data.len(), Bytes::copy_from_slice(data));
        if let Fate::Scheduled { deliver_at, .. } = fate {
            // Wake the receiver if this datagram is due before its timer.
            if let Some(host) = net.hosts.get_mut(&dest) {
                if host.armed.is_none_or(|armed| deliver_at < armed) {
                    host.armed = Some(deliver_at);
                    if let Some(waker) = host.waker.take() {
                        waker.wake();
                    }
                }
            }
        }
        Ok(())
    }

    fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // At most two passes: the second after the timer fired at once.
        for _ in 0..2 {
            let now = crate::util::now();
            let mut net = self.lock();
            if net.host(self.addr, self.id).is_none() {
                // Crashed: nothing will ever arrive.
                return Poll::Pending;
            }
            net.deliver(self.addr, now);
            let next = net.next_delivery(self.addr);
            let host = net.host(self.addr, self.id).expect("checked above");
            if !host.inbox.is_empty() {
                return Poll::Ready(Ok(()));
            }
            host.waker = Some(cx.waker().clone());
            host.armed = next;
            drop(net);
            let Some(at) = next else {
                return Poll::Pending;
            };
            let mut timer = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
            let deadline = tokio::time::Instant::from_std(at);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // The timer fired but nothing was due yet (it cannot fire early;
        // this only guards against looping): poll again soon.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_send_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        let mut net = self.lock();
        if net.host(self.addr, self.id).is_some() {
            net.hosts.remove(&self.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one datagram, as the driver does.
    fn send(socket: &SimSocket, data: &[u8], dest: SocketAddr) -> io::Result<()> {
        socket.try_send(0, dest, data, data.len())
    }

    /// Receives one datagram, as the driver does.
    fn recv(socket: &mut SimSocket) -> io::Result<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        socket.try_recv(0, |from, data| got.push((data.to_vec(), from)))?;
        assert_eq!(got.len(), 1, "one datagram per call");
        Ok(got.remove(0))
    }

    #[test]
    fn link_seeds_depend_on_both_addresses_and_the_seed() {
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        assert_ne!(link_seed(1, a, b), link_seed(1, b, a));
        assert_ne!(link_seed(1, a, b), link_seed(2, a, b));
        assert_eq!(link_seed(1, a, b), link_seed(1, a, b));
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_are_exclusive_until_freed() {
        let network = SimNetwork::new(0);
        let addr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let socket = network.bind(addr, 0).unwrap();
        let err = network.bind(addr, 0).err().expect("in use");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(network.bind("0.0.0.0:1".parse().unwrap(), 0).is_err());
        let ephemeral = network.bind("10.0.0.1:0".parse().unwrap(), 0).unwrap();
        assert_eq!(ephemeral.local_addr().port(), FIRST_EPHEMERAL_PORT);
        assert!(network.crash(addr));
        assert!(!network.crash(addr));
        let again = network.bind(addr, 0).unwrap();
        // The crashed incarnation's drop does not free the new one.
        drop(socket);
        assert_eq!(network.hosts(), vec![addr, ephemeral.local_addr()]);
        drop(again);
        assert_eq!(network.hosts(), vec![ephemeral.local_addr()]);
    }

    #[tokio::test(start_paused = true)]
    async fn datagrams_arrive_after_the_link_delay_and_not_after_a_crash() {
        let network = SimNetwork::new(3);
        network.set_default_link("delay=10ms".parse().unwrap());
        let a = network.bind("10.0.0.1:1".parse().unwrap(), 0).unwrap();
        let mut b = network.bind("10.0.0.2:1".parse().unwrap(), 0).unwrap();
        let start = tokio::time::Instant::now();
        send(&a, b"ping", b.local_addr()).unwrap();
        let err = recv(&mut b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        std::future::poll_fn(|cx| b.poll_recv_ready(cx))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        assert_eq!(recv(&mut b).unwrap(), (b"ping".to_vec(), a.local_addr()));

        // After a crash, what the crashed host sends is lost.
        assert!(network.crash(a.local_addr()));
        send(&a, b"lost", b.local_addr()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(recv(&mut b).is_err());
        let stats = network.stats();
        assert_eq!(stats.sent_after_crash, 1);
        assert_eq!(stats.links.delivered, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn links_are_configured_per_direction_and_can_be_cut() {
        let network = SimNetwork::new(5);
        let mut a = network.bind("10.0.0.1:1".parse().unwrap(), 0).unwrap();
        let mut b = network.bind("10.0.0.2:1".parse().unwrap(), 0).unwrap();
        let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
        let invalid = LinkConfig::clean().with_loss(2.0);
        assert!(network.try_set_default_link(invalid.clone()).is_err());
        assert!(network.set_link(a_addr, b_addr, invalid).is_err());
        // a → b loses everything; b → a is clean.
        network
            .set_link(a_addr, b_addr, LinkConfig::clean().with_loss(1.0))
            .unwrap();
        for _ in 0..10 {
            send(&a, b"x", b_addr).unwrap();
            send(&b, b"y", a_addr).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(recv(&mut b).is_err());
        let mut got = 0;
        while recv(&mut a).is_ok() {
            got += 1;
        }
        assert_eq!(got, 10);
        assert_eq!(network.link_stats(a_addr, b_addr).unwrap().dropped_loss, 10);
        // A cut drops both ways, and applies to links made later too.
        network.set_cut(true);
        send(&b, b"y", a_addr).unwrap();
        let c: SocketAddr = "10.0.0.3:1".parse().unwrap();
        send(&b, b"z", c).unwrap();
        assert_eq!(network.link_stats(b_addr, a_addr).unwrap().dropped_cut, 1);
        assert_eq!(network.link_stats(b_addr, c).unwrap().dropped_cut, 1);
        network.set_cut(false);
        // Nobody at `c`: lost on arrival.
        send(&b, b"z", c).unwrap();
        let mut small = network.bind(c, 4).unwrap();
        assert_eq!(network.stats().undeliverable, 1);
        // A full receive buffer (4 bytes here) drops what arrives.
        send(&b, b"abc", c).unwrap();
        send(&b, b"def", c).unwrap();
        assert_eq!(recv(&mut small).unwrap(), (b"abc".to_vec(), b_addr));
        assert!(recv(&mut small).is_err());
        assert_eq!(network.stats().overflowed, 1);
    }

    /// Found by the crash simulation: an aborted connection's CLOSE waited
    /// for room in the congestion window, so with the window full it left
    /// only after an ACK came back (never, if the peer had vanished).
    #[tokio::test(start_paused = true)]
    async fn an_abort_leaves_at_once_even_with_a_full_congestion_window() {
        use crate::{Endpoint, EndpointConfig};
        let network = SimNetwork::new(1);
        network.set_default_link("delay=20ms".parse().unwrap());
        let (s, c): (SocketAddr, SocketAddr) =
            ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
        let server = Endpoint::simulated(&network, s, EndpointConfig::default(), true, 1).unwrap();
        let client = Endpoint::simulated(&network, c, EndpointConfig::default(), false, 2).unwrap();
        let conn = client.connect(s).await.unwrap();
        let accepted = server.accept().await.unwrap();
        conn.send(Bytes::from(vec![0u8; 4 << 20])).await.unwrap();
        let mut full = false;
        for _ in 0..10_000 {
            let stats = conn.stats();
            if stats.bytes_in_flight + 1500 > stats.cwnd {
                full = true;
                break;
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        assert!(full, "the congestion window fills");
        let sent = network.link_stats(c, s).unwrap().sent;
        let at = tokio::time::Instant::now();
        conn.abort("bye");
        // Let the driver run, without letting time pass.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(at, tokio::time::Instant::now());
        assert!(
            network.link_stats(c, s).unwrap().sent > sent,
            "the CLOSE left"
        );
        let closed = accepted.closed().await;
        assert!(
            matches!(closed, Some(crate::ConnectionError::PeerClosed { .. })),
            "{closed:?}"
        );
    }
}
