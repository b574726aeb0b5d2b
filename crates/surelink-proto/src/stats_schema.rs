//! One description of every statistic: name, unit, kind and meaning.
//!
//! A stats snapshot ([`ConnectionStats`](crate::ConnectionStats),
//! [`PathStats`](crate::conn::PathStats),
//! [`EndpointStats`](crate::EndpointStats), and the runtime's own types)
//! implements [`VisitStats`]: it hands each of its fields, described by a
//! [`Metric`], to a [`StatsVisitor`]. Whatever prints or exports statistics
//! is a visitor (the command line's JSON lines, the demo, the benchmark
//! harness, the Prometheus exporter), so a field added to a snapshot and to
//! its `visit` reaches every output at once, and no output keeps a list of
//! its own.
//!
//! A metric has two names: [`Metric::key`], the name of the value as it is
//! held (unit suffix included, `rtt_ms`, `latency_p50_us`), used by the JSON
//! outputs; and [`Metric::family`], the name of the quantity without its unit
//! (`rtt`, `message_latency`), which an exporter completes with the base unit
//! ([`Unit::base_suffix`]) and converts the value to it ([`Unit::to_base`]).
//! A metric may carry one fixed label (a quantile, a reason), so that
//! several fields form one family.
//!
//! A [`Histogram`] counts samples (one-way latencies, RTT samples) into
//! fixed buckets ([`HISTOGRAM_BOUNDS_US`], 100 µs to 10 s), with their sum
//! and count, where the samples are taken; a visitor receives it whole
//! ([`StatsVisitor::histogram`]) and exports it as a Prometheus histogram or
//! prints it compactly.
//!
//! Nothing here does I/O: visiting is a synchronous walk over a snapshot.

/// What a metric's value counts or measures, as the field holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A number of things (packets, messages, events, samples).
    Count,
    /// Bytes.
    Bytes,
    /// Milliseconds.
    Milliseconds,
    /// Microseconds.
    Microseconds,
    /// A ratio (0.01 is 1 %).
    Ratio,
    /// Parts per million.
    PartsPerMillion,
    /// A number without unit (for example a suspicion level).
    Dimensionless,
}

impl Unit {
    /// The base unit's suffix for an exported name (`seconds`, `bytes`,
    /// `ratio`), or `None` for counts and pure numbers.
    pub fn base_suffix(self) -> Option<&'static str> {
        match self {
            Self::Bytes => Some("bytes"),
            Self::Milliseconds | Self::Microseconds => Some("seconds"),
            Self::Ratio | Self::PartsPerMillion => Some("ratio"),
            Self::Count | Self::Dimensionless => None,
        }
    }

    /// `value`, given in this unit, in the base unit.
    pub fn to_base(self, value: f64) -> f64 {
        match self {
            Self::Milliseconds => value / 1e3,
            Self::Microseconds | Self::PartsPerMillion => value / 1e6,
            Self::Count | Self::Bytes | Self::Ratio | Self::Dimensionless => value,
        }
    }
}

/// How a metric's value behaves over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (a total since the connection or endpoint started).
    Counter,
    /// Goes up and down (a current value, an estimate, a quantile).
    Gauge,
    /// A [`Histogram`] of samples: bucket counts, sum and count, all only
    /// growing.
    Histogram,
}

/// The description of one statistic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    /// The value's name as held, unit suffix included (`bytes_sent`,
    /// `rtt_ms`): the key in JSON output.
    pub key: &'static str,
    /// The quantity's name without unit (`sent`, `rtt`): an exporter's
    /// name, completed with the base unit. Several metrics share a family
    /// when they differ by [`label`](Self::label).
    pub family: &'static str,
    /// The unit of the value as the visitor receives it.
    pub unit: Unit,
    /// Counter or gauge.
    pub kind: Kind,
    /// One fixed label (name, value) that sets this metric apart within its
    /// family, such as `("quantile", "0.99")`.
    pub label: Option<(&'static str, &'static str)>,
    /// One line on what the value means.
    pub help: &'static str,
}

impl Metric {
    /// A counter: `key` in `unit`, exported as `family`.
    pub const fn counter(
        key: &'static str,
        family: &'static str,
        unit: Unit,
        help: &'static str,
    ) -> Self {
        Self {
            key,
            family,
            unit,
            kind: Kind::Counter,
            label: None,
            help,
        }
    }

    /// A gauge: `key` in `unit`, exported as `family`.
    pub const fn gauge(
        key: &'static str,
        family: &'static str,
        unit: Unit,
        help: &'static str,
    ) -> Self {
        Self {
            key,
            family,
            unit,
            kind: Kind::Gauge,
            label: None,
            help,
        }
    }

    /// A histogram of samples in `unit`, exported as `family`.
    pub const fn histogram(
        key: &'static str,
        family: &'static str,
        unit: Unit,
        help: &'static str,
    ) -> Self {
        Self {
            key,
            family,
            unit,
            kind: Kind::Histogram,
            label: None,
            help,
        }
    }

    /// The same metric, set apart within its family by the label `name=value`.
    pub const fn with_label(mut self, name: &'static str, value: &'static str) -> Self {
        self.label = Some((name, value));
        self
    }
}

/// A gauge's value: whole numbers stay whole (JSON keeps them integers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A whole number.
    Integer(u64),
    /// A real number.
    Real(f64),
}

impl Value {
    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Self::Integer(v) => v as f64,
            Self::Real(v) => v,
        }
    }
}

/// The upper bounds of a [`Histogram`]'s buckets, in microseconds (a last
/// bucket, unbounded, takes the rest): 1–2.5–5 steps from 100 µs to 10 s,
/// fine enough below a millisecond for a LAN and up to seconds for a WAN
/// under loss. In seconds: 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
/// 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10.
pub const HISTOGRAM_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Samples counted into the fixed buckets of [`HISTOGRAM_BOUNDS_US`], with
/// their sum and count (a Prometheus histogram's data). A sample of exactly
/// a bound counts in that bound's bucket (`le`, less than or equal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Samples per bucket (not cumulative); the last is above every bound.
    buckets: [u64; HISTOGRAM_BOUNDS_US.len() + 1],
    /// Sum of the samples, µs.
    sum_us: u64,
}

impl Histogram {
    /// Counts one sample of `us` microseconds.
    pub fn record_us(&mut self, us: u64) {
        self.record_us_n(us, 1);
    }

    /// Counts `n` samples of `us` microseconds each.
    pub fn record_us_n(&mut self, us: u64, n: u64) {
        let bucket = HISTOGRAM_BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[bucket] += n;
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(n));
    }

    /// Counts one sample of `duration`.
    pub fn record(&mut self, duration: std::time::Duration) {
        self.record_us(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }

    /// The number of samples.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The sum of the samples, µs.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Each bucket's upper bound in µs (`None`: unbounded) with the samples
    /// in it alone (not cumulative), in increasing order of bound.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        HISTOGRAM_BOUNDS_US
            .iter()
            .map(|&bound| Some(bound))
            .chain([None])
            .zip(self.buckets.iter().copied())
    }
}

/// Which path the metrics that follow [`StatsVisitor::path_start`] belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathLabel {
    /// The path's id within its connection.
    pub id: usize,
    /// The peer's address on it.
    pub remote: std::net::SocketAddr,
    /// Its state.
    pub state: crate::conn::PathState,
}

/// Receives the statistics of a snapshot, one field at a time, in a fixed
/// order.
pub trait StatsVisitor {
    /// A counter's value.
    fn counter(&mut self, metric: &Metric, value: u64);
    /// A gauge's value.
    fn gauge(&mut self, metric: &Metric, value: Value);
    /// A histogram's samples, bounds and sum in the metric's unit
    /// ([`Unit::Microseconds`] for every histogram of the schema).
    fn histogram(&mut self, metric: &Metric, value: &Histogram);
    /// The metrics up to the matching [`path_end`](Self::path_end) are one
    /// path's. Paths are never nested.
    fn path_start(&mut self, path: PathLabel) {
        let _ = path;
    }
    /// The end of one path's metrics.
    fn path_end(&mut self) {}
}

/// A statistics snapshot that describes itself to a [`StatsVisitor`].
pub trait VisitStats {
    /// Hands every statistic of `self` to `visitor`, always in the same order.
    fn visit<V: StatsVisitor + ?Sized>(&self, visitor: &mut V);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_units_convert_from_the_units_held() {
        assert_eq!(Unit::Milliseconds.to_base(250.0), 0.25);
        assert_eq!(Unit::Microseconds.to_base(1500.0), 0.0015);
        assert_eq!(Unit::PartsPerMillion.to_base(20.0), 20e-6);
        assert_eq!(Unit::Bytes.to_base(7.0), 7.0);
        assert_eq!(Unit::Milliseconds.base_suffix(), Some("seconds"));
        assert_eq!(Unit::Bytes.base_suffix(), Some("bytes"));
        assert_eq!(Unit::Count.base_suffix(), None);
    }

    #[test]
    fn a_histogram_counts_each_sample_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::default();
        for us in [0, 100, 101, 2_000, 10_000_000, 10_000_001, u64::MAX] {
            h.record_us(us);
        }
        h.record(std::time::Duration::from_millis(3));
        assert_eq!(h.count(), 8);
        assert_eq!(h.sum_us(), u64::MAX, "the sum saturates");
        let buckets: Vec<_> = h.buckets().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            buckets,
            [
                (Some(100), 2),
                (Some(250), 1),
                (Some(2_500), 1),
                (Some(5_000), 1),
                (Some(10_000_000), 1),
                (None, 2)
            ]
        );
        assert_eq!(h.buckets().count(), HISTOGRAM_BOUNDS_US.len() + 1);
        assert!(HISTOGRAM_BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_label_sets_a_metric_apart_within_its_family() {
        let p99 = Metric::gauge("latency_p99_us", "message_latency", Unit::Microseconds, "")
            .with_label("quantile", "0.99");
        assert_eq!(p99.label, Some(("quantile", "0.99")));
        assert_eq!(p99.kind, Kind::Gauge);
        assert_eq!(Value::Integer(3).as_f64(), 3.0);
    }
}
