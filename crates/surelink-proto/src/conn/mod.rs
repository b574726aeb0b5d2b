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
mod pacer;
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

pub use reassembly::{Message, ReassemblyError, MAX_CHANNELS};
pub use stats::ConnectionStats;

use crate::config::{Config, MIN_DATAGRAM_SIZE};
use crate::wire::{
    Frame, FrameIter, Header, MsgFrame, PacketKind, Reader, TransportParams, HEADER_MAX_LEN,
};
use congestion::NewReno;
use pacer::Pacer;
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
    connect: bool,
    accept: bool,
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
}

impl Connection {
    fn new(
        config: Arc<Config>,
        side: Side,
        local_cid: u64,
        peer_cid: u64,
        remote: SocketAddr,
        now: Instant,
    ) -> Self {
        let mtu = config.max_datagram_size as u64;
        Self {
            rtt: RttEstimator::new(config.initial_rtt),
            cc: NewReno::new(mtu, config.initial_window_packets),
            pacer: Pacer::new(now, mtu),
            reassembly: Reassembly::new(config.receive_window, config.max_message_size as u64),
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
        }
    }

    /// A client connection to `remote` whose packets carry `local_cid`. The config
    /// must have been validated.
    pub(crate) fn client(
        config: Arc<Config>,
        local_cid: u64,
        remote: SocketAddr,
        now: Instant,
    ) -> Self {
        let mut c = Self::new(config, Side::Client, local_cid, 0, remote, now);
        c.pending.connect = true;
        c
    }

    /// A server connection answering the client whose id is `client_cid`.
    pub(crate) fn server(
        config: Arc<Config>,
        local_cid: u64,
        client_cid: u64,
        remote: SocketAddr,
        now: Instant,
    ) -> Self {
        Self::new(config, Side::Server, local_cid, client_cid, remote, now)
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

    fn local_params(&self) -> TransportParams {
        TransportParams {
            max_message_size: self.config.max_message_size as u64,
            receive_window: self.config.receive_window,
            idle_timeout_ms: self.config.idle_timeout.as_millis() as u64,
            max_ack_delay_us: self.config.max_ack_delay.as_micros() as u64,
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
        let local = self.config.idle_timeout;
        match self.peer_params {
            Some(p) if p.idle_timeout_ms > 0 => local.min(Duration::from_millis(p.idle_timeout_ms)),
            _ => local,
        }
    }

    fn peer_max_ack_delay(&self) -> Duration {
        self.peer_params
            .map_or(Duration::ZERO, |p| Duration::from_micros(p.max_ack_delay_us))
    }

    // ----- application side -------------------------------------------------

    /// Queues a message on `channel`; returns its sequence number in that channel.
    ///
    /// A message larger than the send buffer is accepted when the buffer is empty,
    /// so any message up to the maximum size can be sent.
    pub fn send(&mut self, channel: u64, data: Bytes) -> Result<u64, SendError> {
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
        Ok(self.send_queue.push(channel, data))
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
            ..self.stats.clone()
        }
    }

    // ----- state transitions --------------------------------------------------

    fn maybe_send_close(&mut self, now: Instant) {
        if self.close_requested && self.state == State::Established && self.send_queue.is_empty()
        {
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
        self.finish(error);
    }

    /// Emits the Closed event once.
    fn finish(&mut self, error: Option<ConnectionError>) {
        if self.error.is_none() && !self.events.iter().any(|e| matches!(e, Event::Closed { .. }))
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
        self.close_with_error(now, code, &what, ConnectionError::ProtocolViolation(what.clone()));
    }

    // ----- input ---------------------------------------------------------------

    /// Handles one datagram from `remote`. Malformed or unexpected datagrams are
    /// dropped and counted; they never panic and never corrupt state.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, datagram: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        let mut r = Reader::new(datagram);
        let Ok(header) = Header::decode(&mut r) else {
            self.stats.malformed_packets += 1;
            return;
        };
        let payload = &datagram[datagram.len() - r.remaining()..];
        let expected_kind = match (self.side, header.kind) {
            (Side::Server, PacketKind::Initial) => header.dcid == self.peer_cid,
            (Side::Server, PacketKind::Data) => header.dcid == self.local_cid,
            (Side::Client, PacketKind::Handshake) => header.dcid == self.local_cid,
            (Side::Client, PacketKind::Data) => {
                header.dcid == self.local_cid && self.state != State::Handshaking
            }
            _ => false,
        };
        if !expected_kind || remote != self.remote {
            self.stats.malformed_packets += 1;
            return;
        }
        // Validate every frame before acting on any.
        let mut ack_eliciting = false;
        for f in FrameIter::new(payload) {
            match f {
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
        self.stats.bytes_received += datagram.len() as u64;
        self.last_received = now;
        if self.side == Side::Server && header.kind == PacketKind::Data {
            self.handshake_confirmed = true;
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
        self.maybe_send_close(now);
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame<'_>) {
        match frame {
            Frame::Padding(_) => {}
            Frame::Ping { timestamp_us } => {
                self.pending.pong = Some((timestamp_us, self.micros(now)));
            }
            Frame::Pong { .. } => {}
            Frame::Ack(ack) => self.on_ack_frame(now, &ack),
            Frame::Msg(m) => self.on_msg(now, &m),
            Frame::Close { code, reason } => self.on_close_frame(now, code, reason),
            Frame::MaxData { max } => self.peer_max_data = self.peer_max_data.max(max),
            Frame::Connect(params) => match self.side {
                Side::Server => self.on_connect(params),
                Side::Client => self.protocol_violation(
                    now,
                    close_code::PROTOCOL_VIOLATION,
                    "CONNECT sent to a client".into(),
                ),
            },
            Frame::Accept { cid, params } => match self.side {
                Side::Client => self.on_accept(cid, params),
                Side::Server => self.protocol_violation(
                    now,
                    close_code::PROTOCOL_VIOLATION,
                    "ACCEPT sent to a server".into(),
                ),
            },
        }
    }

    fn on_connect(&mut self, params: TransportParams) {
        if self.state == State::Handshaking {
            self.peer_params = Some(params);
            self.peer_max_data = params.receive_window;
            self.state = State::Established;
            self.events.push_back(Event::Connected);
        }
        if !self.handshake_confirmed {
            // First CONNECT, or a retransmission because our ACCEPT was lost.
            self.pending.accept = true;
        }
    }

    fn on_accept(&mut self, cid: u64, params: TransportParams) {
        if self.state != State::Handshaking {
            return;
        }
        self.peer_cid = cid;
        self.peer_params = Some(params);
        self.peer_max_data = self.peer_max_data.max(params.receive_window);
        self.pending.connect = false;
        self.state = State::Established;
        self.handshake_confirmed = true;
        self.events.push_back(Event::Connected);
    }

    fn on_msg(&mut self, now: Instant, m: &MsgFrame<'_>) {
        if self.is_closed() {
            return;
        }
        match self.reassembly.on_fragment(m) {
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
        let mut oldest_lost_eliciting = None;
        for (_, p) in lost {
            self.stats.packets_lost += 1;
            if p.ack_eliciting {
                newest_lost_eliciting = Some(p.time);
                oldest_lost_eliciting.get_or_insert(p.time);
            }
            for f in p.frames {
                match f {
                    SentFrame::Msg(frag) => self.send_queue.on_lost(frag),
                    SentFrame::MaxData => self.pending.max_data = true,
                    SentFrame::Connect => self.pending.connect = self.state == State::Handshaking,
                    SentFrame::Accept => self.pending.accept = !self.handshake_confirmed,
                    SentFrame::Close if self.state == State::CloseSent => {
                        self.pending.close = Some((close_code::NO_ERROR, String::new()));
                    }
                    SentFrame::Close | SentFrame::Ack(_) | SentFrame::Ping => {}
                }
            }
        }
        if let (Some(oldest), Some(newest)) = (oldest_lost_eliciting, newest_lost_eliciting) {
            self.cc.on_congestion_event(now, newest);
            // Persistent congestion (RFC 9002 §7.6, simplified to one loss batch):
            // everything sent over three probe timeouts was lost.
            let period = (self.rtt.pto_base() + self.peer_max_ack_delay()) * 3;
            if self.rtt.has_sample() && newest.saturating_duration_since(oldest) > period {
                self.cc.on_persistent_congestion();
            }
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
        let awaiting_handshake = self.state == State::Handshaking && self.side == Side::Client;
        if !self.sent.has_eliciting_in_flight() && !awaiting_handshake {
            return None;
        }
        let last = self.sent.last_eliciting_sent().unwrap_or(self.epoch);
        Some(last + self.pto_duration())
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
            return self.drain_until;
        }
        [
            self.loss_time,
            self.pto_deadline(),
            self.received.ack_deadline(),
            Some(self.last_received + self.idle_timeout()),
            self.keepalive_deadline(),
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
                if self.drain_until.is_some_and(|t| t <= now) {
                    self.enter_closed(None);
                }
                return;
            }
            _ => {}
        }
        if now >= self.last_received + self.idle_timeout() {
            self.send_queue.clear();
            self.enter_closed(Some(ConnectionError::TimedOut));
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
            if self.state == State::Handshaking && self.side == Side::Client {
                self.pending.connect = true;
            }
            if !self.handshake_confirmed && self.side == Side::Server {
                self.pending.accept = true;
            }
        }
        if self.keepalive_deadline().is_some_and(|t| t <= now) {
            self.pending.ping = true;
        }
    }

    // ----- output -----------------------------------------------------------------

    /// Writes the next datagram to send into `buf` (cleared first), if any.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        buf.clear();
        if self.state == State::Closed {
            return None;
        }
        let mtu = self.config.max_datagram_size;
        let kind = match (self.side, self.state) {
            (Side::Client, State::Handshaking) => PacketKind::Initial,
            (Side::Server, _) if self.pending.accept => PacketKind::Handshake,
            (Side::Server, State::Handshaking) => return None,
            _ => PacketKind::Data,
        };
        let dcid = if kind == PacketKind::Initial {
            self.local_cid
        } else {
            self.peer_cid
        };
        let pn = self.next_pn;
        Header { kind, dcid, pn }.encode(buf);
        let header_len = buf.len();
        let mut frames: Vec<SentFrame> = Vec::new();

        let draining = self.state == State::Draining;
        let probe = self.pending.probes > 0;
        let congestion_ok = probe || self.sent.bytes_in_flight() + mtu as u64 <= self.cc.window();
        let data_allowed = !draining
            && self.state != State::Handshaking
            && (self.side == Side::Client || self.handshake_confirmed);
        let control_pending = self.pending.connect
            || self.pending.accept
            || self.pending.max_data
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
            if std::mem::take(&mut self.pending.connect) {
                Frame::Connect(self.local_params()).encode(buf);
                frames.push(SentFrame::Connect);
                eliciting = true;
            }
            if std::mem::take(&mut self.pending.accept) {
                Frame::Accept {
                    cid: self.local_cid,
                    params: self.local_params(),
                }
                .encode(buf);
                frames.push(SentFrame::Accept);
                eliciting = true;
            }
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
                    send_us: self.micros(now),
                }
                .encode(buf);
                eliciting = true;
            }
            if data_allowed {
                while let Some(f) =
                    self.send_queue
                        .next_fragment(mtu - buf.len(), self.peer_max_data, MsgFrame::overhead)
                {
                    Frame::Msg(MsgFrame {
                        channel: f.channel,
                        seq: f.seq,
                        msg_len: f.msg_len,
                        offset: f.offset,
                        data: &f.data,
                    })
                    .encode(buf);
                    frames.push(SentFrame::Msg(f));
                    eliciting = true;
                }
            }
            if std::mem::take(&mut self.pending.ping) || (probe && !eliciting) {
                Frame::Ping {
                    timestamp_us: self.micros(now),
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
        if kind == PacketKind::Initial && buf.len() < MIN_DATAGRAM_SIZE {
            Frame::Padding(MIN_DATAGRAM_SIZE - buf.len()).encode(buf);
        }
        debug_assert!(buf.len() <= mtu.max(MIN_DATAGRAM_SIZE) + HEADER_MAX_LEN);
        self.next_pn += 1;
        let size = buf.len();
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += size as u64;
        if eliciting {
            self.last_eliciting_sent = now;
            self.pacer.on_sent(size as u64);
            self.sent.on_sent(
                pn,
                SentPacket {
                    time: now,
                    size: size as u64,
                    ack_eliciting: true,
                    frames,
                },
            );
        }
        Some(Transmit {
            destination: self.remote,
            size,
        })
    }
}

#[cfg(test)]
mod tests;
