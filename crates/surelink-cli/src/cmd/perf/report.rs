//! What `perf` client and server tell each other at the end of a connection,
//! and the resource figures (CPU time, peak memory) both sides report.
//!
//! On channel 1 the client sends one [`Finished`] message (JSON); the server
//! answers with a [`ServerReport`] (JSON) followed by its latency histogram
//! (hdrhistogram's V2 serialisation). Both are parsed without trusting the
//! peer: a malformed message is an error, never a panic.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeValLike as _;
use serde_json::{json, Value};

/// The channel of the end-of-test exchange; data goes on channel 0.
pub const CONTROL_CHANNEL: u64 = 1;

/// Highest latency the histograms hold, µs (one hour); above is clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in µs, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid")
}

/// One connection's latencies on the perf server, kept sparse until its
/// report goes out.
///
/// A [`latency_histogram`] is a dense array of counts over 1 µs – 1 h at 3
/// significant digits, about 180 KiB however few samples it holds: one per
/// connection made the server's peak RSS 2.4 GB at 10,000 sessions sending
/// one message a second. This keeps a count only for each bucket of that
/// histogram a sample fell in (its lowest equivalent value as the key), so
/// a connection costs what its samples spread over: tens of buckets for
/// latencies within a decade, a few hundred for a spread over several (16
/// bytes each plus the map's nodes). [`Self::to_histogram`] rebuilds the
/// very histogram that recording every sample into a [`latency_histogram`]
/// would have made, so the 3 significant digits and the wire format stay,
/// and the dense array exists only while the report is encoded. Two digits
/// would have cut the array to about 25 KiB, still 250 MB at 10,000
/// sessions, and coarsened percentiles the bench compares against quinn's.
#[derive(Debug, Default)]
pub struct CompactLatencies {
    /// Samples per bucket, by the bucket's lowest equivalent value (µs).
    counts: BTreeMap<u64, u64>,
}

impl CompactLatencies {
    /// Counts one latency, µs (clamped to 1 µs – 1 h, as the histogram does).
    pub fn record(&mut self, latency_us: u64) {
        static BUCKETS: OnceLock<Histogram<u64>> = OnceLock::new();
        let buckets = BUCKETS.get_or_init(latency_histogram);
        let key = buckets.lowest_equivalent(latency_us.clamp(1, MAX_LATENCY_US));
        *self.counts.entry(key).or_insert(0) += 1;
    }

    /// The samples as a [`latency_histogram`]; one with no bucket at all
    /// (small to send) if there were none.
    pub fn to_histogram(&self) -> Histogram<u64> {
        if self.counts.is_empty() {
            return Histogram::new(1).expect("constant precision is valid");
        }
        let mut histogram = latency_histogram();
        for (&value, &count) in &self.counts {
            histogram.saturating_record_n(value, count);
        }
        histogram
    }
}

/// This process's CPU time and peak memory so far (`getrusage`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User plus system CPU seconds, all threads.
    pub cpu_s: f64,
    /// Peak resident set size, KiB.
    pub peak_rss_kib: u64,
}

impl Usage {
    /// Reads the figures now.
    pub fn now() -> Self {
        match getrusage(UsageWho::RUSAGE_SELF) {
            Ok(u) => Self {
                cpu_s: (u.user_time().num_microseconds() + u.system_time().num_microseconds())
                    as f64
                    / 1e6,
                // Linux reports ru_maxrss in KiB.
                peak_rss_kib: u64::try_from(u.max_rss()).unwrap_or(0),
            },
            // getrusage cannot fail for RUSAGE_SELF on Linux.
            Err(_) => Self {
                cpu_s: f64::NAN,
                peak_rss_kib: 0,
            },
        }
    }
}

/// The wall clock, µs since the Unix epoch (the clock connections timestamp with).
pub fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The client's last word on a connection: how many data messages it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Data messages sent on channel 0.
    pub sent: u64,
}

impl Finished {
    /// The message bytes.
    pub fn encode(&self) -> Bytes {
        Bytes::from(json!({ "sent": self.sent }).to_string())
    }

    /// Parses a message from the client.
    pub fn decode(data: &[u8]) -> anyhow::Result<Self> {
        let value: Value = serde_json::from_slice(data).context("not a JSON object")?;
        Ok(Self {
            sent: field_u64(&value, "sent")?,
        })
    }
}

/// What the server received on one connection, and its own resource use.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerReport {
    /// Data messages received.
    pub messages: u64,
    /// Data bytes received.
    pub bytes: u64,
    /// Wall clock of the first data message's arrival, µs (0 if none came).
    pub first_us: u64,
    /// Wall clock of the last data message's arrival, µs.
    pub last_us: u64,
    /// The server's CPU time when it accepted this connection.
    pub cpu_s_at_accept: f64,
    /// The server's resource use when it wrote this report.
    pub usage: Usage,
}

impl ServerReport {
    /// The report message bytes (the histogram goes in a message of its own).
    pub fn encode(&self) -> Bytes {
        Bytes::from(
            json!({
                "messages": self.messages,
                "bytes": self.bytes,
                "first_us": self.first_us,
                "last_us": self.last_us,
                "cpu_s_at_accept": self.cpu_s_at_accept,
                "cpu_s": self.usage.cpu_s,
                "peak_rss_kib": self.usage.peak_rss_kib,
            })
            .to_string(),
        )
    }

    /// Parses a report from the server.
    pub fn decode(data: &[u8]) -> anyhow::Result<Self> {
        let value: Value = serde_json::from_slice(data).context("not a JSON object")?;
        Ok(Self {
            messages: field_u64(&value, "messages")?,
            bytes: field_u64(&value, "bytes")?,
            first_us: field_u64(&value, "first_us")?,
            last_us: field_u64(&value, "last_us")?,
            cpu_s_at_accept: field_f64(&value, "cpu_s_at_accept")?,
            usage: Usage {
                cpu_s: field_f64(&value, "cpu_s")?,
                peak_rss_kib: field_u64(&value, "peak_rss_kib")?,
            },
        })
    }
}

/// The histogram as a message.
pub fn encode_histogram(histogram: &Histogram<u64>) -> anyhow::Result<Bytes> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut out)
        .map_err(|e| anyhow!("cannot serialise the latency histogram: {e:?}"))?;
    Ok(Bytes::from(out))
}

/// Parses a histogram message.
pub fn decode_histogram(data: &[u8]) -> anyhow::Result<Histogram<u64>> {
    Deserializer::new()
        .deserialize(&mut &data[..])
        .map_err(|e| anyhow!("malformed latency histogram: {e:?}"))
}

fn field_u64(value: &Value, name: &str) -> anyhow::Result<u64> {
    value[name]
        .as_u64()
        .ok_or_else(|| anyhow!("{name:?} missing or not a whole number"))
}

fn field_f64(value: &Value, name: &str) -> anyhow::Result<f64> {
    value[name]
        .as_f64()
        .ok_or_else(|| anyhow!("{name:?} missing or not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let finished = Finished { sent: 42 };
        assert_eq!(Finished::decode(&finished.encode()).unwrap(), finished);
        let report = ServerReport {
            messages: 41,
            bytes: 41 * 64,
            first_us: 1_000,
            last_us: 2_000,
            cpu_s_at_accept: 0.5,
            usage: Usage {
                cpu_s: 1.25,
                peak_rss_kib: 8192,
            },
        };
        assert_eq!(ServerReport::decode(&report.encode()).unwrap(), report);
        let mut histogram = latency_histogram();
        histogram.record(150).unwrap();
        histogram.record(3_000).unwrap();
        let back = decode_histogram(&encode_histogram(&histogram).unwrap()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.max(), histogram.max());
    }

    #[test]
    fn compact_latencies_make_the_histogram_direct_recording_makes() {
        let samples = [1, 1, 999, 2_047, 4_000, 4_001, 150_000, 7_000_000];
        let mut compact = CompactLatencies::default();
        let mut direct = latency_histogram();
        for &us in &samples {
            compact.record(us);
            direct.record(us).unwrap();
        }
        // Out of range, clamped as the histogram's saturating record does.
        compact.record(0);
        direct.saturating_record(1);
        compact.record(u64::MAX);
        direct.saturating_record(MAX_LATENCY_US);
        let rebuilt = compact.to_histogram();
        assert_eq!(rebuilt, direct);
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(rebuilt.value_at_quantile(q), direct.value_at_quantile(q));
        }
        // Exact below 2,048 µs; 4,000 and 4,001 share a 2 µs bucket; 0 is
        // counted as 1 µs and the clamped maximum is a bucket of its own.
        assert_eq!(compact.counts.len(), 7);
        let none = CompactLatencies::default().to_histogram();
        assert_eq!(none.len(), 0);
        assert!(encode_histogram(&none).unwrap().len() < 64);
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(Finished::decode(b"not json").is_err());
        assert!(Finished::decode(br#"{"sent":-1}"#).is_err());
        assert!(ServerReport::decode(br#"{"messages":1}"#).is_err());
        assert!(decode_histogram(b"\x00\x01garbage").is_err());
        assert!(decode_histogram(b"").is_err());
    }

    #[test]
    fn usage_grows_with_work() {
        let before = Usage::now();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let after = Usage::now();
        assert!(after.cpu_s >= before.cpu_s);
        assert!(after.peak_rss_kib > 0);
    }
}
