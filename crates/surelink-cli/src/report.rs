//! `--stats-interval`: a JSON line of connection counters on stderr; the
//! connection's events (path failures, failover, clock steps) in the log; and
//! [`stats_json`], any stats snapshot as JSON by its schema.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Map, Value};
use surelink::stats_schema::{self, Metric, PathLabel, StatsVisitor, VisitStats};
use surelink::{Connection, ConnectionEvent, PathId};

use crate::failover_log::{FailoverLine, FailoverLog};

/// Options shared by the subcommands that run connections.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Print a JSON line of connection statistics on stderr this often (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = crate::args::parse_duration)]
    pub stats_interval: Option<Duration>,
    #[command(flatten)]
    pub metrics: crate::metrics::MetricsArgs,
}

/// One JSON object (as a single line) describing `conn` now: every
/// statistic of the connection under its schema key (see [`stats_json`]),
/// with the role, the peer, the time since `started`, the playout delay and
/// the bytes not yet acknowledged.
pub fn stats_line(role: &str, conn: &Connection, started: Instant) -> String {
    let mut object = stats_json(&conn.stats());
    object.insert("role".into(), json!(role));
    object.insert("remote".into(), json!(conn.remote_addr().to_string()));
    object.insert("elapsed_s".into(), json!(started.elapsed().as_secs_f64()));
    object.insert(
        "playout_delay_ms".into(),
        json!(crate::delivery::playout_delay().map(|d| d.as_secs_f64() * 1e3)),
    );
    object.insert("unacked_bytes".into(), json!(conn.unacked_bytes()));
    object.entry("paths").or_insert_with(|| json!([]));
    Value::Object(object).to_string()
}

/// A stats snapshot as a JSON object: each metric under its
/// [`key`](surelink::stats_schema::Metric::key), whole numbers as integers;
/// a histogram compactly as `{"count": N, "sum": S, "buckets": {"LE": n, …}}`
/// (sum and bounds in the key's unit, `"+Inf"` for the last bucket, only the
/// buckets holding samples, each with its own samples, not cumulative); the
/// paths, if any, as a `paths` array of objects (`id`, `remote`, `state` and
/// the path's metrics).
pub fn stats_json(stats: &impl VisitStats) -> Map<String, Value> {
    let mut out = JsonStats::default();
    stats.visit(&mut out);
    if !out.paths.is_empty() {
        out.object.insert("paths".into(), Value::Array(out.paths));
    }
    out.object
}

/// The [`StatsVisitor`] behind [`stats_json`].
#[derive(Default)]
struct JsonStats {
    object: Map<String, Value>,
    paths: Vec<Value>,
    /// The path being visited.
    path: Option<Map<String, Value>>,
}

impl JsonStats {
    fn insert(&mut self, key: &str, value: Value) {
        self.path
            .as_mut()
            .unwrap_or(&mut self.object)
            .insert(key.to_owned(), value);
    }
}

impl StatsVisitor for JsonStats {
    fn counter(&mut self, metric: &Metric, value: u64) {
        self.insert(metric.key, json!(value));
    }

    fn gauge(&mut self, metric: &Metric, value: stats_schema::Value) {
        let value = match value {
            stats_schema::Value::Integer(v) => json!(v),
            stats_schema::Value::Real(v) => json!(v),
        };
        self.insert(metric.key, value);
    }

    fn histogram(&mut self, metric: &Metric, value: &stats_schema::Histogram) {
        let buckets: Map<String, Value> = value
            .buckets()
            .filter(|(_, samples)| *samples > 0)
            .map(|(bound, samples)| {
                let le = bound.map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                (le, json!(samples))
            })
            .collect();
        self.insert(
            metric.key,
            json!({"count": value.count(), "sum": value.sum_us(), "buckets": buckets}),
        );
    }

    fn path_start(&mut self, path: PathLabel) {
        let mut object = Map::new();
        object.insert("id".into(), json!(path.id));
        object.insert("remote".into(), json!(path.remote.to_string()));
        object.insert("state".into(), json!(format!("{:?}", path.state)));
        self.path = Some(object);
    }

    fn path_end(&mut self) {
        if let Some(object) = self.path.take() {
            self.paths.push(Value::Object(object));
        }
    }
}

/// Logs `conn`'s events (path changes, failover, skipped messages, clock
/// steps), exports its statistics with `--metrics` and, with an `interval`,
/// prints a stats line that often, until the returned guard is dropped.
pub fn spawn_reporter(
    interval: Option<Duration>,
    role: &'static str,
    conn: &Connection,
) -> Reporter {
    let watch = crate::metrics::watch(crate::metrics::Source::Connection {
        role,
        conn: conn.clone(),
    });
    let mut tasks = vec![tokio::spawn(log_events(conn.clone()))];
    if let Some(interval) = interval {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", stats_line(role, &conn, started));
            }
        }));
    }
    Reporter {
        tasks,
        _watch: watch,
    }
}

/// Logs each event of `conn` until it ends: path failures and recoveries at
/// `warn` (visible by default, so a recovery is seen wherever the failure
/// was), data moving to another path at `warn` once per burst of moves
/// ([`FailoverLog`]), new paths at `info`, skipped messages at `debug` (they
/// are counted in the stats).
async fn log_events(conn: Connection) {
    let remote_of = |id: PathId| {
        conn.path_stats()
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.addr.remote.to_string())
            .unwrap_or_default()
    };
    let mut failovers = FailoverLog::default();
    loop {
        let settle = failovers.deadline();
        let event = tokio::select! {
            event = conn.next_event() => event,
            () = sleep_until(settle), if settle.is_some() => {
                if let Some(line) = failovers.settle(Instant::now()) {
                    log_failover(&line, &remote_of);
                }
                continue;
            }
        };
        let Some(event) = event else { break };
        match event {
            ConnectionEvent::PathUp(id) => {
                tracing::info!(path = id.0, remote = remote_of(id), "path up")
            }
            ConnectionEvent::PathSuspect(id) => {
                tracing::warn!(path = id.0, remote = remote_of(id), "path suspect")
            }
            ConnectionEvent::PathDown(id) => {
                tracing::warn!(path = id.0, remote = remote_of(id), "path down")
            }
            ConnectionEvent::PathRecovered(id) => {
                tracing::warn!(path = id.0, remote = remote_of(id), "path recovered")
            }
            ConnectionEvent::FailedOver { from, to } => {
                if let Some(line) = failovers.on_move(Instant::now(), from.0, to.0) {
                    log_failover(&line, &remote_of);
                }
            }
            ConnectionEvent::ConnectionLost => {
                tracing::warn!("every path is down; probing until the idle timeout")
            }
            ConnectionEvent::ClockStep => {
                tracing::warn!("the peer's clock stepped; clock estimate restarted")
            }
            ConnectionEvent::Skipped { channel, from, to } => {
                tracing::debug!(channel, from, to, "messages skipped past their deadline")
            }
            other => tracing::trace!(?other, "connection event"),
        }
    }
}

/// Logs a line of the failover fold (see [`crate::failover_log`]).
fn log_failover(line: &FailoverLine, remote_of: &impl Fn(PathId) -> String) {
    match *line {
        FailoverLine::Moved { from, to } => tracing::warn!(
            from,
            to,
            remote = remote_of(PathId(to)),
            "data moved to another path"
        ),
        FailoverLine::Settled { on, moves } => tracing::warn!(
            path = on,
            moves,
            remote = remote_of(PathId(on)),
            "data settled on another path after moving back and forth"
        ),
    }
}

/// Sleeps until `deadline` (for ever if there is none; only polled with one).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Stops the event log, the periodic report and the export when dropped.
#[derive(Debug)]
pub struct Reporter {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Keeps the connection in the `--metrics` export.
    _watch: crate::metrics::Watch,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
