//! Demultiplexing datagrams to connections, creating connections, and the
//! server's defences against floods.
//!
//! An [`Endpoint`] owns no socket either. The caller hands it each datagram
//! that arrived on its socket; the endpoint says which connection it belongs to
//! ([`DatagramEvent::Known`]), hands over a newly accepted connection
//! ([`DatagramEvent::New`]), asks for a stateless answer to be sent
//! ([`DatagramEvent::Respond`]: a Retry or a Reject), or drops it with a reason.
//! Client Initial packets are routed by (source address, client connection
//! id); every other packet by the destination connection id the endpoint issued.
//!
//! Defences, all before any per-connection state or public-key operation: an
//! Initial must be padded to 1200 bytes; each source address has a token-bucket
//! budget of handshakes; when many handshakes are in progress the server
//! answers with a stateless Retry token (HMAC of address, id and time) and only
//! a client that echoes it gets state; the number of connections is capped; and
//! every stateless answer is smaller than the Initial that caused it.
//!
//! A Data packet for a connection id the endpoint does not know (the
//! connection belonged to a previous run of this process) is answered with a
//! stateless Reset carrying that id's reset token (`crypto::ResetKey`), so the
//! peer closes its side within one round trip instead of at its idle timeout.
//! Resets are rate-limited endpoint-wide, always smaller than the packet that
//! caused them, and never sent in answer to a Reset (a Reset for an unknown id
//! is dropped), so they cannot amplify or loop.
//!
//! Shards: a runtime that spreads one endpoint's connections over several
//! cores runs one core `Endpoint` per shard ([`Endpoint::set_shard`]). Every
//! connection id a shard issues is congruent to its index modulo the number
//! of shards, so whoever receives a datagram can tell from its header which
//! shard owns it ([`shard_route`]) without asking any shard.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::config::{Config, ConfigError, MIN_DATAGRAM_SIZE};
use crate::conn::{close_code, Connection, NewConnection};
use crate::crypto::{Identity, ResetKey, RetryTokens, Security, RESET_TOKEN_LEN};
use crate::stats_schema::{Metric, StatsVisitor, Unit, VisitStats};
use crate::wire::{Frame, FrameIter, Header, PacketKind, Reader, FLAG_PLAINTEXT};

/// How long a retry token stays valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(10);
/// Most source addresses whose handshake budget is remembered.
const MAX_TRACKED_SOURCES: usize = 4096;
/// Stateless resets an endpoint sends in a burst, endpoint-wide …
const RESET_BURST: f64 = 16.0;
/// … refilled at this rate per second.
const RESET_RATE: f64 = 64.0;
/// Size of a Reset packet: header (10 bytes, packet number 0) and one TOKEN frame.
pub const RESET_PACKET_LEN: usize = 11 + 2 + RESET_TOKEN_LEN;

/// 32 bytes of seed for an endpoint's generator (connection ids, ephemeral
/// keys, identities, retry secret). The runtime draws it from the OS; tests
/// expand a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl From<[u8; 32]> for Seed {
    fn from(b: [u8; 32]) -> Self {
        Self(b)
    }
}

impl From<u64> for Seed {
    fn from(v: u64) -> Self {
        let mut b = [0u8; 32];
        ChaCha20Rng::seed_from_u64(v).fill_bytes(&mut b);
        Self(b)
    }
}

/// A datagram the endpoint wants sent without a connection (Retry, Reject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram.
    pub data: Vec<u8>,
}

/// Identifies a connection within its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub u64);

/// What to do with a datagram.
#[derive(Debug)]
#[non_exhaustive]
pub enum DatagramEvent {
    /// It belongs to this existing connection: pass it to `handle_datagram`.
    Known(ConnectionHandle),
    /// A new connection was accepted; pass the datagram to its `handle_datagram`.
    New(ConnectionHandle, Box<Connection>),
    /// Send this stateless answer; nothing else to do.
    Respond(Response),
    /// Dropped, for this reason.
    Dropped(DropReason),
}

/// Why the endpoint dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a surelink packet of a version we speak.
    Malformed,
    /// No connection has this id.
    UnknownConnection,
    /// An Initial that is too small or lacks CONNECT.
    BadInitial,
    /// The endpoint does not accept connections.
    Refused,
    /// The source address exceeded its handshake budget.
    RateLimited,
}

/// Endpoint-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Datagrams that were not surelink packets.
    pub malformed: u64,
    /// Datagrams for unknown connection ids.
    pub unknown_connection: u64,
    /// Initials that were refused or invalid.
    pub refused: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Stateless Retry answers sent.
    pub retries_sent: u64,
    /// Reject answers sent (mode mismatch, busy).
    pub rejects_sent: u64,
    /// Initials dropped by the per-source handshake budget.
    pub rate_limited: u64,
    /// Initials with an invalid (expired, forged, misdirected) retry token,
    /// answered with a fresh Retry while the server is under load.
    pub bad_tokens: u64,
    /// Stateless Resets sent for unknown connection ids.
    pub resets_sent: u64,
    /// Data packets for unknown connection ids left unanswered because of
    /// the Reset rate limit or their size (Resets themselves are never
    /// answered and count as `unknown_connection` only).
    pub resets_suppressed: u64,
}

impl VisitStats for EndpointStats {
    fn visit<V: StatsVisitor + ?Sized>(&self, v: &mut V) {
        let c = |key, family, help| Metric::counter(key, family, Unit::Count, help);
        v.counter(
            &c(
                "malformed",
                "endpoint_malformed_datagrams",
                "Datagrams that were not surelink packets.",
            ),
            self.malformed,
        );
        v.counter(
            &c(
                "unknown_connection",
                "endpoint_unknown_connection_datagrams",
                "Datagrams for unknown connection ids.",
            ),
            self.unknown_connection,
        );
        let refused = "Client Initials that started no handshake, by reason.";
        v.counter(
            &c("refused", "endpoint_initials_refused", refused).with_label("reason", "refused"),
            self.refused,
        );
        v.counter(
            &c("rate_limited", "endpoint_initials_refused", refused)
                .with_label("reason", "rate_limited"),
            self.rate_limited,
        );
        v.counter(
            &c("bad_tokens", "endpoint_initials_refused", refused)
                .with_label("reason", "bad_token"),
            self.bad_tokens,
        );
        v.counter(
            &c("accepted", "endpoint_accepted", "Connections accepted."),
            self.accepted,
        );
        v.counter(
            &c(
                "retries_sent",
                "endpoint_retries_sent",
                "Stateless Retry answers sent.",
            ),
            self.retries_sent,
        );
        v.counter(
            &c(
                "rejects_sent",
                "endpoint_rejects_sent",
                "Reject answers sent (mode mismatch, busy).",
            ),
            self.rejects_sent,
        );
        v.counter(
            &c(
                "resets_sent",
                "endpoint_resets_sent",
                "Stateless Resets sent for unknown connection ids.",
            ),
            self.resets_sent,
        );
        v.counter(
            &c("resets_suppressed", "endpoint_resets_suppressed", "Data packets for unknown connection ids left unanswered (Reset rate limit or size)."),
            self.resets_suppressed,
        );
    }
}

/// Which shard of an endpoint should handle a datagram (see [`shard_route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardRoute {
    /// The shard that received it: a client's Initial (a new connection
    /// belongs to the shard that took its first packet, and a client's
    /// Initials all come from one address), or not a surelink packet.
    Receiver,
    /// The shard that issued its destination connection id.
    Shard(usize),
    /// Every shard: a stateless Reset is addressed to an id the peer issued,
    /// which says nothing about the shard.
    Every,
}

/// Where `datagram` goes among `shards` shards whose connection ids were
/// issued by [`Endpoint`]s configured with [`Endpoint::set_shard`]. Reads
/// only the packet header; one shard (or none) always means
/// [`ShardRoute::Receiver`].
pub fn shard_route(datagram: &[u8], shards: usize) -> ShardRoute {
    if shards <= 1 {
        return ShardRoute::Receiver;
    }
    let Ok(header) = Header::decode(&mut Reader::new(datagram)) else {
        return ShardRoute::Receiver;
    };
    match header.kind {
        PacketKind::Initial => ShardRoute::Receiver,
        PacketKind::Reset => ShardRoute::Every,
        PacketKind::Handshake | PacketKind::Data | PacketKind::Retry | PacketKind::Reject => {
            ShardRoute::Shard((header.dcid % shards as u64) as usize)
        }
    }
}

impl EndpointStats {
    /// Adds `other`'s counters to these (the counters of an endpoint made
    /// of several shards).
    pub fn add(&mut self, other: &Self) {
        let Self {
            malformed,
            unknown_connection,
            refused,
            accepted,
            retries_sent,
            rejects_sent,
            rate_limited,
            bad_tokens,
            resets_sent,
            resets_suppressed,
        } = other;
        self.malformed += malformed;
        self.unknown_connection += unknown_connection;
        self.refused += refused;
        self.accepted += accepted;
        self.retries_sent += retries_sent;
        self.rejects_sent += rejects_sent;
        self.rate_limited += rate_limited;
        self.bad_tokens += bad_tokens;
        self.resets_sent += resets_sent;
        self.resets_suppressed += resets_suppressed;
    }
}

/// The ids a connection is known by.
#[derive(Debug, Clone, Copy)]
struct Cids {
    local: u64,
    peer: Option<u64>,
    initial: Option<(SocketAddr, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Routes datagrams and mints connections.
#[derive(Debug)]
pub struct Endpoint {
    config: Arc<Config>,
    rng: ChaCha20Rng,
    accept: bool,
    identity: Option<Identity>,
    retry: RetryTokens,
    reset_key: ResetKey,
    reset_budget: Option<Bucket>,
    epoch: Option<Instant>,
    recent_handshakes: VecDeque<Instant>,
    sources: HashMap<SocketAddr, Bucket>,
    clock: Option<(Instant, u64)>,
    by_cid: HashMap<u64, ConnectionHandle>,
    /// Peer connection ids (what Resets are addressed to).
    by_peer_cid: HashMap<u64, ConnectionHandle>,
    initials: HashMap<(SocketAddr, u64), ConnectionHandle>,
    cids: HashMap<ConnectionHandle, Cids>,
    next_handle: u64,
    /// This endpoint's shard and the number of shards: every id it issues
    /// is congruent to the first modulo the second.
    shard: (u64, u64),
    stats: EndpointStats,
}

impl Endpoint {
    /// An endpoint with `config`, randomness drawn from a generator seeded with
    /// `seed`; it accepts incoming connections when `accept` is true. In
    /// encrypted mode without a configured identity, an ephemeral one is generated.
    pub fn new(config: Config, seed: impl Into<Seed>, accept: bool) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut rng = ChaCha20Rng::from_seed(seed.into().0);
        let identity = match &config.security {
            Security::Encrypted(c) => Some(
                c.identity
                    .clone()
                    .unwrap_or_else(|| Identity::generate(&mut rng)),
            ),
            Security::InsecurePlaintext => None,
        };
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let reset_key = match (&config.reset_secret, &config.security) {
            (Some(s), _) => ResetKey::from_secret(s),
            (None, Security::Encrypted(c)) if c.identity.is_some() => {
                ResetKey::from_identity(identity.as_ref().expect("configured identity"))
            }
            _ => ResetKey::random(&mut rng),
        };
        Ok(Self {
            config: Arc::new(config),
            rng,
            accept,
            identity,
            retry: RetryTokens::new(secret),
            reset_key,
            reset_budget: None,
            epoch: None,
            recent_handshakes: VecDeque::new(),
            sources: HashMap::new(),
            clock: None,
            by_cid: HashMap::new(),
            by_peer_cid: HashMap::new(),
            initials: HashMap::new(),
            cids: HashMap::new(),
            next_handle: 0,
            shard: (0, 1),
            stats: EndpointStats::default(),
        })
    }

    /// The endpoint's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets the clock new connections report: it reads `clock_us` at `now`
    /// (the runtime passes the wall clock in µs since the Unix epoch, so peers
    /// can align to each other; without it, each connection's clock starts at 0).
    pub fn set_clock(&mut self, now: Instant, clock_us: u64) {
        self.clock = Some((now, clock_us));
    }

    fn clock_at(&self, now: Instant) -> Option<u64> {
        self.clock.map(|(at, us)| {
            if now >= at {
                us.saturating_add(now.duration_since(at).as_micros() as u64)
            } else {
                us.saturating_sub(at.duration_since(now).as_micros() as u64)
            }
        })
    }

    /// This endpoint's identity (encrypted mode).
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.cids.len()
    }

    /// Makes this endpoint shard `index` of `count` (`index < count`), before
    /// it makes or accepts any connection: every connection id it issues is
    /// then congruent to `index` modulo `count` (see [`shard_route`]).
    ///
    /// The shards of one endpoint are made from the same seed, so they share
    /// the identity, the retry secret and the reset key drawn at creation;
    /// from here on shard `index` draws from its own stream of the generator
    /// (shard 0 keeps the stream an unsharded endpoint uses), so no two
    /// shards give their connections the same ids or key material.
    pub fn set_shard(&mut self, index: usize, count: usize) {
        debug_assert!(index < count && self.cids.is_empty());
        let count = count.max(1) as u64;
        let index = (index as u64).min(count - 1);
        self.shard = (index, count);
        if index != 0 {
            self.rng.set_stream(index);
        }
    }

    fn fresh_cid(&mut self) -> u64 {
        let (index, count) = self.shard;
        loop {
            let raw = self.rng.next_u64();
            // The nearest id at or below `raw` in this shard's class.
            let Some(cid) = (raw - raw % count).checked_add(index) else {
                continue;
            };
            if cid != 0 && !self.by_cid.contains_key(&cid) {
                return cid;
            }
        }
    }

    fn register(&mut self, cid: u64, initial: Option<(SocketAddr, u64)>) -> ConnectionHandle {
        let h = ConnectionHandle(self.next_handle);
        self.next_handle += 1;
        self.by_cid.insert(cid, h);
        let peer = initial.map(|(_, client_cid)| client_cid);
        if let Some(key) = initial {
            self.initials.insert(key, h);
            self.by_peer_cid.insert(key.1, h);
        }
        self.cids.insert(
            h,
            Cids {
                local: cid,
                peer,
                initial,
            },
        );
        h
    }

    /// Tells the endpoint the connection id the peer of `h` issued (a client
    /// learns it in the handshake: `Connection::peer_cid`), so that the
    /// peer's stateless Resets reach `h`. The runtime calls it once `h` is
    /// connected; for accepted connections it is known from the start.
    pub fn set_peer_cid(&mut self, h: ConnectionHandle, peer_cid: u64) {
        let Some(ids) = self.cids.get_mut(&h) else {
            return;
        };
        if let Some(old) = ids.peer.replace(peer_cid) {
            if self.by_peer_cid.get(&old) == Some(&h) {
                self.by_peer_cid.remove(&old);
            }
        }
        self.by_peer_cid.insert(peer_cid, h);
    }

    /// Starts a connection to `remote`.
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> (ConnectionHandle, Connection) {
        let cid = self.fresh_cid();
        let h = self.register(cid, None);
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let clock = self.clock_at(now);
        let conn = Connection::client(
            NewConnection {
                config: self.config.clone(),
                local_cid: cid,
                reset_token: self.reset_key.token(cid),
                remote,
                now,
                identity: self.identity.as_ref(),
                seed,
            },
            clock,
        );
        (h, conn)
    }

    /// Routes one datagram from `remote`.
    pub fn handle(&mut self, now: Instant, remote: SocketAddr, datagram: &[u8]) -> DatagramEvent {
        let mut r = Reader::new(datagram);
        let Ok(header) = Header::decode(&mut r) else {
            self.stats.malformed += 1;
            return DatagramEvent::Dropped(DropReason::Malformed);
        };
        if header.kind == PacketKind::Reset {
            // Addressed to the id the peer issued; never answered.
            return match self.by_peer_cid.get(&header.dcid) {
                Some(&h) => DatagramEvent::Known(h),
                None => {
                    self.stats.unknown_connection += 1;
                    DatagramEvent::Dropped(DropReason::UnknownConnection)
                }
            };
        }
        if header.kind != PacketKind::Initial {
            return match self.by_cid.get(&header.dcid) {
                Some(&h) => DatagramEvent::Known(h),
                None => {
                    self.stats.unknown_connection += 1;
                    if header.kind == PacketKind::Data {
                        self.stateless_reset(now, remote, header.dcid, datagram.len())
                    } else {
                        DatagramEvent::Dropped(DropReason::UnknownConnection)
                    }
                }
            };
        }
        if let Some(&h) = self.initials.get(&(remote, header.dcid)) {
            return DatagramEvent::Known(h);
        }
        self.handle_new_initial(now, remote, datagram, &header, r.remaining())
    }

    /// Answers a Data packet of `len` bytes for the unknown id `cid` with a
    /// Reset, if it is larger than the Reset and the rate limit allows.
    fn stateless_reset(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        cid: u64,
        len: usize,
    ) -> DatagramEvent {
        let budget = self.reset_budget.get_or_insert(Bucket {
            tokens: RESET_BURST,
            last: now,
        });
        budget.tokens = (budget.tokens
            + now.saturating_duration_since(budget.last).as_secs_f64() * RESET_RATE)
            .min(RESET_BURST);
        budget.last = now;
        if len <= RESET_PACKET_LEN || budget.tokens < 1.0 {
            self.stats.resets_suppressed += 1;
            return DatagramEvent::Dropped(DropReason::UnknownConnection);
        }
        budget.tokens -= 1.0;
        self.stats.resets_sent += 1;
        let token = self.reset_key.token(cid);
        let response = self.stateless(PacketKind::Reset, cid, Frame::Token(&token), remote);
        debug_assert_eq!(response.data.len(), RESET_PACKET_LEN);
        DatagramEvent::Respond(response)
    }

    fn ms_since_epoch(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_millis() as u64
    }

    fn stateless(&self, kind: PacketKind, dcid: u64, frame: Frame<'_>, to: SocketAddr) -> Response {
        let flags = match self.config.security {
            Security::InsecurePlaintext => FLAG_PLAINTEXT,
            Security::Encrypted(_) => 0,
        };
        let mut data = Vec::new();
        Header {
            kind,
            flags,
            dcid,
            pn: 0,
        }
        .encode(&mut data);
        frame.encode(&mut data);
        Response {
            destination: to,
            data,
        }
    }

    fn reject(&mut self, remote: SocketAddr, dcid: u64, code: u64, reason: &str) -> DatagramEvent {
        self.stats.rejects_sent += 1;
        DatagramEvent::Respond(self.stateless(
            PacketKind::Reject,
            dcid,
            Frame::Close { code, reason },
            remote,
        ))
    }

    /// Spends one unit of `remote`'s handshake budget; false if it has none.
    fn take_source_budget(&mut self, now: Instant, remote: SocketAddr) -> bool {
        let burst = f64::from(self.config.source_handshake_burst);
        let rate = f64::from(self.config.source_handshake_rate);
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate).min(burst)
        };
        if self.sources.len() >= MAX_TRACKED_SOURCES && !self.sources.contains_key(&remote) {
            self.sources.retain(|_, b| refill(b) < burst);
            if self.sources.len() >= MAX_TRACKED_SOURCES {
                self.sources.clear();
            }
        }
        let b = self.sources.entry(remote).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        b.tokens = refill(b);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn handle_new_initial(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        datagram: &[u8],
        header: &Header,
        frames_len: usize,
    ) -> DatagramEvent {
        if !self.accept {
            self.stats.refused += 1;
            return DatagramEvent::Dropped(DropReason::Refused);
        }
        if datagram.len() < MIN_DATAGRAM_SIZE {
            self.stats.refused += 1;
            return DatagramEvent::Dropped(DropReason::BadInitial);
        }
        let payload = &datagram[datagram.len() - frames_len..];
        let mut token = None;
        let mut has_handshake = false;
        for f in FrameIter::new(payload) {
            match f {
                Ok(Frame::Padding(_)) => {}
                Ok(Frame::Token(t)) => token = Some(t),
                Ok(Frame::Handshake(_)) => has_handshake = true,
                _ => {
                    self.stats.refused += 1;
                    return DatagramEvent::Dropped(DropReason::BadInitial);
                }
            }
        }
        if !has_handshake {
            self.stats.refused += 1;
            return DatagramEvent::Dropped(DropReason::BadInitial);
        }
        if !self.take_source_budget(now, remote) {
            self.stats.rate_limited += 1;
            return DatagramEvent::Dropped(DropReason::RateLimited);
        }
        let client_plain = header.flags & FLAG_PLAINTEXT != 0;
        match (&self.config.security, client_plain) {
            (Security::Encrypted(_), true) => {
                return self.reject(
                    remote,
                    header.dcid,
                    close_code::ENCRYPTION_REQUIRED,
                    "the server requires encryption but the client runs in insecure plaintext mode",
                );
            }
            (Security::InsecurePlaintext, false) => {
                return self.reject(
                    remote,
                    header.dcid,
                    close_code::PLAINTEXT_ONLY,
                    "the server runs in insecure plaintext mode; the client requires encryption",
                );
            }
            _ => {}
        }
        let now_ms = self.ms_since_epoch(now);
        let window = self.config.handshake_timeout;
        while self
            .recent_handshakes
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > window)
        {
            self.recent_handshakes.pop_front();
        }
        let token_ok = token.is_some_and(|t| {
            self.retry.validate(
                now_ms,
                TOKEN_LIFETIME.as_millis() as u64,
                remote,
                header.dcid,
                t,
            )
        });
        let under_load = self.recent_handshakes.len() >= self.config.retry_threshold;
        if under_load && !token_ok {
            // An expired, forged or misdirected token gets a fresh Retry, as
            // a missing one does (it costs the same and is smaller than the
            // Initial): dropping it would fail a client whose Initials were
            // all lost in a burst for the token's lifetime, while the
            // server is still under load.
            if token.is_some() {
                self.stats.bad_tokens += 1;
            }
            self.stats.retries_sent += 1;
            let t = self.retry.issue(now_ms, remote, header.dcid);
            return DatagramEvent::Respond(self.stateless(
                PacketKind::Retry,
                header.dcid,
                Frame::Token(&t),
                remote,
            ));
        }
        if self.cids.len() >= self.config.max_connections {
            return self.reject(
                remote,
                header.dcid,
                close_code::SERVER_BUSY,
                "the server is at its connection limit",
            );
        }
        self.recent_handshakes.push_back(now);
        let cid = self.fresh_cid();
        let h = self.register(cid, Some((remote, header.dcid)));
        self.stats.accepted += 1;
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let mut conn = Connection::server(
            NewConnection {
                config: self.config.clone(),
                local_cid: cid,
                reset_token: self.reset_key.token(cid),
                remote,
                now,
                identity: self.identity.as_ref(),
                seed,
            },
            header.dcid,
            token_ok,
        );
        if let Some(c) = self.clock_at(now) {
            conn.set_clock(now, c);
        }
        DatagramEvent::New(h, Box::new(conn))
    }

    /// Forgets a connection that is drained (or abandoned).
    pub fn forget(&mut self, h: ConnectionHandle) {
        if let Some(ids) = self.cids.remove(&h) {
            self.by_cid.remove(&ids.local);
            if let Some(key) = ids.initial {
                self.initials.remove(&key);
            }
            if let Some(peer) = ids.peer {
                if self.by_peer_cid.get(&peer) == Some(&h) {
                    self.by_peer_cid.remove(&peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(count: usize) -> Vec<Endpoint> {
        (0..count)
            .map(|index| {
                let mut ep = Endpoint::new(Config::default(), 7, true).unwrap();
                ep.set_shard(index, count);
                ep
            })
            .collect()
    }

    fn datagram(kind: PacketKind, dcid: u64) -> Vec<u8> {
        let mut data = Vec::new();
        Header {
            kind,
            flags: 0,
            dcid,
            pn: 0,
        }
        .encode(&mut data);
        data
    }

    #[test]
    fn shards_issue_ids_of_their_own_class_and_share_the_identity() {
        let now = Instant::now();
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut eps = shards(3);
        let mut seen = std::collections::HashSet::new();
        for (index, ep) in eps.iter_mut().enumerate() {
            for _ in 0..50 {
                let (_, conn) = ep.connect(now, remote);
                let cid = conn.local_cid();
                assert_eq!(cid % 3, index as u64, "shard {index} issued {cid}");
                assert!(seen.insert(cid), "id {cid} issued twice");
                assert_eq!(
                    shard_route(&datagram(PacketKind::Data, cid), 3),
                    ShardRoute::Shard(index)
                );
            }
        }
        let key = |ep: &Endpoint| ep.identity().map(Identity::public);
        assert!(key(&eps[0]).is_some());
        assert!(eps.iter().all(|ep| key(ep) == key(&eps[0])));
    }

    #[test]
    fn one_shard_draws_the_ids_an_unsharded_endpoint_draws() {
        let now = Instant::now();
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut plain = Endpoint::new(Config::default(), 7, true).unwrap();
        let mut sharded = shards(1).remove(0);
        for _ in 0..20 {
            assert_eq!(
                plain.connect(now, remote).1.local_cid(),
                sharded.connect(now, remote).1.local_cid()
            );
        }
    }

    /// The client's next datagram, as the server receives it.
    fn next_datagram(conn: &mut Connection, now: Instant) -> Vec<u8> {
        let mut buf = Vec::new();
        let t = conn
            .poll_transmit(now, &mut buf)
            .expect("a datagram to send");
        buf.truncate(t.size);
        buf
    }

    #[test]
    fn an_expired_retry_token_gets_a_fresh_retry_that_the_client_takes() {
        let start = Instant::now();
        // A client that waits longer than a token lives (by default both
        // are 10 s, and the token is issued after the client started).
        let config = Config {
            retry_threshold: 0,
            idle_timeout: TOKEN_LIFETIME * 3,
            ..Config::default()
        };
        let mut server = Endpoint::new(config.clone(), 1, true).unwrap();
        let mut client = Endpoint::new(config, 2, false).unwrap();
        let server_addr: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let client_addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let (_, mut conn) = client.connect(start, server_addr);
        let retry = |event| match event {
            DatagramEvent::Respond(r) => r.data,
            other => panic!("expected a Retry, got {other:?}"),
        };
        let first = next_datagram(&mut conn, start);
        let first_retry = retry(server.handle(start, client_addr, &first));
        conn.handle_datagram(start, server_addr, &first_retry);
        let with_token = next_datagram(&mut conn, start);
        // Every copy of the Initial with the token is lost until it expires;
        // the server, still under load, answers the late copy with a new
        // token instead of dropping it.
        let late = start + TOKEN_LIFETIME + Duration::from_secs(1);
        let second_retry = retry(server.handle(late, client_addr, &with_token));
        assert_ne!(first_retry, second_retry, "a fresh token");
        assert_eq!(server.stats().bad_tokens, 1);
        conn.handle_datagram(late, server_addr, &second_retry);
        // The replacement is not sent at once: the handshake timer repeats
        // the Initial, now with the fresh token, and the server takes it.
        let mut buf = Vec::new();
        assert!(conn.poll_transmit(late, &mut buf).is_none());
        let due = conn.poll_timeout().expect("the handshake timer").max(late);
        conn.handle_timeout(due);
        let repeated = next_datagram(&mut conn, due);
        assert!(matches!(
            server.handle(due, client_addr, &repeated),
            DatagramEvent::New(..)
        ));
    }

    #[test]
    fn initials_stay_with_the_receiver_and_resets_go_everywhere() {
        for kind in [PacketKind::Handshake, PacketKind::Retry, PacketKind::Reject] {
            assert_eq!(shard_route(&datagram(kind, 7), 2), ShardRoute::Shard(1));
        }
        assert_eq!(
            shard_route(&datagram(PacketKind::Initial, 7), 2),
            ShardRoute::Receiver
        );
        assert_eq!(
            shard_route(&datagram(PacketKind::Reset, 7), 2),
            ShardRoute::Every
        );
        assert_eq!(shard_route(b"\xff", 2), ShardRoute::Receiver);
        assert_eq!(
            shard_route(&datagram(PacketKind::Data, 7), 1),
            ShardRoute::Receiver
        );
    }
}
