//! What `perf` client and server tell each other at the end of a connection,
//! and the resource figures (CPU time, peak memory) both sides report.
//!
//! On channel 1 the client sends one [`Finished`] message (JSON); the server
//! answers with a [`ServerReport`] (JSON) followed by its latencies
//! ([`CompactLatencies`]: JSON pairs of latency and count, one per histogram
//! bucket hit). Both are parsed without trusting the
//! peer: a malformed message is an error, never a panic.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
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

/// One connection's latencies on the perf server, kept sparse, and the
/// message that carries them to the client.
///
/// A [`latency_histogram`] is a dense array of counts over 1 µs – 1 h at 3
/// significant digits, about 180 KiB however few samples it holds: one per
/// connection made the server's peak RSS 2.4 GB at 10,000 sessions sending
/// one message a second. This keeps a count only for each bucket of that
/// histogram a sample fell in (the bucket's lowest equivalent value as the
/// key), so a connection costs what its samples spread over: tens of
/// buckets for latencies within a decade, a few hundred over several (16
/// bytes each plus the map's nodes). The report carries the same pairs
/// ([`Self::encode`]) and the client records them into its one merged
/// histogram ([`Self::add_to`]): that histogram is exactly the one
/// recording every sample into it would have made, so the 3 significant
/// digits stay, and no side ever holds a dense histogram per connection.
/// Two digits would have cut the array to about 25 KiB, still 250 MB at
/// 10,000 sessions, and coarsened the percentiles compared against quinn.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CompactLatencies {
    /// Samples per bucket, by the bucket's lowest equivalent value (µs).
    counts: BTreeMap<u64, u64>,
}

impl CompactLatencies {
    /// Counts one latency, µs (clamped to 1 µs – 1 h, as the histogram's
    /// saturating record does).
    pub fn record(&mut self, latency_us: u64) {
        static BUCKETS: OnceLock<Histogram<u64>> = OnceLock::new();
        let buckets = BUCKETS.get_or_init(latency_histogram);
        let key = buckets.lowest_equivalent(latency_us.clamp(1, MAX_LATENCY_US));
        *self.counts.entry(key).or_insert(0) += 1;
    }

    /// Adds the samples to `histogram` (a [`latency_histogram`]).
    pub fn add_to(&self, histogram: &mut Histogram<u64>) {
        for (&value, &count) in &self.counts {
            histogram.saturating_record_n(value, count);
        }
    }

    /// The message: a JSON array of `[latency µs, count]` pairs.
    pub fn encode(&self) -> Bytes {
        Bytes::from(Value::from_iter(self.counts.iter().map(|(&v, &n)| json!([v, n]))).to_string())
    }

    /// Parses a message from the server: every latency within 1 µs – 1 h,
    /// every count at least 1.
    pub fn decode(data: &[u8]) -> anyhow::Result<Self> {
        let value: Value = serde_json::from_slice(data).context("not JSON")?;
        let pairs = value.as_array().context("not an array of latency pairs")?;
        let mut counts = BTreeMap::new();
        for pair in pairs {
            let (latency, count) = match pair.as_array().map(Vec::as_slice) {
                Some([latency, count]) => (latency.as_u64(), count.as_u64()),
                _ => (None, None),
            };
            match (latency, count) {
                (Some(latency @ 1..=MAX_LATENCY_US), Some(count @ 1..)) => {
                    *counts.entry(latency).or_insert(0u64) += count;
                }
                _ => bail!("bad latency pair {pair}"),
            }
        }
        Ok(Self { counts })
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
    /// The report message bytes (the latencies go in a message of their own).
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
        let mut latencies = CompactLatencies::default();
        latencies.record(150);
        latencies.record(3_000);
        latencies.record(3_000);
        assert_eq!(
            CompactLatencies::decode(&latencies.encode()).unwrap(),
            latencies
        );
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
        let mut merged = latency_histogram();
        CompactLatencies::decode(&compact.encode())
            .unwrap()
            .add_to(&mut merged);
        assert_eq!(merged, direct);
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(merged.value_at_quantile(q), direct.value_at_quantile(q));
        }
        // Exact below 2,048 µs; 4,000 and 4,001 share a 2 µs bucket; 0 is
        // counted as 1 µs and the clamped maximum is a bucket of its own.
        assert_eq!(compact.counts.len(), 7);
        assert_eq!(CompactLatencies::default().encode().as_ref(), b"[]");
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(Finished::decode(b"not json").is_err());
        assert!(Finished::decode(br#"{"sent":-1}"#).is_err());
        assert!(ServerReport::decode(br#"{"messages":1}"#).is_err());
        for bad in [
            &b""[..],
            b"{}",
            b"[[1]]",
            b"[[0,1]]",
            b"[[1,0]]",
            b"[[1,-1]]",
            b"[[3600000001,1]]",
            b"[[1,2,3]]",
        ] {
            assert!(CompactLatencies::decode(bad).is_err(), "{bad:?}");
        }
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
