//! A deterministic two-party network on a virtual clock.
//!
//! A client and a server endpoint exchange datagrams over two seeded
//! `surelink-netem` links (one per direction). Time only moves when nothing is
//! due: the harness jumps to the earliest of the connections' timers and the
//! links' next deliveries. A run is a pure function of its seed and scenario.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use surelink_netem::{Link, LinkConfig};
use surelink_proto::{Config, Connection, DatagramEvent, Endpoint, Event};

/// `v` milliseconds.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A link of 5 ms ± 0.5 ms one way, without loss.
pub fn jittered_5ms_link() -> LinkConfig {
    LinkConfig::default()
        .with_delay(ms(5))
        .with_jitter(Duration::from_micros(500))
}

/// A rough link for seed `seed`: 0, 3 or 8 % loss (by seed), 5 ± 3 ms one
/// way, 5 % of datagrams reordered by up to 4 ms and 2 % duplicated.
pub fn rough_link(seed: u64) -> LinkConfig {
    LinkConfig::clean()
        .with_loss([0.0, 0.03, 0.08][seed as usize % 3])
        .with_delay(ms(5))
        .with_jitter(ms(3))
        .with_reorder(0.05, ms(4))
        .with_duplicate(0.02)
}

/// What the sender's application does.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Number of messages.
    pub messages: u64,
    /// Message sizes are drawn from 0..=max_size (deterministically from the seq).
    pub max_size: usize,
    /// Interval between messages (zero: as fast as backpressure allows).
    pub interval: Duration,
}

/// Everything observed in one run.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages delivered, in delivery order: (seq, ok-content).
    pub delivered: Vec<u64>,
    /// Any message whose content did not match.
    pub corrupt: Vec<u64>,
    /// Virtual time from start to both sides closed.
    pub elapsed: Duration,
    /// Client and server close events.
    pub client_closed: Option<Event>,
    /// Server close event.
    pub server_closed: Option<Event>,
    /// True if the run hit its virtual-time limit.
    pub stalled: bool,
    /// Sender stats at the end.
    pub client_stats: Option<surelink_proto::ConnectionStats>,
    /// Receiver stats at the end.
    pub server_stats: Option<surelink_proto::ConnectionStats>,
}

/// Deterministic message content for `seq`.
pub fn message(seq: u64, max_size: usize) -> Bytes {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    let len = if max_size == 0 {
        0
    } else {
        (x % (max_size as u64 + 1)) as usize
    };
    let mut v = Vec::with_capacity(len);
    let mut s = x | 1;
    for _ in 0..len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.push(s as u8);
    }
    Bytes::from(v)
}

/// ffmpeg's datagrams as they arrived from `ffmpeg -re` playing the
/// benchmark's MPEG-TS clip (`data/mpegts_datagrams.txt`, the first 5 s):
/// bursts of 10 to 93 datagrams about every 80 ms rather than one per
/// frame, with short datagrams where a stream's packet ends; (offset from
/// the start, bytes).
pub fn ffmpeg_datagrams() -> Vec<(Duration, usize)> {
    include_str!("../data/mpegts_datagrams.txt")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (offset, size) = line.split_once(' ').expect("offset and size");
            (
                Duration::from_micros(offset.parse().expect("offset")),
                size.parse().expect("size"),
            )
        })
        .collect()
}

/// Datagrams recorded from (client, server).
pub type Capture = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// One datagram a side handed to its link, with what the link did with it.
#[derive(Debug, Clone)]
pub struct Traced {
    /// When it was sent (true time).
    pub at: Instant,
    /// Sent by the client (else by the server).
    pub from_client: bool,
    /// The datagram.
    pub data: Vec<u8>,
    /// What the link did with it.
    pub fate: surelink_netem::Fate,
}

/// Adds `data`, just sent, to `trace` if a trace is on.
fn record(
    trace: &mut Option<Vec<Traced>>,
    at: Instant,
    from_client: bool,
    data: &[u8],
    fate: surelink_netem::Fate,
) {
    if let Some(trace) = trace.as_mut() {
        trace.push(Traced {
            at,
            from_client,
            data: data.to_vec(),
            fate,
        });
    }
}

/// The client's receive backlog: from `since`, the client's socket is not
/// read, and what arrives for it waits in `held`, as behind a driver that
/// fell behind its socket queue.
#[derive(Debug)]
pub struct Backlog {
    /// When the client's socket was last found empty.
    pub since: Instant,
    /// Whether the client's connection is told (`set_received_through`).
    pub reported: bool,
    /// The datagrams waiting, in arrival order.
    pub held: Vec<Vec<u8>>,
}

/// A two-party simulated network.
pub struct Sim {
    pub now: Instant,
    pub start: Instant,
    pub client_addr: SocketAddr,
    pub server_addr: SocketAddr,
    pub client_ep: Endpoint,
    pub server_ep: Endpoint,
    pub client: Connection,
    pub server: Option<Connection>,
    pub c2s: Link<Vec<u8>>,
    pub s2c: Link<Vec<u8>>,
    /// When set, every datagram either side sends is recorded here (client's first).
    pub capture: Option<Capture>,
    /// When above 1, `run_transfer` hands a workload without an interval to
    /// the client this many messages per `send_many` call instead of one
    /// `send` each.
    pub send_batch: u64,
    /// When set, every datagram either side sends is recorded here with its fate, in sending order.
    pub trace: Option<Vec<Traced>>,
    /// While set, datagrams for the client wait in its backlog.
    pub client_backlog: Option<Backlog>,
    /// Consecutive steps in which time could not advance (a stuck timer).
    stuck: u64,
    /// The server's clock runs this many ppm fast (negative: slow): the server
    /// sees time through `server_now`.
    pub server_ppm: f64,
    buf: Vec<u8>,
}

impl Sim {
    /// Builds the network; both directions use their own seeded link.
    pub fn new(config: Config, c2s: LinkConfig, s2c: LinkConfig, seed: u64) -> Self {
        Self::with_configs(config.clone(), config, c2s, s2c, seed)
    }

    /// Builds the network with a different configuration per side.
    pub fn with_configs(
        client: Config,
        server: Config,
        c2s: LinkConfig,
        s2c: LinkConfig,
        seed: u64,
    ) -> Self {
        let start = Instant::now();
        let client_addr: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let server_addr: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let mut client_ep = Endpoint::new(client, seed ^ 0xc1, false).unwrap();
        let server_ep = Endpoint::new(server, seed ^ 0x5e, true).unwrap();
        let (_, client) = client_ep.connect(start, server_addr);
        Self {
            now: start,
            start,
            client_addr,
            server_addr,
            client_ep,
            server_ep,
            client,
            server: None,
            c2s: Link::new(c2s, seed.wrapping_mul(3), start).unwrap(),
            s2c: Link::new(s2c, seed.wrapping_mul(5).wrapping_add(1), start).unwrap(),
            capture: None,
            send_batch: 1,
            trace: None,
            client_backlog: None,
            stuck: 0,
            server_ppm: 0.0,
            buf: Vec::with_capacity(65536),
        }
    }

    /// The server's view of the true instant `t`.
    pub fn server_now(&self, t: Instant) -> Instant {
        self.start + (t - self.start).mul_f64(1.0 + self.server_ppm * 1e-6)
    }

    /// The true instant at which the server's clock shows `t` (rounded up).
    fn server_to_true(&self, t: Instant) -> Instant {
        self.start
            + t.saturating_duration_since(self.start)
                .div_f64(1.0 + self.server_ppm * 1e-6)
            + Duration::from_micros(1)
    }

    /// Moves every due datagram and timer at the current instant.
    pub fn pump(&mut self) {
        let now = self.now;
        let snow = self.server_now(now);
        for _ in 0..10_000 {
            let mut progressed = false;
            while let Some(d) = self.c2s.poll_deliver(now) {
                progressed = true;
                match self.server_ep.handle(snow, self.client_addr, &d) {
                    DatagramEvent::New(_, conn) => {
                        if self.server.is_none() {
                            self.server = Some(*conn);
                        }
                        if let Some(s) = self.server.as_mut() {
                            s.handle_datagram(snow, self.client_addr, &d);
                        }
                    }
                    DatagramEvent::Known(_) => {
                        if let Some(s) = self.server.as_mut() {
                            s.handle_datagram(snow, self.client_addr, &d);
                        }
                    }
                    DatagramEvent::Respond(r) => {
                        let size = r.data.len();
                        self.s2c.send(now, size, r.data);
                    }
                    _ => {}
                }
            }
            while let Some(d) = self.s2c.poll_deliver(now) {
                progressed = true;
                if let Some(backlog) = self.client_backlog.as_mut() {
                    backlog.held.push(d);
                    continue;
                }
                self.deliver_to_client(&d);
            }
            let through = match &self.client_backlog {
                Some(b) if b.reported => b.since,
                _ => now,
            };
            self.client.set_received_through(now, through);
            if self.client.poll_timeout().is_some_and(|t| t <= now) {
                self.client.handle_timeout(now);
            }
            if let Some(s) = self.server.as_mut() {
                if s.poll_timeout().is_some_and(|t| t <= snow) {
                    s.handle_timeout(snow);
                }
            }
            while let Some(t) = self.client.poll_transmit(now, &mut self.buf) {
                progressed = true;
                if let Some((c, _)) = self.capture.as_mut() {
                    c.push(self.buf[..t.size].to_vec());
                }
                let fate = self.c2s.send(now, t.size, self.buf[..t.size].to_vec());
                record(&mut self.trace, now, true, &self.buf[..t.size], fate);
            }
            if let Some(s) = self.server.as_mut() {
                while let Some(t) = s.poll_transmit(snow, &mut self.buf) {
                    progressed = true;
                    if let Some((_, c)) = self.capture.as_mut() {
                        c.push(self.buf[..t.size].to_vec());
                    }
                    let fate = self.s2c.send(now, t.size, self.buf[..t.size].to_vec());
                    record(&mut self.trace, now, false, &self.buf[..t.size], fate);
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("pump did not settle at {:?}", now - self.start);
    }

    /// Hands `datagram` to the client at the current instant.
    fn deliver_to_client(&mut self, datagram: &[u8]) {
        if let DatagramEvent::Known(_) = self.client_ep.handle(self.now, self.server_addr, datagram)
        {
            self.client
                .handle_datagram(self.now, self.server_addr, datagram);
        }
    }

    /// The client's backlog ends now: it reads every datagram held, in a
    /// burst, and keeps up again.
    pub fn end_client_backlog(&mut self) {
        if let Some(backlog) = self.client_backlog.take() {
            self.client.set_received_through(self.now, self.now);
            for d in backlog.held {
                self.deliver_to_client(&d);
            }
        }
        self.pump();
    }

    /// The next instant anything is due, if anything is.
    pub fn next_wake(&self) -> Option<Instant> {
        [
            self.client.poll_timeout(),
            self.server
                .as_ref()
                .and_then(Connection::poll_timeout)
                .map(|t| self.server_to_true(t)),
            self.c2s.next_delivery(),
            self.s2c.next_delivery(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances virtual time to the next due instant, but not past `limit`.
    /// Returns false when nothing is due before the limit.
    pub fn step(&mut self, limit: Instant) -> bool {
        let before = self.now;
        self.pump();
        if self.next_wake().is_some_and(|t| t <= before) {
            self.stuck += 1;
            assert!(
                self.stuck < 100_000,
                "no progress at {:?}: client timeout {:?}, server timeout {:?}",
                before - self.start,
                self.client
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(self.start)),
                self.server
                    .as_ref()
                    .and_then(|s| s.poll_timeout())
                    .map(|t| t.saturating_duration_since(self.start)),
            );
        } else {
            self.stuck = 0;
        }
        match self.next_wake() {
            Some(t) if t <= limit => {
                self.now = self.now.max(t);
                self.pump();
                true
            }
            _ => {
                self.now = self.now.max(limit);
                false
            }
        }
    }

    /// Runs until both sides report `Connected` or either reports `Closed`;
    /// returns the events seen (client's, server's).
    pub fn run_handshake(&mut self, limit: Duration) -> (Vec<Event>, Vec<Event>) {
        let deadline = self.start + limit;
        let (mut ce, mut se) = (Vec::new(), Vec::new());
        loop {
            while let Some(e) = self.client.poll_event() {
                ce.push(e);
            }
            if let Some(s) = self.server.as_mut() {
                while let Some(e) = s.poll_event() {
                    se.push(e);
                }
            }
            let done = |v: &Vec<Event>| v.iter().any(|e| matches!(e, Event::Closed { .. }));
            let up = |v: &Vec<Event>| v.contains(&Event::Connected);
            if (up(&ce) && up(&se)) || (done(&ce) && (done(&se) || self.server.is_none())) {
                // Let the last handshake message settle.
                for _ in 0..50 {
                    if !self.step(self.now + Duration::from_millis(1)) {
                        break;
                    }
                }
                while let Some(e) = self.client.poll_event() {
                    ce.push(e);
                }
                if let Some(s) = self.server.as_mut() {
                    while let Some(e) = s.poll_event() {
                        se.push(e);
                    }
                }
                return (ce, se);
            }
            if !self.step(deadline) {
                return (ce, se);
            }
        }
    }

    /// Runs a client→server workload, then a graceful close, and records what
    /// the server application received.
    pub fn run_transfer(&mut self, w: &Workload, time_limit: Duration) -> Outcome {
        let mut out = Outcome::default();
        let deadline = self.start + time_limit;
        let mut next_seq = 0u64;
        let mut next_send_at = self.start;
        let mut closing = false;
        let mut pending: Option<Bytes> = None;
        while self.now < deadline {
            // Sender application.
            while self.send_batch > 1 && w.interval.is_zero() && next_seq < w.messages {
                let end = (next_seq + self.send_batch).min(w.messages);
                let mut batch = (next_seq..end)
                    .map(|seq| message(seq, w.max_size))
                    .peekable();
                let (queued, result) = self.client.send_many(self.now, 0, &mut batch);
                next_seq += queued as u64;
                match result {
                    Ok(()) => {}
                    Err(surelink_proto::SendError::Blocked) => break,
                    Err(e) => panic!("send_many failed: {e}"),
                }
            }
            while next_seq < w.messages && self.now >= next_send_at {
                let msg = pending
                    .take()
                    .unwrap_or_else(|| message(next_seq, w.max_size));
                match self.client.send(self.now, 0, msg.clone()) {
                    Ok(seq) => {
                        assert_eq!(seq, next_seq);
                        next_seq += 1;
                        next_send_at += w.interval;
                    }
                    Err(surelink_proto::SendError::Blocked) => {
                        pending = Some(msg);
                        break;
                    }
                    Err(e) => panic!("send failed: {e}"),
                }
            }
            if next_seq == w.messages && !closing {
                self.client.close(self.now);
                closing = true;
            }
            // Receiver application.
            if let Some(s) = self.server.as_mut() {
                while let Some(m) = s.recv() {
                    if m.data != message(m.seq, w.max_size) {
                        out.corrupt.push(m.seq);
                    }
                    out.delivered.push(m.seq);
                }
                while let Some(ev) = s.poll_event() {
                    if matches!(ev, Event::Closed { .. }) {
                        out.server_closed = Some(ev);
                    }
                }
            }
            while let Some(ev) = self.client.poll_event() {
                if matches!(ev, Event::Closed { .. }) {
                    out.client_closed = Some(ev);
                }
            }
            if out.client_closed.is_some() && out.server_closed.is_some() {
                break;
            }
            // Wake for the next app send as well as protocol work.
            let app_wake = (next_seq < w.messages && pending.is_none()).then_some(next_send_at);
            let limit = app_wake.map_or(deadline, |t| t.min(deadline));
            if !self.step(limit) && app_wake.is_none() && self.next_wake().is_none() {
                break;
            }
        }
        out.stalled = out.client_closed.is_none() || out.server_closed.is_none();
        out.elapsed = self.now - self.start;
        out.client_stats = Some(self.client.stats());
        out.server_stats = self.server.as_ref().map(Connection::stats);
        out
    }
}

/// One message delivered in a real-time run.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    /// Sequence number.
    pub seq: u64,
    /// True send time, µs since the start.
    pub sent_us: u64,
    /// True delivery time (when the application took it), µs since the start.
    pub delivered_us: u64,
    /// The latency the receiver reported, µs.
    pub reported_latency_us: u64,
}

/// Result of a real-time run.
#[derive(Debug, Default)]
pub struct RealtimeOutcome {
    /// Messages as delivered, in order.
    pub delivered: Vec<Delivered>,
    /// Sequence numbers reported skipped by `Skipped` events.
    pub skipped: Vec<u64>,
    /// Receiver stats at the end.
    pub server_stats: Option<surelink_proto::ConnectionStats>,
    /// Sender stats at the end.
    pub client_stats: Option<surelink_proto::ConnectionStats>,
}

impl Sim {
    /// Sends `count` messages of `size` bytes every `interval` on channel 0 with
    /// `delivery`, then closes; the receiver takes messages as soon as they are
    /// released. Each message carries its true send time.
    pub fn run_realtime(
        &mut self,
        count: u64,
        size: usize,
        interval: Duration,
        delivery: surelink_proto::wire::Delivery,
        limit: Duration,
    ) -> RealtimeOutcome {
        let mut out = RealtimeOutcome::default();
        self.client.set_channel_delivery(0, delivery);
        let deadline = self.start + limit;
        let mut next = 0u64;
        let mut next_at = self.start;
        let mut closing = false;
        while self.now < deadline {
            while next < count && self.now >= next_at {
                let mut m = vec![0u8; size.max(8)];
                let sent = (self.now - self.start).as_micros() as u64;
                m[..8].copy_from_slice(&sent.to_be_bytes());
                self.client.send(self.now, 0, Bytes::from(m)).expect("send");
                next += 1;
                next_at += interval;
            }
            if next == count && !closing {
                self.client.close(self.now);
                closing = true;
            }
            let now_us = (self.now - self.start).as_micros() as u64;
            if let Some(s) = self.server.as_mut() {
                while let Some(m) = s.recv() {
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&m.data[..8]);
                    out.delivered.push(Delivered {
                        seq: m.seq,
                        sent_us: u64::from_be_bytes(t),
                        delivered_us: now_us,
                        reported_latency_us: m.latency_us,
                    });
                }
                while let Some(ev) = s.poll_event() {
                    if let Event::Skipped { from, to, .. } = ev {
                        out.skipped.extend(from..to);
                    }
                }
            }
            if self.client.is_drained() && self.server.as_ref().is_some_and(Connection::is_drained)
            {
                break;
            }
            let app_wake = (next < count).then_some(next_at);
            let limit = app_wake.map_or(deadline, |t| t.min(deadline));
            if !self.step(limit) && app_wake.is_none() && self.next_wake().is_none() {
                break;
            }
        }
        out.client_stats = Some(self.client.stats());
        out.server_stats = self.server.as_ref().map(Connection::stats);
        out
    }
}

/// Asserts exactly-once, in-order, intact delivery of all `n` messages and a
/// graceful close on both sides.
pub fn assert_exactly_once(out: &Outcome, n: u64, ctx: &str) {
    assert!(
        out.corrupt.is_empty(),
        "{ctx}: corrupt messages {:?}",
        out.corrupt
    );
    let expected: Vec<u64> = (0..n).collect();
    if out.delivered != expected {
        let dup = out.delivered.len() as i64 - n as i64;
        panic!(
            "{ctx}: delivered {} messages (diff {dup}), first mismatch at {:?}; stalled={} after {:?}",
            out.delivered.len(),
            out.delivered
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b),
            out.stalled,
            out.elapsed
        );
    }
    assert!(
        !out.stalled,
        "{ctx}: did not close within the limit ({:?})",
        out.elapsed
    );
    assert_eq!(
        out.client_closed,
        Some(Event::Closed { error: None }),
        "{ctx}: client close"
    );
    assert_eq!(
        out.server_closed,
        Some(Event::Closed { error: None }),
        "{ctx}: server close"
    );
}
