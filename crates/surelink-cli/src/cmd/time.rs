//! `surelink time`: a time reference service over surelink.
//!
//! `surelink time serve --listen ADDR` accepts connections and keeps them
//! open; it does nothing else. The clock exchange is the protocol's own: every
//! connection piggybacks NTP-style four-timestamp PING/PONG exchanges on its
//! heartbeats (every 20 ms: the querying side does not back them off), and
//! both sides timestamp with their wall clock
//! (µs since the Unix epoch), so each side's
//! [`Connection::clock_estimate`] is the wall-clock offset between the hosts.
//!
//! `surelink time query ADDR` connects, waits until the estimate rests on
//! `--count` samples (bounded by `--timeout`), prints the server's clock
//! offset from ours (positive: the server is ahead), its error bound, the
//! round-trip delay of the best sample and the drift, then closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::json;
use surelink::{ClockEstimate, Connection, Endpoint, EndpointConfig, ProtocolConfig};

use crate::args::{parse_duration, parse_host_port, wildcard_for, HostPort};

/// Arguments of `surelink time`.
#[derive(Debug, Args)]
pub struct TimeArgs {
    #[command(subcommand)]
    pub command: TimeCommand,
}

/// The `time` subcommands.
#[derive(Debug, Subcommand)]
pub enum TimeCommand {
    /// Serve as a time reference: accept connections and keep them alive so clients can sample this clock.
    Serve(ServeArgs),
    /// Measure a time server's clock offset from ours.
    Query(QueryArgs),
}

/// Arguments of `surelink time serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT (port 0 picks a free port; the address is printed on stderr).
    #[arg(long, value_name = "ADDR", value_parser = parse_host_port)]
    pub listen: HostPort,
}

/// Arguments of `surelink time query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The time server (`surelink time serve`), HOST:PORT.
    #[arg(value_name = "ADDR", value_parser = parse_host_port)]
    pub server: HostPort,
    /// Clock samples to wait for (one per heartbeat, every 20 ms).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub count: u64,
    /// Give up waiting for samples (and for the connection) after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Local address to query from (default: any address, any port).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// How often `query` looks at the estimate while waiting.
const POLL: Duration = Duration::from_millis(10);

/// Runs `surelink time`.
pub async fn run(args: TimeArgs) -> anyhow::Result<()> {
    match args.command {
        TimeCommand::Serve(args) => serve(args).await,
        TimeCommand::Query(args) => query(args).await,
    }
}

/// `surelink time serve`: keeps every connection open until the client leaves.
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    crate::shutdown::install();
    let listen = args.listen.resolve().await?;
    let endpoint = Endpoint::bind(listen, EndpointConfig::default())
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("surelink time: serving on {}", endpoint.local_addr());
    let accept_loop = async {
        while let Some(conn) = endpoint.accept().await {
            tokio::spawn(keep_alive(conn));
        }
    };
    tokio::select! {
        () = accept_loop => bail!("the endpoint stopped accepting connections"),
        () = crate::shutdown::signal() => {
            tracing::info!("stopping");
            Ok(())
        }
    }
}

/// Holds a client's connection until it closes; anything it sends is discarded.
async fn keep_alive(conn: Connection) {
    let remote = conn.remote_addr();
    tracing::info!(%remote, "time client connected");
    loop {
        match conn.recv().await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::info!(%remote, "time client left");
                return;
            }
            Err(e) => {
                tracing::info!(%remote, "time client lost: {e}");
                return;
            }
        }
    }
}

/// `surelink time query`.
async fn query(args: QueryArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!(crate::exit::UsageError("--count must be at least 1".into()));
    }
    let started = Instant::now();
    let remote = args.server.resolve().await?;
    // The samples are this side's PING/PONG exchanges: keep heartbeats at
    // their base interval instead of backing them off on the idle path.
    let mut protocol = ProtocolConfig::default();
    protocol.heartbeat_max_interval = protocol.heartbeat_interval;
    let config = EndpointConfig::default()
        .with_protocol(protocol)
        .with_connect_timeout(args.timeout);
    let bind = args.bind.unwrap_or_else(|| wildcard_for(remote));
    let endpoint = Endpoint::client_with_config(bind, config)
        .with_context(|| format!("cannot bind {bind}"))?;
    let conn = endpoint
        .connect(remote)
        .await
        .with_context(|| format!("cannot connect to {}", args.server))?;

    let deadline = tokio::time::Instant::from_std(started) + args.timeout;
    let estimate = wait_for_samples(&conn, args.count, deadline).await;
    let elapsed = started.elapsed();

    // Leave politely; the result does not depend on it.
    if tokio::time::timeout(Duration::from_secs(2), conn.close())
        .await
        .is_err()
    {
        tracing::debug!("close did not complete within 2 s");
    }
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;

    let estimate = estimate?;
    if estimate.samples < args.count {
        eprintln!(
            "surelink time: warning: only {} of {} samples within {:?}",
            estimate.samples, args.count, args.timeout
        );
    }
    if args.json {
        println!("{}", result_json(&args.server, remote, &estimate, elapsed));
    } else {
        println!("{}", result_text(&args.server, &estimate));
    }
    Ok(())
}

/// Waits until the estimate has `count` samples or `deadline` passes; the
/// latest estimate, or an error if there is none (or the connection ended).
async fn wait_for_samples(
    conn: &Connection,
    count: u64,
    deadline: tokio::time::Instant,
) -> anyhow::Result<ClockEstimate> {
    let mut tick = tokio::time::interval(POLL);
    loop {
        let estimate = conn.clock_estimate();
        if estimate.is_some_and(|e| e.samples >= count) {
            return Ok(estimate.expect("checked"));
        }
        if tokio::time::Instant::now() >= deadline {
            return estimate.ok_or_else(|| anyhow!("no clock sample from the server in time"));
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(deadline) => {}
            ended = conn.closed() => {
                return Err(match ended {
                    Some(e) => anyhow!(e).context("the connection to the time server failed"),
                    None => anyhow!("the time server closed the connection"),
                });
            }
        }
    }
}

/// `offset +0.012 ms ± 0.150 ms, delay 0.080 ms, drift +0.0 ppm (50 samples) …`
fn result_text(server: &HostPort, e: &ClockEstimate) -> String {
    format!(
        "{server}: offset {:+.3} ms ± {:.3} ms, delay {:.3} ms, drift {:+.1} ppm ({} samples; positive: the server's clock is ahead of ours)",
        e.offset_us / 1e3,
        e.error_bound_us / 1e3,
        e.delay_us / 1e3,
        e.drift_ppm,
        e.samples
    )
}

fn result_json(
    server: &HostPort,
    addr: SocketAddr,
    e: &ClockEstimate,
    elapsed: Duration,
) -> serde_json::Value {
    json!({
        "server": server.to_string(),
        "server_addr": addr.to_string(),
        "offset_us": e.offset_us,
        "offset_ms": e.offset_us / 1e3,
        "error_bound_us": e.error_bound_us,
        "delay_us": e.delay_us,
        "drift_ppm": e.drift_ppm,
        "samples": e.samples,
        "steps": e.steps,
        "elapsed_s": elapsed.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_reads_like_the_docs() {
        let e = ClockEstimate {
            offset_us: 12.0,
            error_bound_us: 150.0,
            drift_ppm: 0.0,
            delay_us: 80.0,
            samples: 50,
            steps: 0,
        };
        let text = result_text(&HostPort("h:1".into()), &e);
        assert!(
            text.starts_with("h:1: offset +0.012 ms ± 0.150 ms, delay 0.080 ms, drift +0.0 ppm"),
            "{text}"
        );
        let v = result_json(
            &HostPort("h:1".into()),
            "127.0.0.1:1".parse().expect("addr"),
            &e,
            Duration::from_secs(1),
        );
        assert_eq!(v["samples"], 50);
        assert_eq!(v["offset_us"], 12.0);
    }
}
