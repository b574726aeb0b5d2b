//! A surelink connection as a sans-IO state machine.
//!
//! The connection owns no socket and reads no clock. It is driven by the caller:
//!
//! ```text
//! conn.handle_datagram(now, remote, &bytes);   // a datagram arrived (or handle_datagram_owned: no copy)
//! conn.handle_timeout(now);                     // the time from poll_timeout came
//! conn.send(channel, message)?;                 // the application queued a message
//! while let Some(t) = conn.poll_transmit(now, &mut buf) { /* send buf[..t.size] to t.destination */ }
//! while let Some(m) = conn.recv() { /* in-order message */ }
//! while let Some(ev) = conn.poll_event() { /* Connected, Closed */ }
//! let wake = conn.poll_timeout();               // call handle_timeout then
//! ```
//!
//! Inside: packet numbers are never reused; ACK frames carry ranges; loss is
//! detected by packet threshold (3) and time threshold (9/8 RTT); a probe timeout
//! derived from smoothed RTT and variance backs off exponentially; a congestion
//! controller (NewReno with a bandwidth-delay floor by default) and a pacer limit
//! what is in flight; flow control bounds what the receiver holds; messages are
//! fragmented and reassembled. Closing is graceful by default: everything queued
//! is acknowledged before CLOSE is sent.
//!
//! This file is the conductor: it holds the state and routes input to the
//! mechanisms, each in its own module: `lifecycle` (open, closing, draining),
//! `handshake` (its messages and its input), `transmit` (packet assembly),
//! `packet_frames` (a data packet's frames, read and checked in one pass),
//! `path_set` and `path` (paths, validation, liveness, failover), `recovery`
//! (ACKs, loss, probe timeout; loss judged by `rack`), `outage_probe` (dense
//! probing of a silent path while deadline data is alive), `timers` (the
//! timer table), `fec_tx` / `fec_rx` (forward error correction of deadline
//! channels) and [`congestion`].

pub mod congestion;
mod fec_rx;
mod fec_tx;
mod handshake;
mod lifecycle;
mod outage_probe;
mod pacer;
mod packet_frames;
mod path;
mod path_set;
mod phi;
mod protection;
mod rack;
mod reassembly;
mod received;
mod recovery;
mod recycle;
mod rtt;
mod send_queue;
mod sent;
mod stats;
mod timers;
mod transmit;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;

pub use congestion::{CongestionControl, CongestionController};
pub use path::{PathAddr, PathId, PathState, PathStats};
pub use phi::phi_trade_off;
pub use reassembly::{Message, ReassemblyError, SkippedRange, MAX_CHANNELS};
pub use send_queue::{MessageBytes, SMALL_MESSAGE};
pub use stats::ConnectionStats;

use crate::batch::{MessageBatch, ReceivedBatch};
use crate::clock::{ClockEstimate, ClockEstimator, ClockSample};
use crate::config::Config;
use crate::crypto::{Identity, PublicKey};
use crate::wire::{Delivery, Frame, Header, MsgFrame, PacketKind, Reader, TransportParams};
use handshake::{Handshake, ResetToken};
use lifecycle::Lifecycle;
use packet_frames::{read_packet_frames, FrameViews, Refusal};
use path::Path;
use path_set::{DataPace, PathSet};
use protection::{OpenError, Protection};
use reassembly::{FragmentOutcome, Reassembly};
use received::ReceivedPackets;
use send_queue::{BatchLimits, BatchRefusal, SendQueue};

/// A map keyed by channel number. Channels are looked up per message, on
/// both ends, so the hasher is foldhash (fast on a `u64`, seeded per map)
/// rather than SipHash.
pub(crate) type ChannelMap<V> = std::collections::HashMap<u64, V, foldhash::fast::RandomState>;

/// CLOSE codes (see docs/PROTOCOL.md).
pub mod close_code {
    /// Graceful close: everything sent was delivered.
    pub const NO_ERROR: u64 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL_VIOLATION: u64 = 1;
    /// The peer exceeded the flow-control window.
    pub const FLOW_CONTROL: u64 = 2;
    /// A message exceeded the maximum size.
    pub const MESSAGE_TOO_LARGE: u64 = 3;
    /// The application aborted the connection.
    pub const APPLICATION_ABORT: u64 = 4;
    /// The handshake failed cryptographically (e.g. pre-shared key mismatch).
    pub const HANDSHAKE_FAILED: u64 = 16;
    /// The client's key is not on the server's allow-list.
    pub const KEY_NOT_ALLOWED: u64 = 17;
    /// The server's key is not the one the client expected.
    pub const SERVER_KEY_MISMATCH: u64 = 18;
    /// The server requires encryption; the client is in plaintext mode.
    pub const ENCRYPTION_REQUIRED: u64 = 19;
    /// The server is in plaintext mode; the client requires encryption.
    pub const PLAINTEXT_ONLY: u64 = 20;
    /// The server is at its connection limit.
    pub const SERVER_BUSY: u64 = 21;
}

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that called `connect`.
    Client,
    /// The side that accepted.
    Server,
}

/// Why a connection ended other than gracefully.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// Nothing was heard from the peer for the idle timeout.
    #[error("timed out: no packet from the peer for the idle timeout")]
    TimedOut,
    /// The peer closed the connection with an error.
    #[error("peer closed the connection: code {code}: {reason}")]
    PeerClosed {
        /// The peer's CLOSE code.
        code: u64,
        /// The peer's reason text.
        reason: String,
    },
    /// The peer broke the protocol; we closed the connection.
    #[error("protocol violation by the peer: {0}")]
    ProtocolViolation(String),
    /// The application aborted the connection.
    #[error("connection aborted locally")]
    LocallyAborted,
    /// The peer closed gracefully before everything we sent was acknowledged.
    #[error(
        "the peer closed the connection with {unacknowledged_bytes} bytes of ours unacknowledged"
    )]
    PeerClosedEarly {
        /// Payload bytes we had queued that the peer did not acknowledge.
        unacknowledged_bytes: u64,
    },
    /// Every path failed and none came back within the idle timeout.
    #[error("connection lost: every path is down")]
    ConnectionLost,
    /// The handshake failed (corrupt message, pre-shared key mismatch, …).
    #[error("handshake failed: {0}")]
    HandshakeFailed(String),
    /// The server presented a different key than the one expected.
    #[error("server key mismatch: expected {}, got {}", .expected.fingerprint(), .got.fingerprint())]
    PeerKeyMismatch {
        /// The key we were told to expect.
        expected: PublicKey,
        /// The key the server presented.
        got: PublicKey,
    },
    /// (Server) the client's key is not on the allow-list.
    #[error("client key {} is not on the allow-list", .0.fingerprint())]
    PeerNotAllowed(PublicKey),
    /// The peer answered with a valid stateless Reset: it no longer knows
    /// this connection (typically its process restarted).
    #[error("the peer reset the connection: it no longer knows it (restarted?)")]
    Reset,
    /// The peer refused the handshake.
    #[error("the peer refused the connection: {reason} (code {code})")]
    Rejected {
        /// The refusal's CLOSE code (see `close_code`).
        code: u64,
        /// The peer's explanation.
        reason: String,
    },
}

/// Why a message could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message exceeds the maximum message size.
    #[error("message of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The send buffer is full; retry after some data is acknowledged.
    #[error("send buffer full")]
    Blocked,
    /// `close` was called; no more messages are accepted.
    #[error("connection is closing")]
    Closing,
    /// The connection has ended.
    #[error("connection closed")]
    Closed,
}

/// Something the application may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed.
    Connected,
    /// The connection ended; `None` means gracefully (all sent data delivered).
    Closed {
        /// What went wrong, if anything.
        error: Option<ConnectionError>,
    },
    /// Messages `from..to` of `channel` will never be delivered: their deadline
    /// passed (or, unreliable, they were lost).
    Skipped {
        /// The channel.
        channel: u64,
        /// First skipped sequence number.
        from: u64,
        /// One past the last skipped sequence number.
        to: u64,
    },
    /// The peer's clock jumped; the clock estimate restarted.
    ClockStep,
    /// A path was validated and can carry data.
    PathUp(PathId),
    /// A path went quiet beyond its usual pattern (phi above half the threshold).
    PathSuspect(PathId),
    /// A path was declared failed (phi above the threshold).
    PathDown(PathId),
    /// A failed path was heard from and re-validated.
    PathRecovered(PathId),
    /// Data moved from one path to another.
    FailedOver {
        /// The path given up.
        from: PathId,
        /// The path now carrying the data.
        to: PathId,
    },
    /// Every path is down; the connection keeps probing until the idle timeout.
    ConnectionLost,
}

/// How a connection with several paths uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathMode {
    /// All data on the best path; switch to a standby on failure, fail back
    /// with hysteresis.
    #[default]
    Backup,
    /// Every packet on every live path; the receiver drops duplicates.
    Broadcast,
    /// Stripe packets over the live paths by congestion window and RTT.
    Balance,
}

/// A datagram ready to be sent: the bytes are in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// From which of the caller's local sockets (0 for single-socket use).
    pub local: u16,
    /// How many bytes of the buffer to send.
    pub size: usize,
}

#[derive(Debug, Default)]
struct Pending {
    handshake: bool,
    reject: Option<(u64, String)>,
    max_data: bool,
    close: Option<(u64, String)>,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    config: Arc<Config>,
    side: Side,
    lifecycle: Lifecycle,
    local_cid: u64,
    peer_cid: u64,
    /// Our stateless reset token for `local_cid`, sent in the handshake.
    reset_token: ResetToken,
    /// The peer's reset token for `peer_cid`, learned in the handshake.
    peer_reset_token: Option<ResetToken>,
    paths: PathSet,
    epoch: Instant,
    next_pn: u64,
    received: ReceivedPackets,
    send_queue: SendQueue,
    reassembly: Reassembly,
    peer_params: Option<TransportParams>,
    peer_max_data: u64,
    max_data_sent: u64,
    handshake: Handshake,
    handshake_out: Option<Vec<u8>>,
    last_handshake_sent: Option<Instant>,
    /// Client: how much longer than the probe timeout the wait before the
    /// next repetition of the handshake message is, in 1/1024ths of half the
    /// probe timeout (so up to +50 %), drawn at each send
    /// (`Timer::Handshake`). Clients that started together (a burst of
    /// connects) would otherwise repeat their lost Initials in the same
    /// instant, round after round, into the same full server queue.
    handshake_spread: u64,
    retry_token: Option<Vec<u8>>,
    protection: Protection,
    /// Emptied frame lists of acknowledged packets, reused for new packets
    /// (a data packet of small messages lists dozens of frames).
    spare_frame_lists: Vec<Vec<sent::SentFrame>>,
    /// The payload of the data packet whose FEC_SOURCE frame is being
    /// processed: a message protected by the frame that arrives whole is
    /// delivered as a slice of it, without a copy or an allocation of its own.
    packet: Bytes,
    /// Frames in the last packet built: the size of a new frame list when
    /// no spare one is left.
    last_frame_count: usize,
    validated: bool,
    amp_received: u64,
    amp_sent: u64,
    pending: Pending,
    last_received: Instant,
    /// How far the caller's input lags behind the network
    /// ([`set_received_through`](Self::set_received_through)): silence is
    /// judged this long before `now`, so that datagrams still waiting in the
    /// caller's socket do not count as the peer's silence.
    receive_lag: Duration,
    /// The pace of packets carrying application data, sent or arriving
    /// (heartbeats stay fast while a stream of data flows either way).
    data_pace: DataPace,
    events: VecDeque<Event>,
    stats: ConnectionStats,
    error: Option<ConnectionError>,
    /// Our clock (µs) at `epoch`: every timestamp we send is `wall_origin_us + µs since epoch`.
    wall_origin_us: u64,
    clock: ClockEstimator,
    /// Offset (peer − ours, µs) assumed before the first clock sample.
    provisional_offset_us: Option<f64>,
    /// Server: our clock when the client's first message arrived.
    first_initial_us: Option<u64>,
    /// Handshake messages sent (an RTT sample is taken only from an unrepeated one).
    handshake_sends: u32,
    channel_delivery: ChannelMap<Delivery>,
    /// One-way latency of delivered messages, µs; made at the first one (a
    /// connection that never receives does not pay it). Two significant
    /// digits (percentiles within 1 %) and 32-bit counts: about 13 KiB,
    /// where three digits and 64-bit counts took 180 KiB per session.
    latency: Option<Histogram<u32>>,
    fec_tx: fec_tx::FecSender,
    fec_rx: fec_rx::FecReceiver,
}

/// What a new connection is made from, on either side (filled in by the
/// endpoint).
pub(crate) struct NewConnection<'a> {
    /// The endpoint's settings, validated.
    pub(crate) config: Arc<Config>,
    /// The connection id the peer puts in packets to us.
    pub(crate) local_cid: u64,
    /// Our stateless reset token for `local_cid`.
    pub(crate) reset_token: ResetToken,
    /// The peer's address (the first path).
    pub(crate) remote: SocketAddr,
    /// The time the connection starts.
    pub(crate) now: Instant,
    /// Our static key, in encrypted mode.
    pub(crate) identity: Option<&'a Identity>,
    /// Feeds the handshake's ephemeral keys and the challenge generator.
    pub(crate) seed: [u8; 32],
}

impl Connection {
    fn new(setup: NewConnection<'_>, side: Side, peer_cid: u64) -> Self {
        let NewConnection {
            config,
            local_cid,
            reset_token,
            remote,
            now,
            identity,
            seed,
        } = setup;
        let handshake = Handshake::new(&config.security, identity, side == Side::Client, seed);
        let failure = handshake.as_ref().err().cloned();
        let handshake = handshake.unwrap_or_else(|_| {
            Handshake::new(
                &crate::crypto::Security::InsecurePlaintext,
                None,
                true,
                seed,
            )
            .expect("plaintext handshakes cannot fail to start")
        });
        let plaintext = handshake.is_plaintext();
        let mut c = Self {
            protection: Protection::new(plaintext),
            handshake,
            handshake_out: None,
            last_handshake_sent: None,
            handshake_spread: 0,
            retry_token: None,
            spare_frame_lists: Vec::new(),
            packet: Bytes::new(),
            last_frame_count: 0,
            validated: side == Side::Client,
            amp_received: 0,
            amp_sent: 0,
            paths: PathSet::new(
                Path::first(PathAddr { local: 0, remote }, now, &config),
                config.path_mode,
                u64::from_le_bytes(seed[..8].try_into().unwrap_or([1; 8])),
            ),
            reassembly: Reassembly::new(
                config.receive_window,
                config.max_message_size as u64,
                config.playout_delay.map(|d| d.as_micros() as u64),
            ),
            wall_origin_us: 0,
            clock: ClockEstimator::new(),
            provisional_offset_us: None,
            first_initial_us: None,
            handshake_sends: 0,
            channel_delivery: ChannelMap::default(),
            latency: None,
            fec_tx: fec_tx::FecSender::new(config.fec),
            fec_rx: fec_rx::FecReceiver::default(),
            max_data_sent: config.receive_window,
            config,
            side,
            lifecycle: Lifecycle::new(),
            local_cid,
            peer_cid,
            reset_token,
            peer_reset_token: None,
            epoch: now,
            next_pn: 0,
            received: ReceivedPackets::default(),
            send_queue: SendQueue::default(),
            peer_params: None,
            peer_max_data: 0,
            pending: Pending::default(),
            last_received: now,
            receive_lag: Duration::ZERO,
            data_pace: DataPace::default(),
            events: VecDeque::new(),
            stats: ConnectionStats::default(),
            error: None,
        };
        if let Some(f) = failure {
            c.enter_closed(Some(f.error));
        }
        c
    }

    /// A client connection described by `setup`. `clock_us` is what our
    /// clock reads at `setup.now`, if set.
    pub(crate) fn client(setup: NewConnection<'_>, clock_us: Option<u64>) -> Self {
        let now = setup.now;
        let mut c = Self::new(setup, Side::Client, 0);
        if let Some(us) = clock_us {
            c.set_clock(now, us);
        }
        let params = c.local_params();
        match c.handshake.client_hello(params) {
            Ok(m) => {
                c.handshake_out = Some(m);
                c.pending.handshake = true;
            }
            Err(f) => c.enter_closed(Some(f.error)),
        }
        c
    }

    /// A server connection described by `setup`, answering the client whose
    /// id is `client_cid`; `validated` says the client's address was proven by
    /// a retry token.
    pub(crate) fn server(setup: NewConnection<'_>, client_cid: u64, validated: bool) -> Self {
        let mut c = Self::new(setup, Side::Server, client_cid);
        c.validated = validated;
        c
    }

    /// The peer's authenticated static public key (encrypted mode, after the handshake).
    pub fn peer_key(&self) -> Option<PublicKey> {
        self.handshake.peer_key()
    }

    /// This side of the connection.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The peer's address on the active path.
    pub fn remote(&self) -> SocketAddr {
        self.paths[self.paths.active].addr.remote
    }

    fn ap(&self) -> &Path {
        self.paths.active_path()
    }

    /// The connection id the peer puts in packets to us.
    pub fn local_cid(&self) -> u64 {
        self.local_cid
    }

    /// The connection id we put in packets to the peer (a client learns it
    /// in the handshake; 0 until then).
    pub fn peer_cid(&self) -> u64 {
        self.peer_cid
    }

    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// The free buffers each end keeps for reuse: the sender's, the
    /// receiver's.
    fn recyclers(&self) -> [&recycle::Recycler; 2] {
        [self.send_queue.recycler(), self.reassembly.recycler()]
    }

    /// Our clock at `now`, µs.
    fn clock_us(&self, now: Instant) -> u64 {
        self.wall_origin_us.saturating_add(self.micros(now))
    }

    /// The instant at which our clock reads `us`.
    fn instant_at(&self, us: u64) -> Instant {
        self.epoch + Duration::from_micros(us.saturating_sub(self.wall_origin_us))
    }

    /// Sets our clock: it reads `clock_us` at `now` (for example the wall clock
    /// in µs since the Unix epoch). Timestamps sent from then on use it; a
    /// change after the handshake is a clock step for the peer.
    pub fn set_clock(&mut self, now: Instant, clock_us: u64) {
        self.wall_origin_us = clock_us.saturating_sub(self.micros(now));
    }

    /// What is known about the peer's clock, at `now`.
    pub fn clock_estimate(&self, now: Instant) -> Option<ClockEstimate> {
        self.clock.estimate(self.clock_us(now))
    }

    /// The peer's clock minus ours when our clock reads `now_us`, µs: a peer
    /// timestamp `t` is `t - offset` on our clock (see [`to_local_us`]).
    fn peer_offset_us(&self, now_us: u64) -> f64 {
        match self.clock.estimate(now_us) {
            Some(e) => e.offset_us,
            None => self.provisional_offset_us.unwrap_or(0.0),
        }
    }

    /// Provisional clock offset from the handshake: the peer's clock read
    /// `peer_origin_us` when it started the connection, which was `one_way`
    /// before our clock read `local_us` (client: it answered our first message
    /// as it started; server: the client started as it sent its first message).
    fn provisional_offset(&mut self, peer_origin_us: u64, local_us: u64) {
        if self.clock.estimate(local_us).is_none() {
            let one_way = self.ap().rtt.smoothed().as_micros() as f64 / 2.0;
            self.provisional_offset_us = Some(peer_origin_us as f64 - (local_us as f64 - one_way));
        }
    }

    /// Sets how messages on `channel` are delivered (default: reliable).
    /// Applies to messages queued from now on; both sides learn it per message.
    ///
    /// The first deadline channel switches a connection whose congestion
    /// control is [`CongestionControl::Auto`] to the live-stream controller on
    /// every path (see [`congestion`]).
    pub fn set_channel_delivery(&mut self, channel: u64, delivery: Delivery) {
        self.channel_delivery.insert(channel, delivery);
        if let (Delivery::Deadline(_), Some(live)) =
            (delivery, self.config.congestion.for_deadline_traffic())
        {
            let mut config = (*self.config).clone();
            config.congestion = live;
            self.config = Arc::new(config);
            let mss = self.config.max_datagram_size as u64;
            for p in self.paths.iter_mut() {
                p.cc = live.build(mss, self.config.initial_window_packets);
            }
        }
    }

    fn local_params(&self) -> TransportParams {
        TransportParams {
            max_message_size: self.config.max_message_size as u64,
            receive_window: self.config.receive_window,
            idle_timeout_ms: self.config.idle_timeout.as_millis() as u64,
            max_ack_delay_us: self.config.max_ack_delay.as_micros() as u64,
            clock_origin_us: self.wall_origin_us,
        }
    }

    fn max_message(&self) -> usize {
        let local = self.config.max_message_size;
        match self.peer_params {
            Some(p) => local.min(usize::try_from(p.max_message_size).unwrap_or(usize::MAX)),
            None => local,
        }
    }

    fn idle_timeout(&self) -> Duration {
        let local = if self.side == Side::Server
            && self.lifecycle.is_handshaking()
            && self.handshake_sends == 0
        {
            // Half-open connections we have not answered are dropped sooner.
            // Once our answer is out, the client counts itself connected
            // and repeats its last message until it hears from us, for up
            // to its idle timeout: dropping our state before that would
            // leave it connected to nobody (tests/half_open.rs).
            self.config.idle_timeout.min(self.config.handshake_timeout)
        } else {
            self.config.idle_timeout
        };
        match self.peer_params {
            Some(p) if p.idle_timeout_ms > 0 => local.min(Duration::from_millis(p.idle_timeout_ms)),
            _ => local,
        }
    }

    fn peer_max_ack_delay(&self) -> Duration {
        self.peer_params.map_or(Duration::ZERO, |p| {
            Duration::from_micros(p.max_ack_delay_us)
        })
    }

    // ----- application side -------------------------------------------------

    /// Queues a message on `channel`; returns its sequence number in that channel.
    ///
    /// A message larger than the send buffer is accepted when the buffer is empty,
    /// so any message up to the maximum size can be sent.
    /// `now` is the message's source time (its one-way latency and deadline
    /// count from it).
    pub fn send(&mut self, now: Instant, channel: u64, data: Bytes) -> Result<u64, SendError> {
        self.check_send(data.len())?;
        Ok(self.queue_message(now, channel, data))
    }

    /// Queues messages from the front of `messages` on `channel`, as `send`
    /// would one at a time, until `messages` runs out or one cannot be
    /// queued: that one stays at the front of `messages`, and its error is
    /// returned with the number queued before it. Messages of up to 256
    /// bytes are copied into the send queue's own buffer (so they may be
    /// borrowed slices of one buffer of the caller's); larger ones given as
    /// [`Bytes`] are kept without a copy. The channel, the clock and the
    /// congestion controllers are consulted once for the whole batch.
    pub fn send_many<M, I>(
        &mut self,
        now: Instant,
        channel: u64,
        messages: &mut std::iter::Peekable<I>,
    ) -> (usize, Result<(), SendError>)
    where
        M: MessageBytes,
        I: Iterator<Item = M>,
    {
        if let Err(e) = self.check_open() {
            return (0, Err(e));
        }
        let limits = BatchLimits {
            max_message: self.max_message(),
            send_buffer: self.config.send_buffer as u64,
        };
        let (timestamp_us, delivery) = (self.micros(now), self.delivery_on(channel));
        let queued = self
            .send_queue
            .push_batch(channel, timestamp_us, delivery, messages, limits);
        if queued.messages > 0 {
            self.stats.messages_sent += queued.messages as u64;
            self.stats.payload_bytes_sent += queued.bytes;
            for p in self.paths.iter_mut() {
                p.cc.on_offered(now, queued.bytes, queued.messages as u64);
            }
        }
        let result = match queued.refused {
            None => Ok(()),
            Some(BatchRefusal::Blocked) => Err(SendError::Blocked),
            Some(BatchRefusal::TooLarge { size, max }) => Err(SendError::TooLarge { size, max }),
        };
        (queued.messages, result)
    }

    /// The delivery mode of `channel`.
    fn delivery_on(&self, channel: u64) -> Delivery {
        self.channel_delivery
            .get(&channel)
            .copied()
            .unwrap_or_default()
    }

    /// Why no message can be queued, if none can: the connection is
    /// closed or closing.
    fn check_open(&self) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        if self.lifecycle.close_requested() {
            return Err(SendError::Closing);
        }
        Ok(())
    }

    /// Why a message of `len` bytes cannot be queued now, if it cannot.
    fn check_send(&self, len: usize) -> Result<(), SendError> {
        self.check_open()?;
        let max = self.max_message();
        if len > max {
            return Err(SendError::TooLarge { size: len, max });
        }
        let buffered = self.send_queue.buffered();
        if buffered > 0 && buffered + len as u64 > self.config.send_buffer as u64 {
            return Err(SendError::Blocked);
        }
        Ok(())
    }

    /// Queues a message that `check_send` accepted; returns its sequence number.
    fn queue_message(&mut self, now: Instant, channel: u64, data: Bytes) -> u64 {
        let delivery = self.delivery_on(channel);
        self.count_offered(now, 1, data.len() as u64, data.len() as u64);
        self.send_queue
            .push(channel, data, self.micros(now), delivery)
    }

    /// Queues the messages of `batch` on `channel` as one packed message
    /// (see [`crate::batch`]): one sequence number, one source time (`now`),
    /// one fate. The batch's buffer moves into the send queue uncopied, and
    /// the batch is left empty, ready for the next one. Returns the
    /// sequence number, or `None` for an empty batch (nothing is queued).
    ///
    /// Its packed form ([`MessageBatch::packed_len`]) is checked as one
    /// message's bytes would be by `send`: `TooLarge` past the largest
    /// message, `Blocked` while the send buffer is too full for it. On an
    /// error the batch is left as it was.
    pub fn send_batch(
        &mut self,
        now: Instant,
        channel: u64,
        batch: &mut MessageBatch,
    ) -> Result<Option<u64>, SendError> {
        if batch.is_empty() {
            self.check_open()?;
            return Ok(None);
        }
        self.check_send(batch.packed_len())?;
        let bytes = batch.bytes() as u64;
        let next = self.send_queue.batch_buffer(batch.capacity());
        let (records, count) = batch.take_packed(next);
        let delivery = self.delivery_on(channel);
        self.count_offered(now, count as u64, bytes, records.len() as u64);
        Ok(Some(self.send_queue.push_packed(
            channel,
            records,
            count as u64,
            self.micros(now),
            delivery,
        )))
    }

    /// Counts `messages` of `bytes` in all queued by the application, as
    /// one message of `queued` bytes in the send queue.
    fn count_offered(&mut self, now: Instant, messages: u64, bytes: u64, queued: u64) {
        self.stats.messages_sent += messages;
        self.stats.payload_bytes_sent += bytes;
        for p in self.paths.iter_mut() {
            p.cc.on_offered(now, queued, 1);
        }
    }

    /// Bytes the application can still queue before `send` returns `Blocked`.
    pub fn send_capacity(&self) -> usize {
        (self.config.send_buffer as u64).saturating_sub(self.send_queue.buffered()) as usize
    }

    /// Payload bytes queued and not yet acknowledged by the peer.
    pub fn unacked_bytes(&self) -> u64 {
        self.send_queue.buffered()
    }

    /// Takes the next message delivered in order.
    pub fn recv(&mut self) -> Option<Message> {
        let m = self.reassembly.pop()?;
        self.record_latency(m.latency_us, 1);
        self.note_taken();
        Some(m)
    }

    /// Takes the next message or packed batch delivered in order, whole (see
    /// [`crate::batch`]): a batch sent by `send_batch` as one
    /// [`ReceivedBatch`], whose messages are slices of one buffer; a message
    /// sent on its own as a batch of one. What `recv` or `recv_many` already
    /// took of a batch is not in it.
    pub fn recv_batch(&mut self) -> Option<ReceivedBatch> {
        let b = self.reassembly.pop_batch()?;
        self.record_latency(b.latency_us, b.len() as u64);
        self.note_taken();
        Some(b)
    }

    /// Takes up to `max` messages delivered in order, appending them to
    /// `out`: `recv` for a batch, with the latency of a run of messages
    /// that took equally long (a bundle's, typically) recorded once for
    /// the run. Returns how many were appended.
    pub fn recv_many(&mut self, out: &mut Vec<Message>, max: usize) -> usize {
        let mut taken = 0;
        // (latency, messages) of the run not recorded yet.
        let mut run = (0, 0);
        while taken < max {
            let Some(m) = self.reassembly.pop() else {
                break;
            };
            if m.latency_us != run.0 {
                self.record_latency(run.0, run.1);
                run = (m.latency_us, 0);
            }
            run.1 += 1;
            out.push(m);
            taken += 1;
        }
        self.record_latency(run.0, run.1);
        if taken > 0 {
            self.note_taken();
        }
        taken
    }

    /// Counts `messages` delivered after a one-way latency of `latency_us` each.
    fn record_latency(&mut self, latency_us: u64, messages: u64) {
        if messages == 0 {
            return;
        }
        self.latency
            .get_or_insert_with(|| {
                Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")
            })
            .saturating_record_n(
                latency_us.max(1),
                u32::try_from(messages).unwrap_or(u32::MAX),
            );
        self.stats
            .latency_histogram
            .record_us_n(latency_us, messages);
    }

    /// The application took messages: a window update is due once it
    /// opened the receive window by a quarter.
    fn note_taken(&mut self) {
        if self.reassembly.max_data() - self.max_data_sent >= self.config.receive_window / 4 {
            self.pending.max_data = true;
        }
    }

    /// Lifts the playout hold for the rest of the connection: every message
    /// waiting for its playout time is handed over now, in order (the next
    /// `recv` calls return them), and messages completed later are handed
    /// over as soon as they are in order. For a receiver that stops and
    /// must not drop what it holds. Returns how many messages were released
    /// early (also counted in `messages_released_early`); 0 without a
    /// playout delay.
    pub fn release_held(&mut self, now: Instant) -> u64 {
        let released = self.reassembly.release_held(self.clock_us(now));
        self.report_closed_after_playout();
        released
    }

    /// True if taking messages opened the receive window far enough that a
    /// window update waits to be sent (the next `poll_transmit` carries it).
    pub fn window_update_pending(&self) -> bool {
        self.pending.max_data
    }

    /// True if `recv` would return a message.
    pub fn has_message(&self) -> bool {
        self.reassembly.has_ready()
    }

    /// Takes the next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Current counters.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            rtt: self.ap().rtt.smoothed(),
            rtt_var: self.ap().rtt.var(),
            latest_rtt: self.ap().rtt.latest(),
            min_rtt: self.ap().rtt.min(),
            cwnd: self.ap().cc.window(),
            ssthresh: self.ap().cc.ssthresh(),
            bytes_in_flight: self.paths.iter().map(|p| p.sent.bytes_in_flight()).sum(),
            recycled_buffer_bytes: self.recyclers().iter().map(|r| r.kept() as u64).sum(),
            paths: self.path_stats(self.last_received),
            retransmissions: self.send_queue.retransmitted(),
            payload_bytes_retransmitted: self.send_queue.retransmitted_bytes(),
            last_chance_copies: self.send_queue.last_chance_copies(),
            messages_acked: self.send_queue.messages_acked(),
            messages_delivered: self.reassembly.delivered(),
            key_updates: self.protection.key_updates(),
            messages_skipped: self.reassembly.skipped(),
            messages_late: self.reassembly.late(),
            messages_abandoned: self.send_queue.messages_abandoned(),
            messages_released_early: self.reassembly.released_early(),
            messages_recovered_by_retransmission: self
                .send_queue
                .messages_recovered_by_retransmission(),
            latency_p50_us: self
                .latency
                .as_ref()
                .map_or(0, |h| h.value_at_quantile(0.5)),
            latency_p99_us: self
                .latency
                .as_ref()
                .map_or(0, |h| h.value_at_quantile(0.99)),
            latency_p999_us: self
                .latency
                .as_ref()
                .map_or(0, |h| h.value_at_quantile(0.999)),
            latency_max_us: self.latency.as_ref().map_or(0, Histogram::max),
            clock: self.clock.estimate(self.clock_us(self.last_received)),
            ..self.stats.clone()
        }
    }

    // ----- input ---------------------------------------------------------------

    /// Tells the connection that every datagram that arrived for it up to
    /// `through` has been handed to it by `now` (the caller's receive
    /// backlog: a caller that has drained its socket passes the instant it
    /// started draining; one that stopped with datagrams still queued passes
    /// the instant it last found the socket empty). Until the next call, the
    /// failure detector and the idle timeout judge the peer's silence as of
    /// `through` rather than `now` (by the lag `now − through`), so a peer
    /// whose datagrams wait behind the caller's own backlog is not suspected
    /// for it; a caller that keeps up passes `through = now` (the default),
    /// and a truly silent peer is then judged exactly as before.
    pub fn set_received_through(&mut self, now: Instant, through: Instant) {
        self.receive_lag = now.saturating_duration_since(through);
    }

    /// The instant as of which the peer's silence is judged at `now`.
    fn silence_judged_at(&self, now: Instant) -> Instant {
        now.checked_sub(self.receive_lag).unwrap_or(now)
    }

    /// Handles one datagram from `remote`. Malformed, forged or unexpected
    /// datagrams are dropped and counted; they never panic and never corrupt state.
    /// Copies the datagram once; a caller that owns it gives it to
    /// [`handle_datagram_owned`](Self::handle_datagram_owned) instead.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, datagram: &[u8]) {
        self.handle_datagram_on(now, PathAddr { local: 0, remote }, datagram);
    }

    /// Like `handle_datagram`, for a datagram that arrived on the caller's
    /// local socket `addr.local` from `addr.remote` (several paths).
    pub fn handle_datagram_on(&mut self, now: Instant, addr: PathAddr, datagram: &[u8]) {
        self.handle_datagram_owned(now, addr, BytesMut::from(datagram));
    }

    /// Like `handle_datagram_on`, taking the datagram's buffer: a Data
    /// packet is decrypted in place there, and the messages it carries whole
    /// are delivered as slices of that same buffer, without a copy. The
    /// buffer is dropped whatever happens to the datagram, so nothing of a
    /// refused one can reach a later message.
    pub fn handle_datagram_owned(&mut self, now: Instant, addr: PathAddr, mut datagram: BytesMut) {
        match &self.lifecycle {
            Lifecycle::Closed => return,
            Lifecycle::Draining {
                refusal: Some(refusal),
                ..
            } => {
                // We refused this peer: answer anything more from it (at most one
                // small Reject per datagram received) with the refusal again.
                if self.paths[0].addr == addr {
                    self.pending.reject = Some(refusal.clone());
                }
                return;
            }
            _ => {}
        }
        let size = datagram.len();
        let mut r = Reader::new(&datagram);
        let Ok(header) = Header::decode(&mut r) else {
            self.stats.malformed_packets += 1;
            return;
        };
        let header_len = size - r.remaining();
        let payload = &datagram[header_len..];
        let ours = header.dcid == self.local_cid;
        let routed = match (self.side, header.kind) {
            (Side::Server, PacketKind::Initial) => header.dcid == self.peer_cid,
            (Side::Client, PacketKind::Retry) => ours,
            (_, PacketKind::Handshake | PacketKind::Reject | PacketKind::Data) => ours,
            _ => false,
        };
        let path = self.paths.find(addr);
        if header.kind == PacketKind::Reset && header.dcid == self.peer_cid {
            self.on_reset(path.is_some(), payload);
            return;
        }
        if !routed || payload.is_empty() {
            self.stats.malformed_packets += 1;
            return;
        }
        if header.kind != PacketKind::Data {
            // The handshake runs on the first path only.
            if path != Some(0) {
                self.stats.malformed_packets += 1;
                return;
            }
            self.on_handshake_packet(now, &header, payload, size);
            return;
        }
        if !self.can_send_data() {
            // Data before our handshake completed (the server's, when the
            // client's last message was lost and its first data was not):
            // dropped unread in both modes. Accepted, it would want an ACK
            // that nothing may carry yet; the client repeats its last
            // message until we answer, and repairs the data as any loss.
            return;
        }
        match self.protection.open(&header, &mut datagram, header_len) {
            Ok(len) => {
                // Authenticated: a packet from a new address opens a path.
                let path = path.unwrap_or_else(|| self.open_path(now, addr));
                datagram.truncate(header_len + len);
                datagram.advance(header_len);
                self.on_data_packet(now, path, &header, datagram.freeze(), size)
            }
            Err(OpenError::Authentication) => self.stats.auth_failures += 1,
            Err(OpenError::Replay) => self.stats.duplicate_packets += 1,
            Err(OpenError::Mode) => self.stats.malformed_packets += 1,
        }
    }

    /// Acts on the frames of an authenticated Data packet whose plaintext
    /// payload is `packet` (`size` bytes on the wire).
    fn on_data_packet(
        &mut self,
        now: Instant,
        path: usize,
        header: &Header,
        packet: Bytes,
        size: usize,
    ) {
        // Each frame read once, checked as it is read; nothing acts before
        // the whole packet proved valid.
        let mut frames = FrameViews::new();
        let read = match read_packet_frames(&packet, &mut frames) {
            Ok(summary) => summary,
            Err(Refusal::Malformed) => {
                self.stats.malformed_packets += 1;
                return;
            }
            Err(Refusal::HandshakeFrame) => {
                self.protocol_violation(
                    now,
                    close_code::PROTOCOL_VIOLATION,
                    "handshake frame in a data packet".into(),
                );
                return;
            }
        };
        let ack_eliciting = read.ack_eliciting;
        self.stats.packets_received += 1;
        self.stats.bytes_received += size as u64;
        self.last_received = now;
        self.on_path_heard(now, path, size);
        if ack_eliciting {
            // A peer that had our error CLOSE would be draining, sending
            // nothing but ACKs: this one needs the CLOSE again.
            self.repeat_error_close(now);
        }
        if !self.lifecycle.handshake_confirmed() {
            // An authenticated packet from the server: it has our last message.
            self.confirm_handshake();
        }
        let fresh = self.received.on_packet(
            now,
            header.pn,
            ack_eliciting,
            self.config.ack_frequency,
            self.config.max_ack_delay,
        );
        if !fresh {
            self.stats.duplicate_packets += 1;
            return;
        }
        let mut carries_data = false;
        // The messages in `packet` that arrive whole are delivered as slices
        // of it (the buffer the datagram was received and decrypted in); the
        // fragments of larger messages are copied into their messages' buffers.
        for f in frames.drain(..) {
            if matches!(
                f,
                Frame::Msg(_) | Frame::Bundle(_) | Frame::FecSource { .. }
            ) {
                if !carries_data {
                    self.data_pace.on_data_packet(now);
                }
                carries_data = true;
            }
            match f {
                Frame::FecSource { seq, frames } => {
                    // The messages it protects are read through
                    // `handle_frame`, and find the packet here.
                    self.packet = packet.clone();
                    self.on_fec_source(now, path, header.pn, seq, frames);
                    self.packet = Bytes::new();
                }
                Frame::Msg(m) => self.on_msgs(now, std::iter::once(m), &packet),
                Frame::Bundle(b) => {
                    self.stats.bundles_received += 1;
                    self.on_msgs(now, b.messages(), &packet);
                }
                f => self.handle_frame(now, path, f),
            }
            if self.lifecycle.is_closed() {
                return;
            }
        }
        if carries_data
            && self.paths.is_newest_data(header.pn)
            && path != self.paths.active
            && self.paths[path].state().is_usable()
            && self.paths.mode == PathMode::Backup
        {
            // The peer moved its data to this path: follow it with our ACKs.
            // Only its newest data counts: packets it sent on the old path
            // before moving may still arrive after the first ones on the new.
            self.switch_active(now, path, false);
        }
        self.poll_delivery(now);
        self.maybe_send_close();
    }

    fn handle_frame(&mut self, now: Instant, path: usize, frame: Frame<'_>) {
        match frame {
            Frame::Ping {
                timestamp_us,
                interval_us,
            } => {
                self.paths[path].on_heartbeat(now, Duration::from_micros(interval_us));
                let local = self.clock_us(now);
                self.paths[path].pong = Some((timestamp_us, local));
                if self.clock.estimate(local).is_none() {
                    // Until our own exchanges complete, the peer's PING (stamped
                    // as it left) gives a provisional offset: assume it took half
                    // the smallest round trip.
                    let one_way = self.paths[path].rtt.min().as_micros() as f64 / 2.0;
                    self.provisional_offset_us =
                        Some(timestamp_us as f64 - (local as f64 - one_way));
                }
            }
            Frame::Pong {
                echo_us,
                recv_us,
                send_us,
            } => {
                let sample = ClockSample {
                    t1: echo_us,
                    t2: recv_us,
                    t3: send_us,
                    t4: self.clock_us(now),
                };
                if self.clock.add(sample) {
                    self.events.push_back(Event::ClockStep);
                }
            }
            Frame::Skip { channel, up_to } => {
                let now_us = self.clock_us(now);
                self.reassembly.on_skip(channel, up_to, now_us);
            }
            Frame::Ack(ack) => self.on_ack_frame(now, path, &ack),
            Frame::Msg(m) => self.on_fec_msgs(now, std::iter::once(m)),
            Frame::Bundle(b) => {
                self.stats.bundles_received += 1;
                self.on_fec_msgs(now, b.messages());
            }
            Frame::Close { code, reason } => self.on_close_frame(now, code, reason),
            Frame::MaxData { max } => self.peer_max_data = self.peer_max_data.max(max),
            Frame::PathChallenge(data) => self.paths[path].response = Some(data),
            Frame::PathResponse(data) => self.on_path_response(now, data),
            Frame::FecRepair(symbol) => self.on_fec_repair(now, path, symbol),
            // Validated away by the caller, or without effect.
            _ => {}
        }
    }

    /// Message fragments read outside a data packet's own frames (protected
    /// by an FEC_SOURCE frame, or rebuilt by FEC): their data may lie in
    /// `self.packet`.
    fn on_fec_msgs<'a>(&mut self, now: Instant, frames: impl Iterator<Item = MsgFrame<'a>>) {
        let packet = std::mem::take(&mut self.packet);
        self.on_msgs(now, frames, &packet);
        self.packet = packet;
    }

    /// Hands message fragments that arrived together at `now` (one frame's,
    /// or a bundle's) to reassembly; the clocks are read once for all. A
    /// fragment whose data lies in `packet` is delivered, if whole, as a
    /// slice of it.
    fn on_msgs<'a>(
        &mut self,
        now: Instant,
        frames: impl Iterator<Item = MsgFrame<'a>>,
        packet: &Bytes,
    ) {
        let peer_origin = self.peer_params.map_or(0, |p| p.clock_origin_us);
        let now_us = self.clock_us(now);
        let peer_offset_us = self.peer_offset_us(now_us);
        let (packet_at, packet_len) = (packet.as_ptr() as usize, packet.len());
        for m in frames {
            if self.is_closed() {
                return;
            }
            let source = to_local_us(peer_origin.saturating_add(m.timestamp_us), peer_offset_us);
            // The data as a slice of the packet, when it lies in it (a message
            // rebuilt by FEC does not).
            let at = m.data.as_ptr() as usize;
            let in_packet = at >= packet_at && at + m.data.len() <= packet_at + packet_len;
            let shared = in_packet.then_some(packet);
            match self.reassembly.on_fragment(&m, source, now_us, shared) {
                Ok(FragmentOutcome::New) => {}
                Ok(FragmentOutcome::Duplicate) => self.stats.duplicate_fragments += 1,
                Err(e) => {
                    let code = match e {
                        ReassemblyError::FlowControl => close_code::FLOW_CONTROL,
                        ReassemblyError::TooLarge(_) => close_code::MESSAGE_TOO_LARGE,
                        _ => close_code::PROTOCOL_VIOLATION,
                    };
                    self.protocol_violation(now, code, e.to_string());
                }
            }
        }
    }

    /// Runs deadline skipping and playout, and reports what was skipped.
    fn poll_delivery(&mut self, now: Instant) {
        self.reassembly.poll(self.clock_us(now));
        for s in self.reassembly.take_skips() {
            self.events.push_back(Event::Skipped {
                channel: s.channel,
                from: s.from,
                to: s.to,
            });
        }
        self.report_closed_after_playout();
    }
}

/// Peer timestamp `peer_us` on our clock, given the peer's clock offset
/// (see `Connection::peer_offset_us`); 0 at the earliest.
fn to_local_us(peer_us: u64, peer_offset_us: f64) -> u64 {
    (peer_us as f64 - peer_offset_us).max(0.0) as u64
}

#[cfg(test)]
mod tests;
