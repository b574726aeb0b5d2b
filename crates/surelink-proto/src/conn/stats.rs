//! Counters and gauges of one connection, as returned by `Connection::stats`.

use std::time::Duration;

use super::PathStats;
use crate::clock::ClockEstimate;

/// A snapshot of a connection's counters.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Round-trip time variance.
    pub rtt_var: Duration,
    /// Most recent round-trip time sample.
    pub latest_rtt: Duration,
    /// Smallest round-trip time seen.
    pub min_rtt: Duration,
    /// Congestion window in bytes.
    pub cwnd: u64,
    /// Slow-start threshold in bytes (`u64::MAX` until the first loss).
    pub ssthresh: u64,
    /// Bytes of ack-eliciting packets in flight.
    pub bytes_in_flight: u64,
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Datagrams received and accepted by this connection.
    pub packets_received: u64,
    /// Bytes sent on the wire (UDP payload).
    pub bytes_sent: u64,
    /// Bytes received on the wire (UDP payload).
    pub bytes_received: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Message fragments queued for retransmission.
    pub retransmissions: u64,
    /// Message payload bytes handed to the connection for sending.
    pub payload_bytes_sent: u64,
    /// Message payload bytes sent again after a loss.
    pub payload_bytes_retransmitted: u64,
    /// Deadline retransmissions sent twice (in separate packets) because
    /// another attempt could not have made the deadline.
    pub last_chance_copies: u64,
    /// Probe timeouts that fired.
    pub probe_timeouts: u64,
    /// Packets received more than once (dropped).
    pub duplicate_packets: u64,
    /// Message fragments received more than once (dropped).
    pub duplicate_fragments: u64,
    /// Datagrams that failed to decode (dropped).
    pub malformed_packets: u64,
    /// Packets that failed authentication (dropped silently).
    pub auth_failures: u64,
    /// Reset packets for this connection whose token did not match (forged or stale); ignored.
    pub bad_resets: u64,
    /// Key updates performed (either direction).
    pub key_updates: u64,
    /// Handshake sends withheld by the 3x anti-amplification limit.
    pub amplification_blocked: u64,
    /// Messages queued by the application.
    pub messages_sent: u64,
    /// Messages the peer acknowledged in full.
    pub messages_acked: u64,
    /// Messages delivered in order to the application side.
    pub messages_delivered: u64,
    /// Messages the receiver gave up on (deadline passed, or unreliable and lost).
    pub messages_skipped: u64,
    /// Of those, messages that arrived complete but after their deadline.
    pub messages_late: u64,
    /// Messages the sender gave up on (deadline passed, or unreliable and lost).
    pub messages_abandoned: u64,
    /// Packets sent with deadline-channel frames protected by FEC (an
    /// FEC_SOURCE frame).
    pub fec_source_packets: u64,
    /// FEC repair symbols sent.
    pub fec_repair_symbols_sent: u64,
    /// Packets of FEC repair symbols sent (also counted in `packets_sent`).
    pub fec_repair_packets_sent: u64,
    /// Bytes of those packets on the wire (also counted in `bytes_sent`).
    pub fec_repair_bytes_sent: u64,
    /// Packets that never arrived but were rebuilt by FEC (their frames
    /// processed, their numbers acknowledged). Messages that were neither
    /// recovered nor retransmitted in time are `messages_skipped`.
    pub fec_recovered_packets: u64,
    /// FEC repair symbols (or rebuilt packets) dropped as malformed or
    /// inconsistent with their group.
    pub fec_repairs_rejected: u64,
    /// Median one-way latency of messages taken by the application, µs.
    pub latency_p50_us: u64,
    /// 99th percentile one-way latency, µs.
    pub latency_p99_us: u64,
    /// 99.9th percentile one-way latency, µs.
    pub latency_p999_us: u64,
    /// Largest one-way latency, µs.
    pub latency_max_us: u64,
    /// The peer clock estimate, if any sample was taken.
    pub clock: Option<ClockEstimate>,
    /// Per-path figures (RTT, state, phi, bytes, losses).
    pub paths: Vec<PathStats>,
}

impl ConnectionStats {
    /// Retransmission rate R = L / S: payload bytes re-sent over payload bytes sent.
    pub fn retransmission_rate(&self) -> f64 {
        if self.payload_bytes_sent == 0 {
            0.0
        } else {
            self.payload_bytes_retransmitted as f64 / self.payload_bytes_sent as f64
        }
    }
}
