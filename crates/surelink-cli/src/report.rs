//! `--stats-interval`: a JSON line of connection counters on stderr; and the
//! connection's events (path failures, failover, clock steps) in the log.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use surelink::{Connection, ConnectionEvent, PathId};

/// Options shared by the subcommands that run connections.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Print a JSON line of connection statistics on stderr this often (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = crate::args::parse_duration)]
    pub stats_interval: Option<Duration>,
}

/// One JSON object (as a single line) describing `conn` now.
pub fn stats_line(role: &str, conn: &Connection, started: Instant) -> String {
    let s = conn.stats();
    let clock = conn.clock_estimate();
    let paths: Vec<serde_json::Value> = s.paths.iter().map(path_json).collect();
    json!({
        "role": role,
        "remote": conn.remote_addr().to_string(),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "rtt_ms": s.rtt.as_secs_f64() * 1e3,
        "min_rtt_ms": s.min_rtt.as_secs_f64() * 1e3,
        "cwnd": s.cwnd,
        "bytes_in_flight": s.bytes_in_flight,
        "packets_sent": s.packets_sent,
        "packets_received": s.packets_received,
        "bytes_sent": s.bytes_sent,
        "bytes_received": s.bytes_received,
        "packets_lost": s.packets_lost,
        "retransmissions": s.retransmissions,
        "retransmission_rate": s.retransmission_rate(),
        "probe_timeouts": s.probe_timeouts,
        "duplicate_packets": s.duplicate_packets,
        "duplicate_fragments": s.duplicate_fragments,
        "malformed_packets": s.malformed_packets,
        "messages_sent": s.messages_sent,
        "messages_acked": s.messages_acked,
        "messages_delivered": s.messages_delivered,
        "messages_skipped": s.messages_skipped,
        "messages_late": s.messages_late,
        "messages_abandoned": s.messages_abandoned,
        "last_chance_copies": s.last_chance_copies,
        "fec_source_packets": s.fec_source_packets,
        "fec_repair_packets_sent": s.fec_repair_packets_sent,
        "fec_repair_bytes_sent": s.fec_repair_bytes_sent,
        "fec_recovered_packets": s.fec_recovered_packets,
        "latency_p50_us": s.latency_p50_us,
        "latency_p99_us": s.latency_p99_us,
        "latency_p999_us": s.latency_p999_us,
        "latency_max_us": s.latency_max_us,
        "playout_delay_ms": crate::delivery::playout_delay().map(|d| d.as_secs_f64() * 1e3),
        "unacked_bytes": conn.unacked_bytes(),
        "clock_offset_us": clock.map(|c| c.offset_us),
        "clock_error_bound_us": clock.map(|c| c.error_bound_us),
        "clock_drift_ppm": clock.map(|c| c.drift_ppm),
        "clock_delay_us": clock.map(|c| c.delay_us),
        "clock_samples": clock.map(|c| c.samples),
        "paths": paths,
    })
    .to_string()
}

/// Logs `conn`'s events (path changes, failover, skipped messages, clock
/// steps) and, with an `interval`, prints a stats line that often, until the
/// returned guard is dropped.
pub fn spawn_reporter(
    interval: Option<Duration>,
    role: &'static str,
    conn: &Connection,
) -> Reporter {
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
    Reporter { tasks }
}

/// Logs each event of `conn` until it ends: path failures and recoveries at
/// `warn` (visible by default, so a recovery is seen wherever the failure
/// was), new paths at `info`, skipped messages at `debug` (they are counted
/// in the stats).
async fn log_events(conn: Connection) {
    let remote_of = |id: PathId| {
        conn.path_stats()
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.addr.remote.to_string())
            .unwrap_or_default()
    };
    while let Some(event) = conn.next_event().await {
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
            ConnectionEvent::FailedOver { from, to } => tracing::warn!(
                from = from.0,
                to = to.0,
                remote = remote_of(to),
                "data moved to another path"
            ),
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

/// Stops the event log and the periodic report when dropped.
#[derive(Debug)]
pub struct Reporter {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One path's figures, for the `paths` array of the stats line.
fn path_json(p: &surelink::PathStats) -> serde_json::Value {
    json!({
        "id": p.id.0,
        "remote": p.addr.remote.to_string(),
        "state": format!("{:?}", p.state),
        "rtt_ms": p.rtt.as_secs_f64() * 1e3,
        "phi": p.phi,
        "cwnd": p.cwnd,
        "packets_sent": p.packets_sent,
        "packets_received": p.packets_received,
        "bytes_sent": p.bytes_sent,
        "bytes_received": p.bytes_received,
        "packets_lost": p.packets_lost,
    })
}
