//! The `surelink` command-line tool: send and receive data over surelink.
//!
//! ```text
//! surelink recv --listen 0.0.0.0:7000 --out received.bin --once
//! surelink send --to receiver:7000 --in file.bin
//! ```
//!
//! Exit status: 0 on success, 1 on any error (printed as one line on stderr).

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod args;
mod cmd;
mod delivery;
mod fec;
mod keys;
mod net;
mod paths;
mod report;
mod security;
mod shutdown;
mod state;

/// Reliable, low-latency messaging over UDP.
#[derive(Debug, Parser)]
#[command(name = "surelink", version, about)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a byte stream (stdin or a file) or UDP datagrams to a receiver.
    Send(cmd::send::SendArgs),
    /// Receive from senders and write to stdout, a file, or a UDP address.
    Recv(cmd::recv::RecvArgs),
    /// Emulate an impaired network between UDP clients and a target (loss, delay, cuts, ...).
    Impair(cmd::impair::ImpairArgs),
    /// Show surelink at work: sender and receiver in one process through a lossy, jittery link.
    Demo(cmd::demo::DemoArgs),
    /// A time reference service: `time serve` and `time query` (clock offset between hosts).
    Time(cmd::time::TimeArgs),
    /// Make a key pair: the private key to a file (mode 0600), the public key on stdout.
    Keygen(cmd::keygen::KeygenArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not errors; usage errors exit 1 like any error.
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("surelink: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Send(args) => cmd::send::run(args).await,
            Command::Recv(args) => cmd::recv::run(args).await,
            Command::Impair(args) => cmd::impair::run(args).await,
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Time(args) => cmd::time::run(args).await,
            Command::Keygen(args) => cmd::keygen::run(args).await,
        }
    });
    // A blocked stdin read must not hold the process open.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("surelink: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
