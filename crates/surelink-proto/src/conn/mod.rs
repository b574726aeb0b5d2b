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

mod congestion;
mod handshake;
mod pacer;
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

pub use reassembly::{Message, ReassemblyError, SkippedRange, MAX_CHANNELS};
pub use stats::ConnectionStats;

use crate::clock::{ClockEstimate, ClockEstimator, ClockSample};
use crate::config::{Config, MIN_DATAGRAM_SIZE};
use crate::crypto::{Identity, PublicKey};
use crate::wire::{
    Delivery, Frame, FrameIter, Header, MsgFrame, PacketKind, Reader, TransportParams,
    FLAG_PLAINTEXT, HEADER_MAX_LEN,
};
use congestion::NewReno;
use handshake::{Handshake, HandshakeFailure};
use pacer::Pacer;
use protection::{OpenError, Protection};
use reassembly::{FragmentOutcome, Reassembly};
use received::ReceivedPackets;
use rtt::RttEstimator;
use send_queue::SendQueue;
use sent::{SentFrame, SentPacket, SentPackets};

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
}

/// A datagram ready to be sent: the bytes are in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
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
    pong: Option<(u64, u64)>,
    ping: bool,
    probes: u8,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    config: Arc<Config>,
    side: Side,
    state: State,
    local_cid: u64,
    peer_cid: u64,
    remote: SocketAddr,
    epoch: Instant,
    next_pn: u64,
    sent: SentPackets,
    received: ReceivedPackets,
    rtt: RttEstimator,
    cc: NewReno,
    pacer: Pacer,
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
    loss_time: Option<Instant>,
    pto_count: u32,
    last_received: Instant,
    last_eliciting_sent: Instant,
    pacing_until: Option<Instant>,
    drain_until: Option<Instant>,
    events: VecDeque<Event>,
    stats: ConnectionStats,
    error: Option<ConnectionError>,
    /// Our clock (µs) at `epoch`: every timestamp we send is `wall_origin_us + µs since epoch`.
    wall_origin_us: u64,
    clock: ClockEstimator,
    /// Offset (peer − ours, µs) assumed before the first clock sample.
    provisional_offset_us: Option<f64>,
    last_clock_ping: Option<Instant>,
    /// Server: our clock when the client's first message arrived.
    first_initial_us: Option<u64>,
    /// A graceful close is reported once the playout queue is empty.
    close_event_pending: bool,
    /// Handshake messages sent (an RTT sample is taken only from an unrepeated one).
    handshake_sends: u32,
    channel_delivery: std::collections::HashMap<u64, Delivery>,
    latency: Histogram<u64>,
}

impl Connection {
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: Arc<Config>,
        side: Side,
        local_cid: u64,
        peer_cid: u64,
        remote: SocketAddr,
        now: Instant,
        identity: Option<&Identity>,
        seed: [u8; 32],
    ) -> Self {
        let mtu = config.max_datagram_size as u64;
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
            rtt: RttEstimator::new(config.initial_rtt),
            cc: NewReno::new(mtu, config.initial_window_packets),
            pacer: Pacer::new(now, mtu),
            reassembly: Reassembly::new(
                config.receive_window,
                config.max_message_size as u64,
                config.playout_delay.map(|d| d.as_micros() as u64),
            ),
            wall_origin_us: 0,
            clock: ClockEstimator::new(),
            provisional_offset_us: None,
            last_clock_ping: None,
            close_event_pending: false,
            first_initial_us: None,
            handshake_sends: 0,
            channel_delivery: std::collections::HashMap::new(),
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            max_data_sent: config.receive_window,
            config,
            side,
            state: State::Handshaking,
            local_cid,
            peer_cid,
            remote,
            epoch: now,
            next_pn: 0,
            sent: SentPackets::default(),
            received: ReceivedPackets::default(),
            send_queue: SendQueue::default(),
            peer_params: None,
            peer_max_data: 0,
            handshake_confirmed: false,
            close_requested: false,
            pending: Pending::default(),
            loss_time: None,
            pto_count: 0,
            last_received: now,
            last_eliciting_sent: now,
            pacing_until: None,
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
        remote: SocketAddr,
        now: Instant,
        identity: Option<&Identity>,
        seed: [u8; 32],
        clock_us: Option<u64>,
    ) -> Self {
        let mut c = Self::new(
            config,
            Side::Client,
            local_cid,
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
            local_cid,
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

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// The connection id the peer puts in packets to us.
    pub fn local_cid(&self) -> u64 {
        self.local_cid
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
            let one_way = self.rtt.smoothed().as_micros() as f64 / 2.0;
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
            rtt: self.rtt.smoothed(),
            rtt_var: self.rtt.var(),
            latest_rtt: self.rtt.latest(),
            min_rtt: self.rtt.min(),
            cwnd: self.cc.window(),
            ssthresh: self.cc.ssthresh(),
            bytes_in_flight: self.sent.bytes_in_flight(),
            retransmissions: self.send_queue.retransmitted(),
            payload_bytes_retransmitted: self.send_queue.retransmitted_bytes(),
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
        (self.rtt.pto_base() * 3).min(self.config.idle_timeout)
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
        if self.error.is_none()
            && !self
                .events
                .iter()
                .any(|e| matches!(e, Event::Closed { .. }))
        {
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
        if self.state == State::Closed {
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
        if !routed || remote != self.remote || payload.is_empty() {
            self.stats.malformed_packets += 1;
            return;
        }
        if header.kind != PacketKind::Data {
            self.on_handshake_packet(now, &header, payload, datagram.len());
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        match self
            .protection
            .open(&header, &datagram[..header_len], payload, &mut scratch)
        {
            Ok(plain) => self.on_data_packet(now, &header, plain, datagram.len()),
            Err(OpenError::Authentication) => self.stats.auth_failures += 1,
            Err(OpenError::Replay) => self.stats.duplicate_packets += 1,
            Err(OpenError::Mode) => self.stats.malformed_packets += 1,
        }
        self.scratch = scratch;
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
                match self
                    .handshake
                    .server_hello(m, self.local_cid, self.local_params())
                {
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
                    self.pending.ping = true;
                    return;
                }
                if self.handshake_out.is_none() {
                    return;
                }
                self.last_received = now;
                match self.handshake.server_finish(m) {
                    Ok(()) => {
                        self.handshake_rtt_sample(now);
                        if let (Some(p), Some(at)) = (self.peer_params, self.first_initial_us) {
                            self.provisional_offset(p.clock_origin_us, at);
                        }
                        self.install_keys(now);
                        self.validated = true;
                        self.handshake_confirmed = true;
                        self.handshake_out = None;
                        self.pending.handshake = false;
                        self.pending.ping = true;
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
                    Ok((cid, params)) => {
                        self.handshake_rtt_sample(now);
                        self.handshake_sends = 0;
                        let local = self.clock_us(now);
                        self.provisional_offset(params.clock_origin_us, local);
                        self.peer_cid = cid;
                        self.peer_params = Some(params);
                        self.peer_max_data = params.receive_window;
                    }
                    Err(f) => return self.reject(f),
                }
                match self.handshake.client_complete() {
                    Ok(last) => {
                        self.install_keys(now);
                        self.handshake_out = Some(last);
                        self.pending.handshake = true;
                        self.pending.ping = true;
                        self.pto_count = 0;
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
            self.rtt
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
        self.pending = Pending {
            reject: Some((f.code, f.reason)),
            ..Pending::default()
        };
        self.error = Some(f.error.clone());
        self.events.push_back(Event::Closed {
            error: Some(f.error),
        });
        self.state = State::Draining;
    }

    fn on_data_packet(&mut self, now: Instant, header: &Header, payload: &[u8], size: usize) {
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
        for f in FrameIter::new(payload).flatten() {
            self.handle_frame(now, f);
            if self.state == State::Closed {
                return;
            }
        }
        self.poll_delivery(now);
        self.maybe_send_close(now);
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame<'_>) {
        match frame {
            Frame::Ping { timestamp_us } => {
                let local = self.clock_us(now);
                self.pending.pong = Some((timestamp_us, local));
                if self.clock.estimate(local).is_none() {
                    // Until our own exchanges complete, the peer's PING (stamped
                    // as it left) gives a provisional offset: assume it took half
                    // the smallest round trip.
                    let one_way = self.rtt.min().as_micros() as f64 / 2.0;
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
            Frame::Ack(ack) => self.on_ack_frame(now, &ack),
            Frame::Msg(m) => self.on_msg(now, &m),
            Frame::Close { code, reason } => self.on_close_frame(now, code, reason),
            Frame::MaxData { max } => self.peer_max_data = self.peer_max_data.max(max),
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
                let error = (code != close_code::NO_ERROR).then(|| ConnectionError::PeerClosed {
                    code,
                    reason: reason.to_owned(),
                });
                self.send_queue.clear();
                self.enter_draining(now, error);
            }
        }
    }

    fn on_ack_frame(&mut self, now: Instant, ack: &crate::wire::AckFrame) {
        if ack.largest() >= self.next_pn {
            self.protocol_violation(
                now,
                close_code::PROTOCOL_VIOLATION,
                "ACK of a packet never sent".into(),
            );
            return;
        }
        let in_flight_before = self.sent.bytes_in_flight();
        let outcome = self.sent.on_ack(now, &ack.ranges);
        if let Some(sample) = outcome.rtt_sample {
            let delay = Duration::from_micros(ack.delay_us).min(self.peer_max_ack_delay());
            self.rtt.update(sample, delay);
        }
        let app_limited = in_flight_before + self.config.max_datagram_size as u64
            <= self.cc.window() / 2
            && !self.send_queue.has_sendable(self.peer_max_data);
        let mut any_eliciting = false;
        for (_, p) in outcome.acked {
            if p.ack_eliciting {
                any_eliciting = true;
                self.cc.on_ack(p.time, p.size, app_limited);
            }
            for f in p.frames {
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
        }
        if any_eliciting {
            self.pto_count = 0;
        }
        self.detect_lost(now);
        self.maybe_send_close(now);
    }

    fn detect_lost(&mut self, now: Instant) {
        let (lost, next) = self.sent.detect_lost(now, self.rtt.loss_delay());
        self.loss_time = next;
        self.on_packets_lost(now, lost);
    }

    fn on_packets_lost(&mut self, now: Instant, lost: Vec<(u64, SentPacket)>) {
        let mut newest_lost_eliciting = None;
        for (_, p) in lost {
            self.stats.packets_lost += 1;
            if p.ack_eliciting {
                newest_lost_eliciting = Some(p.time);
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
        if let Some(newest) = newest_lost_eliciting {
            self.cc.on_congestion_event(now, newest);
        }
    }

    // ----- timers ----------------------------------------------------------------

    fn pto_duration(&self) -> Duration {
        let base = self.rtt.pto_base() + self.peer_max_ack_delay();
        let backed_off = base.saturating_mul(1u32 << self.pto_count.min(16));
        backed_off.min(self.config.max_pto.max(base))
    }

    fn pto_deadline(&self) -> Option<Instant> {
        if self.loss_time.is_some() || self.is_closed() {
            return None;
        }
        if !self.sent.has_eliciting_in_flight() {
            return None;
        }
        let last = self.sent.last_eliciting_sent().unwrap_or(self.epoch);
        Some(last + self.pto_duration())
    }

    /// Client: when to repeat the pending handshake message.
    fn handshake_deadline(&self) -> Option<Instant> {
        if self.side != Side::Client || self.is_closed() || self.handshake_out.is_none() {
            return None;
        }
        Some(self.last_handshake_sent? + self.pto_duration())
    }

    fn keepalive_deadline(&self) -> Option<Instant> {
        (self.state == State::Established && !self.sent.has_eliciting_in_flight())
            .then(|| self.last_eliciting_sent + self.config.keepalive_interval)
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
        [
            self.loss_time,
            self.pto_deadline(),
            self.handshake_deadline(),
            self.received.ack_deadline(),
            Some(self.last_received + self.idle_timeout()),
            self.keepalive_deadline(),
            self.clock_ping_deadline(),
            self.reassembly.next_wake().map(|us| self.instant_at(us)),
            self.pacing_until,
        ]
        .into_iter()
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
            let error = (self.state != State::CloseSent).then_some(ConnectionError::TimedOut);
            self.send_queue.clear();
            self.enter_closed(error);
            return;
        }
        if self.pacing_until.is_some_and(|t| t <= now) {
            self.pacing_until = None;
        }
        if self.loss_time.is_some_and(|t| t <= now) {
            self.detect_lost(now);
        } else if self.pto_deadline().is_some_and(|t| t <= now) {
            self.pto_count += 1;
            self.stats.probe_timeouts += 1;
            self.pending.probes = 2;
        }
        if self.handshake_deadline().is_some_and(|t| t <= now) {
            self.pto_count += 1;
            self.stats.probe_timeouts += 1;
            self.pending.handshake = true;
        }
        if self.keepalive_deadline().is_some_and(|t| t <= now)
            || self.clock_ping_deadline().is_some_and(|t| t <= now)
        {
            self.pending.ping = true;
        }
        self.poll_delivery(now);
    }

    fn clock_ping_deadline(&self) -> Option<Instant> {
        if self.state != State::Established || self.pending.ping {
            return None;
        }
        Some(self.last_clock_ping? + self.config.clock_interval)
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
            self.enter_closed(None);
            return self.finish_transmit(buf);
        }
        if self.pending.handshake && self.handshake_out.is_some() {
            if let Some(t) = self.write_handshake(now, buf) {
                return Some(t);
            }
        }
        if !self.protection.is_ready() || self.state == State::Handshaking {
            return None;
        }
        self.write_data(now, buf)
    }

    fn plaintext_flag(&self) -> u8 {
        if self.handshake.is_plaintext() {
            FLAG_PLAINTEXT
        } else {
            0
        }
    }

    /// Counts a built datagram and hands it out.
    fn finish_transmit(&mut self, buf: &[u8]) -> Option<Transmit> {
        self.next_pn += 1;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += buf.len() as u64;
        if !self.validated {
            self.amp_sent += buf.len() as u64;
        }
        Some(Transmit {
            destination: self.remote,
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
        self.finish_transmit(buf)
    }

    fn write_data(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let mtu = self.config.max_datagram_size - self.protection.overhead();
        let flags = self.protection.send_flags(now);
        let pn = self.next_pn;
        Header {
            kind: PacketKind::Data,
            flags,
            dcid: self.peer_cid,
            pn,
        }
        .encode(buf);
        let header_len = buf.len();
        let mut frames: Vec<SentFrame> = Vec::new();

        let draining = self.state == State::Draining;
        let probe = self.pending.probes > 0;
        let congestion_ok = probe || self.sent.bytes_in_flight() + mtu as u64 <= self.cc.window();
        let data_allowed = !draining;
        let control_pending = self.pending.max_data
            || self.pending.close.is_some()
            || self.pending.pong.is_some()
            || self.pending.ping
            || probe;
        let data_pending = data_allowed && self.send_queue.has_sendable(self.peer_max_data);
        let mut eliciting_ok = congestion_ok && (control_pending || data_pending);
        if eliciting_ok && !probe && self.pending.close.is_none() {
            if let Some(t) = self.pacer.delay(
                now,
                mtu as u64,
                self.cc.window(),
                self.rtt.smoothed(),
                mtu as u64,
            ) {
                self.pacing_until = Some(t);
                eliciting_ok = false;
            }
        }
        let ack_now = self.received.wants_ack_now(now)
            || (eliciting_ok && self.received.has_unacked())
            || (draining && self.received.has_unacked());
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
        if eliciting_ok {
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
            if std::mem::take(&mut self.pending.max_data) {
                let max = self.reassembly.max_data();
                self.max_data_sent = max;
                Frame::MaxData { max }.encode(buf);
                frames.push(SentFrame::MaxData);
                eliciting = true;
            }
            if let Some((echo_us, recv_us)) = self.pending.pong.take() {
                Frame::Pong {
                    echo_us,
                    recv_us,
                    send_us: self.clock_us(now),
                }
                .encode(buf);
                eliciting = true;
            }
            if data_allowed {
                let now_us = self.micros(now);
                let slack_us = (self.rtt.smoothed() / 2).as_micros() as u64;
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
            if std::mem::take(&mut self.pending.ping) || (probe && !eliciting) {
                self.last_clock_ping = Some(now);
                Frame::Ping {
                    timestamp_us: self.clock_us(now),
                }
                .encode(buf);
                frames.push(SentFrame::Ping);
                eliciting = true;
            }
            if probe {
                self.pending.probes -= 1;
            }
        }
        if buf.len() == header_len {
            buf.clear();
            return None;
        }
        debug_assert!(buf.len() <= mtu + HEADER_MAX_LEN);
        self.protection.seal(pn, buf, header_len);
        let size = buf.len() as u64;
        if eliciting {
            self.last_eliciting_sent = now;
            self.pacer.on_sent(size);
            self.sent.on_sent(
                pn,
                SentPacket {
                    time: now,
                    size,
                    ack_eliciting: true,
                    frames,
                },
            );
        }
        self.finish_transmit(buf)
    }
}

#[cfg(test)]
mod tests;
