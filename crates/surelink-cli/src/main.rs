//! The `surelink` command-line tool: send and receive data over surelink.
//!
//! ```text
//! surelink recv --listen 0.0.0.0:7000 --out received.bin --once
//! surelink send --to receiver:7000 --in file.bin
//! ```
//!
//! An error is printed as one line on stderr, each cause once; the exit
//! status says which kind of failure it was (see [`exit::Status`], listed in
//! `surelink --help`): 2 for a bad command line, 3–6 for local I/O, no
//! connection, a failed connection and a damaged state directory.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod args;
mod cmd;
mod congestion;
mod delivery;
mod ending;
mod exit;
mod failover_log;
mod fec;
#[cfg(feature = "etcd")]
mod group;
mod keys;
mod merge_out;
mod metrics;
mod net;
mod out_dir;
mod paths;
mod progress;
mod report;
mod routes;
mod security;
mod shutdown;
mod source;
mod state;
mod stop;

/// Examples and exit statuses at the end of `surelink --help`.
const MAIN_HELP: &str = concat!(
    "\
Examples:
  surelink recv --listen 0.0.0.0:9000 --out copy.bin --once
  surelink send --to receiver:9000 --in original.bin
  surelink demo --loss 2% --deadline 80ms

",
    exit::exit_status_help!()
);

/// Reliable, low-latency messaging over UDP.
#[derive(Debug, Parser)]
#[command(name = "surelink", version, about, after_help = MAIN_HELP)]
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
    #[command(after_help = concat!("\
Examples:
  surelink send --to 127.0.0.1:9000 --in original.bin
  tar c dir | surelink send --to receiver:9000
  surelink send --to 127.0.0.1:9000 --to 127.0.0.1:9001 --mode broadcast --in original.bin
  surelink send --to 127.0.0.1:9000 --in original.bin --state send-state/ --reconnect-for 5m
  surelink send --to 127.0.0.1:9000 --from udp://127.0.0.1:5000 --deadline 80ms

", exit::exit_status_help!()))]
    Send(cmd::send::SendArgs),
    /// Receive from senders and write to stdout, a file, or a UDP address.
    #[command(after_help = concat!("\
Examples:
  surelink recv --listen 127.0.0.1:9000 --out copy.bin --once
  surelink recv --listen 0.0.0.0:9000 --once | tar x
  surelink recv --listen 127.0.0.1:9000 --listen 127.0.0.1:9001 --out copy.bin --once
  surelink recv --listen 127.0.0.1:9000 --out copy.bin --once --state recv-state/
  surelink recv --listen 127.0.0.1:9000 --to udp://127.0.0.1:5004 --playout 100ms

", exit::exit_status_help!()))]
    Recv(cmd::recv::RecvArgs),
    /// Emulate an impaired network between UDP clients and a target (loss, delay, cuts, ...).
    #[command(after_help = concat!("\
Examples:
  surelink impair --listen 127.0.0.1:8000 --target 127.0.0.1:9000 --loss 2% --delay 10ms --jitter 1ms
  surelink impair --listen 127.0.0.1:8000 --target 127.0.0.1:9000 --delay 24ms --loss 5%

", exit::exit_status_help!()))]
    Impair(cmd::impair::ImpairArgs),
    /// Show surelink at work: sender and receiver in one process through a lossy, jittery link.
    #[command(after_help = concat!("\
The story: 1. loss (retransmission), 2. a cut of the primary path (failover),
3. a receiver crash and restart (checkpoints), 4. a deadline channel
(skipping), 5. the clock estimate; then a table mechanism by mechanism. The
link options, --duration and --deadline shape step 1; --rate, --size and
--seed apply to every step.

Examples:
  surelink demo
  surelink demo --quick --json
  surelink demo --plot timeline.svg
  surelink demo --duration 10s --rate 2000 --size 100 --loss 2% --burst off --deadline 80ms --json

", exit::exit_status_help!()))]
    Demo(cmd::demo::DemoArgs),
    /// A time reference service: `time serve` and `time query` (clock offset between hosts).
    #[command(after_help = concat!("\
Examples:
  surelink time serve --listen 0.0.0.0:9100
  surelink time query timehost:9100 --count 50

", exit::exit_status_help!()))]
    Time(cmd::time::TimeArgs),
    /// Make a key pair: the private key to a file (mode 0600), the public key on stdout.
    #[command(after_help = concat!("\
Examples:
  surelink keygen --out receiver.key
  surelink recv --listen 0.0.0.0:9000 --key receiver.key --out copy.bin --once

", exit::exit_status_help!()))]
    Keygen(cmd::keygen::KeygenArgs),
    /// Print a shell completion script (bash, zsh or fish) generated from these options.
    #[command(after_help = concat!("\
Examples:
  surelink completions bash > /etc/bash_completion.d/surelink
  surelink completions zsh > \"${fpath[1]}/_surelink\"
  surelink completions fish > ~/.config/fish/completions/surelink.fish

", exit::exit_status_help!()))]
    Completions(cmd::completions::CompletionsArgs),
    /// Print the manual page surelink(1), or write every page into a directory.
    #[command(after_help = concat!("\
Examples:
  surelink man | man -l -
  surelink man --dir /usr/local/share/man/man1

", exit::exit_status_help!()))]
    Man(cmd::completions::ManArgs),
    /// Measure throughput, latency, CPU and memory: `perf server` and `perf client`.
    #[command(after_help = concat!("\
Examples:
  surelink perf server --listen 0.0.0.0:9200
  surelink perf client --to server:9200 --connections 4 --size 64 --duration 10s
  surelink perf client --to server:9200 --connections 1000 --rate 100 --size 200 --json

", exit::exit_status_help!()))]
    Perf(cmd::perf::PerfArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not errors.
            return if e.use_stderr() {
                exit::Status::Usage.into()
            } else {
                exit::Status::Success.into()
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
            return exit::Status::Other.into();
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
            Command::Completions(args) => cmd::completions::completions(&args),
            Command::Man(args) => cmd::completions::man(&args),
            Command::Perf(args) => cmd::perf::run(args).await,
        }
    });
    // A blocked stdin read must not hold the process open.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => exit::Status::Success.into(),
        Err(e) => {
            eprintln!("surelink: error: {}", exit::report(&e));
            exit::classify(&e).into()
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
