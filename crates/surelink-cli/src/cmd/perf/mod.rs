//! `surelink perf`: a load generator and sink, like iperf or quinn's perf tool.
//!
//! `surelink perf server --listen ADDR` accepts any number of connections and
//! counts what arrives (`--drivers N`: its connections spread over N
//! driver tasks); `surelink perf client --to ADDR --connections N
//! --rate MSGS_PER_S --size BYTES --duration 10s` opens N connections, sends
//! messages of `--size` bytes on channel 0 of each (at `--rate` messages per
//! second per connection, or as fast as the transport accepts them), and
//! prints messages/s, MiB/s, one-way latency percentiles, losses,
//! retransmissions, packets declared lost (and how many of those were
//! spurious: acknowledged after all), and the CPU time and peak memory of
//! both processes.
//!
//! The exchange at the end of each connection ([`report`]) runs on channel 1,
//! which carries nothing else: the client says how many messages it sent; once
//! the server has received that many on channel 0 (channels are ordered
//! independently, so it may still be receiving), it answers with its counts,
//! its latencies (the core's per-message latency, measured against its
//! estimate of the client's clock) and its own CPU time and peak memory.

mod client;
pub mod report;
mod server;

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::args::{parse_duration, parse_host_port, parse_size, HostPort};

/// Arguments of `surelink perf`.
#[derive(Debug, Args)]
pub struct PerfArgs {
    #[command(subcommand)]
    pub command: PerfCommand,
}

/// The `perf` subcommands.
#[derive(Debug, Subcommand)]
pub enum PerfCommand {
    /// Accept load-test connections, count what arrives and report it back to each client.
    Server(ServerArgs),
    /// Open connections to a perf server, send for a while, print the figures of both sides.
    Client(ClientArgs),
}

/// Arguments of `surelink perf server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on, HOST:PORT (port 0 picks a free port; the address is printed on stderr).
    #[arg(long, value_name = "ADDR", value_parser = parse_host_port)]
    pub listen: HostPort,
    /// Most connections open at once (every client connection counts).
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub max_connections: usize,
    #[command(flatten)]
    pub drivers: crate::args::DriversArgs,
}

/// Arguments of `surelink perf client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The perf server, HOST:PORT.
    #[arg(long, value_name = "ADDR", value_parser = parse_host_port)]
    pub to: HostPort,
    /// Connections to open, spread round-robin over the `--drivers` endpoints.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub connections: usize,
    /// Client endpoints (one local socket and one driver task each).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub drivers: u16,
    /// Messages per second on each connection (default: as fast as the
    /// transport takes them; 0: none, the connections only stay open, for
    /// the memory and CPU of idle sessions).
    #[arg(long, value_name = "MSGS_PER_S")]
    pub rate: Option<f64>,
    /// Size of each message (e.g. 64, 1KiB).
    #[arg(long, value_name = "BYTES", default_value = "1024", value_parser = parse_size)]
    pub size: usize,
    /// How long to send.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `surelink perf`.
pub async fn run(args: PerfArgs) -> anyhow::Result<()> {
    match args.command {
        PerfCommand::Server(args) => server::run(args).await,
        PerfCommand::Client(args) => client::run(args).await,
    }
}
