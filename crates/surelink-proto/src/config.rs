//! Connection settings shared by both sides, with validation.

use std::time::Duration;

use crate::crypto::Security;

/// Settings for an endpoint and the connections it makes or accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Largest message this side sends or accepts, in bytes (default 4 MiB).
    pub max_message_size: usize,
    /// Flow-control window: bytes of received, not yet consumed messages the peer may
    /// have outstanding (default 32 MiB; must be at least `max_message_size` + per-message cost).
    pub receive_window: u64,
    /// Bytes of unacknowledged messages the application may queue before `send` pushes back.
    pub send_buffer: usize,
    /// Largest UDP payload surelink sends (default 1452: fits a 1500-byte MTU over IPv6).
    pub max_datagram_size: usize,
    /// Close the connection after this long without hearing from the peer (default 10 s).
    pub idle_timeout: Duration,
    /// Send a PING when nothing else was sent for this long (default 1 s).
    pub keepalive_interval: Duration,
    /// Longest an ACK is delayed after an ack-eliciting packet arrives (default 1 ms).
    pub max_ack_delay: Duration,
    /// Acknowledge at once after this many ack-eliciting packets (default 2).
    pub ack_frequency: u32,
    /// RTT assumed before the first sample (default 100 ms).
    pub initial_rtt: Duration,
    /// Ceiling on the probe timeout after backoff (default 1 s), so a link that
    /// comes back after a blackout is probed again quickly.
    pub max_pto: Duration,
    /// Initial congestion window in packets (default 32).
    pub initial_window_packets: u64,
    /// Most connections an endpoint accepts at once (default 1024).
    pub max_connections: usize,
    /// A server drops a half-open connection it has not answered (its answer
    /// held back by the anti-amplification limit) after this time (default
    /// 5 s). Once answered, the client counts itself connected and repeats
    /// its last message until the server hears it: the server then keeps the
    /// half-open state up to the idle timeout.
    pub handshake_timeout: Duration,
    /// Above this many handshakes started within `handshake_timeout`, a server
    /// answers new Initials with a stateless Retry first (default 64; 0 = always).
    pub retry_threshold: usize,
    /// Handshake attempts a single source address may start in a burst (default 16),
    /// refilled at `source_handshake_rate` per second.
    pub source_handshake_burst: u32,
    /// Refill rate of the per-source handshake budget, per second (default 8).
    pub source_handshake_rate: u32,
    /// Heartbeat interval: a path on which nothing else was sent for this long
    /// gets a PING (default 20 ms). Heartbeats feed the failure detector and
    /// the clock estimate (each PING/PONG is a four-timestamp exchange); about
    /// 5 kB/s per path.
    pub heartbeat_interval: Duration,
    /// Longest heartbeat interval of an idle, healthy path (default 1 s).
    /// While no stream of application data flows either way, each heartbeat
    /// doubles the interval to the next, up to this bound, and announces it
    /// in its PING so the peer's failure detector expects it; a stream
    /// (data packets at most five `heartbeat_interval`s apart), a suspicion
    /// or a path change bring it back to `heartbeat_interval` at once.
    /// Sparser data leaves it backed off. Set it to `heartbeat_interval` to never
    /// back off.
    pub heartbeat_max_interval: Duration,
    /// Phi at which a path is declared down (default 8); at half of it the
    /// path is suspect and backup mode fails over.
    pub phi_threshold: f64,
    /// Floor on the standard deviation of inter-arrival times used by the
    /// failure detector (default 5 ms).
    pub phi_min_std_dev: Duration,
    /// A recovered primary path takes the data back after being healthy this
    /// long (default 1 s).
    pub failback_delay: Duration,
    /// How several paths are used (default backup).
    pub path_mode: crate::conn::PathMode,
    /// Which congestion controller each path runs (default `Auto`: NewReno
    /// with a bandwidth-delay-product floor, switching to the live-stream
    /// controller when a channel is given deadline delivery).
    pub congestion: crate::conn::CongestionControl,
    /// Receiver: hold each message until its source time plus this delay, to
    /// smooth jitter (like SRT's TSBPD). `None` delivers as soon as possible.
    pub playout_delay: Option<Duration>,
    /// Sender: forward error correction of deadline-channel packets (default
    /// `auto`: on when the deadline leaves retransmission too little time,
    /// measured in docs/FEC.md; reliable and unreliable channels are never
    /// protected).
    pub fec: crate::fec::FecConfig,
    /// Encryption, keys and peer policy.
    pub security: Security,
    /// Secret the endpoint's stateless reset tokens derive from (HKDF), so
    /// that a restarted process holding the same secret can reset the
    /// connections of its previous life (see `crypto::ResetKey`). `None`
    /// derives them from the configured identity's static key in encrypted
    /// mode, else from a random secret (then, after a restart, peers notice
    /// the lost connection only at their idle timeout).
    pub reset_secret: Option<[u8; 32]>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_message_size: 4 << 20,
            receive_window: 32 << 20,
            send_buffer: 16 << 20,
            max_datagram_size: 1452,
            idle_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(1),
            max_ack_delay: Duration::from_millis(1),
            ack_frequency: 2,
            initial_rtt: Duration::from_millis(100),
            max_pto: Duration::from_secs(1),
            initial_window_packets: 32,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(5),
            retry_threshold: 64,
            source_handshake_burst: 16,
            source_handshake_rate: 8,
            heartbeat_interval: Duration::from_millis(20),
            heartbeat_max_interval: Duration::from_secs(1),
            phi_threshold: 8.0,
            phi_min_std_dev: Duration::from_millis(5),
            failback_delay: Duration::from_secs(1),
            path_mode: crate::conn::PathMode::Backup,
            congestion: crate::conn::CongestionControl::default(),
            playout_delay: None,
            fec: crate::fec::FecConfig::Auto(crate::fec::AutoFec::default()),
            security: Security::default(),
            reset_secret: None,
        }
    }
}

/// Per-message bookkeeping cost charged against the flow-control window, so that a
/// flood of empty messages is bounded too.
pub const MESSAGE_CREDIT_OVERHEAD: u64 = 32;

/// Smallest datagram surelink can work with (and the size Initial packets are padded to).
pub const MIN_DATAGRAM_SIZE: usize = 1200;
/// Largest datagram size accepted in the configuration.
pub const MAX_DATAGRAM_SIZE: usize = 65_507;
/// Largest message size accepted in the configuration (1 GiB).
pub const MAX_MESSAGE_SIZE: usize = 1 << 30;

/// A setting that makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_datagram_size` outside 1200..=65507.
    #[error("max datagram size {0} outside {MIN_DATAGRAM_SIZE}..={MAX_DATAGRAM_SIZE}")]
    DatagramSize(usize),
    /// `max_message_size` is zero or above 1 GiB.
    #[error("max message size {0} outside 1..={MAX_MESSAGE_SIZE}")]
    MessageSize(usize),
    /// The receive window cannot hold one largest message.
    #[error("receive window {window} smaller than one max-size message ({needed} bytes)")]
    WindowTooSmall {
        /// The configured window.
        window: u64,
        /// What one message needs.
        needed: u64,
    },
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// The phi threshold is not a positive finite number.
    #[error("phi threshold {0} must be a positive number")]
    PhiThreshold(f64),
    /// A count that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroCount(&'static str),
}

impl Config {
    /// Checks every setting; connections are only built from a valid config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_DATAGRAM_SIZE..=MAX_DATAGRAM_SIZE).contains(&self.max_datagram_size) {
            return Err(ConfigError::DatagramSize(self.max_datagram_size));
        }
        if self.max_message_size == 0 || self.max_message_size > MAX_MESSAGE_SIZE {
            return Err(ConfigError::MessageSize(self.max_message_size));
        }
        let needed = self.max_message_size as u64 + MESSAGE_CREDIT_OVERHEAD;
        if self.receive_window < needed {
            return Err(ConfigError::WindowTooSmall {
                window: self.receive_window,
                needed,
            });
        }
        for (d, name) in [
            (self.idle_timeout, "idle timeout"),
            (self.keepalive_interval, "keepalive interval"),
            (self.initial_rtt, "initial rtt"),
            (self.max_pto, "max pto"),
            (self.handshake_timeout, "handshake timeout"),
            (self.heartbeat_interval, "heartbeat interval"),
            (self.heartbeat_max_interval, "heartbeat maximum interval"),
            (self.phi_min_std_dev, "phi minimum standard deviation"),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(ConfigError::PhiThreshold(self.phi_threshold));
        }
        for (n, name) in [
            (u64::from(self.ack_frequency), "ack frequency"),
            (self.initial_window_packets, "initial window"),
            (self.max_connections as u64, "max connections"),
            (self.send_buffer as u64, "send buffer"),
            (
                u64::from(self.source_handshake_burst),
                "source handshake burst",
            ),
        ] {
            if n == 0 {
                return Err(ConfigError::ZeroCount(name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn nonsense_is_rejected() {
        let bad = [
            Config {
                max_datagram_size: 100,
                ..Config::default()
            },
            Config {
                max_message_size: 0,
                ..Config::default()
            },
            Config {
                receive_window: 1000,
                ..Config::default()
            },
            Config {
                idle_timeout: Duration::ZERO,
                ..Config::default()
            },
            Config {
                ack_frequency: 0,
                ..Config::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
