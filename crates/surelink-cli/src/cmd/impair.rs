//! `surelink impair`: a user-space network emulator between UDP clients and
//! one target.
//!
//! Runs a [`surelink::impair::Impairer`]: clients send to `--listen`,
//! datagrams go to `--target` through a seeded impairment model, replies come
//! back to the client that caused them. Impairments are given with shared
//! options (`--loss 2% --delay 10ms ...`, applied to both directions) and
//! per-direction spec strings (`--up SPEC`, `--down SPEC`, in the
//! `surelink_netem` spec syntax) whose keys override the shared options for
//! that direction. All values are parsed by `surelink_netem`: the shared
//! options are turned into spec items and composed with `--up`/`--down`.
//!
//! The command runs for `--duration`, or until SIGINT/SIGTERM. SIGUSR1
//! toggles an on-demand cut of both directions; `--control ADDR` also accepts
//! the UDP text commands `cut`, `restore` and `stats` (each answered with a
//! JSON object). On exit the counters go to stderr, or with `--json` as one
//! JSON object to stdout. See `docs/IMPAIR.md`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::{json, Value};
use surelink::impair::netem::parse_duration;
use surelink::impair::{
    DirectionStats, ImpairConfig, ImpairHandle, ImpairStats, Impairer, LinkConfig,
    DEFAULT_MAX_FLOWS,
};
use tokio::net::UdpSocket;

use crate::args::{parse_host_port, HostPort};
use crate::exit::UsageError;

/// Arguments of `surelink impair`.
#[derive(Debug, Args)]
pub struct ImpairArgs {
    /// Address clients send to, HOST:PORT (port 0 picks a free port; the address is printed on stderr).
    #[arg(long, value_name = "ADDR", value_parser = parse_host_port)]
    pub listen: HostPort,
    /// Where datagrams are forwarded to, HOST:PORT.
    #[arg(long, value_name = "ADDR", value_parser = parse_host_port)]
    pub target: HostPort,
    #[command(flatten)]
    pub link: Box<SharedLinkArgs>,
    /// Client → target impairments as a spec (e.g. loss=5%,delay=10ms); its keys override the shared options upstream; `clean` for none.
    #[arg(long, value_name = "SPEC")]
    pub up: Option<String>,
    /// Target → client impairments as a spec; its keys override the shared options downstream; `clean` for none.
    #[arg(long, value_name = "SPEC")]
    pub down: Option<String>,
    /// Seed of all random decisions (same seed, same clients, same datagrams: same drops).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Stop after this long (e.g. 30s); otherwise run until SIGINT or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub duration: Option<Duration>,
    /// Also accept the UDP text commands `cut`, `restore` and `stats` on this address (answered with JSON).
    #[arg(long, value_name = "ADDR", value_parser = parse_host_port)]
    pub control: Option<HostPort>,
    /// On exit, print the counters as one JSON object on stdout (instead of text on stderr).
    #[arg(long)]
    pub json: bool,
    /// At most this many clients are tracked at once; datagrams from further clients are dropped.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FLOWS)]
    pub max_flows: usize,
    /// Forget a client after this long without traffic.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, default_value = "60s")]
    pub idle_timeout: Duration,
    #[command(flatten)]
    pub metrics: crate::metrics::MetricsArgs,
}

/// Impairments applied to both directions unless `--up`/`--down` override
/// them. Each value is checked by the netem spec parser.
#[derive(Debug, Clone, Default, Args)]
pub struct SharedLinkArgs {
    /// Random loss probability, e.g. 2% or 0.02.
    #[arg(long, value_name = "PROB")]
    pub loss: Option<String>,
    /// Gilbert-Elliott burst loss: P (good→bad), R (bad→good), loss in the bad state (default 100%), loss in the good state (default 0).
    #[arg(long, value_name = "P:R[:LOSS_BAD[:LOSS_GOOD]]")]
    pub burst: Option<String>,
    /// One-way delay, e.g. 10ms.
    #[arg(long, value_name = "DURATION")]
    pub delay: Option<String>,
    /// Extra uniform delay in [0, JITTER] (keeps order).
    #[arg(long, value_name = "DURATION")]
    pub jitter: Option<String>,
    /// Probability that a datagram is held back by --reorder-delay so later ones overtake it.
    #[arg(long, value_name = "PROB")]
    pub reorder: Option<String>,
    /// How long a reordered datagram is held back.
    #[arg(long, value_name = "DURATION")]
    pub reorder_delay: Option<String>,
    /// Duplication probability.
    #[arg(long, value_name = "PROB")]
    pub dup: Option<String>,
    /// Bottleneck rate, e.g. 10mbit (units bit, kbit, mbit, gbit).
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,
    /// Bottleneck queue limit, e.g. 64kb (units b, kb, mb; tail drop when full).
    #[arg(long, value_name = "SIZE")]
    pub queue: Option<String>,
    /// Start of a planned cut, measured from start-up (repeatable; pairs with --cut-for).
    #[arg(long, value_name = "DURATION")]
    pub cut_at: Vec<String>,
    /// Length of the planned cut given by the matching --cut-at (repeatable).
    #[arg(long, value_name = "DURATION")]
    pub cut_for: Vec<String>,
    /// Repeating cut: down for DOWN at the end of every PERIOD, e.g. 500ms/100ms.
    #[arg(long, value_name = "PERIOD/DOWN")]
    pub flap: Option<String>,
}

/// Parses a duration with the netem syntax (`10ms`, `1.5s`, `250us`).
fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

impl SharedLinkArgs {
    /// The options as spec items `(key, value)`, with the spec's key names.
    fn items(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        let single = [
            ("loss", &self.loss),
            ("burst", &self.burst),
            ("delay", &self.delay),
            ("jitter", &self.jitter),
            ("reorder", &self.reorder),
            ("reorder-delay", &self.reorder_delay),
            ("dup", &self.dup),
            ("rate", &self.rate),
            ("queue", &self.queue),
            ("flap", &self.flap),
        ];
        let mut items = Vec::new();
        for (key, value) in single {
            if let Some(value) = value {
                items.push((key, checked_value(key, value)?));
            }
        }
        if self.cut_at.len() != self.cut_for.len() {
            bail!(UsageError(format!(
                "every --cut-at needs a matching --cut-for (got {} --cut-at and {} --cut-for)",
                self.cut_at.len(),
                self.cut_for.len()
            )));
        }
        for (at, length) in self.cut_at.iter().zip(&self.cut_for) {
            items.push(("cut-at", checked_value("cut-at", at)?));
            items.push(("cut-for", checked_value("cut-for", length)?));
        }
        Ok(items)
    }
}

/// A shared option's value, refused if it would smuggle in further spec items.
fn checked_value(key: &str, value: &str) -> anyhow::Result<String> {
    if value.contains(',') || value.contains('=') {
        bail!(UsageError(format!(
            "--{key}: `{value}` is not a single value (use --up/--down for a spec)"
        )));
    }
    Ok(value.trim().to_owned())
}

/// The key of a spec item as the netem parser reads it (case-insensitive,
/// `_` for `-`, `duplicate` for `dup`), to match it against shared options.
fn item_key(item: &str) -> String {
    let key = item.split_once('=').map_or(item, |(key, _)| key);
    let key = key.trim().to_ascii_lowercase().replace('_', "-");
    if key == "duplicate" {
        "dup".to_owned()
    } else {
        key
    }
}

/// One direction's configuration: the shared items, minus those whose key
/// `spec` sets (all cut pairs if it sets any), plus `spec`'s items; `clean`
/// means no impairment at all. Parsed (and validated) by netem.
fn compose(shared: &[(&'static str, String)], spec: Option<&str>) -> Result<LinkConfig, String> {
    let spec = spec.unwrap_or("").trim();
    if spec.eq_ignore_ascii_case("clean") {
        return Ok(LinkConfig::clean());
    }
    let own: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    let own_keys: Vec<String> = own.iter().map(|item| item_key(item)).collect();
    let overrides = |key: &str| {
        let is_cut = |k: &str| k == "cut-at" || k == "cut-for";
        own_keys
            .iter()
            .any(|own| own == key || (is_cut(own) && is_cut(key)))
    };
    let mut items: Vec<String> = shared
        .iter()
        .filter(|(key, _)| !overrides(key))
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    items.extend(own.iter().map(|item| (*item).to_owned()));
    items.join(",").parse().map_err(|e| format!("{e}"))
}

impl ImpairArgs {
    /// The upstream and downstream configurations.
    fn link_configs(&self) -> anyhow::Result<(LinkConfig, LinkConfig)> {
        let shared = self.link.items()?;
        // Check the shared options on their own first, so that an error in
        // them is reported as such and not once per direction.
        compose(&shared, None)
            .map_err(|e| UsageError(format!("invalid impairment option: {e}")))?;
        let up = compose(&shared, self.up.as_deref())
            .map_err(|e| UsageError(format!("invalid --up spec: {e}")))?;
        let down = compose(&shared, self.down.as_deref())
            .map_err(|e| UsageError(format!("invalid --down spec: {e}")))?;
        Ok((up, down))
    }
}

/// Runs `surelink impair`.
pub async fn run(args: ImpairArgs) -> anyhow::Result<()> {
    let (upstream, downstream) = args.link_configs()?;
    if args.max_flows == 0 {
        bail!(UsageError("--max-flows must be at least 1".into()));
    }
    // Before anything is announced: a signal sent right after the
    // "listening" line must find its handler installed.
    let mut signals = Signals::new().context("cannot install signal handlers")?;

    let listen = args.listen.resolve().await?;
    let target = args.target.resolve().await?;
    let config = ImpairConfig::new(listen, target)
        .with_upstream(upstream.clone())
        .with_downstream(downstream.clone())
        .with_seed(args.seed)
        .with_max_flows(args.max_flows)
        .with_idle_timeout(args.idle_timeout);
    let impairer = Impairer::start(config).with_context(|| format!("cannot listen on {listen}"))?;
    args.metrics.serve("impair").await?;
    let _metrics = crate::metrics::watch(crate::metrics::Source::Impairer(impairer.stats_reader()));
    let control = match &args.control {
        Some(addr) => {
            let addr = addr.resolve().await?;
            let socket = crate::net::bind_udp(addr)
                .with_context(|| format!("cannot open the control port {addr}"))?;
            Some(socket)
        }
        None => None,
    };
    let started = Instant::now();
    let context = Context {
        upstream,
        downstream,
        seed: args.seed,
        started,
    };

    eprintln!(
        "surelink impair: listening on {}, forwarding to {target}",
        impairer.local_addr()
    );
    eprintln!(
        "surelink impair: upstream {}; downstream {}; seed {}",
        context.upstream, context.downstream, context.seed
    );
    if let Some(socket) = &control {
        eprintln!("surelink impair: control on {}", socket.local_addr()?);
    }

    let stop_at = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            event = signals.next() => match event {
                SignalEvent::Stop => break,
                SignalEvent::ToggleCut => {
                    let cut = !impairer.is_cut();
                    impairer.set_cut(cut);
                    eprintln!("surelink impair: {} (SIGUSR1)", cut_word(cut));
                }
            },
            () = sleep_until_opt(stop_at) => break,
            read = recv_opt(control.as_ref(), &mut buf) => match read {
                Ok((len, from)) => {
                    let command = String::from_utf8_lossy(buf.get(..len).unwrap_or_default());
                    let reply = control_command(&impairer, &context, command.trim(), from);
                    if let Some(socket) = &control {
                        if let Err(error) = socket.send_to(reply.to_string().as_bytes(), from).await {
                            tracing::warn!(%error, %from, "cannot answer a control command");
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "control port read failed"),
            },
        }
    }

    let stats = impairer.shutdown().await;
    if args.json {
        println!("{}", stats_json(&context, &stats));
    } else {
        eprintln!(
            "surelink impair: stopped after {:.3}s, seed {}\n{}",
            started.elapsed().as_secs_f64(),
            context.seed,
            indent(&stats.to_string())
        );
    }
    Ok(())
}

/// What the reports need besides the counters.
#[derive(Debug)]
struct Context {
    upstream: LinkConfig,
    downstream: LinkConfig,
    seed: u64,
    started: Instant,
}

/// Carries out one control-port command and returns the reply.
fn control_command(
    impairer: &ImpairHandle,
    context: &Context,
    command: &str,
    from: SocketAddr,
) -> Value {
    match command.to_ascii_lowercase().as_str() {
        "cut" | "restore" => {
            let cut = command.eq_ignore_ascii_case("cut");
            impairer.set_cut(cut);
            eprintln!("surelink impair: {} (control from {from})", cut_word(cut));
            json!({ "ok": true, "cut": cut })
        }
        "stats" => stats_json(context, &impairer.stats()),
        _ => json!({
            "ok": false,
            "error": format!("unknown command `{}` (expected cut, restore or stats)", command.escape_debug()),
        }),
    }
}

fn cut_word(cut: bool) -> &'static str {
    if cut {
        "link cut"
    } else {
        "link restored"
    }
}

/// The counters as one JSON object (also the control port's `stats` reply).
fn stats_json(context: &Context, stats: &ImpairStats) -> Value {
    json!({
        "elapsed_s": context.started.elapsed().as_secs_f64(),
        "seed": context.seed,
        "cut": stats.cut,
        "flows": {
            "opened": stats.flows_opened,
            "active": stats.flows_active,
            "expired": stats.flows_expired,
            "refused": stats.flows_refused,
        },
        "upstream": direction_json(&context.upstream, &stats.upstream),
        "downstream": direction_json(&context.downstream, &stats.downstream),
    })
}

fn direction_json(config: &LinkConfig, stats: &DirectionStats) -> Value {
    let link = &stats.link;
    json!({
        "spec": config.to_string(),
        "sent": link.sent,
        "delivered": link.delivered,
        "dropped": link.dropped(),
        "dropped_loss": link.dropped_loss,
        "dropped_burst": link.dropped_burst,
        "dropped_cut": link.dropped_cut,
        "dropped_queue": link.dropped_queue,
        "duplicated": link.duplicated,
        "reordered": link.reordered,
        "in_flight": link.in_flight(),
        "bytes_in": link.bytes_in,
        "bytes_out": link.bytes_out,
        "forwarded": stats.forwarded,
        "send_errors": stats.send_errors,
        "recv_errors": stats.recv_errors,
        "dropped_backlog": stats.dropped_backlog,
    })
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignalEvent {
    /// SIGINT or SIGTERM.
    Stop,
    /// SIGUSR1.
    ToggleCut,
}

/// The signals `impair` reacts to, installed up front.
#[derive(Debug)]
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    user1: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            user1: signal(SignalKind::user_defined1())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Self {})
    }

    #[cfg(unix)]
    async fn next(&mut self) -> SignalEvent {
        tokio::select! {
            _ = self.interrupt.recv() => SignalEvent::Stop,
            _ = self.terminate.recv() => SignalEvent::Stop,
            _ = self.user1.recv() => SignalEvent::ToggleCut,
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> SignalEvent {
        let _ = tokio::signal::ctrl_c().await;
        SignalEvent::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ImpairArgs,
    }

    fn parse(extra: &[&str]) -> ImpairArgs {
        let mut argv = vec![
            "impair",
            "--listen",
            "127.0.0.1:0",
            "--target",
            "127.0.0.1:9",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    fn configs(extra: &[&str]) -> anyhow::Result<(LinkConfig, LinkConfig)> {
        parse(extra).link_configs()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn shared_options_apply_to_both_directions() {
        let (up, down) = configs(&[
            "--loss",
            "2%",
            "--delay",
            "10ms",
            "--jitter",
            "1ms",
            "--reorder",
            "1%",
            "--reorder-delay",
            "5ms",
            "--dup",
            "0.5%",
            "--rate",
            "10mbit",
            "--queue",
            "64kb",
            "--burst",
            "0.01:0.3",
            "--cut-at",
            "5s",
            "--cut-for",
            "2s",
            "--cut-at",
            "10s",
            "--cut-for",
            "1s",
            "--flap",
            "500ms/100ms",
        ])
        .unwrap();
        assert_eq!(up, down);
        assert_eq!(up.loss, 0.02);
        assert_eq!(up.delay, 10 * MS);
        assert_eq!(up.rate_bps, Some(10_000_000));
        assert_eq!(up.queue_bytes, 64 * 1024);
        assert_eq!(up.cuts.cuts.len(), 2);
        assert!(up.cuts.flap.is_some() && up.burst.is_some());
        let (up, down) = configs(&[]).unwrap();
        assert!(up.is_clean() && down.is_clean());
    }

    #[test]
    fn direction_specs_override_per_key() {
        let (up, down) = configs(&[
            "--loss",
            "2%",
            "--delay",
            "10ms",
            "--cut-at",
            "1s",
            "--cut-for",
            "1s",
            "--up",
            "LOSS=5%,cut_at=3s,cut-for=1s",
            "--down",
            "duplicate=1%",
        ])
        .unwrap();
        assert_eq!((up.loss, up.delay), (0.05, 10 * MS));
        assert_eq!(up.cuts.cuts.len(), 1);
        assert_eq!(up.cuts.cuts[0].start, Duration::from_secs(3));
        assert_eq!(
            (down.loss, down.delay, down.duplicate),
            (0.02, 10 * MS, 0.01)
        );
        assert_eq!(down.cuts.cuts[0].start, Duration::from_secs(1));
        let (up, down) = configs(&["--loss", "2%", "--down", "clean"]).unwrap();
        assert_eq!(up.loss, 0.02);
        assert!(down.is_clean());
        // Reordering split between shared options and a direction spec.
        let (up, _) = configs(&["--reorder-delay", "5ms", "--up", "reorder=10%"]).unwrap();
        assert_eq!((up.reorder, up.reorder_delay), (0.1, 5 * MS));
    }

    #[test]
    fn errors_name_the_culprit() {
        let err = |extra: &[&str]| configs(extra).unwrap_err().to_string();
        assert!(err(&["--loss", "150%"]).contains("`loss`"));
        assert!(err(&["--cut-at", "1s"]).contains("--cut-for"));
        assert!(err(&["--up", "bogus=1"])
            .starts_with("invalid --up spec: unknown impairment key `bogus`"));
        assert!(err(&["--down", "delay=fast"]).starts_with("invalid --down spec"));
        assert!(err(&["--loss", "1%,delay=5ms"]).contains("not a single value"));
        assert!(err(&["--reorder", "5%"]).contains("reorder-delay"));
        let clap_err = Cli::try_parse_from([
            "impair",
            "--listen",
            "127.0.0.1:0",
            "--target",
            "x:1",
            "--duration",
            "5",
        ])
        .unwrap_err()
        .to_string();
        assert!(clap_err.contains("--duration"), "{clap_err}");
    }

    #[test]
    fn json_has_every_counter() {
        let context = Context {
            upstream: "loss=10%".parse().unwrap(),
            downstream: LinkConfig::clean(),
            seed: 3,
            started: Instant::now(),
        };
        let mut stats = ImpairStats::default();
        stats.upstream.link.sent = 10;
        stats.upstream.link.dropped_loss = 1;
        stats.downstream.forwarded = 9;
        let value = stats_json(&context, &stats);
        assert_eq!(value["seed"], 3);
        assert_eq!(value["upstream"]["spec"], "loss=10%");
        assert_eq!(value["upstream"]["dropped"], 1);
        assert_eq!(value["downstream"]["forwarded"], 9);
        assert_eq!(value["downstream"]["spec"], "clean");
        assert_eq!(value["flows"]["opened"], 0);
    }
}
