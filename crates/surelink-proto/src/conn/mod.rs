//! A surelink connection as a sans-IO state machine.
//!
//! The connection owns no socket and reads no clock. It is driven by the caller:
//!
//! ```text
//! conn.handle_datagram(now, remote, &bytes);   // a datagram arrived
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
//! derived from smoothed RTT and variance backs off exponentially; NewReno
//! congestion control with a pacer limits what is in flight; flow control bounds
//! what the receiver holds; messages are fragmented and reassembled. Closing is
//! graceful by default: everything queued is acknowledged before CLOSE is sent.

pub mod congestion;
mod handshake;
mod pacer;
mod path;
mod phi;
mod protection;
mod reassembly;
mod received;
mod rtt;
mod send_queue;
mod sent;
mod stats;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

pub use congestion::{CongestionControl, CongestionController};
pub use path::{PathAddr, PathId, PathState, PathStats};
pub use phi::phi_trade_off;
pub use reassembly::{Message, ReassemblyError, SkippedRange, MAX_CHANNELS};
pub use stats::ConnectionStats;

use crate::clock::{ClockEstimate, ClockEstimator, ClockSample};
use crate::config::{Config, MIN_DATAGRAM_SIZE};
use crate::crypto::{token_matches, Identity, PublicKey};
use crate::wire::{
    Delivery, Frame, FrameIter, Header, MsgFrame, PacketKind, Reader, TransportParams,
    FLAG_PLAINTEXT, HEADER_MAX_LEN,
};
use congestion::{AckEvent, AckedPacket};
use handshake::{Handshake, HandshakeFailure, ResetToken};
use path::Path;
use protection::{OpenError, Protection};
use reassembly::{FragmentOutcome, Reassembly};
use received::ReceivedPackets;
use send_queue::SendQueue;
use sent::{SentFrame, SentPacket};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Client waiting for ACCEPT; server waiting for CONNECT.
    Handshaking,
    /// Data flows.
    Established,
    /// Our graceful CLOSE is out, waiting for its acknowledgement.
    CloseSent,
    /// Closed; lingering to acknowledge the peer's retransmissions.
    Draining,
    /// Nothing more will happen.
    Closed,
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
    state: State,
    local_cid: u64,
    peer_cid: u64,
    /// Our stateless reset token for `local_cid`, sent in the handshake.
    reset_token: ResetToken,
    /// The peer's reset token for `peer_cid`, learned in the handshake.
    peer_reset_token: Option<ResetToken>,
    paths: Vec<Path>,
    /// The path carrying data (backup mode) and ACKs.
    active: usize,
    mode: PathMode,
    /// Broadcast: copies of a packet's frames still to send on other paths.
    copies: VecDeque<(usize, Vec<SentFrame>)>,
    /// A small deterministic generator for probe jitter.
    jitter_state: u64,
    epoch: Instant,
    next_pn: u64,
    received: ReceivedPackets,
    send_queue: SendQueue,
    reassembly: Reassembly,
    peer_params: Option<TransportParams>,
    peer_max_data: u64,
    max_data_sent: u64,
    handshake_confirmed: bool,
    handshake: Handshake,
    handshake_out: Option<Vec<u8>>,
    last_handshake_sent: Option<Instant>,
    retry_token: Option<Vec<u8>>,
    protection: Protection,
    scratch: Vec<u8>,
    validated: bool,
    amp_received: u64,
    amp_sent: u64,
    close_requested: bool,
    pending: Pending,
    last_received: Instant,
    drain_until: Option<Instant>,
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
    /// A graceful close is reported once the playout queue is empty.
    close_event_pending: bool,
    /// Handshake messages sent (an RTT sample is taken only from an unrepeated one).
    handshake_sends: u32,
    /// Every path is down (reported once).
    connection_lost: bool,
    /// `Event::Closed` was emitted (it is emitted exactly once).
    close_reported: bool,
    /// We refused the handshake with this code and reason.
    rejected: Option<(u64, String)>,
    /// Broadcast: the frames of the last data packet, to copy to other paths.
    last_frames: Option<Vec<SentFrame>>,
    channel_delivery: std::collections::HashMap<u64, Delivery>,
    latency: Histogram<u64>,
}

impl Connection {
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: Arc<Config>,
        side: Side,
        (local_cid, reset_token): (u64, ResetToken),
        peer_cid: u64,
        remote: SocketAddr,
        now: Instant,
        identity: Option<&Identity>,
        seed: [u8; 32],
    ) -> Self {
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
            retry_token: None,
            scratch: Vec::new(),
            validated: side == Side::Client,
            amp_received: 0,
            amp_sent: 0,
            paths: vec![Path::new(
                PathAddr { local: 0, remote },
                PathState::Active,
                now,
                &config,
            )],
            active: 0,
            mode: config.path_mode,
            copies: VecDeque::new(),
            jitter_state: u64::from_le_bytes(seed[..8].try_into().unwrap_or([1; 8])) | 1,
            reassembly: Reassembly::new(
                config.receive_window,
                config.max_message_size as u64,
                config.playout_delay.map(|d| d.as_micros() as u64),
            ),
            wall_origin_us: 0,
            clock: ClockEstimator::new(),
            provisional_offset_us: None,
            close_event_pending: false,
            first_initial_us: None,
            handshake_sends: 0,
            connection_lost: false,
            close_reported: false,
            rejected: None,
            last_frames: None,
            channel_delivery: std::collections::HashMap::new(),
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            max_data_sent: config.receive_window,
            config,
            side,
            state: State::Handshaking,
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
            handshake_confirmed: false,
            close_requested: false,
            pending: Pending::default(),
            last_received: now,
            drain_until: None,
            events: VecDeque::new(),
            stats: ConnectionStats::default(),
            error: None,
        };
        if let Some(f) = failure {
            c.enter_closed(Some(f.error));
        }
        c
    }

    /// A client connection to `remote` whose packets carry `local_cid`. The config
    /// must have been validated. `seed` feeds the handshake's ephemeral keys;
    /// `clock_us` is what our clock reads at `now`, if set.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn client(
        config: Arc<Config>,
        local_cid: u64,
        reset_token: ResetToken,
        remote: SocketAddr,
        now: Instant,
        identity: Option<&Identity>,
        seed: [u8; 32],
        clock_us: Option<u64>,
    ) -> Self {
        let mut c = Self::new(
            config,
            Side::Client,
            (local_cid, reset_token),
            0,
            remote,
            now,
            identity,
            seed,
        );
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

    /// A server connection answering the client whose id is `client_cid`;
    /// `validated` says the client's address was proven by a retry token.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn server(
        config: Arc<Config>,
        local_cid: u64,
        reset_token: ResetToken,
        client_cid: u64,
        remote: SocketAddr,
        now: Instant,
        identity: Option<&Identity>,
        seed: [u8; 32],
        validated: bool,
    ) -> Self {
        let mut c = Self::new(
            config,
            Side::Server,
            (local_cid, reset_token),
            client_cid,
            remote,
            now,
            identity,
            seed,
        );
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
        self.paths[self.active].addr.remote
    }

    fn ap(&self) -> &Path {
        &self.paths[self.active]
    }

    /// Adds a path (client side): `local` names the caller's socket, `remote`
    /// the peer address to reach through it. It is validated before use.
    pub fn add_path(&mut self, now: Instant, addr: PathAddr) -> PathId {
        if let Some(i) = self.paths.iter().position(|p| p.addr == addr) {
            return PathId(i);
        }
        let mut p = Path::new(addr, PathState::Probing, now, &self.config);
        // We chose this address ourselves: no amplification concern.
        p.ever_validated = true;
        self.paths.push(p);
        let id = self.paths.len() - 1;
        self.start_challenge(now, id);
        PathId(id)
    }

    /// Stops using a path (its in-flight data is re-sent elsewhere).
    pub fn remove_path(&mut self, now: Instant, id: PathId) {
        if id.0 >= self.paths.len() || self.paths.len() == 1 {
            return;
        }
        let lost = self.paths[id.0].sent.drain();
        self.on_packets_lost(now, id.0, lost, false);
        self.paths[id.0].state = PathState::Down;
        self.paths[id.0].role = PathState::Down;
        if self.active == id.0 {
            if let Some(to) = self.best_standby() {
                self.switch_active(now, to, false);
            }
        }
    }

    /// Sets how several paths are used.
    pub fn set_path_mode(&mut self, mode: PathMode) {
        self.mode = mode;
    }

    /// Per-path snapshots.
    pub fn path_stats(&self, now: Instant) -> Vec<PathStats> {
        self.paths
            .iter()
            .enumerate()
            .map(|(i, p)| p.stats(PathId(i), now))
            .collect()
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

    /// True once the handshake completed and until the connection ends.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established | State::CloseSent)
    }

    /// True once the connection can no longer carry data (closed or draining).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Draining | State::Closed)
    }

    /// True once nothing more will happen: the caller may drop the connection.
    pub fn is_drained(&self) -> bool {
        self.state == State::Closed
    }

    /// The error the connection ended with, if any.
    pub fn error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }

    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
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

    /// Converts a peer timestamp (µs on its clock) to ours.
    fn peer_to_local(&self, now: Instant, peer_us: u64) -> u64 {
        let offset = match self.clock.estimate(self.clock_us(now)) {
            Some(e) => e.offset_us,
            None => self.provisional_offset_us.unwrap_or(0.0),
        };
        (peer_us as f64 - offset).max(0.0) as u64
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
    pub fn set_channel_delivery(&mut self, channel: u64, delivery: Delivery) {
        self.channel_delivery.insert(channel, delivery);
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
        let local = if self.side == Side::Server && self.state == State::Handshaking {
            // Half-open connections are dropped sooner.
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
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        if self.close_requested || self.state == State::CloseSent {
            return Err(SendError::Closing);
        }
        let max = self.max_message();
        if data.len() > max {
            return Err(SendError::TooLarge {
                size: data.len(),
                max,
            });
        }
        let buffered = self.send_queue.buffered();
        if buffered > 0 && buffered + data.len() as u64 > self.config.send_buffer as u64 {
            return Err(SendError::Blocked);
        }
        self.stats.messages_sent += 1;
        self.stats.payload_bytes_sent += data.len() as u64;
        let delivery = self
            .channel_delivery
            .get(&channel)
            .copied()
            .unwrap_or_default();
        Ok(self
            .send_queue
            .push(channel, data, self.micros(now), delivery))
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
        self.latency.saturating_record(m.latency_us.max(1));
        if self.reassembly.max_data() - self.max_data_sent >= self.config.receive_window / 4 {
            self.pending.max_data = true;
        }
        Some(m)
    }

    /// True if `recv` would return a message.
    pub fn has_message(&self) -> bool {
        self.reassembly.has_ready()
    }

    /// Starts a graceful close: queued messages are still delivered and
    /// acknowledged, then CLOSE is exchanged and `Event::Closed { error: None }` follows.
    pub fn close(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        self.close_requested = true;
        self.maybe_send_close(now);
    }

    /// Ends the connection at once, dropping anything unsent, and tells the peer.
    pub fn abort(&mut self, now: Instant, reason: &str) {
        if self.is_closed() {
            return;
        }
        self.close_with_error(
            now,
            close_code::APPLICATION_ABORT,
            reason,
            ConnectionError::LocallyAborted,
        );
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
            latency_p50_us: self.latency.value_at_quantile(0.5),
            latency_p99_us: self.latency.value_at_quantile(0.99),
            latency_p999_us: self.latency.value_at_quantile(0.999),
            latency_max_us: self.latency.max(),
            clock: self.clock.estimate(self.clock_us(self.last_received)),
            ..self.stats.clone()
        }
    }

    // ----- state transitions --------------------------------------------------

    fn maybe_send_close(&mut self, now: Instant) {
        if self.close_requested && self.state == State::Established && self.send_queue.is_empty() {
            self.state = State::CloseSent;
            self.pending.close = Some((close_code::NO_ERROR, String::new()));
            let _ = now;
        }
    }

    fn drain_period(&self) -> Duration {
        (self.ap().rtt.pto_base() * 3).min(self.config.idle_timeout)
    }

    fn close_with_error(&mut self, now: Instant, code: u64, reason: &str, err: ConnectionError) {
        tracing::debug!(cid = self.local_cid, %err, "closing with error");
        self.send_queue.clear();
        self.pending = Pending {
            close: Some((code, reason.to_owned())),
            ..Pending::default()
        };
        self.enter_draining(now, Some(err));
    }

    fn enter_draining(&mut self, now: Instant, error: Option<ConnectionError>) {
        self.state = State::Draining;
        self.drain_until = Some(now + self.drain_period());
        if error.is_some() || self.reassembly.next_wake().is_none() {
            self.finish(error);
        } else {
            // Messages still wait for their playout time: report the end once
            // they are out.
            self.close_event_pending = true;
        }
    }

    /// Emits the Closed event once.
    fn finish(&mut self, error: Option<ConnectionError>) {
        if !self.close_reported {
            self.close_reported = true;
            self.error.clone_from(&error);
            self.events.push_back(Event::Closed { error });
        }
    }

    fn enter_closed(&mut self, error: Option<ConnectionError>) {
        self.state = State::Closed;
        self.finish(error);
    }

    fn protocol_violation(&mut self, now: Instant, code: u64, what: String) {
        self.close_with_error(
            now,
            code,
            &what,
            ConnectionError::ProtocolViolation(what.clone()),
        );
    }

    // ----- input ---------------------------------------------------------------

    /// Handles one datagram from `remote`. Malformed, forged or unexpected
    /// datagrams are dropped and counted; they never panic and never corrupt state.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, datagram: &[u8]) {
        self.handle_datagram_on(now, PathAddr { local: 0, remote }, datagram);
    }

    /// Like `handle_datagram`, for a datagram that arrived on the caller's
    /// local socket `addr.local` from `addr.remote` (several paths).
    pub fn handle_datagram_on(&mut self, now: Instant, addr: PathAddr, datagram: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        if let Some(rejection) = &self.rejected {
            // We refused this peer: answer anything more from it (at most one
            // small Reject per datagram received) with the refusal again.
            if self.state == State::Draining && self.paths[0].addr == addr {
                self.pending.reject = Some(rejection.clone());
            }
            return;
        }
        let mut r = Reader::new(datagram);
        let Ok(header) = Header::decode(&mut r) else {
            self.stats.malformed_packets += 1;
            return;
        };
        let header_len = datagram.len() - r.remaining();
        let payload = &datagram[header_len..];
        let ours = header.dcid == self.local_cid;
        let routed = match (self.side, header.kind) {
            (Side::Server, PacketKind::Initial) => header.dcid == self.peer_cid,
            (Side::Client, PacketKind::Retry) => ours,
            (_, PacketKind::Handshake | PacketKind::Reject | PacketKind::Data) => ours,
            _ => false,
        };
        let path = self.paths.iter().position(|p| p.addr == addr);
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
            self.on_handshake_packet(now, &header, payload, datagram.len());
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        match self
            .protection
            .open(&header, &datagram[..header_len], payload, &mut scratch)
        {
            Ok(plain) => {
                // Authenticated: a packet from a new address opens a path.
                let path = path.unwrap_or_else(|| self.open_path(now, addr));
                self.on_data_packet(now, path, &header, plain, datagram.len())
            }
            Err(OpenError::Authentication) => self.stats.auth_failures += 1,
            Err(OpenError::Replay) => self.stats.duplicate_packets += 1,
            Err(OpenError::Mode) => self.stats.malformed_packets += 1,
        }
        self.scratch = scratch;
    }

    /// A stateless Reset: closes the connection at once if it carries the
    /// peer's reset token and came from one of our paths; anything else is
    /// counted and ignored. A connection already ending is not made an error
    /// by it: after our graceful CLOSE (sent only once everything was
    /// acknowledged) it ends gracefully, as at an unanswered CLOSE's idle
    /// timeout; a draining one drains on.
    fn on_reset(&mut self, known_path: bool, payload: &[u8]) {
        let mut frames = FrameIter::new(payload);
        let valid = match (frames.next(), frames.next(), &self.peer_reset_token) {
            (Some(Ok(Frame::Token(t))), None, Some(expected)) => {
                known_path && token_matches(expected, t)
            }
            _ => false,
        };
        if !valid {
            self.stats.bad_resets += 1;
            return;
        }
        tracing::debug!(cid = self.local_cid, "stateless reset by the peer");
        let error = match self.state {
            State::Draining => return,
            State::CloseSent => None,
            _ => Some(ConnectionError::Reset),
        };
        self.send_queue.clear();
        self.pending = Pending::default();
        self.enter_closed(error);
    }

    /// Handshake, Retry and Reject packets: unprotected, and allowed to carry
    /// only HANDSHAKE, TOKEN (Initial, Retry), CLOSE (Reject) and PADDING.
    fn on_handshake_packet(&mut self, now: Instant, header: &Header, payload: &[u8], size: usize) {
        let mut message = None;
        let mut token = None;
        let mut close = None;
        for f in FrameIter::new(payload) {
            match f {
                Ok(Frame::Padding(_)) => {}
                Ok(Frame::Handshake(m)) if message.is_none() => message = Some(m),
                Ok(Frame::Token(t)) if token.is_none() => token = Some(t),
                Ok(Frame::Close { code, reason }) if close.is_none() => {
                    close = Some((code, reason))
                }
                _ => {
                    self.stats.malformed_packets += 1;
                    return;
                }
            }
        }
        // A Reject may come from a peer in the other mode: that is its point.
        if header.kind != PacketKind::Reject
            && (header.flags & FLAG_PLAINTEXT != 0) != self.handshake.is_plaintext()
        {
            self.stats.malformed_packets += 1;
            return;
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += size as u64;
        if !self.validated {
            self.amp_received += size as u64;
        }
        match (self.side, header.kind) {
            (_, PacketKind::Reject) => {
                if let Some((code, reason)) = close {
                    if !self.handshake_confirmed
                        || self.side == Side::Server && self.state == State::Handshaking
                    {
                        self.last_received = now;
                        self.enter_closed(Some(ConnectionError::Rejected {
                            code,
                            reason: reason.to_owned(),
                        }));
                    }
                }
            }
            (Side::Client, PacketKind::Retry) => {
                if let Some(t) = token {
                    if self.state == State::Handshaking && self.retry_token.is_none() {
                        self.retry_token = Some(t.to_vec());
                        self.pending.handshake = true;
                    }
                }
            }
            (Side::Server, PacketKind::Initial) => {
                let Some(m) = message else { return };
                self.last_received = now;
                if self.state != State::Handshaking {
                    return;
                }
                if self.handshake_out.is_some() {
                    // Our answer was lost: send it again.
                    self.pending.handshake = true;
                    return;
                }
                match self.handshake.server_hello(
                    m,
                    self.local_cid,
                    self.local_params(),
                    &self.reset_token,
                ) {
                    Ok((params, answer)) => {
                        self.first_initial_us = Some(self.clock_us(now));
                        self.peer_params = Some(params);
                        self.peer_max_data = params.receive_window;
                        self.handshake_out = Some(answer);
                        self.pending.handshake = true;
                    }
                    Err(f) => self.reject(f),
                }
            }
            (Side::Server, PacketKind::Handshake) => {
                let Some(m) = message else { return };
                if self.state != State::Handshaking {
                    // The client repeats its last message until it hears from us.
                    self.paths[0].ping = true;
                    return;
                }
                if self.handshake_out.is_none() {
                    return;
                }
                self.last_received = now;
                match self.handshake.server_finish(m) {
                    Ok(reset) => {
                        self.peer_reset_token = reset;
                        self.handshake_rtt_sample(now);
                        if let (Some(p), Some(at)) = (self.peer_params, self.first_initial_us) {
                            self.provisional_offset(p.clock_origin_us, at);
                        }
                        self.install_keys(now);
                        self.validated = true;
                        self.handshake_confirmed = true;
                        self.handshake_out = None;
                        self.pending.handshake = false;
                        self.paths[0].ping = true;
                        self.state = State::Established;
                        self.events.push_back(Event::Connected);
                    }
                    Err(f) => self.reject(f),
                }
            }
            (Side::Client, PacketKind::Handshake) => {
                let Some(m) = message else { return };
                if self.state != State::Handshaking {
                    return;
                }
                self.last_received = now;
                match self.handshake.client_read_answer(m) {
                    Ok((cid, params, reset)) => {
                        self.peer_reset_token = reset;
                        self.handshake_rtt_sample(now);
                        self.handshake_sends = 0;
                        self.paths[0].pto_count = 0;
                        let local = self.clock_us(now);
                        self.provisional_offset(params.clock_origin_us, local);
                        self.peer_cid = cid;
                        self.peer_params = Some(params);
                        self.peer_max_data = params.receive_window;
                    }
                    Err(f) => return self.reject(f),
                }
                match self.handshake.client_complete(&self.reset_token) {
                    Ok(last) => {
                        self.install_keys(now);
                        self.handshake_out = Some(last);
                        self.pending.handshake = true;
                        self.paths[0].ping = true;
                        self.state = State::Established;
                        self.events.push_back(Event::Connected);
                    }
                    Err(f) => self.reject(f),
                }
            }
            _ => self.stats.malformed_packets += 1,
        }
    }

    /// The answer to our only handshake message measures the round trip.
    fn handshake_rtt_sample(&mut self, now: Instant) {
        if let (1, Some(sent)) = (self.handshake_sends, self.last_handshake_sent) {
            self.paths[0]
                .rtt
                .update(now.saturating_duration_since(sent), Duration::ZERO);
        }
    }

    fn install_keys(&mut self, now: Instant) {
        if let Some(keys) = self.handshake.take_keys() {
            let (bytes, after) = self
                .handshake
                .config()
                .map_or((u64::MAX, Duration::MAX), |c| {
                    (c.rekey_after_bytes, c.rekey_after)
                });
            self.protection.install(now, keys, bytes, after);
        }
    }

    /// Refuses the handshake: tells the peer why, then closes.
    fn reject(&mut self, f: HandshakeFailure) {
        tracing::debug!(cid = self.local_cid, reason = %f.reason, "handshake refused");
        self.send_queue.clear();
        self.rejected = Some((f.code, f.reason.clone()));
        self.pending = Pending {
            reject: Some((f.code, f.reason)),
            ..Pending::default()
        };
        self.finish(Some(f.error));
        self.state = State::Draining;
    }

    fn on_data_packet(
        &mut self,
        now: Instant,
        path: usize,
        header: &Header,
        payload: &[u8],
        size: usize,
    ) {
        // Validate every frame before acting on any.
        let mut ack_eliciting = false;
        for f in FrameIter::new(payload) {
            match f {
                Ok(
                    Frame::Connect(_)
                    | Frame::Accept { .. }
                    | Frame::Handshake(_)
                    | Frame::Token(_),
                ) => {
                    self.protocol_violation(
                        now,
                        close_code::PROTOCOL_VIOLATION,
                        "handshake frame in a data packet".into(),
                    );
                    return;
                }
                Ok(f) => ack_eliciting |= f.is_ack_eliciting(),
                Err(_) => {
                    self.stats.malformed_packets += 1;
                    return;
                }
            }
        }
        if payload.is_empty() {
            self.stats.malformed_packets += 1;
            return;
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += size as u64;
        self.last_received = now;
        self.on_path_heard(now, path, size);
        if !self.handshake_confirmed && self.state != State::Handshaking {
            // An authenticated packet from the server: it has our last message.
            self.handshake_confirmed = true;
            self.handshake_out = None;
            self.pending.handshake = false;
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
        for f in FrameIter::new(payload).flatten() {
            carries_data |= matches!(f, Frame::Msg(_));
            self.handle_frame(now, path, f);
            if self.state == State::Closed {
                return;
            }
        }
        if carries_data
            && path != self.active
            && self.paths[path].state.is_usable()
            && self.mode == PathMode::Backup
        {
            // The peer moved its data to this path: follow it with our ACKs.
            self.switch_active(now, path, false);
        }
        self.poll_delivery(now);
        self.maybe_send_close(now);
    }

    fn handle_frame(&mut self, now: Instant, path: usize, frame: Frame<'_>) {
        match frame {
            Frame::Ping { timestamp_us } => {
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
            Frame::Msg(m) => self.on_msg(now, &m),
            Frame::Close { code, reason } => self.on_close_frame(now, code, reason),
            Frame::MaxData { max } => self.peer_max_data = self.peer_max_data.max(max),
            Frame::PathChallenge(data) => self.paths[path].response = Some(data),
            Frame::PathResponse(data) => self.on_path_response(now, data),
            // Validated away by the caller, or without effect.
            _ => {}
        }
    }

    fn on_msg(&mut self, now: Instant, m: &MsgFrame<'_>) {
        if self.is_closed() {
            return;
        }
        let peer_origin = self.peer_params.map_or(0, |p| p.clock_origin_us);
        let source = self.peer_to_local(now, peer_origin.saturating_add(m.timestamp_us));
        let now_us = self.clock_us(now);
        match self.reassembly.on_fragment(m, source, now_us) {
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

    fn on_close_frame(&mut self, now: Instant, code: u64, reason: &str) {
        match self.state {
            State::Draining | State::Closed => {}
            State::CloseSent if code == close_code::NO_ERROR => {
                // Both sides closed gracefully at once.
                self.enter_draining(now, None);
            }
            _ => {
                let pending = self.send_queue.buffered();
                let error = if code != close_code::NO_ERROR {
                    Some(ConnectionError::PeerClosed {
                        code,
                        reason: reason.to_owned(),
                    })
                } else if !self.send_queue.is_empty() {
                    // The peer is done, but what we queued was not all delivered.
                    Some(ConnectionError::PeerClosedEarly {
                        unacknowledged_bytes: pending,
                    })
                } else {
                    None
                };
                self.send_queue.clear();
                self.enter_draining(now, error);
            }
        }
    }

    fn on_ack_frame(&mut self, now: Instant, path: usize, ack: &crate::wire::AckFrame) {
        if ack.largest() >= self.next_pn {
            self.protocol_violation(
                now,
                close_code::PROTOCOL_VIOLATION,
                "ACK of a packet never sent".into(),
            );
            return;
        }
        let ack_delay = Duration::from_micros(ack.delay_us).min(self.peer_max_ack_delay());
        let sendable = self.send_queue.has_sendable(self.peer_max_data);
        let mtu = self.config.max_datagram_size as u64;
        // One packet-number space, loss judged per path: each path takes the
        // acknowledgements of its own packets.
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            let in_flight_before = p.sent.bytes_in_flight();
            let outcome = p.sent.on_ack(now, &ack.ranges);
            if outcome.acked.is_empty() {
                continue;
            }
            if let Some(sample) = outcome.rtt_sample {
                // The ACK's own delay applies to the path it came back on.
                let delay = if i == path { ack_delay } else { Duration::ZERO };
                p.rtt.update(sample, delay);
            }
            let app_limited = in_flight_before + mtu <= p.cc.window() / 2 && !sendable;
            if app_limited {
                p.delivery.mark_app_limited(p.sent.bytes_in_flight());
            }
            let eliciting = || {
                outcome
                    .acked
                    .iter()
                    .map(|(_, pkt)| pkt)
                    .filter(|pkt| pkt.ack_eliciting)
            };
            let packets: Vec<AckedPacket> = eliciting()
                .map(|pkt| AckedPacket {
                    sent: pkt.time,
                    bytes: pkt.size,
                })
                .collect();
            if !packets.is_empty() {
                let rate_sample = p.delivery.on_ack(
                    now,
                    eliciting().map(|pkt| (pkt.size, pkt.time, pkt.delivery)),
                    p.rtt.min(),
                );
                p.cc.on_ack(&AckEvent {
                    now,
                    packets: &packets,
                    app_limited,
                    min_rtt: p.rtt.min(),
                    smoothed_rtt: p.rtt.smoothed(),
                    rate_sample,
                });
                p.pto_count = 0;
            }
            let frames: Vec<SentFrame> = outcome
                .acked
                .into_iter()
                .flat_map(|(_, pkt)| pkt.frames)
                .collect();
            for f in frames {
                match f {
                    SentFrame::Msg(frag) => self.send_queue.on_acked(&frag),
                    SentFrame::Skip { .. } => self.send_queue.on_skip_acked(),
                    SentFrame::Ack(largest) => self.received.on_ack_acked(largest),
                    SentFrame::Close if self.state == State::CloseSent => {
                        self.enter_closed(None);
                    }
                    _ => {}
                }
            }
            self.detect_lost(now, i);
        }
        self.maybe_send_close(now);
    }

    fn detect_lost(&mut self, now: Instant, path: usize) {
        let p = &mut self.paths[path];
        let (lost, next) = p.sent.detect_lost(now, p.rtt.loss_delay());
        p.loss_time = next;
        self.on_packets_lost(now, path, lost, true);
    }

    /// Re-queues what lost packets carried; `congestion` says the loss is a
    /// congestion signal for the path (not so when a path is abandoned).
    fn on_packets_lost(
        &mut self,
        now: Instant,
        path: usize,
        lost: Vec<(u64, SentPacket)>,
        congestion: bool,
    ) {
        let mut newest_lost_eliciting = None;
        let mut lost_bytes = 0;
        for (_, p) in lost {
            self.stats.packets_lost += 1;
            self.paths[path].packets_lost += 1;
            if p.ack_eliciting {
                newest_lost_eliciting = Some(p.time);
                lost_bytes += p.size;
            }
            for f in p.frames {
                match f {
                    SentFrame::Msg(frag) => self.send_queue.on_lost(frag),
                    SentFrame::MaxData => self.pending.max_data = true,
                    SentFrame::Close if self.state == State::CloseSent => {
                        self.pending.close = Some((close_code::NO_ERROR, String::new()));
                    }
                    SentFrame::Skip { channel, up_to } => {
                        self.send_queue.on_skip_lost(channel, up_to)
                    }
                    SentFrame::Close | SentFrame::Ack(_) | SentFrame::Ping => {}
                }
            }
        }
        if let (Some(newest), true) = (newest_lost_eliciting, congestion) {
            self.paths[path]
                .cc
                .on_congestion_event(now, newest, lost_bytes);
        }
    }

    // ----- paths -------------------------------------------------------------------

    /// An authenticated packet arrived from an unknown address: a new path
    /// (the peer added one, or its address changed). Validate it before use.
    fn open_path(&mut self, now: Instant, addr: PathAddr) -> usize {
        let p = Path::new(addr, PathState::Probing, now, &self.config);
        self.paths.push(p);
        let id = self.paths.len() - 1;
        self.start_challenge(now, id);
        id
    }

    fn next_jitter(&mut self) -> u64 {
        // xorshift64: deterministic per connection.
        let mut x = self.jitter_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_state = x;
        x
    }

    fn start_challenge(&mut self, now: Instant, path: usize) {
        let data = self.next_jitter();
        self.paths[path].challenge = Some((data, now, None, 0));
    }

    fn on_path_response(&mut self, now: Instant, data: u64) {
        let Some(i) = self
            .paths
            .iter()
            .position(|p| p.challenge.is_some_and(|(d, ..)| d == data))
        else {
            return;
        };
        let recovered = self.paths[i].state == PathState::Recovering;
        let p = &mut self.paths[i];
        p.challenge = None;
        p.down_backoff = 0;
        p.ever_validated = true;
        p.state = if p.role == PathState::Active {
            PathState::Active
        } else {
            PathState::Standby
        };
        p.healthy_since = Some(now);
        p.phi.reset(now);
        let event = if recovered {
            Event::PathRecovered(PathId(i))
        } else {
            Event::PathUp(PathId(i))
        };
        self.events.push_back(event);
        if !self.ap().state.is_usable() {
            self.switch_active(now, i, false);
        }
    }

    /// A packet arrived on `path`: liveness, and recovery of a failed path.
    fn on_path_heard(&mut self, now: Instant, path: usize, size: usize) {
        let p = &mut self.paths[path];
        p.packets_received += 1;
        p.bytes_received += size as u64;
        if !p.is_validated() {
            p.unvalidated_received += size as u64;
        }
        p.last_heard = Some(now);
        p.phi.heartbeat(now);
        match p.state {
            PathState::Suspect => {
                p.state = p.role;
                p.healthy_since = Some(now);
            }
            PathState::Down => {
                p.state = PathState::Recovering;
                self.start_challenge(now, path);
            }
            _ => {}
        }
    }

    fn best_standby(&self) -> Option<usize> {
        self.paths
            .iter()
            .enumerate()
            .filter(|(i, p)| *i != self.active && p.state.is_usable())
            .min_by_key(|(i, p)| (p.rtt.smoothed(), *i))
            .map(|(i, _)| i)
    }

    /// Moves data to path `to`. With `abandon`, the packets in flight on the
    /// old path are declared lost at once and re-sent (paced) on the new one.
    fn switch_active(&mut self, now: Instant, to: usize, abandon: bool) {
        let from = self.active;
        if from == to {
            return;
        }
        self.active = to;
        self.paths[to].state = PathState::Active;
        self.paths[to].role = PathState::Active;
        if self.paths[from].role == PathState::Active {
            self.paths[from].role = PathState::Standby;
        }
        if self.paths[from].state == PathState::Active {
            self.paths[from].state = PathState::Standby;
        }
        if abandon {
            let lost = self.paths[from].sent.drain();
            self.paths[from].loss_time = None;
            self.on_packets_lost(now, from, lost, false);
        }
        self.events.push_back(Event::FailedOver {
            from: PathId(from),
            to: PathId(to),
        });
    }

    /// The client in backup mode returns to its primary (first) path.
    fn failback_possible(&self) -> bool {
        self.active != 0 && self.mode == PathMode::Backup && self.side == Side::Client
    }

    fn suspect_threshold(&self) -> f64 {
        self.config.phi_threshold / 2.0
    }

    /// Applies the failure detector to every path and fails over or back.
    fn check_paths(&mut self, now: Instant) {
        if self.state != State::Established && self.state != State::CloseSent {
            return;
        }
        let (suspect, down) = (self.suspect_threshold(), self.config.phi_threshold);
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            if p.last_heard.is_none() {
                continue;
            }
            let phi = p.phi.phi(now);
            match p.state {
                PathState::Active | PathState::Standby if phi >= down => {
                    p.state = PathState::Down;
                    p.healthy_since = None;
                    self.events.push_back(Event::PathDown(PathId(i)));
                }
                PathState::Active | PathState::Standby if phi >= suspect => {
                    p.state = PathState::Suspect;
                    p.healthy_since = None;
                    self.events.push_back(Event::PathSuspect(PathId(i)));
                }
                PathState::Suspect if phi >= down => {
                    p.state = PathState::Down;
                    self.events.push_back(Event::PathDown(PathId(i)));
                }
                _ => {}
            }
        }
        let all_down = self.paths.iter().all(|p| p.state == PathState::Down);
        if all_down && !self.connection_lost {
            self.connection_lost = true;
            self.events.push_back(Event::ConnectionLost);
        } else if !all_down {
            self.connection_lost = false;
        }
        // Fail over from a suspect or failed active path. In backup mode its
        // packets in flight are re-sent on the new path at once; in broadcast
        // mode each of them has a copy in flight on the other paths, tracked
        // (and re-sent if lost) there, so re-sending would only duplicate.
        if !self.ap().state.is_usable() {
            if let Some(to) = self.best_standby() {
                let abandon = self.mode != PathMode::Broadcast;
                self.switch_active(now, to, abandon);
            }
        }
        // Fail back to the primary once it has been healthy for a while.
        let primary = &self.paths[0];
        if self.failback_possible()
            && primary.state.is_usable()
            && primary
                .healthy_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.config.failback_delay)
        {
            self.switch_active(now, 0, false);
        }
    }

    /// When the failure detector must next look at the paths.
    fn path_check_deadline(&self) -> Option<Instant> {
        if self.state != State::Established && self.state != State::CloseSent {
            return None;
        }
        let mut t = None::<Instant>;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for p in &self.paths {
            if p.last_heard.is_none() {
                continue;
            }
            match p.state {
                PathState::Active | PathState::Standby => {
                    consider(p.phi.crossing(self.suspect_threshold()))
                }
                PathState::Suspect => consider(p.phi.crossing(self.config.phi_threshold)),
                _ => {}
            }
        }
        let primary = &self.paths[0];
        if self.failback_possible() && primary.state.is_usable() {
            consider(
                primary
                    .healthy_since
                    .map(|h| h + self.config.failback_delay),
            );
        }
        t
    }

    /// When a heartbeat (or a challenge, or a down-path probe) is due on `path`.
    fn heartbeat_deadline(&self, path: usize) -> Option<Instant> {
        let p = &self.paths[path];
        if self.state != State::Established && self.state != State::CloseSent {
            return None;
        }
        if let Some((_, first, last, tries)) = p.challenge {
            if !p.may_probe() {
                return None;
            }
            return Some(match last {
                None => first,
                Some(l) => l + self.config.heartbeat_interval * (1 << tries.min(6)),
            });
        }
        if p.ping {
            return None;
        }
        let interval = match p.state {
            PathState::Down => {
                self.config.heartbeat_interval * (1 << p.down_backoff.min(10))
                    + Duration::from_micros(p.down_backoff as u64 * 997 % 5000)
            }
            PathState::Probing | PathState::Recovering => return None,
            _ => self.config.heartbeat_interval,
        }
        .min(self.config.max_pto.max(self.config.heartbeat_interval));
        Some(p.last_ping.unwrap_or(p.last_eliciting_sent) + interval)
    }

    // ----- timers ----------------------------------------------------------------

    fn pto_duration(&self, path: usize) -> Duration {
        let p = &self.paths[path];
        let base = p.rtt.pto_base() + self.peer_max_ack_delay();
        let backed_off = base.saturating_mul(1u32 << p.pto_count.min(16));
        backed_off.min(self.config.max_pto.max(base))
    }

    fn pto_deadline(&self, path: usize) -> Option<Instant> {
        let p = &self.paths[path];
        if p.loss_time.is_some() || self.is_closed() || !p.sent.has_eliciting_in_flight() {
            return None;
        }
        let last = p.sent.last_eliciting_sent().unwrap_or(self.epoch);
        Some(last + self.pto_duration(path))
    }

    /// Client: when to repeat the pending handshake message.
    fn handshake_deadline(&self) -> Option<Instant> {
        if self.side != Side::Client || self.is_closed() || self.handshake_out.is_none() {
            return None;
        }
        Some(self.last_handshake_sent? + self.pto_duration(0))
    }

    fn keepalive_deadline(&self) -> Option<Instant> {
        let p = self.ap();
        (self.state == State::Established && !p.sent.has_eliciting_in_flight())
            .then(|| p.last_eliciting_sent + self.config.keepalive_interval)
    }

    /// When `handle_timeout` must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        if self.state == State::Draining {
            let playout = self.reassembly.next_wake().map(|us| self.instant_at(us));
            return [self.drain_until, playout].into_iter().flatten().min();
        }
        let per_path = (0..self.paths.len()).flat_map(|i| {
            let p = &self.paths[i];
            [
                p.loss_time,
                self.pto_deadline(i),
                p.pacing_until,
                self.heartbeat_deadline(i),
            ]
        });
        [
            self.handshake_deadline(),
            self.received.ack_deadline(),
            Some(self.last_received + self.idle_timeout()),
            self.keepalive_deadline(),
            self.path_check_deadline(),
            self.reassembly.next_wake().map(|us| self.instant_at(us)),
        ]
        .into_iter()
        .chain(per_path)
        .flatten()
        .min()
    }

    /// Handles the expiry of whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => return,
            State::Draining => {
                self.poll_delivery(now);
                if self.drain_until.is_some_and(|t| t <= now) && !self.close_event_pending {
                    self.enter_closed(None);
                }
                return;
            }
            _ => {}
        }
        if now >= self.last_received + self.idle_timeout() {
            // Our CLOSE went unanswered but everything we sent was acknowledged:
            // that is a graceful end (the acknowledgement of the CLOSE was lost).
            let error = match self.state {
                State::CloseSent => None,
                _ if self.connection_lost => Some(ConnectionError::ConnectionLost),
                _ => Some(ConnectionError::TimedOut),
            };
            self.send_queue.clear();
            self.enter_closed(error);
            return;
        }
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            if p.pacing_until.is_some_and(|t| t <= now) {
                p.pacing_until = None;
            }
            if p.loss_time.is_some_and(|t| t <= now) {
                self.detect_lost(now, i);
            } else if self.pto_deadline(i).is_some_and(|t| t <= now) {
                let p = &mut self.paths[i];
                p.pto_count += 1;
                p.probes = 2;
                self.stats.probe_timeouts += 1;
            }
            if self.heartbeat_deadline(i).is_some_and(|t| t <= now) {
                let p = &mut self.paths[i];
                p.ping = true;
                if p.state == PathState::Down {
                    p.down_backoff += 1;
                }
            }
        }
        if self.handshake_deadline().is_some_and(|t| t <= now) {
            self.paths[0].pto_count += 1;
            self.stats.probe_timeouts += 1;
            self.pending.handshake = true;
        }
        if self.keepalive_deadline().is_some_and(|t| t <= now) {
            let a = self.active;
            self.paths[a].ping = true;
        }
        self.check_paths(now);
        self.poll_delivery(now);
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
        if self.close_event_pending && self.reassembly.next_wake().is_none() {
            self.close_event_pending = false;
            self.finish(None);
        }
    }

    // ----- output -----------------------------------------------------------------

    /// Writes the next datagram to send into `buf` (cleared first), if any.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        buf.clear();
        if self.state == State::Closed {
            return None;
        }
        if let Some((code, reason)) = self.pending.reject.take() {
            self.write_reject(buf, code, &reason);
            // Linger, so a peer whose copy of the Reject was lost hears it
            // again when it retransmits (see `handle_datagram_on`).
            self.drain_until = Some(now + self.drain_period());
            return self.finish_transmit(buf, 0);
        }
        if self.pending.handshake && self.handshake_out.is_some() {
            if let Some(t) = self.write_handshake(now, buf) {
                return Some(t);
            }
        }
        if !self.protection.is_ready() || self.state == State::Handshaking {
            return None;
        }
        // Path validation: challenges and responses go on their own path.
        for i in 0..self.paths.len() {
            if let Some(t) = self.write_path_probe(now, buf, i) {
                return Some(t);
            }
        }
        // Broadcast copies of what was just sent on another path.
        while let Some((path, frames)) = self.copies.pop_front() {
            if self.paths[path].state.is_usable() {
                if let Some(t) = self.write_packet(now, buf, path, Role::Copy(frames.clone())) {
                    return Some(t);
                }
                // Paced: send this copy when the path's pacer allows.
                self.copies.push_front((path, frames));
                break;
            }
        }
        // Data (and ACKs, control frames) on the data path(s).
        for path in self.data_paths() {
            if let Some(t) = self.write_packet(now, buf, path, Role::Data) {
                if self.mode == PathMode::Broadcast {
                    self.queue_copies(path);
                }
                return Some(t);
            }
        }
        // Heartbeats, PONGs and probes on every path.
        for i in 0..self.paths.len() {
            let p = &self.paths[i];
            if p.ping || p.pong.is_some() || p.probes > 0 {
                if let Some(t) = self.write_packet(now, buf, i, Role::Heartbeat) {
                    return Some(t);
                }
            }
        }
        None
    }

    /// Paths that may carry data now, in order of preference.
    fn data_paths(&self) -> Vec<usize> {
        match self.mode {
            PathMode::Backup | PathMode::Broadcast => vec![self.active],
            PathMode::Balance => {
                // Stripe: the usable path with the most free window per RTT first.
                let mut v: Vec<usize> = (0..self.paths.len())
                    .filter(|&i| self.paths[i].state.is_usable())
                    .collect();
                if v.is_empty() {
                    v.push(self.active);
                }
                v.sort_by_key(|&i| {
                    let p = &self.paths[i];
                    let free = p.cc.window().saturating_sub(p.sent.bytes_in_flight());
                    std::cmp::Reverse(free * 1_000_000 / p.rtt.smoothed().as_micros().max(1) as u64)
                });
                v
            }
        }
    }

    fn queue_copies(&mut self, from: usize) {
        let Some(frames) = self.last_frames.take().filter(|f| !f.is_empty()) else {
            return;
        };
        for i in 0..self.paths.len() {
            if i != from && self.paths[i].state.is_usable() {
                self.copies.push_back((i, frames.clone()));
            }
        }
    }

    fn plaintext_flag(&self) -> u8 {
        if self.handshake.is_plaintext() {
            FLAG_PLAINTEXT
        } else {
            0
        }
    }

    /// Counts a built datagram and hands it out on `path`.
    fn finish_transmit(&mut self, buf: &[u8], path: usize) -> Option<Transmit> {
        self.next_pn += 1;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += buf.len() as u64;
        if !self.validated {
            self.amp_sent += buf.len() as u64;
        }
        let p = &mut self.paths[path];
        p.packets_sent += 1;
        p.bytes_sent += buf.len() as u64;
        if !p.is_validated() {
            p.unvalidated_sent += buf.len() as u64;
        }
        Some(Transmit {
            destination: p.addr.remote,
            local: p.addr.local,
            size: buf.len(),
        })
    }

    fn write_reject(&mut self, buf: &mut Vec<u8>, code: u64, reason: &str) {
        Header {
            kind: PacketKind::Reject,
            flags: self.plaintext_flag(),
            dcid: self.peer_cid,
            pn: self.next_pn,
        }
        .encode(buf);
        Frame::Close { code, reason }.encode(buf);
    }

    /// The pending handshake message: the client's Initial (m1, with the retry
    /// token if any) or last message (m3), or the server's answer (m2).
    fn write_handshake(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let msg = self.handshake_out.as_ref()?;
        let initial = self.side == Side::Client && self.state == State::Handshaking;
        // Before the client's address is validated, send at most 3x what it sent.
        let estimate = (msg.len() + 64) as u64;
        if !self.validated && self.amp_sent + estimate > 3 * self.amp_received {
            self.stats.amplification_blocked += 1;
            self.pending.handshake = false;
            return None;
        }
        Header {
            kind: if initial {
                PacketKind::Initial
            } else {
                PacketKind::Handshake
            },
            flags: self.plaintext_flag(),
            dcid: if initial {
                self.local_cid
            } else {
                self.peer_cid
            },
            pn: self.next_pn,
        }
        .encode(buf);
        if initial {
            if let Some(t) = &self.retry_token {
                Frame::Token(t).encode(buf);
            }
        }
        Frame::Handshake(msg).encode(buf);
        if initial && buf.len() < MIN_DATAGRAM_SIZE {
            Frame::Padding(MIN_DATAGRAM_SIZE - buf.len()).encode(buf);
        }
        self.pending.handshake = false;
        self.last_handshake_sent = Some(now);
        self.handshake_sends += 1;
        self.finish_transmit(buf, 0)
    }

    fn begin_data_packet(&mut self, now: Instant, buf: &mut Vec<u8>) -> (u64, usize) {
        let flags = self.protection.send_flags(now);
        let pn = self.next_pn;
        Header {
            kind: PacketKind::Data,
            flags,
            dcid: self.peer_cid,
            pn,
        }
        .encode(buf);
        (pn, buf.len())
    }

    /// Seals a Data packet begun with `begin_data_packet` (`start` is its
    /// packet number and header length) and records what it carries.
    fn seal_and_finish(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        path: usize,
        (pn, header_len): (u64, usize),
        frames: Vec<SentFrame>,
        eliciting: bool,
    ) -> Option<Transmit> {
        self.protection.seal(pn, buf, header_len);
        let size = buf.len() as u64;
        let p = &mut self.paths[path];
        p.last_sent = Some(now);
        if eliciting {
            p.last_eliciting_sent = now;
            p.pacer.on_sent(size);
            let delivery = p.delivery.on_sent(now, p.sent.bytes_in_flight());
            p.sent.on_sent(
                pn,
                SentPacket {
                    time: now,
                    size,
                    ack_eliciting: true,
                    frames,
                    delivery,
                },
            );
            p.cc.on_sent(now, size, p.sent.bytes_in_flight());
        }
        self.finish_transmit(buf, path)
    }

    /// PATH_CHALLENGE (repeated with backoff) and PATH_RESPONSE on `path`,
    /// within its anti-amplification budget while it is unvalidated.
    fn write_path_probe(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        path: usize,
    ) -> Option<Transmit> {
        let p = &self.paths[path];
        let challenge_due = p
            .challenge
            .is_some_and(|(_, first, last, tries)| match last {
                None => now >= first,
                Some(l) => now >= l + self.config.heartbeat_interval * (1 << tries.min(6)),
            });
        if p.response.is_none() && !challenge_due {
            return None;
        }
        if !p.may_probe() {
            return None;
        }
        let (pn, header_len) = self.begin_data_packet(now, buf);
        let p = &mut self.paths[path];
        if let Some(data) = p.response.take() {
            Frame::PathResponse(data).encode(buf);
        }
        if challenge_due {
            if let Some((data, first, _, tries)) = p.challenge {
                Frame::PathChallenge(data).encode(buf);
                p.challenge = Some((data, first, Some(now), tries + 1));
            }
        }
        self.seal_and_finish(now, buf, path, (pn, header_len), Vec::new(), false)
    }

    /// Builds one Data packet on `path`: a full data packet, a heartbeat
    /// (PING/PONG/probe and a pending ACK), or a broadcast copy of `frames`.
    fn write_packet(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        path: usize,
        role: Role,
    ) -> Option<Transmit> {
        let overhead = self.protection.overhead();
        // Broadcast copies are re-encoded with another packet number: keep room.
        let margin = if self.mode == PathMode::Broadcast {
            8
        } else {
            0
        };
        let mtu = self.config.max_datagram_size - overhead - margin;
        let (pn, header_len) = self.begin_data_packet(now, buf);
        let mut frames: Vec<SentFrame> = Vec::new();
        let draining = self.state == State::Draining;
        let is_data = matches!(role, Role::Data);
        let p = &self.paths[path];
        let probe = p.probes > 0;
        // A CLOSE is one small last packet: it leaves whatever the window
        // (else it would wait for an ACK, which a vanished peer never sends).
        let closing = is_data && self.pending.close.is_some();
        let congestion_ok =
            probe || closing || p.sent.bytes_in_flight() + mtu as u64 <= p.cc.window();
        let control_pending = is_data && (self.pending.max_data || self.pending.close.is_some())
            || p.pong.is_some()
            || p.ping
            || probe;
        let data_pending = is_data && !draining && self.send_queue.has_sendable(self.peer_max_data);
        let mut eliciting_ok = match &role {
            Role::Copy(_) => true,
            _ => congestion_ok && (control_pending || data_pending),
        };
        if eliciting_ok && !probe && self.pending.close.is_none() {
            let p = &mut self.paths[path];
            let rate = p.cc.pacing_rate(p.rtt.smoothed());
            if let Some(t) = p
                .pacer
                .delay(now, mtu as u64, rate, p.cc.window(), mtu as u64)
            {
                p.pacing_until = Some(t);
                eliciting_ok = false;
            }
        }
        let ack_path = path == self.active || self.mode == PathMode::Broadcast;
        let ack_now = ack_path
            && (self.received.wants_ack_now(now)
                || (eliciting_ok && self.received.has_unacked())
                || (draining && self.received.has_unacked()));
        if !ack_now && !eliciting_ok {
            buf.clear();
            return None;
        }
        if ack_now {
            if let Some(ack) = self.received.build_ack(now) {
                let largest = ack.largest();
                Frame::Ack(ack).encode(buf);
                frames.push(SentFrame::Ack(largest));
            }
        }
        let mut eliciting = false;
        if let Role::Copy(copy) = role {
            for f in copy {
                match &f {
                    SentFrame::Msg(frag) => Frame::Msg(frag.frame()).encode(buf),
                    SentFrame::MaxData => Frame::MaxData {
                        max: self.max_data_sent,
                    }
                    .encode(buf),
                    SentFrame::Skip { channel, up_to } => Frame::Skip {
                        channel: *channel,
                        up_to: *up_to,
                    }
                    .encode(buf),
                    SentFrame::Close => Frame::Close {
                        code: close_code::NO_ERROR,
                        reason: "",
                    }
                    .encode(buf),
                    SentFrame::Ping => Frame::Ping {
                        timestamp_us: self.clock_us(now),
                    }
                    .encode(buf),
                    SentFrame::Ack(_) => continue,
                }
                if let SentFrame::Skip { .. } = f {
                    // Each copy of a SKIP is tracked like the original.
                    self.send_queue.on_skip_copy();
                }
                frames.push(f);
                eliciting = true;
            }
            if buf.len() == header_len {
                buf.clear();
                return None;
            }
            return self.seal_and_finish(now, buf, path, (pn, header_len), frames, eliciting);
        }
        if eliciting_ok && is_data {
            if let Some((code, reason)) = self.pending.close.take() {
                Frame::Close {
                    code,
                    reason: &reason,
                }
                .encode(buf);
                frames.push(SentFrame::Close);
                eliciting = true;
            }
        }
        if eliciting_ok && !draining {
            if is_data && std::mem::take(&mut self.pending.max_data) {
                let max = self.reassembly.max_data();
                self.max_data_sent = max;
                Frame::MaxData { max }.encode(buf);
                frames.push(SentFrame::MaxData);
                eliciting = true;
            }
            if let Some((echo_us, recv_us)) = self.paths[path].pong.take() {
                Frame::Pong {
                    echo_us,
                    recv_us,
                    send_us: self.clock_us(now),
                }
                .encode(buf);
                eliciting = true;
            }
            if is_data {
                self.send_queue.begin_packet();
                let now_us = self.micros(now);
                let slack_us = (self.paths[path].rtt.smoothed() / 2).as_micros() as u64;
                while let Some((channel, up_to)) = self.send_queue.take_skip() {
                    if mtu - buf.len() < 20 {
                        self.send_queue.on_skip_lost(channel, up_to);
                        break;
                    }
                    Frame::Skip { channel, up_to }.encode(buf);
                    frames.push(SentFrame::Skip { channel, up_to });
                    eliciting = true;
                }
                while let Some(f) = self.send_queue.next_fragment(
                    mtu - buf.len(),
                    self.peer_max_data,
                    now_us,
                    slack_us,
                ) {
                    Frame::Msg(f.frame()).encode(buf);
                    frames.push(SentFrame::Msg(f));
                    eliciting = true;
                }
            }
            let p = &mut self.paths[path];
            let probe = p.probes > 0;
            if std::mem::take(&mut p.ping) || (probe && !eliciting) {
                p.last_ping = Some(now);
                Frame::Ping {
                    timestamp_us: self.clock_us(now),
                }
                .encode(buf);
                frames.push(SentFrame::Ping);
                eliciting = true;
            }
            let p = &mut self.paths[path];
            if p.probes > 0 {
                p.probes -= 1;
            }
        }
        if buf.len() == header_len {
            buf.clear();
            return None;
        }
        debug_assert!(buf.len() <= mtu + margin + HEADER_MAX_LEN);
        if self.mode == PathMode::Broadcast && is_data {
            self.last_frames = Some(
                frames
                    .iter()
                    .filter(|f| !matches!(f, SentFrame::Ack(_)))
                    .cloned()
                    .collect(),
            );
        }
        self.seal_and_finish(now, buf, path, (pn, header_len), frames, eliciting)
    }
}

/// What a Data packet is built for.
#[derive(Debug)]
enum Role {
    /// Application data, control frames and ACKs on a data path.
    Data,
    /// Only liveness traffic for this path (PING, PONG, probe) and a pending ACK.
    Heartbeat,
    /// A broadcast copy of these frames.
    Copy(Vec<SentFrame>),
}

#[cfg(test)]
mod tests;
