//! `--metrics ADDR`: the statistics over HTTP at `/metrics`, for Prometheus.
//!
//! A command starts the exporter with [`MetricsArgs::serve`] (a no-op without
//! `--metrics`), then hands it what to export with [`watch`]: its endpoint,
//! its impairer, and every connection (the stats reporter,
//! [`spawn_reporter`](crate::report::spawn_reporter), watches each one while
//! it runs). Nothing is copied ahead of time: each scrape takes a snapshot of
//! everything watched and describes it through the statistics schema
//! ([`surelink::stats_schema`]), so every statistic the snapshots have is
//! exported, under `surelink_` + its family name + its base unit
//! (`_seconds`, `_bytes`, `_ratio`), counters ending in `_total`,
//! histograms (one-way latency, RTT samples) as OpenMetrics histograms
//! (`_bucket{le=…}` cumulative over the schema's fixed bounds, `_sum`,
//! `_count`). A
//! connection's metrics are labelled with its `role` and `remote` address,
//! a path's with its `path` id and `path_remote` address too; the impairer's
//! with their `direction`.
//!
//! The HTTP side is a minimal responder on tokio: `GET /metrics` answers the
//! OpenMetrics text format when the client accepts it (as Prometheus does)
//! and the Prometheus text format 0.0.4 otherwise; any other path is a 404.
//! One request per connection, head bounded in size and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit as PromUnit};
use surelink::impair::ImpairStatsReader;
use surelink::stats_schema::{
    Histogram, Kind, Metric, PathLabel, StatsVisitor, Unit, Value, VisitStats,
};
use surelink::{Connection, Endpoint};
use surelink_session::ReceiverStatsReader;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head read from a client.
const MAX_REQUEST_HEAD: usize = 8192;
/// How long a client may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The `Content-Type` of the OpenMetrics text format.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `--metrics` option.
#[derive(Debug, Clone, Default, Args)]
pub struct MetricsArgs {
    /// Serve the statistics for Prometheus at http://ADDR/metrics while running
    /// (e.g. 127.0.0.1:9464; port 0 picks a free port, printed on stderr).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

impl MetricsArgs {
    /// With `--metrics`, binds the address and serves `/metrics` until the
    /// process exits; `command` names the command in the line announcing
    /// the address on stderr.
    pub async fn serve(&self, command: &str) -> anyhow::Result<()> {
        let Some(addr) = self.metrics else {
            return Ok(());
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        let local = listener.local_addr()?;
        let watched = Arc::clone(WATCHED.get_or_init(Default::default));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exporter { watched }));
        tokio::spawn(serve(listener, Arc::new(registry)));
        eprintln!("surelink {command}: serving metrics on {local} (http://{local}/metrics)");
        Ok(())
    }
}

/// Something whose statistics are exported while it is watched.
pub enum Source {
    /// An endpoint: its socket and handshake counters.
    Endpoint(Endpoint),
    /// A connection, and the role it plays (`send`, `recv`).
    Connection {
        /// `send` or `recv`.
        role: &'static str,
        /// The connection.
        conn: Connection,
    },
    /// An impairer's counters.
    Impairer(ImpairStatsReader),
    /// A durable receiver's session counters (resumes, checkpoints, ...).
    DurableReceiver(ReceiverStatsReader),
}

/// Exports `source` until the returned guard is dropped; does nothing
/// unless `--metrics` is being served.
pub fn watch(source: Source) -> Watch {
    let Some(watched) = WATCHED.get() else {
        return Watch { id: None };
    };
    let id = watched.next_id.fetch_add(1, Ordering::Relaxed);
    watched.sources().push((id, source));
    Watch { id: Some(id) }
}

/// Stops exporting a [`Source`] when dropped.
#[derive(Debug)]
#[must_use = "the source is exported only while the guard lives"]
pub struct Watch {
    id: Option<u64>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let (Some(id), Some(watched)) = (self.id, WATCHED.get()) {
            watched.sources().retain(|(other, _)| *other != id);
        }
    }
}

/// The sources being exported, once `--metrics` is served.
static WATCHED: OnceLock<Arc<Watched>> = OnceLock::new();

/// What the exporter reads at each scrape.
#[derive(Default)]
struct Watched {
    next_id: AtomicU64,
    sources: Mutex<Vec<(u64, Source)>>,
}

impl Watched {
    fn sources(&self) -> MutexGuard<'_, Vec<(u64, Source)>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of every source, as metric families in first-seen order.
    fn families(&self) -> Vec<Family> {
        let mut out = Families::default();
        for (_, source) in self.sources().iter() {
            match source {
                Source::Endpoint(endpoint) => {
                    out.base_labels.clear();
                    endpoint.stats().visit(&mut out);
                }
                Source::Connection { role, conn } => {
                    out.base_labels = vec![
                        ("role".into(), (*role).into()),
                        ("remote".into(), conn.remote_addr().to_string()),
                    ];
                    conn.stats().visit(&mut out);
                }
                Source::Impairer(reader) => {
                    out.base_labels.clear();
                    reader.stats().visit(&mut out);
                }
                Source::DurableReceiver(reader) => {
                    out.base_labels.clear();
                    reader.stats().visit(&mut out);
                }
            }
        }
        out.families
    }
}

/// A label set of one sample.
type Labels = Vec<(String, String)>;

/// One exported metric family: its description and its samples.
#[derive(Debug)]
struct Family {
    name: String,
    metric: Metric,
    samples: Vec<(Labels, Sample)>,
}

/// One sample's value: a counter's or gauge's, or a whole histogram.
#[derive(Debug)]
enum Sample {
    Scalar(Value),
    Histogram(Histogram),
}

/// The [`StatsVisitor`] that groups samples by family (OpenMetrics wants a
/// family's samples together; paths and connections interleave them).
#[derive(Default)]
struct Families {
    families: Vec<Family>,
    index: HashMap<String, usize>,
    /// Labels of the source being visited.
    base_labels: Labels,
    /// Labels of the path being visited.
    path_labels: Labels,
}

impl Families {
    fn add(&mut self, metric: &Metric, value: Sample) {
        let name = format!("surelink_{}", metric.family);
        let mut labels = self.base_labels.clone();
        labels.extend(self.path_labels.iter().cloned());
        if let Some((key, val)) = metric.label {
            labels.push((key.into(), val.into()));
        }
        let index = *self.index.entry(name.clone()).or_insert_with(|| {
            self.families.push(Family {
                name,
                metric: *metric,
                samples: Vec::new(),
            });
            self.families.len() - 1
        });
        self.families[index].samples.push((labels, value));
    }
}

impl StatsVisitor for Families {
    fn counter(&mut self, metric: &Metric, value: u64) {
        self.add(metric, Sample::Scalar(Value::Integer(value)));
    }

    fn gauge(&mut self, metric: &Metric, value: Value) {
        self.add(metric, Sample::Scalar(value));
    }

    fn histogram(&mut self, metric: &Metric, value: &Histogram) {
        self.add(metric, Sample::Histogram(value.clone()));
    }

    fn path_start(&mut self, path: PathLabel) {
        self.path_labels = vec![
            ("path".into(), path.id.to_string()),
            ("path_remote".into(), path.remote.to_string()),
        ];
    }

    fn path_end(&mut self) {
        self.path_labels.clear();
    }
}

/// The registry's collector: encodes a fresh snapshot at every scrape.
struct Exporter {
    watched: Arc<Watched>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Collector for Exporter {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        encode_families(&self.watched.families(), encoder)
    }
}

/// Encodes `families`, values converted to their base unit.
fn encode_families(
    families: &[Family],
    mut encoder: DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    for family in families {
        let unit = family.metric.unit;
        let prom_unit = unit.base_suffix().map(|suffix| match suffix {
            "seconds" => PromUnit::Seconds,
            "bytes" => PromUnit::Bytes,
            other => PromUnit::Other(other.to_owned()),
        });
        let metric_type = match family.metric.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        };
        let mut metric_encoder = encoder.encode_descriptor(
            &family.name,
            family.metric.help,
            prom_unit.as_ref(),
            metric_type,
        )?;
        for (labels, value) in &family.samples {
            let sample = metric_encoder.encode_family(labels)?;
            match value {
                Sample::Scalar(value) => encode_scalar(sample, family.metric.kind, unit, *value)?,
                Sample::Histogram(histogram) => encode_histogram(sample, unit, histogram)?,
            }
        }
    }
    Ok(())
}

/// Encodes a counter's or a gauge's value, converted to the base unit.
fn encode_scalar(
    mut sample: MetricEncoder<'_>,
    kind: Kind,
    unit: Unit,
    value: Value,
) -> Result<(), std::fmt::Error> {
    // Whole numbers in a unit that needs no conversion stay whole.
    let whole = match value {
        Value::Integer(v) if unit.to_base(1.0) == 1.0 => Some(v),
        _ => None,
    };
    let base = unit.to_base(value.as_f64());
    match (kind, whole) {
        (Kind::Counter, Some(v)) => sample.encode_counter::<NoLabelSet, _, u64>(&v, None),
        (Kind::Counter, None) => sample.encode_counter::<NoLabelSet, _, u64>(&base, None),
        (_, Some(v)) => sample.encode_gauge(&v),
        (_, None) => sample.encode_gauge(&base),
    }
}

/// Encodes a histogram: its bounds and sum converted from `unit` to the
/// base unit, its buckets cumulative (the encoder sums each bucket's own
/// samples), the unbounded bucket as `le="+Inf"`.
fn encode_histogram(
    mut sample: MetricEncoder<'_>,
    unit: Unit,
    histogram: &Histogram,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = histogram
        .buckets()
        .map(|(bound, samples)| {
            let le = bound.map_or(f64::INFINITY, |b| unit.to_base(b as f64));
            (le, samples)
        })
        .collect();
    let sum = unit.to_base(histogram.sum_us() as f64);
    sample.encode_histogram::<NoLabelSet>(sum, histogram.count(), &buckets, None)
}

/// Answers scrapes until the process exits.
async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let registry = Arc::clone(&registry);
                tokio::spawn(async move {
                    if let Err(error) = answer(stream, &registry).await {
                        tracing::debug!(%peer, %error, "metrics request failed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let (status, content_type, body) = respond(&head, registry);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The request head (up to the blank line, at most [`MAX_REQUEST_HEAD`] bytes).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The status line, content type and body for a request head.
fn respond(head: &str, registry: &Registry) -> (&'static str, &'static str, String) {
    let mut request_line = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (request_line.next(), request_line.next());
    let text = "text/plain; charset=utf-8";
    if method != Some("GET") {
        return (
            "405 Method Not Allowed",
            text,
            "only GET is served\n".into(),
        );
    }
    let path = target.unwrap_or("").split('?').next().unwrap_or("");
    if path != "/metrics" {
        return ("404 Not Found", text, "metrics are at /metrics\n".into());
    }
    let openmetrics = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    });
    let mut body = String::new();
    let encoded = if openmetrics {
        prometheus_client::encoding::text::encode(&mut body, registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, registry)
    };
    match encoded {
        Ok(()) if openmetrics => ("200 OK", OPENMETRICS_CONTENT_TYPE, body),
        Ok(()) => (
            "200 OK",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            body,
        ),
        Err(_) => (
            "500 Internal Server Error",
            text,
            "cannot encode the metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_parse::{Scrape, Value as Parsed};
    use surelink::{ConnectionStats, PathStats};

    use super::*;

    /// Encodes a fixed list of families through the exporter's encoding.
    #[derive(Debug)]
    struct Fixed(Vec<Family>);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            encode_families(&self.0, encoder)
        }
    }

    /// A registry exporting `stats` as a sender's connection.
    fn registry_for(stats: &ConnectionStats) -> Registry {
        let mut families = Families {
            base_labels: vec![("role".into(), "send".into())],
            ..Families::default()
        };
        stats.visit(&mut families);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(families.families)));
        registry
    }

    fn sample<'a>(scrape: &'a Scrape, name: &str, label: Option<(&str, &str)>) -> &'a Parsed {
        &scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
            .value
    }

    #[test]
    fn a_snapshot_is_exported_in_base_units_with_its_paths_labelled() {
        let mut stats = ConnectionStats::default();
        stats.rtt = Duration::from_micros(20_500);
        stats.packets_sent = 123;
        stats.bytes_sent = 4567;
        stats.latency_p99_us = 31_000;
        stats.paths.push(PathStats {
            id: surelink::PathId(1),
            addr: surelink::proto::conn::PathAddr {
                local: 0,
                remote: ([127, 0, 0, 1], 9001).into(),
            },
            state: surelink::PathState::Active,
            rtt: Duration::from_millis(30),
            phi: 0.0,
            cwnd: 0,
            packets_sent: 0,
            packets_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
            packets_lost: 9,
            spurious_losses: 0,
            latest_rtt: Duration::from_millis(30),
            min_rtt: Duration::from_millis(29),
            reordering_distance: 0,
            reordering_window: Duration::from_millis(7),
        });
        let registry = registry_for(&stats);

        let (status, content_type, body) = respond("GET /metrics HTTP/1.1\r\n\r\n", &registry);
        assert_eq!(status, "200 OK");
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parses");
        assert_eq!(
            sample(&scrape, "surelink_packets_sent_total", None),
            &Parsed::Counter(123.0)
        );
        assert_eq!(
            sample(&scrape, "surelink_sent_bytes_total", None),
            &Parsed::Counter(4567.0)
        );
        assert_eq!(
            sample(&scrape, "surelink_rtt_seconds", None),
            &Parsed::Gauge(0.0205)
        );
        assert_eq!(
            sample(
                &scrape,
                "surelink_message_latency_seconds",
                Some(("quantile", "0.99"))
            ),
            &Parsed::Gauge(0.031)
        );
        assert_eq!(
            sample(
                &scrape,
                "surelink_path_packets_lost_total",
                Some(("path", "1"))
            ),
            &Parsed::Counter(9.0)
        );
        let path_rtt = scrape
            .samples
            .iter()
            .find(|s| s.metric == "surelink_path_rtt_seconds")
            .expect("path rtt");
        assert_eq!(path_rtt.labels.get("path_remote"), Some("127.0.0.1:9001"));
        assert_eq!(path_rtt.labels.get("role"), Some("send"));
    }

    #[test]
    fn openmetrics_is_served_to_clients_that_accept_it() {
        let mut stats = ConnectionStats::default();
        for us in [300, 800, 2_000_000] {
            stats.latency_histogram.record_us(us);
        }
        let registry = registry_for(&stats);
        let (status, content_type, body) = respond(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
            &registry,
        );
        assert_eq!((status, content_type), ("200 OK", OPENMETRICS_CONTENT_TYPE));
        assert!(
            body.contains("# TYPE surelink_packets_sent counter\n"),
            "{body}"
        );
        assert!(
            body.contains("\nsurelink_packets_sent_total{role=\"send\"} 0\n"),
            "{body}"
        );
        assert!(
            body.contains("# UNIT surelink_rtt_seconds seconds\n"),
            "{body}"
        );
        // A real histogram, in seconds, cumulative.
        for line in [
            "# TYPE surelink_one_way_latency_seconds histogram",
            "surelink_one_way_latency_seconds_count{role=\"send\"} 3",
            "surelink_one_way_latency_seconds_sum{role=\"send\"} 2.0011",
            "surelink_one_way_latency_seconds_bucket{le=\"0.0005\",role=\"send\"} 1",
            "surelink_one_way_latency_seconds_bucket{le=\"0.001\",role=\"send\"} 2",
            "surelink_one_way_latency_seconds_bucket{le=\"2.5\",role=\"send\"} 3",
            "surelink_one_way_latency_seconds_bucket{le=\"+Inf\",role=\"send\"} 3",
            "surelink_rtt_sample_seconds_count{role=\"send\"} 0",
        ] {
            assert!(body.lines().any(|l| l == line), "no {line:?} in {body}");
        }
        assert_eq!(body.lines().last(), Some("# EOF"));
    }

    #[test]
    fn requests_other_than_get_metrics_are_refused() {
        let registry = Registry::default();
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n\r\n", &registry).0,
            "405 Method Not Allowed"
        );
        assert_eq!(
            respond("GET / HTTP/1.1\r\n\r\n", &registry).0,
            "404 Not Found"
        );
        assert_eq!(respond("", &registry).0, "405 Method Not Allowed");
    }
}
