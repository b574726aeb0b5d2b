//! The path set and multipath scheduling.
//!
//! [`PathSet`] owns a connection's paths, which one is active (carries the
//! data in backup mode, and the ACKs), the [`PathMode`], and the broadcast
//! copy bookkeeping; it decides which paths carry data next
//! ([`PathSet::data_paths`]) and which standby takes over
//! ([`PathSet::best_standby`]). The `impl Connection` half below runs the
//! per-path machine of [`super::path`] against the connection: validation
//! (challenge/response), liveness (phi-accrual, suspect/down/recovering),
//! heartbeats, failover and failback, each of which may emit events.
//!
//! Driven by the conductor: `on_path_heard` for every authenticated packet,
//! `on_path_response` for PATH_RESPONSE frames, `check_paths` on every
//! timeout, `heartbeat_deadline`/`path_check_deadline` from the timer table.

use std::collections::VecDeque;
use std::ops::{Index, IndexMut};
use std::time::{Duration, Instant};

use super::path::{Path, PathAddr, PathId, PathState, PathStats};
use super::sent::SentFrame;
use super::{Connection, Event, PathMode, Side};

/// Data packets at most this many base heartbeat intervals apart are a
/// stream (100 ms at the default 20 ms): while one flows, heartbeats stay at
/// the base interval. Sparser data leaves the heartbeats backed off; the
/// loss-detection timers find a sparse message that a cut swallows.
const STREAM_GAP_INTERVALS: u32 = 5;

/// The pace of a connection's application data, either way: when a packet
/// carrying some was last sent or arrived, and how long after the one
/// before. Fed by packet assembly (`transmit.rs`: packets with message
/// fragments or bundles; broadcast copies do not count) and by packet
/// processing (packets with message fragments, bundles or FEC-protected
/// data); read by the heartbeat rule (`Connection::data_flowing`).
#[derive(Debug, Default)]
pub(super) struct DataPace {
    /// The latest data packet.
    last: Option<Instant>,
    /// The gap between the latest data packet and the one before it.
    gap: Option<Duration>,
}

impl DataPace {
    /// A packet carrying application data was sent or arrived at `now`.
    pub(super) fn on_data_packet(&mut self, now: Instant) {
        if let Some(last) = self.last {
            self.gap = Some(now.saturating_duration_since(last));
        }
        self.last = Some(now);
    }

    /// The latest data packet, sent or arriving.
    fn last(&self) -> Option<Instant> {
        self.last
    }

    /// True when the latest data packet came within `max_gap` of the one
    /// before it: the data is a stream, not sparse messages.
    fn is_stream(&self, max_gap: Duration) -> bool {
        self.gap.is_some_and(|gap| gap <= max_gap)
    }
}

/// A connection's paths and how data is spread over them.
#[derive(Debug)]
pub(super) struct PathSet {
    /// Every path ever opened; a `PathId` indexes it.
    paths: Vec<Path>,
    /// The path carrying data (backup mode) and ACKs.
    pub(super) active: usize,
    /// How several paths are used.
    pub(super) mode: PathMode,
    /// Broadcast: copies of a packet's frames still to send on other paths.
    pub(super) copies: VecDeque<(usize, Vec<SentFrame>)>,
    /// Broadcast: the frames of the last data packet, to copy to other paths.
    pub(super) last_frames: Option<Vec<SentFrame>>,
    /// A small deterministic generator for challenge data and the spread of
    /// handshake repetitions.
    jitter_state: u64,
    /// Every path is down (`Event::ConnectionLost` was emitted).
    pub(super) all_down: bool,
    /// The highest packet number received that carried data: the receiver
    /// follows the sender's data to a new path only on a newer packet, so
    /// packets still in flight on the old path do not pull it back.
    newest_data_pn: Option<u64>,
}

impl PathSet {
    /// A set whose first (active) path is `first`; `seed` seeds challenge data.
    pub(super) fn new(first: Path, mode: PathMode, seed: u64) -> Self {
        Self {
            paths: vec![first],
            active: 0,
            mode,
            copies: VecDeque::new(),
            last_frames: None,
            jitter_state: seed | 1,
            all_down: false,
            newest_data_pn: None,
        }
    }

    /// A packet numbered `pn` carrying data arrived: true if it is the
    /// newest such packet so far (what the sender sent last, so the path it
    /// came on is where the sender's data now goes).
    pub(super) fn is_newest_data(&mut self, pn: u64) -> bool {
        let newest = self.newest_data_pn.is_none_or(|n| pn > n);
        if newest {
            self.newest_data_pn = Some(pn);
        }
        newest
    }

    /// The number of paths.
    pub(super) fn len(&self) -> usize {
        self.paths.len()
    }

    /// Every path, in `PathId` order.
    pub(super) fn iter(&self) -> std::slice::Iter<'_, Path> {
        self.paths.iter()
    }

    /// Every path, mutably, in `PathId` order.
    pub(super) fn iter_mut(&mut self) -> std::slice::IterMut<'_, Path> {
        self.paths.iter_mut()
    }

    /// The index of the path with this addressing, if any.
    pub(super) fn find(&self, addr: PathAddr) -> Option<usize> {
        self.paths.iter().position(|p| p.addr == addr)
    }

    /// The active path.
    pub(super) fn active_path(&self) -> &Path {
        &self.paths[self.active]
    }

    /// Adds a path; returns its index.
    pub(super) fn push(&mut self, path: Path) -> usize {
        self.paths.push(path);
        self.paths.len() - 1
    }

    /// The next number of the connection's deterministic generator (path
    /// challenge data, the spread of handshake repetitions).
    pub(super) fn next_jitter(&mut self) -> u64 {
        // xorshift64: deterministic per connection.
        let mut x = self.jitter_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_state = x;
        x
    }

    /// The usable non-active path with the smallest RTT.
    pub(super) fn best_standby(&self) -> Option<usize> {
        self.paths
            .iter()
            .enumerate()
            .filter(|(i, p)| *i != self.active && p.state().is_usable())
            .min_by_key(|(i, p)| (p.rtt.smoothed(), *i))
            .map(|(i, _)| i)
    }

    /// Paths that may carry data now, in order of preference.
    pub(super) fn data_paths(&self) -> Vec<usize> {
        match self.mode {
            PathMode::Backup | PathMode::Broadcast => vec![self.active],
            PathMode::Balance => {
                // Stripe: the usable path with the most free window per RTT first.
                let mut v: Vec<usize> = (0..self.paths.len())
                    .filter(|&i| self.paths[i].state().is_usable())
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

    /// Broadcast: queues copies of the last data packet sent on `from` for the other usable paths.
    pub(super) fn queue_copies(&mut self, from: usize) {
        let Some(frames) = self.last_frames.take().filter(|f| !f.is_empty()) else {
            return;
        };
        for i in 0..self.paths.len() {
            if i != from && self.paths[i].state().is_usable() {
                self.copies.push_back((i, frames.clone()));
            }
        }
    }
}

impl Index<usize> for PathSet {
    type Output = Path;

    fn index(&self, i: usize) -> &Path {
        &self.paths[i]
    }
}

impl IndexMut<usize> for PathSet {
    fn index_mut(&mut self, i: usize) -> &mut Path {
        &mut self.paths[i]
    }
}

impl Connection {
    /// Adds a path (client side): `local` names the caller's socket, `remote`
    /// the peer address to reach through it. It is validated before use.
    pub fn add_path(&mut self, now: Instant, addr: PathAddr) -> PathId {
        if let Some(i) = self.paths.find(addr) {
            return PathId(i);
        }
        // We chose this address ourselves: no amplification concern.
        let data = self.paths.next_jitter();
        PathId(
            self.paths
                .push(Path::probing(addr, now, &self.config, data, true)),
        )
    }

    /// Stops using a path (its in-flight data is re-sent elsewhere).
    pub fn remove_path(&mut self, now: Instant, id: PathId) {
        if id.0 >= self.paths.len() || self.paths.len() == 1 {
            return;
        }
        let lost = self.paths[id.0].sent.drain();
        self.on_packets_lost(now, id.0, lost, false);
        self.paths[id.0].remove();
        if self.paths.active == id.0 {
            if let Some(to) = self.paths.best_standby() {
                self.switch_active(now, to, false);
            }
        }
    }

    /// Sets how several paths are used.
    pub fn set_path_mode(&mut self, mode: PathMode) {
        self.paths.mode = mode;
    }

    /// Per-path snapshots.
    pub fn path_stats(&self, now: Instant) -> Vec<PathStats> {
        self.paths
            .iter()
            .enumerate()
            .map(|(i, p)| p.stats(PathId(i), now))
            .collect()
    }

    /// An authenticated packet arrived from an unknown address: a new path
    /// (the peer added one, or its address changed). Validate it before use.
    pub(super) fn open_path(&mut self, now: Instant, addr: PathAddr) -> usize {
        let data = self.paths.next_jitter();
        self.paths
            .push(Path::probing(addr, now, &self.config, data, false))
    }

    /// A PATH_RESPONSE: validates the path whose challenge it answers.
    pub(super) fn on_path_response(&mut self, now: Instant, data: u64) {
        let Some(i) = self
            .paths
            .iter()
            .position(|p| p.challenge.is_some_and(|c| c.data() == data))
        else {
            return;
        };
        let event = if self.paths[i].on_validated(now) {
            Event::PathRecovered(PathId(i))
        } else {
            Event::PathUp(PathId(i))
        };
        self.events.push_back(event);
        if !self.ap().state().is_usable() {
            // What is in flight on an unusable active path will never be
            // acknowledged there: re-send it on the path that came back
            // (broadcast copies are already tracked on the other paths).
            let abandon = self.paths.mode != PathMode::Broadcast;
            self.switch_active(now, i, abandon);
        }
    }

    /// A packet arrived on `path`: liveness, and recovery of a failed path.
    pub(super) fn on_path_heard(&mut self, now: Instant, path: usize, size: usize) {
        if self.paths[path].on_heard(now, size) {
            let data = self.paths.next_jitter();
            self.paths[path].start_challenge(data, now);
        }
    }

    /// Moves data to path `to`. With `abandon`, the packets in flight on the
    /// old path are declared lost at once and re-sent (paced) on the new one.
    pub(super) fn switch_active(&mut self, now: Instant, to: usize, abandon: bool) {
        let from = self.paths.active;
        if from == to {
            return;
        }
        self.paths.active = to;
        self.paths[to].make_active();
        self.paths[from].make_standby();
        if abandon {
            let lost = self.paths[from].sent.drain();
            self.paths[from].loss_time = None;
            self.on_packets_lost(now, from, lost, false);
        }
        self.stats.failovers += 1;
        self.events.push_back(Event::FailedOver {
            from: PathId(from),
            to: PathId(to),
        });
    }

    /// The client in backup mode returns to its primary (first) path.
    fn failback_possible(&self) -> bool {
        self.paths.active != 0 && self.paths.mode == PathMode::Backup && self.side == Side::Client
    }

    /// Phi at which a path is suspect (half the down threshold).
    fn suspect_threshold(&self) -> f64 {
        self.config.phi_threshold / 2.0
    }

    /// When the primary path, healthy, takes the data back.
    fn failback_deadline(&self) -> Option<Instant> {
        let primary = &self.paths[0];
        if !self.failback_possible() || !primary.state().is_usable() {
            return None;
        }
        primary
            .healthy_since()
            .map(|h| h + self.config.failback_delay)
    }

    /// Applies the failure detector to every path and fails over or back.
    pub(super) fn check_paths(&mut self, now: Instant) {
        if !self.is_established() {
            return;
        }
        let (suspect, down) = (self.suspect_threshold(), self.config.phi_threshold);
        let judged_at = self.silence_judged_at(now);
        for i in 0..self.paths.len() {
            match self.paths[i].check_liveness(judged_at, suspect, down) {
                Some(PathState::Down) => self.events.push_back(Event::PathDown(PathId(i))),
                Some(_) => self.events.push_back(Event::PathSuspect(PathId(i))),
                None => {}
            }
        }
        let all_down = self.paths.iter().all(|p| p.state() == PathState::Down);
        if all_down && !self.paths.all_down {
            self.paths.all_down = true;
            self.events.push_back(Event::ConnectionLost);
        } else if !all_down {
            self.paths.all_down = false;
        }
        // Fail over from a suspect or failed active path. In backup mode its
        // packets in flight are re-sent on the new path at once; in broadcast
        // mode each of them has a copy in flight on the other paths, tracked
        // (and re-sent if lost) there, so re-sending would only duplicate.
        if !self.ap().state().is_usable() {
            if let Some(to) = self.paths.best_standby() {
                let abandon = self.paths.mode != PathMode::Broadcast;
                self.switch_active(now, to, abandon);
            }
        }
        // Fail back to the primary once it has been healthy for a while.
        if self.failback_deadline().is_some_and(|t| t <= now) {
            self.switch_active(now, 0, false);
        }
    }

    /// When the failure detector must next look at the paths: when a path's
    /// phi crosses the next level, `receive_lag` later (silence is judged as
    /// of that long before the check), or when the primary may take the data
    /// back.
    pub(super) fn path_check_deadline(&self) -> Option<Instant> {
        if !self.is_established() {
            return None;
        }
        let (suspect, down) = (self.suspect_threshold(), self.config.phi_threshold);
        self.paths
            .iter()
            .filter_map(|p| p.liveness_deadline(suspect, down))
            .map(|crossing| crossing + self.receive_lag)
            .chain(self.failback_deadline())
            .min()
    }

    /// When a heartbeat (or a challenge, or a down-path probe) is due on `path`.
    pub(super) fn heartbeat_deadline(&self, path: usize) -> Option<Instant> {
        if !self.is_established() {
            return None;
        }
        self.paths[path].heartbeat_deadline(
            self.config.heartbeat_interval,
            self.config.max_pto,
            self.data_flowing(path),
        )
    }

    /// True while a stream of application data flows on the connection,
    /// either way, as seen from `path`'s heartbeats: the latest data packet
    /// came within `STREAM_GAP_INTERVALS` base intervals of the one before
    /// it, and messages are queued or unacknowledged or data was sent or
    /// arrived since the path's latest PING. Heartbeats then stay at the
    /// base interval, so a path carrying a stream is judged as fast as ever;
    /// a sparse message (one packet after a pause) leaves them backed off.
    pub(super) fn data_flowing(&self, path: usize) -> bool {
        let stream_gap = self.config.heartbeat_interval * STREAM_GAP_INTERVALS;
        self.data_pace.is_stream(stream_gap)
            && (!self.send_queue.is_empty()
                || self.data_pace.last().is_some_and(|t| {
                    self.paths[path]
                        .last_ping
                        .is_none_or(|last_ping| t >= last_ping)
                }))
    }
}
