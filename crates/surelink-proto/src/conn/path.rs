//! One network path of a connection: addressing, validation, failure
//! detection, and the per-path halves of loss recovery and congestion control.
//!
//! A path is a (local socket, remote address) pair. Each path has its own RTT
//! estimate, congestion window, pacer, packets in flight and loss timers (one
//! packet-number space is shared by the connection, but loss is judged per
//! path, so paths of different latency do not make each other's packets look
//! lost). Liveness is judged by a phi-accrual detector fed by every packet that
//! arrives on the path; heartbeats keep idle paths talking.
//!
//! States, as an explicit machine ([`PathState`]):
//!
//! ```text
//! Probing --validated--> Standby <--> Active
//!    Standby/Active --phi >= suspect--> Suspect --phi >= down--> Down
//!    Suspect --heard--> previous role          Down --heard--> Recovering --validated--> Standby
//! ```

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
}

/// Per-path state.
#[derive(Debug)]
pub struct Path {
    pub addr: PathAddr,
    pub state: PathState,
    /// The role to return to after a suspicion clears.
    pub role: PathState,
    pub rtt: RttEstimator,
    pub cc: Box<dyn CongestionController>,
    pub delivery: DeliveryRate,
    pub pacer: Pacer,
    pub sent: SentPackets,
    pub loss_time: Option<Instant>,
    pub pto_count: u32,
    pub pacing_until: Option<Instant>,
    /// Last ack-eliciting packet sent (keep-alive).
    pub last_eliciting_sent: Instant,
    /// Last packet of any kind sent.
    pub last_sent: Option<Instant>,
    /// Last PING sent (heartbeats are PINGs, so each is also a clock sample).
    pub last_ping: Option<Instant>,
    pub last_heard: Option<Instant>,
    pub phi: PhiDetector,
    /// Since when the path has been continuously healthy (fail-back hysteresis).
    pub healthy_since: Option<Instant>,
    /// Outstanding challenge: (data, first sent, last sent, tries).
    pub challenge: Option<(u64, Instant, Option<Instant>, u32)>,
    /// PATH_RESPONSE data to send on this path.
    pub response: Option<u64>,
    /// A heartbeat PING is due on this path.
    pub ping: bool,
    /// PONG to send on this path: (echo, receive time).
    pub pong: Option<(u64, u64)>,
    /// Probe packets to send after a probe timeout.
    pub probes: u8,
    /// Bytes received before validation (anti-amplification).
    pub unvalidated_received: u64,
    /// Bytes sent before validation.
    pub unvalidated_sent: u64,
    /// The path was validated once (a recovering path is not an amplification risk).
    pub ever_validated: bool,
    /// Down-path probe backoff exponent.
    pub down_backoff: u32,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_lost: u64,
}

impl Path {
    /// A path in `state` (the first path of a connection starts Active).
    pub fn new(addr: PathAddr, state: PathState, now: Instant, config: &Config) -> Self {
        let mtu = config.max_datagram_size as u64;
        Self {
            addr,
            state,
            role: if state == PathState::Active {
                PathState::Active
            } else {
                PathState::Standby
            },
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
            last_heard: None,
            phi: PhiDetector::new(config.phi_min_std_dev, config.heartbeat_interval),
            healthy_since: None,
            challenge: None,
            response: None,
            ping: false,
            pong: None,
            probes: 0,
            unvalidated_received: 0,
            unvalidated_sent: 0,
            ever_validated: state == PathState::Active,
            down_backoff: 0,
            packets_sent: 0,
            packets_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
            packets_lost: 0,
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
        }
    }
}
