//! The `mpegts` workload: a real MPEG-TS stream, played in real time by
//! ffmpeg, through each system's command-line gateways and the `surelink
//! impair` emulator, measured datagram by datagram.
//!
//! ```text
//! surelink-bench mpegts [--duration S] [--runs N] [--system LIST] [--link LIST]
//!                       [--seed N] [--late-allowance MS] [--json PATH] [--install-peers]
//! ```
//!
//! One run of one system on one link:
//!
//! ```text
//! ffmpeg -re ─► tap ─► entry ─► surelink impair ─► exit ─► capture
//! ```
//!
//! `ffmpeg -re -i ref.ts -c copy -f mpegts udp://TAP?pkt_size=1316` plays the
//! reference clip ([`clip`]) in real time, 1316-byte datagrams in one burst
//! per video frame. The tap and the capture ([`probe`]) are sockets of the
//! harness: every datagram is stamped at both, matched by hash, giving the
//! one-way send-to-output latency of each, losses and duplicates; the
//! capture's stream is checked for MPEG-TS continuity-counter errors
//! ([`ts`]). The entry and exit are the system's own tools, as a user would
//! run them (see [`SYSTEMS`]); the impairer (`surelink impair`, the CLI built
//! next to this binary) sits in the middle, its counters (asked on its
//! control port) give the bytes on the wire in both directions.
//!
//! Budgets are equal end to end. For each link with [`Budget::MatchSrt`],
//! SRT is measured first ("calibration": one run on the same delay at 0 %
//! loss, at the link's SRT latency); the median send-to-output latency it
//! achieves, rounded up to the millisecond, is the budget `B` every surelink
//! system gets (`recv --playout B`, and `send --deadline B` for the deadline
//! systems). [`Budget::Fixed`] links give surelink a fixed budget below two
//! round trips, where a retransmission cannot make it in time.
//!
//! Lateness is judged the same way for every system: a datagram that comes
//! out more than `B + A` after it went in (tap to capture) is counted `late`,
//! `A` being the harness's hop allowance (`--late-allowance`, 10 ms by
//! default: the tap and capture hops, the gateways' sockets and the
//! scheduling of a shared machine). A system that delivers late rather than
//! drop (SRT after a cut) shows there, next to the drops of one that does
//! not; `lost or late` adds the two.
//!
//! Runs are the outer loop (each run goes over every link and system), and
//! the tables show medians over runs. The markdown goes to stdout, progress
//! to stderr, `--json` writes every run and the medians.

pub mod clip;
pub mod probe;
pub mod ts;

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::builder::PossibleValuesParser;
use clap::Parser;
use serde::Serialize;

use crate::deadline::own_count;
use crate::durable::{cli, Proc};
use crate::rows::{med_u64, Median as _};
use crate::run::isolated;
use crate::transport::{free_udp_port, loopback, srt, Diagnostics};
use crate::workload::RtRun;
use probe::Point;
use ts::ContinuityChecker;

/// Datagram size ffmpeg is asked for: 7 TS packets.
const DATAGRAM: usize = 7 * ts::PACKET;
/// How often the CLI gateways print their statistics.
const STATS_EVERY: &str = "250ms";
/// Longest calibration clip: SRT's latency settles within seconds.
const CALIBRATION_SECS: f64 = 10.0;

/// How a system carries the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Carrier {
    /// `surelink send --from udp://…` → `surelink recv --to udp://…`, with
    /// `recv --playout B`.
    Surelink {
        /// `send --deadline B`: skip what cannot arrive within the budget.
        deadline: bool,
    },
    /// `srt-live-transmit` at both ends, live mode, at the link's latency.
    Srt {
        /// SRT's packet filter on both ends (`fec,cols:10,rows:5`: its FEC),
        /// or none.
        packet_filter: Option<&'static str>,
    },
    /// ffmpeg's datagrams straight through the impairer.
    Unprotected,
}

/// A system of this workload: one entry of [`SYSTEMS`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SystemSpec {
    /// The name on the command line and in the tables.
    pub name: &'static str,
    /// How it carries the stream.
    pub carrier: Carrier,
    /// Further `surelink send` flags.
    pub send_flags: &'static [&'static str],
    /// Measured only if `surelink send --help` mentions this flag.
    pub needs_send_flag: Option<&'static str>,
}

/// The systems, in table order.
pub const SYSTEMS: &[SystemSpec] = &[
    SystemSpec {
        name: "surelink-reliable",
        carrier: Carrier::Surelink { deadline: false },
        send_flags: &[],
        needs_send_flag: None,
    },
    SystemSpec {
        name: "surelink-deadline",
        carrier: Carrier::Surelink { deadline: true },
        // FEC is `auto` by default on deadline channels: this row is without it.
        send_flags: &["--fec", "off"],
        needs_send_flag: None,
    },
    SystemSpec {
        name: "surelink-deadline-fec",
        carrier: Carrier::Surelink { deadline: true },
        send_flags: &["--fec", "auto"],
        needs_send_flag: Some("--fec"),
    },
    SystemSpec {
        name: "srt",
        carrier: Carrier::Srt {
            packet_filter: None,
        },
        send_flags: &[],
        needs_send_flag: None,
    },
    SystemSpec {
        name: "srt-fec",
        carrier: Carrier::Srt {
            packet_filter: Some("fec,cols:10,rows:5"),
        },
        send_flags: &[],
        needs_send_flag: None,
    },
    SystemSpec {
        name: "udp",
        carrier: Carrier::Unprotected,
        send_flags: &[],
        needs_send_flag: None,
    },
];

/// How a link's end-to-end budget is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// SRT's measured median latency at the link's SRT setting.
    MatchSrt,
    /// A fixed budget, ms.
    Fixed(u64),
}

/// A link of this workload: one entry of [`LINKS`]. Both directions get
/// the same settings (each with its own random decisions).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LinkSpec {
    /// The name on the command line and in the tables.
    pub name: &'static str,
    /// One-way delay, ms.
    pub delay_ms: u64,
    /// Jitter (extra uniform delay, order kept), ms.
    pub jitter_ms: u64,
    /// Random loss, percent.
    pub loss_percent: f64,
    /// Repeating cut `PERIOD/DOWN` (`surelink impair --flap`).
    pub flap: Option<&'static str>,
    /// SRT's latency setting on this link, ms (with [`Budget::Fixed`], the
    /// same value as the budget).
    pub srt_latency_ms: u64,
    /// How surelink's budget is set.
    pub budget: Budget,
}

/// The links, in table order.
pub const LINKS: &[LinkSpec] = &[
    LinkSpec {
        name: "10ms-0%",
        delay_ms: 10,
        jitter_ms: 1,
        loss_percent: 0.0,
        flap: None,
        srt_latency_ms: 80,
        budget: Budget::MatchSrt,
    },
    LinkSpec {
        name: "10ms-2%",
        delay_ms: 10,
        jitter_ms: 1,
        loss_percent: 2.0,
        flap: None,
        srt_latency_ms: 80,
        budget: Budget::MatchSrt,
    },
    LinkSpec {
        name: "10ms-10%",
        delay_ms: 10,
        jitter_ms: 1,
        loss_percent: 10.0,
        flap: None,
        srt_latency_ms: 80,
        budget: Budget::MatchSrt,
    },
    LinkSpec {
        name: "10ms-cuts",
        delay_ms: 10,
        jitter_ms: 1,
        loss_percent: 0.0,
        flap: Some("2s/200ms"),
        srt_latency_ms: 80,
        budget: Budget::MatchSrt,
    },
    LinkSpec {
        name: "50ms-5%",
        delay_ms: 50,
        jitter_ms: 5,
        loss_percent: 5.0,
        flap: None,
        srt_latency_ms: 300,
        budget: Budget::MatchSrt,
    },
    LinkSpec {
        name: "10ms-2%-35ms",
        delay_ms: 10,
        jitter_ms: 1,
        loss_percent: 2.0,
        flap: None,
        srt_latency_ms: 35,
        budget: Budget::Fixed(35),
    },
    LinkSpec {
        name: "10ms-5%-35ms",
        delay_ms: 10,
        jitter_ms: 1,
        loss_percent: 5.0,
        flap: None,
        srt_latency_ms: 35,
        budget: Budget::Fixed(35),
    },
];

impl LinkSpec {
    /// `surelink impair` options of this link.
    fn impair_args(&self) -> Vec<String> {
        let mut args = vec![
            "--delay".to_owned(),
            format!("{}ms", self.delay_ms),
            "--jitter".to_owned(),
            format!("{}ms", self.jitter_ms),
            "--loss".to_owned(),
            format!("{}%", self.loss_percent),
        ];
        if let Some(flap) = self.flap {
            args.extend(["--flap".to_owned(), flap.to_owned()]);
        }
        args
    }

    /// A human description for table titles.
    fn describe(&self) -> String {
        let mut text = format!(
            "{} ms ± {} ms each way, {}% loss each way",
            self.delay_ms, self.jitter_ms, self.loss_percent
        );
        if let Some(flap) = self.flap {
            let (period, down) = flap.split_once('/').unwrap_or((flap, "?"));
            let _ = write!(text, ", cut for {down} every {period}");
        }
        text
    }

    /// The same delay and SRT latency without loss or cuts: where SRT's
    /// latency is calibrated.
    fn calibration(&self) -> LinkSpec {
        LinkSpec {
            name: "calibration",
            loss_percent: 0.0,
            flap: None,
            ..*self
        }
    }
}

/// Options of `surelink-bench mpegts`.
#[derive(Debug, Parser)]
#[command(name = "surelink-bench mpegts")]
struct Args {
    /// Length of the reference clip, seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Runs of every figure; tables show medians.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Systems to measure (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',', value_parser = PossibleValuesParser::new(SYSTEMS.iter().map(|s| s.name)))]
    system: Vec<String>,
    /// Links to measure (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',', value_parser = PossibleValuesParser::new(LINKS.iter().map(|l| l.name)))]
    link: Vec<String>,
    /// Seed of the impairer (the same for every system).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A datagram is late when it comes out more than the budget plus this
    /// many milliseconds after it went in (the harness's own hops).
    #[arg(long, default_value_t = 10)]
    late_allowance: u64,
    /// Write every run and the medians as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Install missing tools (`apt-get install -y ffmpeg srt-tools`)
    /// instead of failing or reporting them as not available.
    #[arg(long)]
    install_peers: bool,
}

/// One run of one system on one link.
#[derive(Debug, Clone, Serialize)]
pub struct MpegtsRun {
    /// Datagrams, latency, losses and wire bytes, as in the real-time
    /// workload. Its `sender` holds `retransmissions` (the sender's own
    /// count) and `spurious_retransmissions_at_least` (retransmissions
    /// beyond the datagrams the link dropped towards the receiver, a lower
    /// bound on those that were not needed); its `receiver` the receiving
    /// tool's counts of what it skipped or dropped as late.
    pub stream: RtRun,
    /// Continuity-counter errors in the stream that came out.
    pub cc_errors: u64,
    /// Datagrams that came out after one sent later than them (first
    /// copies only): continuity errors without a loss.
    pub reordered: u64,
    /// TS packets that came out.
    pub ts_packets: u64,
    /// Continuity-counter errors in what ffmpeg sent (0 unless the source
    /// itself is broken).
    pub source_cc_errors: u64,
    /// Datagrams the link dropped towards the receiver (loss and cuts).
    pub link_dropped: u64,
    /// Datagrams that came out more than the budget plus the hop allowance
    /// after they went in.
    pub late: u64,
    /// `stream.lost + late`.
    pub lost_or_late: u64,
}

impl MpegtsRun {
    /// Medians field by field.
    fn median(runs: &[MpegtsRun]) -> MpegtsRun {
        let streams: Vec<RtRun> = runs.iter().map(|r| r.stream.clone()).collect();
        MpegtsRun {
            stream: RtRun::median(&streams),
            cc_errors: med_u64(runs, |r| r.cc_errors),
            reordered: med_u64(runs, |r| r.reordered),
            ts_packets: med_u64(runs, |r| r.ts_packets),
            source_cc_errors: med_u64(runs, |r| r.source_cc_errors),
            link_dropped: med_u64(runs, |r| r.link_dropped),
            late: med_u64(runs, |r| r.late),
            lost_or_late: med_u64(runs, |r| r.lost_or_late),
        }
    }
}

/// One system on one link: every run and the median.
#[derive(Debug, Clone, Serialize)]
pub struct MpegtsRow {
    /// The system.
    pub system: &'static str,
    /// Successful runs.
    pub runs: Vec<MpegtsRun>,
    /// Errors of failed runs.
    pub errors: Vec<String>,
    /// Medians over `runs`.
    pub median: Option<MpegtsRun>,
}

/// All systems on one link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkGroup {
    /// The link.
    pub link: LinkSpec,
    /// surelink's budget (playout, and deadline where used), ms.
    pub budget_ms: u64,
    /// Where the budget comes from.
    pub budget_source: String,
    /// One row per system.
    pub rows: Vec<MpegtsRow>,
}

/// SRT's measured send-to-output latency at one setting.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// One-way delay of the link, ms.
    pub delay_ms: u64,
    /// SRT's latency setting, ms.
    pub srt_latency_ms: u64,
    /// Seconds of the clip played.
    pub secs: f64,
    /// The run (latency percentiles in `stream`), if it succeeded.
    pub run: Option<MpegtsRun>,
    /// Why not, if it failed.
    pub error: Option<String>,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct MpegtsReport {
    /// The command line.
    pub command: String,
    /// Clip length, seconds.
    pub duration_s: f64,
    /// Runs per figure.
    pub runs: u32,
    /// The impairer's seed.
    pub seed: u64,
    /// ffmpeg's version line.
    pub ffmpeg: String,
    /// SRT's version line, or why it is not measured.
    pub srt: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// `release` or `debug`.
    pub profile: &'static str,
    /// Systems left out, and why.
    pub left_out: Vec<String>,
    /// SRT's measured latencies behind the budgets.
    pub calibrations: Vec<Calibration>,
    /// The hop allowance, ms: late means later than the budget plus this.
    pub late_allowance_ms: u64,
    /// One group per link.
    pub links: Vec<LinkGroup>,
}

/// `surelink-bench mpegts …`: `argv` starts with the subcommand's name.
pub fn main(argv: impl Iterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let args = Args::parse_from(argv);
    if !(args.duration.is_finite() && (1.0..=600.0).contains(&args.duration)) {
        bail!("--duration must be between 1 and 600 seconds");
    }
    if args.runs == 0 || args.runs > 100 {
        bail!("--runs must be between 1 and 100");
    }
    let ffmpeg = clip::ensure_ffmpeg(args.install_peers)?;
    let bin = cli()?;
    let send_help = std::process::Command::new(&bin)
        .args(["send", "--help"])
        .output()
        .with_context(|| format!("{} send --help", bin.display()))?;
    let send_help = String::from_utf8_lossy(&send_help.stdout);
    let srt = srt::ensure(args.install_peers);
    let wanted = |list: &[String], name: &str| list.is_empty() || list.iter().any(|n| n == name);

    let mut left_out = Vec::new();
    let mut systems = Vec::new();
    for spec in SYSTEMS.iter().filter(|s| wanted(&args.system, s.name)) {
        if let Some(flag) = spec.needs_send_flag.filter(|f| !send_help.contains(f)) {
            left_out.push(format!(
                "{}: not measured, `surelink send --help` has no {flag}",
                spec.name
            ));
        } else if let (Carrier::Srt { .. }, Err(why)) = (spec.carrier, &srt) {
            left_out.push(format!("{}: not available, {why}", spec.name));
        } else {
            systems.push(spec);
        }
    }
    for note in &left_out {
        eprintln!("surelink-bench: {note}");
    }
    let srt_measured = systems
        .iter()
        .any(|s| matches!(s.carrier, Carrier::Srt { .. }));
    let links: Vec<&LinkSpec> = LINKS
        .iter()
        .filter(|l| wanted(&args.link, l.name))
        .collect();
    let clip = clip::reference(args.duration, &ffmpeg)?;

    // Budgets: SRT's median latency at each (delay, setting) to match.
    let mut calibrations: Vec<Calibration> = Vec::new();
    let mut groups = Vec::new();
    for &link in &links {
        let (budget_ms, budget_source) = match link.budget {
            Budget::Fixed(ms) => (ms, "fixed, below two round trips".to_owned()),
            Budget::MatchSrt if !srt_measured => (
                link.srt_latency_ms,
                format!(
                    "SRT not measured: its latency setting, {} ms",
                    link.srt_latency_ms
                ),
            ),
            Budget::MatchSrt => {
                let known = calibrations.iter().position(|c| {
                    c.delay_ms == link.delay_ms && c.srt_latency_ms == link.srt_latency_ms
                });
                let index = match known {
                    Some(i) => i,
                    None => {
                        calibrations.push(calibrate(link, &clip, &bin, args.seed, args.duration));
                        calibrations.len() - 1
                    }
                };
                let c = &calibrations[index];
                match &c.run {
                    Some(run) => (
                        run.stream.p50_ms.ceil() as u64,
                        format!(
                            "SRT's median send-to-output latency at latency {} ms: {:.2} ms",
                            c.srt_latency_ms, run.stream.p50_ms
                        ),
                    ),
                    None => (
                        link.srt_latency_ms,
                        format!(
                            "SRT calibration failed: its latency setting, {} ms",
                            link.srt_latency_ms
                        ),
                    ),
                }
            }
        };
        groups.push(LinkGroup {
            link: *link,
            budget_ms,
            budget_source,
            rows: systems
                .iter()
                .map(|s| MpegtsRow {
                    system: s.name,
                    runs: Vec::new(),
                    errors: Vec::new(),
                    median: None,
                })
                .collect(),
        });
    }

    for run in 1..=args.runs {
        for group in &mut groups {
            for (row, spec) in group.rows.iter_mut().zip(&systems) {
                let tag = format!(
                    "[run {run}/{}] {} {}",
                    args.runs, group.link.name, spec.name
                );
                let setup = RunSetup {
                    system: spec,
                    link: &group.link,
                    budget_ms: group.budget_ms,
                    clip: &clip,
                    secs: args.duration,
                    bin: &bin,
                    seed: args.seed,
                    late_after: Duration::from_millis(group.budget_ms + args.late_allowance),
                };
                match one_run(&setup) {
                    Ok(r) => {
                        eprintln!("{tag}: {}", summary(&r));
                        row.runs.push(r);
                    }
                    Err(e) => {
                        eprintln!("{tag}: failed: {e:#}");
                        row.errors.push(format!("{e:#}"));
                    }
                }
            }
        }
    }
    for row in groups.iter_mut().flat_map(|g| g.rows.iter_mut()) {
        row.median = (!row.runs.is_empty()).then(|| MpegtsRun::median(&row.runs));
    }

    let report = MpegtsReport {
        command: std::iter::once("surelink-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        duration_s: args.duration,
        runs: args.runs,
        seed: args.seed,
        ffmpeg,
        srt: srt.unwrap_or_else(|why| why),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        left_out,
        calibrations,
        late_allowance_ms: args.late_allowance,
        links: groups,
    };
    print!("{}", report.markdown());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// SRT alone on `link`'s delay without loss, at the link's SRT latency.
fn calibrate(link: &LinkSpec, clip: &Path, bin: &Path, seed: u64, secs: f64) -> Calibration {
    let calibration_link = link.calibration();
    let secs = secs.min(CALIBRATION_SECS);
    let setup = RunSetup {
        system: SYSTEMS
            .iter()
            .find(|s| {
                s.carrier
                    == Carrier::Srt {
                        packet_filter: None,
                    }
            })
            .expect("SRT is in the system list"),
        link: &calibration_link,
        budget_ms: link.srt_latency_ms,
        clip,
        secs,
        bin,
        seed,
        // The calibration measures the budget: nothing is late against it.
        late_after: Duration::MAX,
    };
    let tag = format!(
        "[calibration] srt at latency {} ms, {} ms each way",
        link.srt_latency_ms, link.delay_ms
    );
    let (run, error) = match one_run(&setup) {
        Ok(r) => {
            eprintln!("{tag}: {}", summary(&r));
            (Some(r), None)
        }
        Err(e) => {
            eprintln!("{tag}: failed: {e:#}");
            (None, Some(format!("{e:#}")))
        }
    };
    Calibration {
        delay_ms: link.delay_ms,
        srt_latency_ms: link.srt_latency_ms,
        secs,
        run,
        error,
    }
}

fn summary(r: &MpegtsRun) -> String {
    let s = &r.stream;
    format!(
        "lost {} of {}, late {}, CC errors {}, reordered {}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, wire/payload {:.3}",
        s.lost, s.sent, r.late, r.cc_errors, r.reordered, s.p50_ms, s.p99_ms, s.max_ms, s.wire_per_payload
    )
}

/// What one run needs.
struct RunSetup<'a> {
    system: &'a SystemSpec,
    link: &'a LinkSpec,
    budget_ms: u64,
    clip: &'a Path,
    secs: f64,
    bin: &'a Path,
    seed: u64,
    /// A datagram coming out later than this after it went in is late.
    late_after: Duration,
}

/// The child processes of one run and what they report afterwards.
struct Running {
    procs: Vec<Proc>,
    /// Where the sending and receiving SRT tools write their statistics.
    srt_stats: Option<(PathBuf, PathBuf)>,
}

/// Starts the system's two ends and the impairer; returns the entry (where
/// the tap forwards to) and the processes.
fn start_system(
    setup: &RunSetup<'_>,
    capture: SocketAddr,
    control: SocketAddr,
    dir: &Path,
) -> anyhow::Result<(SocketAddr, Running)> {
    let impair_listen = loopback(free_udp_port()?);
    let mut impair_args = vec![
        "impair".to_owned(),
        "--listen".to_owned(),
        impair_listen.to_string(),
        "--seed".to_owned(),
        setup.seed.to_string(),
        "--control".to_owned(),
        control.to_string(),
        "--target".to_owned(),
    ];
    let impair = |target: SocketAddr, mut args: Vec<String>| -> anyhow::Result<Proc> {
        args.push(target.to_string());
        args.extend(setup.link.impair_args());
        let mut p = Proc::spawn(setup.bin, &args)?;
        p.wait_line("listening on")?;
        Ok(p)
    };
    let budget = format!("{}ms", setup.budget_ms);
    let lifetime = format!("-t:{}", (setup.secs as u64) + 120);
    match setup.system.carrier {
        Carrier::Unprotected => {
            let impairer = impair(capture, impair_args)?;
            Ok((
                impair_listen,
                Running {
                    procs: vec![impairer],
                    srt_stats: None,
                },
            ))
        }
        Carrier::Surelink { deadline } => {
            let listen = loopback(free_udp_port()?);
            let s = |v: &str| v.to_owned();
            let mut recv = Proc::spawn(
                setup.bin,
                &[
                    s("recv"),
                    s("--listen"),
                    listen.to_string(),
                    s("--to"),
                    format!("udp://{capture}"),
                    s("--playout"),
                    budget.clone(),
                    s("--stats-interval"),
                    s(STATS_EVERY),
                ],
            )?;
            recv.wait_line("listening on")?;
            let impairer = impair(listen, std::mem::take(&mut impair_args))?;
            let gateway = loopback(free_udp_port()?);
            let mut send_args = vec![
                s("send"),
                s("--to"),
                impair_listen.to_string(),
                s("--from"),
                format!("udp://{gateway}"),
                s("--stats-interval"),
                s(STATS_EVERY),
            ];
            if deadline {
                send_args.extend([s("--deadline"), budget]);
            }
            send_args.extend(setup.system.send_flags.iter().map(|f| s(f)));
            let mut send = Proc::spawn(setup.bin, &send_args)?;
            send.wait_line("gateway listening on")?;
            Ok((
                gateway,
                Running {
                    // Sender first, receiver last: read back in that order.
                    procs: vec![send, recv, impairer],
                    srt_stats: None,
                },
            ))
        }
        Carrier::Srt { packet_filter } => {
            let filter = packet_filter.map_or(String::new(), |f| format!("&packetfilter={f}"));
            let listen = loopback(free_udp_port()?);
            let (send_stats, recv_stats) = (dir.join("srt-send.json"), dir.join("srt-recv.json"));
            let live = Path::new(srt::LIVE);
            let latency = setup.link.srt_latency_ms;
            let mut recv_args = vec!["-a:no".to_owned(), lifetime.clone()];
            recv_args.extend(srt::stats_args(&recv_stats));
            recv_args.extend([
                format!("srt://{listen}?mode=listener&latency={latency}{filter}"),
                format!("udp://{capture}"),
            ]);
            let recv = Proc::spawn(live, &recv_args)?;
            let impairer = impair(listen, impair_args)?;
            let entry = loopback(free_udp_port()?);
            let mut send_args = vec!["-a:no".to_owned(), lifetime];
            send_args.extend(srt::stats_args(&send_stats));
            send_args.extend([
                format!("udp://{entry}"),
                format!("srt://{impair_listen}?mode=caller&latency={latency}{filter}"),
            ]);
            let send = Proc::spawn(live, &send_args)?;
            Ok((
                entry,
                Running {
                    procs: vec![send, recv, impairer],
                    srt_stats: Some((send_stats, recv_stats)),
                },
            ))
        }
    }
}

/// The impairer's counters, asked on its control port: (UDP payload bytes
/// offered to the link in both directions, datagrams dropped towards the
/// receiver).
fn impairer_counters(control: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let socket = UdpSocket::bind(loopback(0))?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..6 {
        socket.send_to(b"stats", control)?;
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            let v: serde_json::Value =
                serde_json::from_slice(&buf[..n]).context("the impairer's stats are not JSON")?;
            let get = |dir: &str, key: &str| v[dir][key].as_u64().unwrap_or(0);
            return Ok((
                get("upstream", "bytes_in") + get("downstream", "bytes_in"),
                get("upstream", "dropped"),
            ));
        }
    }
    bail!("the impairer did not answer on its control port {control}")
}

/// The last JSON statistics line among `lines`.
fn last_json(lines: &[String]) -> Option<serde_json::Value> {
    lines
        .iter()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
}

/// Picks numeric `keys` out of a JSON object.
fn pick(value: &serde_json::Value, keys: &[&'static str]) -> Diagnostics {
    keys.iter()
        .filter_map(|&k| value.get(k)?.as_f64().map(|v| (k, v)))
        .collect()
}

/// One run: starts everything, plays the clip, waits for the stragglers,
/// reads the counters and stops everything.
fn one_run(setup: &RunSetup<'_>) -> anyhow::Result<MpegtsRun> {
    let limit = Duration::from_secs_f64(setup.secs) + Duration::from_secs(120);
    let result = isolated(limit, || async {
        run_inner(setup)
            .await
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
    })?;
    Ok(result)
}

async fn run_inner(setup: &RunSetup<'_>) -> anyhow::Result<MpegtsRun> {
    let dir = tempfile::tempdir()?;
    let mut capture = Point::capture()?;
    let control = loopback(free_udp_port()?);
    let (entry, mut running) = start_system(setup, capture.local_addr()?, control, dir.path())?;
    let tap = Point::tap(entry)?;

    // Probes until one comes out, then quiet: the path is up.
    let budget = Duration::from_millis(setup.budget_ms);
    let started = std::time::Instant::now();
    loop {
        if started.elapsed() > Duration::from_secs(15) {
            bail!("nothing came through within 15 s");
        }
        tap.probe(entry).await?;
        if let Some(d) = capture.next(Duration::from_millis(20)).await {
            if d.bytes == probe::PROBE {
                break;
            }
        }
    }
    let quiet = budget * 2 + Duration::from_millis(300);
    while capture.next(quiet).await.is_some() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the probes kept coming for 30 s");
        }
    }

    let (wire_before, dropped_before) = impairer_counters(control)?;
    let mut play_args: Vec<String> = ["-hide_banner", "-loglevel", "error", "-nostdin", "-re"]
        .map(str::to_owned)
        .to_vec();
    play_args.extend([
        "-t".to_owned(),
        format!("{}", setup.secs),
        "-i".to_owned(),
        setup.clip.display().to_string(),
        "-c".to_owned(),
        "copy".to_owned(),
        "-f".to_owned(),
        "mpegts".to_owned(),
        format!("udp://{}?pkt_size={DATAGRAM}", tap.local_addr()?),
    ]);
    let mut ffmpeg = Proc::spawn(Path::new(clip::FFMPEG), &play_args)?;
    let played = Duration::from_secs_f64(setup.secs) + Duration::from_secs(30);
    let mut received = Vec::new();
    // Collect while ffmpeg plays (the capture's channel is unbounded, so
    // this only keeps memory in one place).
    let play = tokio::task::spawn_blocking(move || {
        let outcome = ffmpeg.wait_success_within("ffmpeg (playing the clip)", played);
        (ffmpeg, outcome)
    });
    tokio::pin!(play);
    let (ffmpeg, outcome) = loop {
        tokio::select! {
            done = &mut play => break done?,
            got = capture.next(Duration::from_millis(100)) => received.extend(got),
        }
    };
    let stderr = ffmpeg.take_lines().join("\n");
    outcome.with_context(|| format!("ffmpeg said: {stderr}"))?;
    // Stragglers: until nothing came for twice the budget (and 0.5 s).
    let quiet = budget * 2 + Duration::from_millis(500);
    let drain_started = std::time::Instant::now();
    while let Some(d) = capture.next(quiet).await {
        received.push(d);
        if drain_started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    let (wire_after, dropped_after) = impairer_counters(control)?;
    received.extend(capture.finish());
    let sent = tap.finish();

    // The tools' own counters, then stop them.
    let mut sender = None;
    let mut receiver = None;
    match &running.srt_stats {
        Some((send_stats, recv_stats)) => {
            sender = srt::sender_retransmissions(send_stats)
                .map(|r| Diagnostics::from([("retransmissions", r)]));
            receiver = srt::receiver_stats(recv_stats);
        }
        None if matches!(setup.system.carrier, Carrier::Surelink { .. }) => {
            let lines: Vec<Vec<String>> = running.procs.iter().map(Proc::take_lines).collect();
            sender = last_json(&lines[0]).map(|v| {
                pick(
                    &v,
                    &["retransmissions", "packets_lost", "last_chance_copies"],
                )
            });
            receiver =
                last_json(&lines[1]).map(|v| pick(&v, &["messages_skipped", "messages_late"]));
        }
        None => {}
    }
    for p in &mut running.procs {
        p.kill();
    }

    let (mut trace, foreign) = probe::match_datagrams(&sent, &received);
    if foreign > 0 {
        bail!("{foreign} datagrams came out that were never sent");
    }
    let link_dropped = dropped_after.saturating_sub(dropped_before);
    if let Some(s) = sender.as_mut() {
        if let Some(&retx) = s.get("retransmissions") {
            s.insert(
                "spurious_retransmissions_at_least",
                (retx - link_dropped as f64).max(0.0),
            );
        }
    }
    trace.sender = sender;
    trace.receiver = receiver;
    let reordered = probe::reordered(&trace);
    let late = probe::late(&trace, setup.late_after);
    let payload: u64 = sent.iter().map(|d| d.bytes.len() as u64).sum();
    let wire = wire_after.saturating_sub(wire_before);
    let mut stream = RtRun::from_trace(trace, DATAGRAM, wire)?;
    let lost_or_late = stream.lost + late;
    stream.payload_bytes = payload;
    stream.wire_per_payload = wire as f64 / payload.max(1) as f64;

    let mut out = ContinuityChecker::new();
    received
        .iter()
        .filter(|d| d.bytes != probe::PROBE)
        .for_each(|d| out.feed(&d.bytes));
    let mut source = ContinuityChecker::new();
    sent.iter().for_each(|d| source.feed(&d.bytes));
    Ok(MpegtsRun {
        stream,
        cc_errors: out.report().errors,
        reordered,
        ts_packets: out.report().packets,
        source_cc_errors: source.report().errors,
        link_dropped,
        late,
        lost_or_late,
    })
}

impl MpegtsReport {
    /// The markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let runs = if self.runs == 1 {
            "1 run".to_owned()
        } else {
            format!("median of {} runs", self.runs)
        };
        let _ = writeln!(
            out,
            "# surelink-bench mpegts ({runs}, {} CPUs, {} build)\n",
            self.cpus, self.profile
        );
        let _ = writeln!(out, "`{}`\n", self.command);
        let _ = writeln!(
            out,
            "Clip: {} s of 1280×720 30 fps H.264 at 4 Mbit/s CBR + AAC, MPEG-TS, played with `ffmpeg -re` in {DATAGRAM}-byte datagrams ({}); SRT: {}.\n",
            self.duration_s, self.ffmpeg, self.srt
        );
        let _ = writeln!(
            out,
            "`late`: datagrams that came out more than the budget + {} ms (the harness's hop allowance) after they went in; `lost or late`: the two together.\n",
            self.late_allowance_ms
        );
        for note in &self.left_out {
            let _ = writeln!(out, "* {note}");
        }
        if !self.left_out.is_empty() {
            out.push('\n');
        }
        if !self.calibrations.is_empty() {
            let _ = writeln!(
                out,
                "## SRT's send-to-output latency (calibration, 1 run)\n"
            );
            let _ = writeln!(
                out,
                "| one-way delay | SRT latency | clip s | p50 ms | p99 ms | max ms |"
            );
            let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
            for c in &self.calibrations {
                match &c.run {
                    Some(r) => {
                        let _ = writeln!(
                            out,
                            "| {} ms | {} ms | {} | {:.2} | {:.2} | {:.2} |",
                            c.delay_ms,
                            c.srt_latency_ms,
                            c.secs,
                            r.stream.p50_ms,
                            r.stream.p99_ms,
                            r.stream.max_ms
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "| {} ms | {} ms | {} | failed: {} |||",
                            c.delay_ms,
                            c.srt_latency_ms,
                            c.secs,
                            c.error.as_deref().unwrap_or("?")
                        );
                    }
                }
            }
            out.push('\n');
        }
        for group in &self.links {
            let l = &group.link;
            let _ = writeln!(
                out,
                "## {}: {}; budget {} ms ({}); SRT latency {} ms ({runs})\n",
                l.name,
                l.describe(),
                group.budget_ms,
                group.budget_source,
                l.srt_latency_ms
            );
            let _ = writeln!(
                out,
                "| system | sent | lost | lost % | late | lost or late % | dup | reordered | CC errors | retransmitted | spurious ≥ | receiver's own count | wire B / payload B | p50 ms | p99 ms | p99.9 ms | max ms |"
            );
            let _ = writeln!(
                out,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"
            );
            for row in &group.rows {
                let Some(m) = &row.median else {
                    let why = row.errors.first().map_or("no run", String::as_str);
                    let _ = writeln!(out, "| {} | failed: {why} ||||||||||||||||", row.system);
                    continue;
                };
                let s = &m.stream;
                let sender = |k: &str| {
                    s.sender
                        .as_ref()
                        .and_then(|d| d.get(k))
                        .map_or("—".to_owned(), |v| format!("{v:.0}"))
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    row.system,
                    s.sent,
                    s.lost,
                    100.0 * s.lost as f64 / s.sent.max(1) as f64,
                    m.late,
                    100.0 * m.lost_or_late as f64 / s.sent.max(1) as f64,
                    s.duplicated,
                    m.reordered,
                    m.cc_errors,
                    sender("retransmissions"),
                    sender("spurious_retransmissions_at_least"),
                    own_count(s),
                    s.wire_per_payload,
                    s.p50_ms,
                    s.p99_ms,
                    s.p999_ms,
                    s.max_ms
                );
            }
            out.push('\n');
        }
        out
    }
}
