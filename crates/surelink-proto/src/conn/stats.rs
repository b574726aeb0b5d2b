//! Counters and gauges of one connection, as returned by `Connection::stats`,
//! and their description for every output ([`VisitStats`] for
//! [`ConnectionStats`] and [`PathStats`]; see [`crate::stats_schema`]).
//!
//! The connection fills a snapshot on each `stats()` call; a visitor walks it.

use std::time::Duration;

use super::PathStats;
use crate::clock::ClockEstimate;
use crate::stats_schema::{Histogram, Metric, PathLabel, StatsVisitor, Unit, Value, VisitStats};

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
    /// Bytes of free message buffers both ends keep for reuse (packed
    /// batches and rebuilt messages of 32–256 KiB; freed when the
    /// connection stops moving such messages).
    pub recycled_buffer_bytes: u64,
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
    /// Of those, packets acknowledged after all: the loss was spurious (the
    /// packets lost on the wire are `packets_lost - spurious_losses`).
    pub spurious_losses: u64,
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
    /// Messages held for their playout time that were handed over before it
    /// because the application lifted the hold (`Connection::release_held`).
    pub messages_released_early: u64,
    /// MSG_BUNDLE frames sent (several whole small messages in one frame).
    pub bundles_sent: u64,
    /// Messages carried by those frames.
    pub bundled_messages_sent: u64,
    /// MSG_BUNDLE frames received (duplicates included).
    pub bundles_received: u64,
    /// Messages the sender repaired by retransmission: their last missing
    /// bytes were acknowledged in a retransmitted packet (next to
    /// `fec_recovered_packets`, the receiver's repairs by FEC).
    pub messages_recovered_by_retransmission: u64,
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
    /// One-way latency of every message taken by the application, in the
    /// schema's fixed buckets.
    pub latency_histogram: Histogram,
    /// Every RTT sample taken (on any path), in the schema's fixed buckets.
    pub rtt_histogram: Histogram,
    /// Times the data moved to another path (failover, or fail-back to the
    /// primary): one per `Event::FailedOver`.
    pub failovers: u64,
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

impl VisitStats for ConnectionStats {
    fn visit<V: StatsVisitor + ?Sized>(&self, v: &mut V) {
        use Unit::{Bytes, Count, Microseconds, Milliseconds, PartsPerMillion, Ratio};
        let ms = |d: Duration| Value::Real(d.as_secs_f64() * 1e3);
        let int = Value::Integer;
        let c = Metric::counter;
        let g = Metric::gauge;
        v.gauge(
            &g("rtt_ms", "rtt", Milliseconds, "Smoothed round-trip time."),
            ms(self.rtt),
        );
        v.gauge(
            &g(
                "rtt_var_ms",
                "rtt_variance",
                Milliseconds,
                "Round-trip time variance.",
            ),
            ms(self.rtt_var),
        );
        v.gauge(
            &g(
                "latest_rtt_ms",
                "latest_rtt",
                Milliseconds,
                "Most recent round-trip time sample.",
            ),
            ms(self.latest_rtt),
        );
        v.gauge(
            &g(
                "min_rtt_ms",
                "min_rtt",
                Milliseconds,
                "Smallest round-trip time seen.",
            ),
            ms(self.min_rtt),
        );
        v.gauge(
            &g("cwnd", "congestion_window", Bytes, "Congestion window."),
            int(self.cwnd),
        );
        v.gauge(
            &g(
                "ssthresh",
                "slow_start_threshold",
                Bytes,
                "Slow-start threshold (2^64-1 until the first loss).",
            ),
            int(self.ssthresh),
        );
        v.gauge(
            &g(
                "bytes_in_flight",
                "in_flight",
                Bytes,
                "Bytes of ack-eliciting packets in flight.",
            ),
            int(self.bytes_in_flight),
        );
        v.gauge(
            &g(
                "recycled_buffer_bytes",
                "recycled",
                Bytes,
                "Bytes of free message buffers kept for reuse.",
            ),
            int(self.recycled_buffer_bytes),
        );
        v.counter(
            &c("packets_sent", "packets_sent", Count, "Datagrams sent."),
            self.packets_sent,
        );
        v.counter(
            &c(
                "packets_received",
                "packets_received",
                Count,
                "Datagrams received and accepted.",
            ),
            self.packets_received,
        );
        v.counter(
            &c(
                "bytes_sent",
                "sent",
                Bytes,
                "Bytes sent on the wire (UDP payload).",
            ),
            self.bytes_sent,
        );
        v.counter(
            &c(
                "bytes_received",
                "received",
                Bytes,
                "Bytes received on the wire (UDP payload).",
            ),
            self.bytes_received,
        );
        v.counter(
            &c(
                "packets_lost",
                "packets_lost",
                Count,
                "Packets declared lost.",
            ),
            self.packets_lost,
        );
        v.counter(
            &c(
                "spurious_losses",
                "spurious_losses",
                Count,
                "Packets declared lost and acknowledged after all (the loss was spurious).",
            ),
            self.spurious_losses,
        );
        v.counter(
            &c(
                "retransmissions",
                "retransmissions",
                Count,
                "Message fragments queued for retransmission.",
            ),
            self.retransmissions,
        );
        v.counter(
            &c(
                "payload_bytes_sent",
                "payload_sent",
                Bytes,
                "Message payload bytes handed to the connection for sending.",
            ),
            self.payload_bytes_sent,
        );
        v.counter(
            &c(
                "payload_bytes_retransmitted",
                "payload_retransmitted",
                Bytes,
                "Message payload bytes sent again after a loss.",
            ),
            self.payload_bytes_retransmitted,
        );
        v.gauge(
            &g(
                "retransmission_rate",
                "retransmission",
                Ratio,
                "Payload bytes re-sent over payload bytes sent.",
            ),
            Value::Real(self.retransmission_rate()),
        );
        v.counter(
            &c("last_chance_copies", "last_chance_copies", Count, "Deadline retransmissions sent twice because another attempt could not have made the deadline."),
            self.last_chance_copies,
        );
        v.counter(
            &c(
                "probe_timeouts",
                "probe_timeouts",
                Count,
                "Probe timeouts that fired.",
            ),
            self.probe_timeouts,
        );
        v.counter(
            &c(
                "duplicate_packets",
                "duplicate_packets",
                Count,
                "Packets received more than once (dropped).",
            ),
            self.duplicate_packets,
        );
        v.counter(
            &c(
                "duplicate_fragments",
                "duplicate_fragments",
                Count,
                "Message fragments received more than once (dropped).",
            ),
            self.duplicate_fragments,
        );
        v.counter(
            &c(
                "malformed_packets",
                "malformed_packets",
                Count,
                "Datagrams that failed to decode (dropped).",
            ),
            self.malformed_packets,
        );
        v.counter(
            &c(
                "auth_failures",
                "auth_failures",
                Count,
                "Packets that failed authentication (dropped).",
            ),
            self.auth_failures,
        );
        v.counter(
            &c(
                "bad_resets",
                "bad_resets",
                Count,
                "Reset packets whose token did not match (ignored).",
            ),
            self.bad_resets,
        );
        v.counter(
            &c(
                "key_updates",
                "key_updates",
                Count,
                "Key updates performed.",
            ),
            self.key_updates,
        );
        v.counter(
            &c(
                "amplification_blocked",
                "amplification_blocked",
                Count,
                "Handshake sends withheld by the anti-amplification limit.",
            ),
            self.amplification_blocked,
        );
        v.counter(
            &c(
                "messages_sent",
                "messages_sent",
                Count,
                "Messages queued by the application.",
            ),
            self.messages_sent,
        );
        v.counter(
            &c(
                "messages_acked",
                "messages_acked",
                Count,
                "Messages the peer acknowledged in full.",
            ),
            self.messages_acked,
        );
        v.counter(
            &c(
                "messages_delivered",
                "messages_delivered",
                Count,
                "Messages delivered in order to the application side.",
            ),
            self.messages_delivered,
        );
        v.counter(
            &c("messages_skipped", "messages_skipped", Count, "Messages the receiver gave up on (deadline passed, or unreliable and lost); includes the late ones."),
            self.messages_skipped,
        );
        v.counter(
            &c(
                "messages_late",
                "messages_late",
                Count,
                "Messages that arrived complete but after their deadline.",
            ),
            self.messages_late,
        );
        v.counter(
            &c(
                "messages_abandoned",
                "messages_abandoned",
                Count,
                "Messages the sender gave up on.",
            ),
            self.messages_abandoned,
        );
        v.counter(
            &c(
                "messages_released_early",
                "messages_released_early",
                Count,
                "Messages held for their playout time handed over before it (the hold lifted at a stop).",
            ),
            self.messages_released_early,
        );
        v.counter(
            &c(
                "bundles_sent",
                "bundles_sent",
                Count,
                "MSG_BUNDLE frames sent (several whole small messages in one frame).",
            ),
            self.bundles_sent,
        );
        v.counter(
            &c(
                "bundled_messages_sent",
                "bundled_messages_sent",
                Count,
                "Messages carried in MSG_BUNDLE frames sent.",
            ),
            self.bundled_messages_sent,
        );
        v.counter(
            &c(
                "bundles_received",
                "bundles_received",
                Count,
                "MSG_BUNDLE frames received (duplicates included).",
            ),
            self.bundles_received,
        );
        v.counter(
            &c(
                "messages_recovered_by_retransmission",
                "messages_recovered_by_retransmission",
                Count,
                "Messages whose lost bytes were acknowledged after a retransmission.",
            ),
            self.messages_recovered_by_retransmission,
        );
        for (key, family, unit, help, value) in [
            (
                "fec_source_packets",
                "fec_source_packets",
                Count,
                "Packets sent under forward error correction (FEC_SOURCE).",
                self.fec_source_packets,
            ),
            (
                "fec_repair_symbols_sent",
                "fec_repair_symbols_sent",
                Count,
                "FEC repair symbols sent.",
                self.fec_repair_symbols_sent,
            ),
            (
                "fec_repair_packets_sent",
                "fec_repair_packets_sent",
                Count,
                "Packets sent carrying FEC repair symbols.",
                self.fec_repair_packets_sent,
            ),
            (
                "fec_repair_bytes_sent",
                "fec_repair_sent",
                Bytes,
                "Bytes of the packets carrying FEC repair symbols.",
                self.fec_repair_bytes_sent,
            ),
            (
                "fec_recovered_packets",
                "fec_recovered_packets",
                Count,
                "Lost packets rebuilt from FEC repair symbols.",
                self.fec_recovered_packets,
            ),
            (
                "fec_repairs_rejected",
                "fec_repairs_rejected",
                Count,
                "FEC repair symbols refused as malformed or inconsistent.",
                self.fec_repairs_rejected,
            ),
        ] {
            v.counter(&c(key, family, unit, help), value);
        }
        v.counter(
            &c(
                "failovers",
                "failovers",
                Count,
                "Times the data moved to another path (failover or fail-back).",
            ),
            self.failovers,
        );
        v.histogram(
            &Metric::histogram(
                "latency_histogram_us",
                "one_way_latency",
                Microseconds,
                "One-way latency of each message taken by the application.",
            ),
            &self.latency_histogram,
        );
        v.histogram(
            &Metric::histogram(
                "rtt_histogram_us",
                "rtt_sample",
                Microseconds,
                "Round-trip time samples, from acknowledgements on every path.",
            ),
            &self.rtt_histogram,
        );
        let latency =
            "One-way latency of messages taken by the application (quantile 1 is the largest).";
        for (key, quantile, value) in [
            ("latency_p50_us", "0.5", self.latency_p50_us),
            ("latency_p99_us", "0.99", self.latency_p99_us),
            ("latency_p999_us", "0.999", self.latency_p999_us),
            ("latency_max_us", "1", self.latency_max_us),
        ] {
            let metric =
                g(key, "message_latency", Microseconds, latency).with_label("quantile", quantile);
            v.gauge(&metric, int(value));
        }
        if let Some(clock) = &self.clock {
            v.gauge(
                &g(
                    "clock_offset_us",
                    "clock_offset",
                    Microseconds,
                    "Peer clock minus ours.",
                ),
                Value::Real(clock.offset_us),
            );
            v.gauge(
                &g(
                    "clock_error_bound_us",
                    "clock_error_bound",
                    Microseconds,
                    "Bound on the clock offset's error.",
                ),
                Value::Real(clock.error_bound_us),
            );
            v.gauge(
                &g(
                    "clock_drift_ppm",
                    "clock_drift",
                    PartsPerMillion,
                    "Peer clock frequency minus ours.",
                ),
                Value::Real(clock.drift_ppm),
            );
            v.gauge(
                &g(
                    "clock_delay_us",
                    "clock_delay",
                    Microseconds,
                    "Round-trip delay of the best clock sample.",
                ),
                Value::Real(clock.delay_us),
            );
            v.gauge(
                &g(
                    "clock_samples",
                    "clock_samples",
                    Count,
                    "Clock samples since the estimate last restarted.",
                ),
                int(clock.samples),
            );
            v.counter(
                &c(
                    "clock_steps",
                    "clock_steps",
                    Count,
                    "Steps of the peer's clock detected.",
                ),
                clock.steps,
            );
        }
        for path in &self.paths {
            v.path_start(PathLabel {
                id: path.id.0,
                remote: path.addr.remote,
                state: path.state,
            });
            path.visit(v);
            v.path_end();
        }
    }
}

impl VisitStats for PathStats {
    fn visit<V: StatsVisitor + ?Sized>(&self, v: &mut V) {
        use Unit::{Bytes, Count, Dimensionless, Milliseconds};
        let c = Metric::counter;
        let g = Metric::gauge;
        v.gauge(
            &g(
                "rtt_ms",
                "path_rtt",
                Milliseconds,
                "Smoothed round-trip time of the path.",
            ),
            Value::Real(self.rtt.as_secs_f64() * 1e3),
        );
        v.gauge(
            &g(
                "phi",
                "path_phi",
                Dimensionless,
                "Suspicion level of the path's failure detector.",
            ),
            Value::Real(self.phi),
        );
        v.gauge(
            &g(
                "cwnd",
                "path_congestion_window",
                Bytes,
                "Congestion window of the path.",
            ),
            Value::Integer(self.cwnd),
        );
        v.counter(
            &c(
                "packets_sent",
                "path_packets_sent",
                Count,
                "Datagrams sent on the path.",
            ),
            self.packets_sent,
        );
        v.counter(
            &c(
                "packets_received",
                "path_packets_received",
                Count,
                "Datagrams received on the path.",
            ),
            self.packets_received,
        );
        v.counter(
            &c("bytes_sent", "path_sent", Bytes, "Bytes sent on the path."),
            self.bytes_sent,
        );
        v.counter(
            &c(
                "bytes_received",
                "path_received",
                Bytes,
                "Bytes received on the path.",
            ),
            self.bytes_received,
        );
        v.counter(
            &c(
                "packets_lost",
                "path_packets_lost",
                Count,
                "Packets sent on the path and declared lost.",
            ),
            self.packets_lost,
        );
        v.counter(
            &c(
                "spurious_losses",
                "path_spurious_losses",
                Count,
                "Packets sent on the path, declared lost and acknowledged after all.",
            ),
            self.spurious_losses,
        );
        v.gauge(
            &g(
                "latest_rtt_ms",
                "path_latest_rtt",
                Milliseconds,
                "Most recent RTT sample of the path.",
            ),
            Value::Real(self.latest_rtt.as_secs_f64() * 1e3),
        );
        v.gauge(
            &g(
                "min_rtt_ms",
                "path_min_rtt",
                Milliseconds,
                "Smallest RTT seen on the path.",
            ),
            Value::Real(self.min_rtt.as_secs_f64() * 1e3),
        );
        v.gauge(
            &g(
                "reordering_distance",
                "path_reordering_distance",
                Count,
                "Largest reordering seen, in packet numbers below the largest acknowledged.",
            ),
            Value::Integer(self.reordering_distance),
        );
        v.gauge(
            &g(
                "reordering_window_ms",
                "path_reordering_window",
                Milliseconds,
                "RACK reordering window allowed before a packet is declared lost.",
            ),
            Value::Real(self.reordering_window.as_secs_f64() * 1e3),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::conn::{PathAddr, PathId, PathState};
    use crate::stats_schema::Kind;

    /// Every metric seen, with the path it belonged to.
    #[derive(Default)]
    struct Recorder {
        path: Option<usize>,
        seen: Vec<(Option<usize>, Metric, f64)>,
        paths: Vec<PathLabel>,
    }

    impl StatsVisitor for Recorder {
        fn counter(&mut self, metric: &Metric, value: u64) {
            assert_eq!(metric.kind, Kind::Counter);
            self.seen.push((self.path, *metric, value as f64));
        }
        fn gauge(&mut self, metric: &Metric, value: Value) {
            assert_eq!(metric.kind, Kind::Gauge);
            self.seen.push((self.path, *metric, value.as_f64()));
        }
        fn histogram(&mut self, metric: &Metric, value: &Histogram) {
            assert_eq!(metric.kind, Kind::Histogram);
            self.seen.push((self.path, *metric, value.count() as f64));
        }
        fn path_start(&mut self, path: PathLabel) {
            assert_eq!(self.path, None, "paths do not nest");
            self.path = Some(path.id);
            self.paths.push(path);
        }
        fn path_end(&mut self) {
            assert!(self.path.take().is_some());
        }
    }

    impl Recorder {
        fn value(&self, path: Option<usize>, key: &str) -> Option<f64> {
            self.seen
                .iter()
                .find(|(p, m, _)| *p == path && m.key == key)
                .map(|(_, _, v)| *v)
        }
    }

    fn path(id: usize, port: u16) -> PathStats {
        PathStats {
            id: PathId(id),
            addr: PathAddr {
                local: 0,
                remote: ([127, 0, 0, 1], port).into(),
            },
            state: PathState::Active,
            rtt: Duration::from_millis(12),
            phi: 0.5,
            cwnd: 9000,
            packets_sent: 40 + id as u64,
            packets_received: 30,
            bytes_sent: 4000,
            bytes_received: 3000,
            packets_lost: 2,
            spurious_losses: 1,
            latest_rtt: Duration::from_millis(13),
            min_rtt: Duration::from_millis(11),
            reordering_distance: 3,
            reordering_window: Duration::from_millis(3),
        }
    }

    #[test]
    fn a_connection_describes_each_field_once_with_its_value_and_its_paths_apart() {
        let stats = ConnectionStats {
            rtt: Duration::from_micros(20_500),
            packets_sent: 100,
            packets_lost: 7,
            messages_skipped: 5,
            messages_late: 2,
            payload_bytes_sent: 1000,
            payload_bytes_retransmitted: 50,
            latency_p99_us: 31_000,
            paths: vec![path(0, 9000), path(1, 9001)],
            ..ConnectionStats::default()
        };
        let mut stats = stats;
        for us in [800, 1_200, 40_000] {
            stats.latency_histogram.record_us(us);
        }
        stats.rtt_histogram.record_us(20_000);
        let mut rec = Recorder::default();
        stats.visit(&mut rec);

        assert_eq!(rec.value(None, "rtt_ms"), Some(20.5));
        assert_eq!(rec.value(None, "packets_sent"), Some(100.0));
        assert_eq!(rec.value(None, "packets_lost"), Some(7.0));
        assert_eq!(rec.value(None, "messages_skipped"), Some(5.0));
        assert_eq!(rec.value(None, "messages_late"), Some(2.0));
        assert_eq!(rec.value(None, "retransmission_rate"), Some(0.05));
        assert_eq!(rec.value(None, "latency_p99_us"), Some(31_000.0));
        assert_eq!(rec.value(None, "latency_histogram_us"), Some(3.0));
        assert_eq!(rec.value(None, "rtt_histogram_us"), Some(1.0));
        assert_eq!(
            rec.value(None, "clock_offset_us"),
            None,
            "no clock, no clock fields"
        );
        assert_eq!(rec.value(Some(1), "packets_sent"), Some(41.0));
        assert_eq!(rec.value(Some(0), "packets_sent"), Some(40.0));
        assert_eq!(rec.paths.len(), 2);
        assert_eq!(rec.paths[1].remote.port(), 9001);

        // Within one scope, keys are unique, and so are (family, label).
        for scope in [None, Some(0), Some(1)] {
            let metrics: Vec<&Metric> = rec
                .seen
                .iter()
                .filter(|(p, _, _)| *p == scope)
                .map(|(_, m, _)| m)
                .collect();
            let keys: HashSet<&str> = metrics.iter().map(|m| m.key).collect();
            assert_eq!(keys.len(), metrics.len(), "duplicate key in {scope:?}");
            let families: HashSet<_> = metrics.iter().map(|m| (m.family, m.label)).collect();
            assert_eq!(
                families.len(),
                metrics.len(),
                "duplicate family in {scope:?}"
            );
        }
        // Path families never collide with connection families.
        let connection: HashSet<&str> = rec
            .seen
            .iter()
            .filter(|(p, _, _)| p.is_none())
            .map(|(_, m, _)| m.family)
            .collect();
        for (_, m, _) in rec.seen.iter().filter(|(p, _, _)| p.is_some()) {
            assert!(
                !connection.contains(m.family),
                "{} is also a connection family",
                m.family
            );
        }
        // The four latency fields are one family told apart by quantile.
        let quantiles: Vec<_> = rec
            .seen
            .iter()
            .filter(|(_, m, _)| m.family == "message_latency")
            .map(|(_, m, _)| m.label)
            .collect();
        assert_eq!(quantiles.len(), 4);
        assert!(quantiles.contains(&Some(("quantile", "0.99"))));
    }

    #[test]
    fn a_clock_estimate_adds_its_fields() {
        let stats = ConnectionStats {
            clock: Some(ClockEstimate {
                offset_us: -250.0,
                error_bound_us: 40.0,
                drift_ppm: 1.5,
                delay_us: 80.0,
                samples: 9,
                steps: 0,
            }),
            ..ConnectionStats::default()
        };
        let mut rec = Recorder::default();
        stats.visit(&mut rec);
        assert_eq!(rec.value(None, "clock_offset_us"), Some(-250.0));
        assert_eq!(rec.value(None, "clock_samples"), Some(9.0));
    }
}
