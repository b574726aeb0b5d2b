//! Counters and the fsync latency histogram of a journal.
//!
//! [`Journal::metrics`](crate::Journal::metrics) returns a [`JournalMetrics`]
//! snapshot. The fsync latency is the one place the crate reads a clock: it
//! is measured, never used for a decision.

use std::time::Duration;

const BUCKETS: usize = 64;

/// A latency histogram with power-of-two buckets (nanoseconds), plus exact
/// count, sum, min and max. Quantiles are accurate to a factor of two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    buckets: [u64; BUCKETS],
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: [0; BUCKETS],
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = (u64::BITS - ns.leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)] += 1;
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest sample, `None` if empty.
    pub fn min(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.min_ns))
    }

    /// Largest sample, `None` if empty.
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.max_ns))
    }

    /// Mean of the samples, `None` if empty.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| {
            Duration::from_nanos(
                u64::try_from(self.sum_ns / u128::from(self.count)).unwrap_or(u64::MAX),
            )
        })
    }

    /// An upper bound (within a factor of two, capped at the maximum) of the
    /// `q`-quantile, `q` in `0.0..=1.0`; `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = if bucket == 0 {
                    0
                } else {
                    1u64.checked_shl(bucket as u32).map_or(u64::MAX, |v| v - 1)
                };
                return Some(Duration::from_nanos(upper.clamp(self.min_ns, self.max_ns)));
            }
        }
        self.max()
    }
}

/// A snapshot of a journal's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalMetrics {
    /// Checkpoints written: commits that carried at least one record.
    pub commits: u64,
    /// Records appended since open.
    pub records_appended: u64,
    /// Bytes handed to the storage since open (records, segment headers,
    /// compaction output).
    pub bytes_written: u64,
    /// File fsyncs since open.
    pub fsyncs: u64,
    /// Directory fsyncs since open.
    pub dir_syncs: u64,
    /// Latency of the file fsyncs.
    pub fsync_latency: LatencyHistogram,
    /// Compactions completed since open.
    pub compactions: u64,
    /// Segments created since open (rollover and compaction).
    pub segments_created: u64,
    /// Old segments removed since open because every record in them (and
    /// in every segment before them) was dead: reclaimed without copying.
    pub segments_dropped: u64,
    /// Records currently live (not yet declared dead by the layer above).
    pub records_live: u64,
    /// Frame bytes of the live records.
    pub live_bytes: u64,
    /// Frame bytes of dead records still in the log (what compaction would
    /// reclaim).
    pub garbage_bytes: u64,
    /// Segment files currently in the log.
    pub segments: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_summary() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.mean(), None);
        for us in [1u64, 2, 3, 4, 100] {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.min(), Some(Duration::from_micros(1)));
        assert_eq!(h.max(), Some(Duration::from_micros(100)));
        assert_eq!(h.mean(), Some(Duration::from_micros(22)));
        let p50 = h.quantile(0.5).unwrap();
        assert!(p50 >= Duration::from_micros(3) && p50 <= Duration::from_micros(6));
        assert_eq!(h.quantile(1.0), Some(Duration::from_micros(100)));
        h.record(Duration::ZERO);
        assert_eq!(h.min(), Some(Duration::ZERO));
        assert_eq!(h.quantile(0.0), Some(Duration::ZERO));
    }
}
