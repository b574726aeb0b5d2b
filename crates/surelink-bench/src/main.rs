//! `surelink-bench`: surelink side by side with quinn, KCP, SRT, TCP and raw
//! UDP, in one run, on the same workloads, over 127.0.0.1.
//!
//! ```text
//! surelink-bench [--systems LIST] [--workloads bulk,small,realtime,failover,deadline,durable]
//!                [--runs N] [--bulk-mib N] [--small-secs S] [--rt-secs S] [--losses 0,2,10]
//!                [--failover-secs S] [--cut-at S] [--cut-secs S] [--deadline-rtts N]
//!                [--durable-mib N] [--per-message]
//!                [--json PATH] [--plot PATH.svg] [--install-peers] [--quick]
//! surelink-bench mpegts [--duration S] [--runs N] [--system LIST] [--link LIST] [--json PATH]
//! surelink-bench standby [--ttls 1,2,5] [--runs N]
//! surelink-bench etcd-capacity [--sessions 1,10,100,1000] [--seconds S]   # feature etcd
//! ```
//!
//! `mpegts` is a workload of its own (real ffmpeg through the command-line
//! gateways, see [`mpegts`]), with its own systems and options; so is
//! `standby` (receiver groups on a real etcd, see [`standby`]), and
//! `etcd-capacity` (checkpoint commits of many receiver groups against one
//! etcd member, built with `--features etcd`, see `etcd_capacity`).
//!
//! The markdown tables go to stdout, progress to stderr. See
//! `docs/BENCHMARKS.md` for what each workload does and the figures.

#![forbid(unsafe_code)]

mod cpu;
mod deadline;
mod durable;
#[cfg(feature = "etcd")]
mod etcd_capacity;
mod failover;
mod mpegts;
mod plot;
mod report;
mod rows;
mod run;
mod standby;
mod system;
mod transport;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use hdrhistogram::Histogram;

use deadline::DeadlineGroup;
use failover::{FailoverParams, FailoverRow};
use report::{Machine, Peer, Report, RtGroup, Settings};
use rows::{Row, Status};
use system::{System, Workload};
use transport::Route;
use workload::{RtParams, SMALL_MESSAGE};

/// Compare surelink with quinn, KCP, SRT, TCP and raw UDP on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "surelink-bench", version)]
struct Args {
    /// Systems to measure (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "surelink,surelink-plaintext,surelink-deadline,quinn,quinn-datagram,kcp,srt,tcp,udp"
    )]
    systems: Vec<System>,
    /// Workloads to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bulk,small,realtime,failover,deadline,durable"
    )]
    workloads: Vec<Workload>,
    /// Bulk transfer size in MiB [default: 256; 4 with --quick].
    #[arg(long)]
    bulk_mib: Option<u64>,
    /// Small-message window in seconds [default: 5; 0.5 with --quick].
    #[arg(long)]
    small_secs: Option<f64>,
    /// Small messages: every system hands over each message in its own call
    /// (a write per message on the streams, `send` per message for surelink)
    /// instead of 64 KiB of messages per call (a staged write, `send_many`).
    #[arg(long)]
    per_message: bool,
    /// Real-time sending time in seconds [default: 30; 1 with --quick].
    #[arg(long)]
    rt_secs: Option<f64>,
    /// Durable-session transfer size in MiB [default: 64; 16 with --quick].
    #[arg(long)]
    durable_mib: Option<u64>,
    /// Real-time loss rates in percent, each direction (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,2,10")]
    losses: Vec<f64>,
    /// Failover: sending time in seconds [default: 10; 2 with --quick].
    #[arg(long)]
    failover_secs: Option<f64>,
    /// Failover: when the primary path is cut, seconds after the first
    /// message [default: 4; 0.6 with --quick].
    #[arg(long)]
    cut_at: Option<f64>,
    /// Failover: how long the primary path stays cut, in seconds
    /// [default: 2; 0.6 with --quick].
    #[arg(long)]
    cut_secs: Option<f64>,
    /// Deadline workload: surelink's deadline and SRT's latency, in RTTs.
    #[arg(long, default_value_t = 3)]
    deadline_rtts: u32,
    /// One-way delay of the impairer, each way, in ms.
    #[arg(long, default_value_t = 10.0)]
    delay_ms: f64,
    /// Jitter of the impairer, each way, in ms.
    #[arg(long, default_value_t = 1.0)]
    jitter_ms: f64,
    /// Real-time message rate per second.
    #[arg(long, default_value_t = 1000)]
    rt_rate: u32,
    /// Real-time message size in bytes (at least 16).
    #[arg(long, default_value_t = 200)]
    rt_size: usize,
    /// Runs of every figure; tables show medians [default: 3; 1 with --quick].
    #[arg(long)]
    runs: Option<u32>,
    /// Seed of the impairers (the same for every system).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Small sizes and one run: a few seconds per system.
    #[arg(long)]
    quick: bool,
    /// Write every run, the medians, ratios and targets as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency-distribution plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Install missing peers (`apt-get install -y srt-tools`) instead of
    /// reporting them as not available.
    #[arg(long)]
    install_peers: bool,
}

fn main() -> ExitCode {
    let subcommand = std::env::args_os().nth(1);
    let outcome = if subcommand.as_ref().is_some_and(|a| a == "mpegts") {
        mpegts::main(std::env::args_os().skip(1))
    } else if subcommand.as_ref().is_some_and(|a| a == "standby") {
        standby::main(std::env::args_os().skip(1))
    } else if subcommand.as_ref().is_some_and(|a| a == "etcd-capacity") {
        etcd_capacity(std::env::args_os().skip(1))
    } else {
        main_inner()
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("surelink-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `surelink-bench etcd-capacity …`, if built with the etcd client.
fn etcd_capacity(argv: impl Iterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    #[cfg(feature = "etcd")]
    return etcd_capacity::main(argv);
    #[cfg(not(feature = "etcd"))]
    {
        drop(argv);
        anyhow::bail!("etcd-capacity needs a build with `--features etcd`")
    }
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let q = args.quick;
    let settings = Settings {
        bulk_mib: args.bulk_mib.unwrap_or(if q { 4 } else { 256 }),
        small_secs: args.small_secs.unwrap_or(if q { 0.5 } else { 5.0 }),
        small_size: SMALL_MESSAGE,
        small_per_message: args.per_message,
        rt_secs: args.rt_secs.unwrap_or(if q { 1.0 } else { 30.0 }),
        durable_mib: args.durable_mib.unwrap_or(if q { 16 } else { 64 }),
        rt_rate: args.rt_rate,
        rt_size: args.rt_size,
        delay_ms: args.delay_ms,
        jitter_ms: args.jitter_ms,
        losses_percent: args.losses.clone(),
        failover: FailoverParams {
            stream: RtParams {
                rate: args.rt_rate,
                size: args.rt_size,
                secs: args.failover_secs.unwrap_or(if q { 2.0 } else { 10.0 }),
            },
            cut_at_secs: args.cut_at.unwrap_or(if q { 0.6 } else { 4.0 }),
            cut_secs: args.cut_secs.unwrap_or(if q { 0.6 } else { 2.0 }),
        },
        deadline_rtts: args.deadline_rtts,
        seed: args.seed,
        runs: args.runs.unwrap_or(if q { 1 } else { 3 }),
        quick: q,
    };
    if settings.bulk_mib == 0 || settings.bulk_mib > 64 << 10 {
        bail!("--bulk-mib must be between 1 and 65536");
    }
    if settings.durable_mib < 2 || settings.durable_mib > 4 << 10 {
        bail!("--durable-mib must be between 2 and 4096");
    }
    for (v, name) in [
        (settings.small_secs, "--small-secs"),
        (settings.rt_secs, "--rt-secs"),
        (settings.failover.stream.secs, "--failover-secs"),
        (settings.failover.cut_secs, "--cut-secs"),
    ] {
        if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
            bail!("{name} must be between 0 and 3600 seconds");
        }
    }
    let f = &settings.failover;
    if !(f.cut_at_secs >= 0.2 && f.cut_at_secs + f.cut_secs < f.stream.secs) {
        bail!("--cut-at must be at least 0.2 s, and the cut must end before --failover-secs");
    }
    if settings.deadline_rtts == 0 || settings.deadline_rtts > 100 {
        bail!("--deadline-rtts must be between 1 and 100");
    }
    if settings.runs == 0 || settings.runs > 100 {
        bail!("--runs must be between 1 and 100");
    }
    if settings.rt_rate == 0 || settings.rt_rate > 100_000 {
        bail!("--rt-rate must be between 1 and 100000");
    }
    if settings.rt_size < 16 || settings.rt_size > 1200 {
        bail!("--rt-size must be between 16 and 1200 bytes");
    }
    for &loss in &settings.losses_percent {
        if !(0.0..=100.0).contains(&loss) {
            bail!("--losses must be percentages between 0 and 100");
        }
    }
    if !(settings.delay_ms >= 0.0 && settings.jitter_ms >= 0.0) {
        bail!("--delay-ms and --jitter-ms must not be negative");
    }
    Ok(settings)
}

fn route(settings: &Settings, loss: f64) -> anyhow::Result<Route> {
    let spec = format!(
        "delay={}us,jitter={}us,loss={loss}%",
        (settings.delay_ms * 1000.0).round(),
        (settings.jitter_ms * 1000.0).round()
    );
    let link = spec
        .parse()
        .map_err(|e| anyhow::anyhow!("impairment {spec}: {e}"))?;
    Ok(Route {
        link,
        seed: settings.seed,
    })
}

/// The row of `system` in `workload`, empty with a reason if it cannot run.
fn make_row<T>(system: System, workload: Workload, peers: &[Peer]) -> Row<T> {
    if let Some(why) = system.not_applicable(workload) {
        return Row::without(system, Status::NotApplicable, why);
    }
    match peers.iter().find(|p| p.system == system && !p.available) {
        Some(peer) => Row::without(system, Status::NotAvailable, peer.detail.clone()),
        None => Row::new(system),
    }
}

fn main_inner() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = settings(&args)?;
    let mut systems = args.systems.clone();
    systems.sort();
    systems.dedup();
    let mut workloads = args.workloads.clone();
    workloads.dedup();
    let wants = |w: Workload| workloads.contains(&w);

    // Which systems can run here.
    let mut peers = Vec::new();
    for &system in &systems {
        let (available, detail) = match system {
            System::Srt => match transport::srt::ensure(args.install_peers) {
                Ok(version) => (true, version),
                Err(why) => (false, why),
            },
            System::Surelink | System::SurelinkPlaintext => {
                (true, "surelink (this workspace), default settings".into())
            }
            System::SurelinkDeadline => (
                true,
                "surelink (this workspace), deadline delivery on its channel".into(),
            ),
            System::Quinn | System::QuinnDatagram => (true, "quinn 0.11, rustls + ring".into()),
            System::Kcp => (true, "tokio_kcp 0.9, fast mode".into()),
            System::Tcp => (true, "tokio TCP, TCP_NODELAY".into()),
            System::Udp => (true, "tokio UDP".into()),
        };
        peers.push(Peer {
            system,
            available,
            detail,
        });
    }
    let mut bulk: Vec<_> = if wants(Workload::Bulk) {
        systems
            .iter()
            .map(|&s| make_row(s, Workload::Bulk, &peers))
            .collect()
    } else {
        Vec::new()
    };
    let mut small: Vec<_> = if wants(Workload::Small) {
        systems
            .iter()
            .map(|&s| make_row(s, Workload::Small, &peers))
            .collect()
    } else {
        Vec::new()
    };
    let mut realtime: Vec<RtGroup> = if wants(Workload::Realtime) {
        settings
            .losses_percent
            .iter()
            .map(|&loss| RtGroup {
                loss_percent: loss,
                rows: systems
                    .iter()
                    .map(|&s| make_row(s, Workload::Realtime, &peers))
                    .collect(),
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut failover: Vec<FailoverRow> = if wants(Workload::Failover) {
        systems
            .iter()
            .flat_map(|&s| failover::rows(s, || make_row(s, Workload::Failover, &peers)))
            .collect()
    } else {
        Vec::new()
    };
    let rtt = Duration::from_secs_f64(2.0 * settings.delay_ms / 1000.0);
    let deadline_at = rtt * settings.deadline_rtts;
    // Only the two systems this workload compares get rows.
    let mut deadline: Vec<DeadlineGroup> = if wants(Workload::Deadline) {
        settings
            .losses_percent
            .iter()
            .map(|&loss| DeadlineGroup {
                loss_percent: loss,
                deadline_ms: deadline_at.as_secs_f64() * 1000.0,
                rows: systems
                    .iter()
                    .filter(|s| s.not_applicable(Workload::Deadline).is_none())
                    .map(|&s| make_row(s, Workload::Deadline, &peers))
                    .collect(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut durable =
        wants(Workload::Durable).then(|| durable::DurableReport::new(settings.durable_mib));

    let bulk_bytes = settings.bulk_mib << 20;
    // Even a slow peer moves 4 MiB/s; anything slower is reported as a failure.
    let bulk_limit = Duration::from_secs((settings.bulk_mib / 4).max(30));
    let small_window = Duration::from_secs_f64(settings.small_secs);
    let rt_params = RtParams {
        rate: settings.rt_rate,
        size: settings.rt_size,
        secs: settings.rt_secs,
    };

    // Runs are the outer loop, so background noise spreads over every system.
    for run in 1..=settings.runs {
        let tag = format!("[run {run}/{}]", settings.runs);
        for row in bulk.iter_mut().filter(|r| r.status == Status::Ok) {
            match run::bulk(row.system, bulk_bytes, bulk_limit) {
                Ok(r) => {
                    eprintln!(
                        "{tag} bulk {}: {:.1} MiB/s, {:.2} CPU s",
                        row.system, r.mib_per_s, r.cpu_s
                    );
                    row.runs.push(r);
                }
                Err(e) => {
                    eprintln!("{tag} bulk {}: failed: {e}", row.system);
                    row.errors.push(e.to_string());
                }
            }
        }
        for row in small.iter_mut().filter(|r| r.status == Status::Ok) {
            match run::small(row.system, small_window, settings.small_per_message) {
                Ok(r) => {
                    eprintln!("{tag} small {}: {:.0} msgs/s", row.system, r.msgs_per_s);
                    row.runs.push(r);
                }
                Err(e) => {
                    eprintln!("{tag} small {}: failed: {e}", row.system);
                    row.errors.push(e.to_string());
                }
            }
        }
        for group in &mut realtime {
            let route = route(&settings, group.loss_percent)?;
            for row in group.rows.iter_mut().filter(|r| r.status == Status::Ok) {
                match run::realtime(row.system, &rt_params, &route, rtt) {
                    Ok(r) => {
                        eprintln!(
                            "{tag} realtime {}% {}: lost {}, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
                            group.loss_percent, row.system, r.lost, r.p50_ms, r.p99_ms, r.p999_ms
                        );
                        row.runs.push(r);
                    }
                    Err(e) => {
                        eprintln!(
                            "{tag} realtime {}% {}: failed: {e}",
                            group.loss_percent, row.system
                        );
                        row.errors.push(e.to_string());
                    }
                }
            }
        }
        let clean = route(&settings, 0.0)?;
        for entry in failover.iter_mut().filter(|r| r.row.status == Status::Ok) {
            let row = &mut entry.row;
            match failover::run(row.system, entry.paths, &settings.failover, &clean, rtt) {
                Ok(r) => {
                    eprintln!(
                        "{tag} failover {} ({:?}): suspect {:.1} ms, resume {:.1} ms, max gap {:.1} ms, lost {}, dup {}",
                        row.system, entry.paths, r.suspect_ms, r.resume_ms, r.max_gap_ms, r.stream.lost, r.stream.duplicated
                    );
                    row.runs.push(r);
                }
                Err(e) => {
                    eprintln!(
                        "{tag} failover {} ({:?}): failed: {e}",
                        row.system, entry.paths
                    );
                    row.errors.push(e.to_string());
                }
            }
        }
        for group in &mut deadline {
            let route = route(&settings, group.loss_percent)?;
            for row in group.rows.iter_mut().filter(|r| r.status == Status::Ok) {
                match deadline::run(row.system, &rt_params, &route, deadline_at) {
                    Ok(r) => {
                        eprintln!(
                            "{tag} deadline {}% {}: skipped {} of {}, p50 {:.2} ms, p99 {:.2} ms",
                            group.loss_percent, row.system, r.lost, r.sent, r.p50_ms, r.p99_ms
                        );
                        row.runs.push(r);
                    }
                    Err(e) => {
                        eprintln!(
                            "{tag} deadline {}% {}: failed: {e}",
                            group.loss_percent, row.system
                        );
                        row.errors.push(e.to_string());
                    }
                }
            }
        }
        if let Some(durable) = &mut durable {
            durable.run(&tag);
        }
    }

    bulk.iter_mut().for_each(Row::finish);
    failover.iter_mut().for_each(|r| r.row.finish());
    for group in &mut deadline {
        group.rows.iter_mut().for_each(Row::finish);
    }
    small.iter_mut().for_each(Row::finish);
    for group in &mut realtime {
        group.rows.iter_mut().for_each(Row::finish);
    }

    let mut plot_written = None;
    if let Some(path) = &args.plot {
        let group = realtime
            .iter()
            .find(|g| (g.loss_percent - 2.0).abs() < 1e-9)
            .or_else(|| realtime.iter().find(|g| g.loss_percent > 0.0))
            .or_else(|| realtime.first());
        match group {
            None => eprintln!("surelink-bench: no real-time figures, no plot"),
            Some(group) => {
                let merged: Vec<(String, Histogram<u64>)> = group
                    .rows
                    .iter()
                    .filter_map(|row| {
                        let mut runs = row.runs.iter().filter_map(|r| r.histogram.as_ref());
                        let mut merged = runs.next()?.clone();
                        for h in runs {
                            // Same bounds everywhere, so adding cannot fail.
                            let _ = merged.add(h);
                        }
                        Some((row.system.to_string(), merged))
                    })
                    .collect();
                let curves: Vec<plot::Curve<'_>> = merged
                    .iter()
                    .map(|(label, histogram)| plot::Curve {
                        label: label.clone(),
                        histogram,
                    })
                    .collect();
                let title = format!(
                    "One-way latency, {} msg/s × {} B, {} ms ± {} ms each way, {}% loss each way ({} run{} merged)",
                    settings.rt_rate,
                    settings.rt_size,
                    settings.delay_ms,
                    settings.jitter_ms,
                    group.loss_percent,
                    settings.runs,
                    if settings.runs == 1 { "" } else { "s" }
                );
                plot::latency(path, &title, &curves)
                    .map_err(|e| anyhow::anyhow!(e))
                    .with_context(|| format!("writing the plot {}", path.display()))?;
                plot_written = Some(path.display().to_string());
            }
        }
    }

    let command = std::iter::once("surelink-bench".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let mut report = Report {
        command,
        settings,
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        },
        systems: peers,
        bulk,
        small,
        realtime,
        failover,
        deadline,
        durable: durable.map(|mut d| {
            d.finish();
            d
        }),
        ratios: Default::default(),
        targets: Vec::new(),
        plot: plot_written,
    };
    report.evaluate();
    print!("{}", report.markdown());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
