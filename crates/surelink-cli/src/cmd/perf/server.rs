//! `surelink perf server`: accepts connections until stopped (Ctrl-C or
//! SIGTERM), one task per connection counting the data on channel 0 and
//! recording each message's one-way latency; when the client's
//! [`Finished`] arrives on the control channel and that many messages have
//! been received, the task answers with a [`ServerReport`] and its latencies.
//! Latencies are kept sparse per connection ([`CompactLatencies`]), so a
//! session costs the server little more than its connection.
//!
//! One client brings many connections from one address, so the per-source
//! handshake budget is lifted; `--max-connections` caps the total.
//! `--drivers N` sets the endpoint's driver tasks (`EndpointConfig::drivers`).
//! When stopped it prints how many connections it accepted and datagrams it
//! received, and how many of those one driver handed to another.

use anyhow::{bail, Context as _};
use surelink::{Connection, Endpoint, EndpointConfig, Message, ProtocolConfig};

use super::report::{
    wall_clock_us, CompactLatencies, Finished, ServerReport, Usage, CONTROL_CHANNEL,
};
use super::ServerArgs;

/// Runs `surelink perf server`.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let listen = args.listen.resolve().await?;
    let budget = u32::try_from(args.max_connections).unwrap_or(u32::MAX);
    let protocol = ProtocolConfig {
        max_connections: args.max_connections,
        source_handshake_burst: budget,
        source_handshake_rate: budget,
        ..ProtocolConfig::default()
    };
    let mut config = EndpointConfig::default().with_protocol(protocol);
    args.drivers.apply(&mut config);
    let endpoint =
        Endpoint::bind(listen, config).with_context(|| format!("cannot listen on {listen}"))?;
    let drivers = endpoint.drivers();
    eprintln!(
        "surelink perf: listening on {} ({drivers} driver{})",
        endpoint.local_addr(),
        if drivers == 1 { "" } else { "s" }
    );
    let accepting = async {
        while let Some(conn) = endpoint.accept().await {
            tracing::debug!(remote = %conn.remote_addr(), "perf connection accepted");
            tokio::spawn(serve(conn));
        }
    };
    tokio::select! {
        () = accepting => bail!("the endpoint stopped accepting connections"),
        () = crate::shutdown::signal() => {
            let stats = endpoint.stats();
            eprintln!(
                "surelink perf: server stopped: {} connections accepted, {} datagrams received, \
                 {} handed over between drivers",
                stats.protocol.accepted, stats.datagrams_received, stats.datagrams_handed_over
            );
            Ok(())
        }
    }
}

/// Serves one client connection to its end.
async fn serve(conn: Connection) {
    let remote = conn.remote_addr();
    match count_and_report(&conn).await {
        Ok(Some(report)) => tracing::info!(
            %remote,
            messages = report.messages,
            bytes = report.bytes,
            "perf client finished"
        ),
        Ok(None) => tracing::info!(%remote, "perf client left before finishing"),
        Err(e) => tracing::info!(%remote, "perf connection failed: {e:#}"),
    }
}

/// Counts data until the client's [`Finished`] is matched, then reports.
/// `None` if the connection closed without a [`Finished`].
async fn count_and_report(conn: &Connection) -> anyhow::Result<Option<ServerReport>> {
    let cpu_s_at_accept = Usage::now().cpu_s;
    // Sparse: a dense histogram per connection took ~180 KiB of each
    // session (see `CompactLatencies`).
    let mut latencies = CompactLatencies::default();
    let (mut messages, mut bytes, mut first_us, mut last_us) = (0u64, 0u64, 0u64, 0u64);
    let mut expected: Option<u64> = None;
    while expected.is_none_or(|sent| messages < sent) {
        let Some(Message {
            channel,
            data,
            latency_us,
            ..
        }) = conn.recv_message().await?
        else {
            return Ok(None);
        };
        if channel == CONTROL_CHANNEL {
            expected = Some(
                Finished::decode(&data)
                    .context("bad message from the client")?
                    .sent,
            );
            continue;
        }
        last_us = wall_clock_us();
        if messages == 0 {
            first_us = last_us;
        }
        messages += 1;
        bytes += data.len() as u64;
        latencies.record(latency_us);
    }
    let report = ServerReport {
        messages,
        bytes,
        first_us,
        last_us,
        cpu_s_at_accept,
        usage: Usage::now(),
    };
    conn.send_on(CONTROL_CHANNEL, report.encode()).await?;
    conn.send_on(CONTROL_CHANNEL, latencies.encode()).await?;
    // The client closes once it has both; wait for that (or its loss).
    let _ = conn.closed().await;
    Ok(Some(report))
}
