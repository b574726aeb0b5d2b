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
    fn a_label_sets_a_metric_apart_within_its_family() {
        let p99 = Metric::gauge("latency_p99_us", "message_latency", Unit::Microseconds, "")
            .with_label("quantile", "0.99");
        assert_eq!(p99.label, Some(("quantile", "0.99")));
        assert_eq!(p99.kind, Kind::Gauge);
        assert_eq!(Value::Integer(3).as_f64(), 3.0);
    }
}
