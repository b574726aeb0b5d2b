//! One network path of a connection: addressing, validation, failure
//! detection, and the per-path halves of loss recovery and congestion control.
//!
//! A path is a (local socket, remote address) pair. Each path has its own RTT
//! estimate, congestion window, pacer, packets in flight and loss timers (one
//! packet-number space is shared by the connection, but loss is judged per
//! path, so paths of different latency do not make each other's packets look
//! lost). Liveness is judged by a phi-accrual detector that learns the gaps
//! between the peer's heartbeats and measures the silence since any packet
//! arrived on the path (`on_heard`, `on_heartbeat`); heartbeats keep idle
//! paths talking. On a healthy path with no stream of application data
//! flowing (sparse messages do not count: see `Connection::data_flowing`)
//! the heartbeat interval doubles with each PING up to a bound
//! (`Config::heartbeat_max_interval`); each PING announces the interval to
//! the next, so the peer's detector expects the longer gap
//! (`on_ping_sent`, `heartbeat_deadline`).
//!
//! States, as an explicit machine ([`PathState`]):
//!
//! ```text
//! Probing --validated--> Standby <--> Active
//!    Standby/Active --phi >= suspect--> Suspect --phi >= down--> Down
//!    Suspect --heard--> previous role          Down --heard--> Recovering --validated--> Standby
//! ```
//!
//! The state changes only through [`Path`]'s methods (`on_validated`,
//! `on_heard`, `check_liveness`, `make_active`, `make_standby`, `remove`);
//! the role a path returns to is a [`PathRole`], and an outstanding
//! validation is a [`Challenge`] that owns its backoff.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::congestion::{CongestionController, DeliveryRate};
use super::pacer::Pacer;
use super::phi::PhiDetector;
use super::rtt::RttEstimator;
use super::sent::SentPackets;
use crate::config::Config;

/// Index of a path within its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub usize);

/// Where a path's datagrams go: which local socket, which remote address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathAddr {
    /// The caller's index of the local socket (0 for single-socket use).
    pub local: u16,
    /// The peer's address.
    pub remote: SocketAddr,
}

/// Where a path stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathState {
    /// Not yet validated: only challenges and responses may be sent.
    Probing,
    /// Carrying the connection's data.
    Active,
    /// Validated and healthy, ready to take over.
    Standby,
    /// Quieter than its history makes likely (phi above the suspicion level).
    Suspect,
    /// Declared failed (phi above the threshold); probed with backoff.
    Down,
    /// Heard from again after being down; being re-validated.
    Recovering,
}

impl PathState {
    /// True if the path may carry data.
    pub fn is_usable(self) -> bool {
        matches!(self, Self::Active | Self::Standby)
    }
}

/// A snapshot of one path for `stats()`.
#[derive(Debug, Clone, PartialEq)]
pub struct PathStats {
    /// The path.
    pub id: PathId,
    /// Its addressing.
    pub addr: PathAddr,
    /// Its state.
    pub state: PathState,
    /// Smoothed RTT.
    pub rtt: Duration,
    /// Current suspicion (phi).
    pub phi: f64,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Datagrams sent on it.
    pub packets_sent: u64,
    /// Datagrams received on it.
    pub packets_received: u64,
    /// Bytes sent on it.
    pub bytes_sent: u64,
    /// Bytes received on it.
    pub bytes_received: u64,
    /// Packets sent on it and declared lost.
    pub packets_lost: u64,
    /// Of those, packets acknowledged after all (the loss was spurious).
    pub spurious_losses: u64,
    /// Most recent RTT sample.
    pub latest_rtt: Duration,
    /// Smallest RTT seen.
    pub min_rtt: Duration,
    /// Largest reordering seen: how many packet numbers below the largest
    /// acknowledged one a packet was acknowledged.
    pub reordering_distance: u64,
    /// The RACK reordering window currently allowed before a packet is lost.
    pub reordering_window: Duration,
}

/// What a validated path is for: the state it returns to when a suspicion
/// clears, and the one it takes when (re-)validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRole {
    /// Carries the data.
    Active,
    /// Ready to take over.
    Standby,
    /// Removed by the application: re-validated as a standby if heard from
    /// again, but a cleared suspicion returns it to `Down`.
    Removed,
}

/// An outstanding PATH_CHALLENGE, repeated with exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The challenge data the response must echo.
    data: u64,
    /// When the challenge was started.
    started: Instant,
    /// When it was last sent, if ever.
    last_sent: Option<Instant>,
    /// How many times it was sent.
    tries: u32,
}

impl Challenge {
    /// A challenge carrying `data`, to be sent from `now` on.
    fn new(data: u64, now: Instant) -> Self {
        Self {
            data,
            started: now,
            last_sent: None,
            tries: 0,
        }
    }

    /// The data the response must echo.
    pub fn data(&self) -> u64 {
        self.data
    }

    /// When it is next due: at once the first time, then after `interval`
    /// doubled per try (up to 64 times).
    pub fn next_send(&self, interval: Duration) -> Instant {
        match self.last_sent {
            None => self.started,
            Some(last) => last + interval * (1 << self.tries.min(6)),
        }
    }

    /// It was sent at `now`.
    pub fn on_sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.tries += 1;
    }
}

/// Per-path state. The state machine's fields are private: they change
/// only through the transition methods below.
#[derive(Debug)]
pub struct Path {
    pub(super) addr: PathAddr,
    state: PathState,
    /// The role to return to after a suspicion clears.
    role: PathRole,
    pub(super) rtt: RttEstimator,
    pub(super) cc: Box<dyn CongestionController>,
    pub(super) delivery: DeliveryRate,
    pub(super) pacer: Pacer,
    pub(super) sent: SentPackets,
    pub(super) loss_time: Option<Instant>,
    pub(super) pto_count: u32,
    pub(super) pacing_until: Option<Instant>,
    /// Last ack-eliciting packet sent (keep-alive).
    pub(super) last_eliciting_sent: Instant,
    /// Last packet of any kind sent.
    pub(super) last_sent: Option<Instant>,
    /// Last PING sent (heartbeats are PINGs, so each is also a clock sample).
    pub(super) last_ping: Option<Instant>,
    /// The interval our latest PING announced: the next heartbeat is due
    /// at the latest this long after it.
    heartbeat_interval: Duration,
    last_heard: Option<Instant>,
    phi: PhiDetector,
    /// Since when the path has been continuously healthy (fail-back hysteresis).
    healthy_since: Option<Instant>,
    /// Outstanding challenge.
    pub(super) challenge: Option<Challenge>,
    /// PATH_RESPONSE data to send on this path.
    pub(super) response: Option<u64>,
    /// A heartbeat PING is due on this path.
    pub(super) ping: bool,
    /// PONG to send on this path: (echo, receive time).
    pub(super) pong: Option<(u64, u64)>,
    /// Probe packets to send after a probe timeout.
    pub(super) probes: u8,
    /// An outage probe (a PING that ignores the congestion window and the
    /// pacer) is due on this path (see `outage_probe.rs`).
    pub(super) outage_probe: bool,
    /// A tail probe is due on this path: a PING right after the last packet
    /// of deadline data sent (ignoring the congestion window and the pacer,
    /// like an outage probe), so that a later packet is acknowledged and
    /// loss detection judges that one within a round trip (see `transmit.rs`).
    pub(super) tail_probe: bool,
    /// Outage probes sent since the path was last heard from, and when the
    /// newest left.
    pub(super) outage_probes: (u32, Option<Instant>),
    /// Bytes received before validation (anti-amplification).
    unvalidated_received: u64,
    /// Bytes sent before validation.
    unvalidated_sent: u64,
    /// The path was validated once (a recovering path is not an amplification risk).
    ever_validated: bool,
    /// Down-path probe backoff exponent.
    down_backoff: u32,
    pub(super) packets_sent: u64,
    pub(super) packets_received: u64,
    pub(super) bytes_sent: u64,
    pub(super) bytes_received: u64,
    pub(super) packets_lost: u64,
    /// Packets sent on it, declared lost and acknowledged after all.
    pub(super) spurious_losses: u64,
}

impl Path {
    /// The first path of a connection: active and validated by the handshake.
    pub fn first(addr: PathAddr, now: Instant, config: &Config) -> Self {
        let mut p = Self::new(addr, PathState::Active, PathRole::Active, now, config);
        p.ever_validated = true;
        p
    }

    /// A further path, probing until a challenge with `challenge_data` is
    /// answered. `ours` says we chose the address (no amplification concern).
    pub fn probing(
        addr: PathAddr,
        now: Instant,
        config: &Config,
        challenge_data: u64,
        ours: bool,
    ) -> Self {
        let mut p = Self::new(addr, PathState::Probing, PathRole::Standby, now, config);
        p.ever_validated = ours;
        p.challenge = Some(Challenge::new(challenge_data, now));
        p
    }

    fn new(
        addr: PathAddr,
        state: PathState,
        role: PathRole,
        now: Instant,
        config: &Config,
    ) -> Self {
        let mtu = config.max_datagram_size as u64;
        Self {
            addr,
            state,
            role,
            rtt: RttEstimator::new(config.initial_rtt),
            cc: config.congestion.build(mtu, config.initial_window_packets),
            delivery: DeliveryRate::new(now),
            pacer: Pacer::new(now, mtu),
            sent: SentPackets::default(),
            loss_time: None,
            pto_count: 0,
            pacing_until: None,
            last_eliciting_sent: now,
            last_sent: None,
            last_ping: None,
            heartbeat_interval: config.heartbeat_interval,
            last_heard: None,
            phi: PhiDetector::new(config.phi_min_std_dev, config.heartbeat_interval),
            healthy_since: None,
            challenge: None,
            response: None,
            ping: false,
            pong: None,
            probes: 0,
            outage_probe: false,
            tail_probe: false,
            outage_probes: (0, None),
            unvalidated_received: 0,
            unvalidated_sent: 0,
            ever_validated: false,
            down_backoff: 0,
            packets_sent: 0,
            packets_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
            packets_lost: 0,
            spurious_losses: 0,
        }
    }

    /// Where the path stands.
    pub fn state(&self) -> PathState {
        self.state
    }

    /// Since when the path has been continuously healthy, if it is.
    pub fn healthy_since(&self) -> Option<Instant> {
        self.healthy_since
    }

    /// The state a (re-)validated path takes: its role's.
    fn validated_state(&self) -> PathState {
        if self.role == PathRole::Active {
            PathState::Active
        } else {
            PathState::Standby
        }
    }

    /// The challenge was answered at `now`: the path is validated and takes
    /// its role. Returns true if it had been down (recovered).
    pub fn on_validated(&mut self, now: Instant) -> bool {
        let recovered = self.state == PathState::Recovering;
        self.challenge = None;
        self.down_backoff = 0;
        self.ever_validated = true;
        self.state = self.validated_state();
        self.healthy_since = Some(now);
        self.phi.reset(now);
        recovered
    }

    /// A heartbeat PING announcing the peer's next one within `interval`
    /// arrived at `now` (its packet was heard already): the failure detector
    /// learns the heartbeat process from these.
    pub fn on_heartbeat(&mut self, now: Instant, interval: Duration) {
        self.phi.heartbeat(now, interval);
    }

    /// The interval our latest PING on this path announced.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// A PING goes out on the path at `now`; returns the interval it
    /// announces. With `data_flowing`, or unless the path is healthy
    /// (`Active` or `Standby`), that is `base`; otherwise the previous
    /// interval doubled, up to `max`.
    pub fn on_ping_sent(
        &mut self,
        now: Instant,
        base: Duration,
        max: Duration,
        data_flowing: bool,
    ) -> Duration {
        let healthy = matches!(self.state, PathState::Active | PathState::Standby);
        self.heartbeat_interval = if data_flowing || !healthy {
            base
        } else {
            (self.heartbeat_interval * 2).min(max.max(base))
        };
        self.last_ping = Some(now);
        self.heartbeat_interval
    }

    /// A packet of `size` bytes arrived at `now`. A suspect path returns to
    /// its role; returns true if a down path was heard from and must be
    /// re-validated (it is now `Recovering`).
    pub fn on_heard(&mut self, now: Instant, size: usize) -> bool {
        self.packets_received += 1;
        self.bytes_received += size as u64;
        if !self.is_validated() {
            self.unvalidated_received += size as u64;
        }
        self.last_heard = Some(now);
        self.outage_probes = (0, None);
        self.phi.heard(now);
        match self.state {
            PathState::Suspect => {
                self.state = match self.role {
                    PathRole::Active => PathState::Active,
                    PathRole::Standby => PathState::Standby,
                    PathRole::Removed => PathState::Down,
                };
                self.healthy_since = Some(now);
                false
            }
            PathState::Down => {
                self.state = PathState::Recovering;
                true
            }
            _ => false,
        }
    }

    /// Starts a challenge carrying `data` at `now` (re-validation).
    pub fn start_challenge(&mut self, data: u64, now: Instant) {
        self.challenge = Some(Challenge::new(data, now));
    }

    /// The path now carries the data.
    pub fn make_active(&mut self) {
        self.state = PathState::Active;
        self.role = PathRole::Active;
    }

    /// The path no longer carries the data (another one does).
    pub fn make_standby(&mut self) {
        if self.role == PathRole::Active {
            self.role = PathRole::Standby;
        }
        if self.state == PathState::Active {
            self.state = PathState::Standby;
        }
    }

    /// The application removed the path.
    pub fn remove(&mut self) {
        self.state = PathState::Down;
        self.role = PathRole::Removed;
    }

    /// Applies the failure detector at `now`: returns the new state if the
    /// path became `Suspect` (phi at `suspect`) or `Down` (phi at `down`).
    pub fn check_liveness(&mut self, now: Instant, suspect: f64, down: f64) -> Option<PathState> {
        self.last_heard?;
        let phi = self.phi.phi(now);
        match self.state {
            PathState::Active | PathState::Standby if phi >= down => {
                self.state = PathState::Down;
                self.healthy_since = None;
            }
            PathState::Active | PathState::Standby if phi >= suspect => {
                self.state = PathState::Suspect;
                self.healthy_since = None;
            }
            PathState::Suspect if phi >= down => self.state = PathState::Down,
            _ => return None,
        }
        Some(self.state)
    }

    /// When a packet last arrived on this path.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// When the failure detector must next look at this path: when phi
    /// crosses the level of the next state down.
    pub fn liveness_deadline(&self, suspect: f64, down: f64) -> Option<Instant> {
        self.last_heard?;
        match self.state {
            PathState::Active | PathState::Standby => self.phi.crossing(suspect),
            PathState::Suspect => self.phi.crossing(down),
            _ => None,
        }
    }

    /// When a heartbeat (or a challenge, or a down-path probe) is due, with
    /// heartbeats every `base` interval (or the backed-off interval the
    /// latest PING announced, on a healthy path while no data flows) and
    /// down-path probes backing off up to `max_probe_interval`.
    pub fn heartbeat_deadline(
        &self,
        base: Duration,
        max_probe_interval: Duration,
        data_flowing: bool,
    ) -> Option<Instant> {
        if let Some(c) = &self.challenge {
            return self.may_probe().then(|| c.next_send(base));
        }
        if self.ping {
            return None;
        }
        let interval = match self.state {
            PathState::Down => (base * (1 << self.down_backoff.min(10))
                + Duration::from_micros(self.down_backoff as u64 * 997 % 5000))
            .min(max_probe_interval.max(base)),
            PathState::Probing | PathState::Recovering => return None,
            PathState::Active | PathState::Standby if !data_flowing => {
                self.heartbeat_interval.max(base)
            }
            _ => base,
        };
        Some(self.last_ping.unwrap_or(self.last_eliciting_sent) + interval)
    }

    /// The heartbeat timer expired: a PING is due (a down path backs off).
    pub fn on_heartbeat_due(&mut self) {
        self.ping = true;
        if self.state == PathState::Down {
            self.down_backoff += 1;
        }
    }

    /// A datagram of `bytes` was sent on the path.
    pub fn on_datagram_sent(&mut self, bytes: u64) {
        self.packets_sent += 1;
        self.bytes_sent += bytes;
        if !self.is_validated() {
            self.unvalidated_sent += bytes;
        }
    }

    /// True once validated (may carry data when healthy).
    pub fn is_validated(&self) -> bool {
        !matches!(self.state, PathState::Probing | PathState::Recovering)
    }

    /// True if a challenge or response may go out: a path never validated
    /// (opened by the peer) may send at most 3x what it received (anti-amplification).
    pub fn may_probe(&self) -> bool {
        self.ever_validated
            || (3 * self.unvalidated_received).saturating_sub(self.unvalidated_sent) >= 64
    }

    /// Snapshot for stats.
    pub fn stats(&self, id: PathId, now: Instant) -> PathStats {
        PathStats {
            id,
            addr: self.addr,
            state: self.state,
            rtt: self.rtt.smoothed(),
            phi: self.phi.phi(now),
            cwnd: self.cc.window(),
            packets_sent: self.packets_sent,
            packets_received: self.packets_received,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            packets_lost: self.packets_lost,
            spurious_losses: self.spurious_losses,
            latest_rtt: self.rtt.latest(),
            min_rtt: self.rtt.min(),
            reordering_distance: self.sent.rack().reordering_distance(),
            reordering_window: self
                .sent
                .rack()
                .reo_wnd(self.rtt.min(), self.rtt.smoothed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn addr(port: u16) -> PathAddr {
        PathAddr {
            local: 0,
            remote: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn a_challenge_is_due_at_once_then_backs_off() {
        let t0 = Instant::now();
        let mut c = Challenge::new(7, t0);
        assert_eq!(c.next_send(10 * MS), t0);
        c.on_sent(t0);
        assert_eq!(c.next_send(10 * MS), t0 + 20 * MS);
        c.on_sent(t0 + 20 * MS);
        assert_eq!(c.next_send(10 * MS), t0 + 60 * MS);
        for i in 0..10 {
            c.on_sent(t0 + i * MS);
        }
        assert_eq!(
            c.next_send(10 * MS),
            t0 + 9 * MS + 640 * MS,
            "capped at 64x"
        );
    }

    #[test]
    fn a_validated_path_takes_its_role_and_a_removed_one_returns_as_standby() {
        let t0 = Instant::now();
        let config = Config::default();
        let mut p = Path::probing(addr(1), t0, &config, 7, true);
        assert_eq!(p.state(), PathState::Probing);
        assert!(!p.on_validated(t0), "validated, not recovered");
        assert_eq!(p.state(), PathState::Standby);
        p.make_active();
        assert_eq!(p.state(), PathState::Active);
        p.make_standby();
        assert_eq!(p.state(), PathState::Standby);
        p.remove();
        assert_eq!(p.state(), PathState::Down);
        // Heard again: re-validated as a standby, reported as recovered.
        assert!(p.on_heard(t0 + MS, 100), "a down path must be re-validated");
        assert_eq!(p.state(), PathState::Recovering);
        p.start_challenge(8, t0 + MS);
        assert!(p.on_validated(t0 + 2 * MS));
        assert_eq!(p.state(), PathState::Standby);
    }

    #[test]
    fn a_silent_path_becomes_suspect_then_down_and_recovers_its_role_when_heard() {
        let t0 = Instant::now();
        let config = Config::default();
        let mut p = Path::first(addr(1), t0, &config);
        for i in 0..50 {
            p.on_heard(t0 + 20 * MS * i, 100);
        }
        let last = t0 + 20 * MS * 49;
        let (suspect, down) = (config.phi_threshold / 2.0, config.phi_threshold);
        assert_eq!(p.check_liveness(last, suspect, down), None);
        let at = p
            .liveness_deadline(suspect, down)
            .expect("heard, so watched");
        assert_eq!(
            p.check_liveness(at, suspect, down),
            Some(PathState::Suspect)
        );
        assert!(!p.on_heard(at, 100));
        assert_eq!(p.state(), PathState::Active, "back to its role");
        let at = p.liveness_deadline(suspect, down).unwrap();
        assert_eq!(
            p.check_liveness(at, suspect, down),
            Some(PathState::Suspect)
        );
        let at = p.liveness_deadline(suspect, down).unwrap();
        assert_eq!(p.check_liveness(at, suspect, down), Some(PathState::Down));
    }
}
