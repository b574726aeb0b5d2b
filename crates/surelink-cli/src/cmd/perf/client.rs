//! `surelink perf client`: opens `--connections` connections from
//! `--drivers` endpoints, round-robin (at most [`CONNECT_CONCURRENCY`]
//! handshakes at a time), then sends
//! on all of them for `--duration`, at `--rate` messages per second each
//! (starts spread evenly over one interval) or unbounded. Each connection
//! then sends its [`Finished`], takes the server's report and closes; the
//! figures of all connections are summed (latencies merged into one
//! histogram) and printed.
//! A session that fails after connecting is counted (`sessions_failed`)
//! and the run goes on; the figures of the others are printed, then the
//! first failure is the command's error.
//!
//! Messages/s and MiB/s are what the server received over the span from its
//! first to its last data message (one clock, the server's). Latency is the
//! server's one-way latency of each message: its arrival minus the send time,
//! mapped onto the server's clock by its estimate of ours.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use surelink::{Connection, Endpoint, EndpointConfig, ProtocolConfig};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::report::{
    latency_histogram, CompactLatencies, Finished, ServerReport, Usage, CONTROL_CHANNEL,
};
use super::ClientArgs;
use crate::args::wildcard_for;

/// Handshakes in progress at once while connecting.
const CONNECT_CONCURRENCY: usize = 256;
/// Bound on the end-of-test exchange and close of a connection, after sending.
const FINISH_LIMIT: Duration = Duration::from_secs(60);

/// What one connection brought back.
struct ConnectionResult {
    sent: u64,
    retransmissions: u64,
    /// Packets the client declared lost.
    packets_lost: u64,
    /// Of those, packets acknowledged after all (spurious losses).
    spurious_losses: u64,
    report: ServerReport,
}

/// Runs `surelink perf client`.
pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!(crate::exit::UsageError(
            "--connections must be at least 1".into()
        ));
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate >= 0.0) {
            bail!(crate::exit::UsageError(format!(
                "--rate must be a number of messages per second, 0 or more, not {rate}"
            )));
        }
    }
    let remote = args.to.resolve().await?;
    let protocol = ProtocolConfig {
        max_connections: args.connections,
        ..ProtocolConfig::default()
    };
    let bind = wildcard_for(remote);
    let config = EndpointConfig::default().with_protocol(protocol);
    let endpoints = (0..args.drivers)
        .map(|_| Endpoint::client_with_config(bind, config.clone()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot bind {bind}"))?;
    let connect_started = Instant::now();
    let connections = connect_all(&endpoints, remote, args.connections)
        .await
        .with_context(|| format!("cannot connect to {}", args.to))?;
    let connect_time = connect_started.elapsed();

    let usage_before = Usage::now();
    let started = Instant::now();
    let deadline = started + args.duration;
    let payload = Bytes::from(vec![0u8; args.size]);
    let count = connections.len();
    // Each connection adds the server's latencies to this one histogram as
    // soon as it has them: a histogram per connection held until joined
    // took ~180 KiB per session.
    let histogram = Arc::new(Mutex::new(latency_histogram()));
    let mut tasks = JoinSet::new();
    for (index, conn) in connections.into_iter().enumerate() {
        // Rate-limited connections start spread evenly over one interval;
        // at rate 0 the first send is past the deadline: the connection idles.
        let pacing = args.rate.map(|rate| {
            if rate == 0.0 {
                return (args.duration, args.duration);
            }
            let interval = Duration::from_secs_f64(1.0 / rate);
            (interval, interval.mul_f64(index as f64 / count as f64))
        });
        tasks.spawn(exercise(
            conn,
            payload.clone(),
            started,
            deadline,
            pacing,
            Arc::clone(&histogram),
        ));
    }
    let mut results = Vec::with_capacity(count);
    // Sessions that ended with an error after connecting: counted, and the
    // first one's error is the run's, once the figures are printed.
    let mut failed = 0usize;
    let mut first_failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a connection task failed")? {
            Ok(result) => results.push(result),
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    let elapsed = started.elapsed();
    let usage_after = Usage::now();
    drop(endpoints);
    let histogram = std::mem::replace(
        &mut *histogram.lock().unwrap_or_else(PoisonError::into_inner),
        latency_histogram(),
    );

    let summary = summarise(
        &args,
        &results,
        failed,
        &histogram,
        (connect_time, elapsed),
        usage_before,
        usage_after,
    );
    if args.json {
        println!("{summary}");
    } else {
        print!("{}", summary_text(&summary));
    }
    match first_failure {
        Some(e) => Err(e.context(format!(
            "{failed} of {count} sessions failed after connecting; the first"
        ))),
        None => Ok(()),
    }
}

/// Opens `count` connections, round-robin over `endpoints`, at most
/// [`CONNECT_CONCURRENCY`] handshakes at once.
async fn connect_all(
    endpoints: &[Endpoint],
    remote: std::net::SocketAddr,
    count: usize,
) -> anyhow::Result<Vec<Connection>> {
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            endpoint.connect(remote).await
        });
    }
    let mut connections = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        connections.push(joined.context("a connect task failed")??);
    }
    Ok(connections)
}

/// Sends on one connection until `deadline`, then finishes it with the
/// server and adds the server's latencies to `histogram`.
/// `pacing` is (interval, first send's offset from `started`) for a rate,
/// `None` for unbounded. A paced connection sends on a fixed schedule (a late
/// send is followed by the next ones at once), so it sends the same count
/// however busy the machine is.
async fn exercise(
    conn: Connection,
    payload: Bytes,
    started: Instant,
    deadline: Instant,
    pacing: Option<(Duration, Duration)>,
    histogram: Arc<Mutex<Histogram<u64>>>,
) -> anyhow::Result<ConnectionResult> {
    let mut sent = 0u64;
    match pacing {
        Some((interval, offset)) => {
            let mut next = started + offset;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                conn.send(payload.clone()).await?;
                sent += 1;
                next += interval;
            }
            // Every paced connection stays open for the whole duration.
            tokio::time::sleep_until(deadline.into()).await;
        }
        None => {
            while Instant::now() < deadline {
                conn.send(payload.clone()).await?;
                sent += 1;
            }
        }
    }
    let finish = async {
        conn.send_on(CONTROL_CHANNEL, Finished { sent }.encode())
            .await?;
        let report = ServerReport::decode(&next_control(&conn).await?)
            .context("bad report from the server")?;
        CompactLatencies::decode(&next_control(&conn).await?)
            .context("bad latencies from the server")?
            .add_to(&mut histogram.lock().unwrap_or_else(PoisonError::into_inner));
        let stats = conn.stats();
        conn.close().await?;
        anyhow::Ok(ConnectionResult {
            sent,
            retransmissions: stats.retransmissions,
            packets_lost: stats.packets_lost,
            spurious_losses: stats.spurious_losses,
            report,
        })
    };
    tokio::time::timeout(FINISH_LIMIT, finish)
        .await
        .map_err(|_| anyhow!("the server did not report within {FINISH_LIMIT:?}"))?
}

/// The next message from the server (all of them are on the control channel).
async fn next_control(conn: &Connection) -> anyhow::Result<Bytes> {
    match conn.recv_message().await? {
        Some(m) if m.channel == CONTROL_CHANNEL => Ok(m.data),
        Some(m) => bail!(
            "unexpected message from the server on channel {}",
            m.channel
        ),
        None => bail!("the server closed before reporting"),
    }
}

/// The figures of all connections as one JSON object.
fn summarise(
    args: &ClientArgs,
    results: &[ConnectionResult],
    sessions_failed: usize,
    histogram: &Histogram<u64>,
    (connect_time, elapsed): (Duration, Duration),
    before: Usage,
    after: Usage,
) -> Value {
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    let received: u64 = results.iter().map(|r| r.report.messages).sum();
    let bytes: u64 = results.iter().map(|r| r.report.bytes).sum();
    let retransmissions: u64 = results.iter().map(|r| r.retransmissions).sum();
    let packets_lost: u64 = results.iter().map(|r| r.packets_lost).sum();
    let spurious_losses: u64 = results.iter().map(|r| r.spurious_losses).sum();
    let first = results
        .iter()
        .filter(|r| r.report.messages > 0)
        .map(|r| r.report.first_us)
        .min();
    let last = results.iter().map(|r| r.report.last_us).max();
    // The server's receive span; the send time if it received one message or none.
    let span_s = match (first, last) {
        (Some(first), Some(last)) if last > first => (last - first) as f64 / 1e6,
        _ => elapsed.as_secs_f64(),
    };
    let server_cpu_s = results
        .iter()
        .map(|r| r.report.usage.cpu_s)
        .fold(f64::NAN, f64::max)
        - results
            .iter()
            .map(|r| r.report.cpu_s_at_accept)
            .fold(f64::NAN, f64::min);
    let server_peaks = results.iter().map(|r| r.report.usage.peak_rss_kib);
    let server_peak = server_peaks.clone().max().unwrap_or(0);
    // When the first connection finished: before the others took their
    // end-of-test messages (and made their latency histograms).
    let server_peak_first = server_peaks.min().unwrap_or(0);
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1e3;
    let connections = results.len() + sessions_failed;
    json!({
        "connections": connections,
        "sessions_failed": sessions_failed,
        "client_drivers": args.drivers,
        "size": args.size,
        "rate_per_connection": args.rate,
        "duration_s": args.duration.as_secs_f64(),
        "connect_s": connect_time.as_secs_f64(),
        "messages_sent": sent,
        "messages_received": received,
        "lost": sent.saturating_sub(received),
        "retransmissions": retransmissions,
        "packets_lost": packets_lost,
        "spurious_losses": spurious_losses,
        "bytes_received": bytes,
        "receive_span_s": span_s,
        "messages_per_s": received as f64 / span_s,
        "mib_per_s": bytes as f64 / span_s / (1u64 << 20) as f64,
        "latency_ms": {
            "samples": histogram.len(),
            "p50": ms(0.5),
            "p90": ms(0.9),
            "p99": ms(0.99),
            "p999": ms(0.999),
            "max": histogram.max() as f64 / 1e3,
        },
        "client": {
            "cpu_s": after.cpu_s - before.cpu_s,
            "peak_rss_kib": after.peak_rss_kib,
            "wall_s": elapsed.as_secs_f64(),
        },
        "server": {
            "cpu_s": server_cpu_s,
            "peak_rss_kib": server_peak,
            "peak_rss_kib_first_report": server_peak_first,
            // An upper bound on a session's memory: the process's own
            // (runtime, buffers) is counted in it too.
            "peak_rss_kib_per_connection": server_peak as f64 / connections.max(1) as f64,
        },
    })
}

/// The summary for people.
fn summary_text(s: &Value) -> String {
    let rate = match s["rate_per_connection"].as_f64() {
        Some(rate) => format!("{rate} msg/s per connection"),
        None => "unbounded rate".to_owned(),
    };
    let l = &s["latency_ms"];
    let mib = |kib: &Value| kib.as_f64().unwrap_or(0.0) / 1024.0;
    let wall = s["client"]["wall_s"].as_f64().unwrap_or(f64::NAN);
    format!(
        "surelink perf: {} connections ({} client drivers, all connected in {:.2} s; {} failed after connecting), {}-byte messages, {rate}, {} s\n\
         \x20 messages    sent {}  received {}  lost {}  retransmissions {}\n\
         \x20 packets     declared lost {}, of which acknowledged after all (spurious) {}\n\
         \x20 throughput  {:.0} msg/s  {:.2} MiB/s  (received, over {:.2} s)\n\
         \x20 latency     p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (one way, {} messages)\n\
         \x20 cpu         client {:.2} s ({:.0} % of one core)  server {:.2} s\n\
         \x20 memory      client peak {:.1} MiB  server peak {:.1} MiB ({:.1} KiB per connection)\n",
        s["connections"],
        s["client_drivers"],
        s["connect_s"].as_f64().unwrap_or(0.0),
        s["sessions_failed"],
        s["size"],
        s["duration_s"],
        s["messages_sent"],
        s["messages_received"],
        s["lost"],
        s["retransmissions"],
        s["packets_lost"],
        s["spurious_losses"],
        s["messages_per_s"].as_f64().unwrap_or(0.0),
        s["mib_per_s"].as_f64().unwrap_or(0.0),
        s["receive_span_s"].as_f64().unwrap_or(0.0),
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["p999"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0),
        l["samples"],
        s["client"]["cpu_s"].as_f64().unwrap_or(0.0),
        s["client"]["cpu_s"].as_f64().unwrap_or(0.0) / wall * 100.0,
        s["server"]["cpu_s"].as_f64().unwrap_or(0.0),
        mib(&s["client"]["peak_rss_kib"]),
        mib(&s["server"]["peak_rss_kib"]),
        s["server"]["peak_rss_kib_per_connection"]
            .as_f64()
            .unwrap_or(0.0),
    )
}
