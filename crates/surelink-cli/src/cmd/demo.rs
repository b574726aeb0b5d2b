//! `surelink demo`: a self-contained showcase of surelink over a bad network.
//!
//! In one process it starts a receiver [`Endpoint`] and a sender endpoint on
//! 127.0.0.1 (ephemeral ports) and puts an in-process [`Impairer`] between
//! them: random and bursty (Gilbert-Elliott) loss, delay, jitter, reordering
//! and duplication, in both directions. The sender then behaves like a
//! real-time source: `--rate` messages per second of `--size` bytes for
//! `--duration`, each carrying its sequence number and its send time
//! ([`Probe`]). The receiving application checks every message (exactly once,
//! in order, intact) and measures its one-way latency from the embedded
//! timestamp. Progress is shown live on stderr (a progress bar on a terminal,
//! a plain line per second otherwise); at the end a summary goes to stdout
//! (text, or one JSON object with `--json`).
//!
//! The command succeeds when every message was delivered exactly once, in
//! order and intact. With `--deadline` the channel uses
//! [`Delivery::Deadline`]: messages that cannot make it in time may be
//! skipped, so only duplicates, reordering and corruption count as failures.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use surelink::impair::{DirectionStats, ImpairConfig, ImpairStats, Impairer, LinkConfig};
use surelink::{
    Bytes, ClockEstimate, Connection, ConnectionStats, Delivery, Endpoint, EndpointConfig,
};

use crate::args::{parse_duration, parse_size};
use crate::report::stats_json;

/// Bytes of the probe header at the start of every demo message.
const HEADER_LEN: usize = 16;
/// How long the sender's close (everything acknowledged) may take after the
/// last message before the demo gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long the receiver may take to see the end after the sender closed.
const RECEIVE_LIMIT: Duration = Duration::from_secs(10);

/// Arguments of `surelink demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long the sender sends (e.g. 5s, 2s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Messages per second.
    #[arg(long, value_name = "MSG/S", default_value_t = 1000.0)]
    pub rate: f64,
    /// Bytes per message (at least 16: sequence number and send time).
    #[arg(long, value_name = "BYTES", default_value = "200", value_parser = parse_size)]
    pub size: usize,
    /// Random loss on the link, each way (e.g. 5%, 0.05, 0).
    #[arg(long, value_name = "PROB", default_value = "5%")]
    pub loss: String,
    /// Gilbert-Elliott burst loss P:R[:LOSS_BAD[:LOSS_GOOD]] (enter bursts with P, leave with R), or `off`.
    #[arg(long, value_name = "P:R|off", default_value = "0.5%:30%")]
    pub burst: String,
    /// One-way delay of the link.
    #[arg(long, value_name = "DURATION", default_value = "20ms")]
    pub delay: String,
    /// Extra uniform delay in [0, JITTER] per datagram.
    #[arg(long, value_name = "DURATION", default_value = "5ms")]
    pub jitter: String,
    /// Probability that a datagram is held back by --reorder-delay (later ones overtake it).
    #[arg(long, value_name = "PROB", default_value = "1%")]
    pub reorder: String,
    /// How long a reordered datagram is held back.
    #[arg(long, value_name = "DURATION", default_value = "10ms")]
    pub reorder_delay: String,
    /// Duplication probability.
    #[arg(long, value_name = "PROB", default_value = "1%")]
    pub dup: String,
    /// The whole link as a netem spec instead (e.g. `loss=2%,delay=10ms`, or `clean`); replaces the options above.
    #[arg(long, value_name = "SPEC")]
    pub link: Option<String>,
    /// Seed of the link's random decisions.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Deliver with a deadline (e.g. 80ms) instead of reliably: late messages are skipped, not waited for.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

impl DemoArgs {
    /// The link both directions run through.
    fn link_config(&self) -> anyhow::Result<LinkConfig> {
        let spec = match &self.link {
            Some(spec) => spec.clone(),
            None => {
                let mut items = vec![
                    format!("loss={}", self.loss),
                    format!("delay={}", self.delay),
                    format!("jitter={}", self.jitter),
                    format!("reorder={}", self.reorder),
                    format!("reorder-delay={}", self.reorder_delay),
                    format!("dup={}", self.dup),
                ];
                if !matches!(self.burst.trim(), "off" | "none" | "0" | "") {
                    items.push(format!("burst={}", self.burst));
                }
                for item in &items {
                    if item.matches('=').count() != 1 || item.contains(',') {
                        bail!(
                            "invalid link option `{item}`: give single values (or use --link SPEC)"
                        );
                    }
                }
                items.join(",")
            }
        };
        spec.parse()
            .map_err(|e| anyhow!("invalid link option: {e}"))
    }

    /// The number of messages the sender sends.
    fn total(&self) -> anyhow::Result<u64> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            bail!("--rate must be a positive number of messages per second");
        }
        let total = (self.rate * self.duration.as_secs_f64()).round();
        if total < 1.0 {
            bail!("--duration × --rate gives no message to send");
        }
        if total > 1e9 {
            bail!("--duration × --rate is too many messages");
        }
        Ok(total as u64)
    }
}

/// The clock both sides of the demo timestamp with: wall-clock µs since the
/// Unix epoch, read once and advanced with a monotonic clock so that it
/// cannot step during the run.
#[derive(Debug, Clone, Copy)]
struct DemoClock {
    base: Instant,
    base_us: u64,
}

impl DemoClock {
    fn new() -> Self {
        let base_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Self {
            base: Instant::now(),
            base_us,
        }
    }

    fn now_us(&self) -> u64 {
        self.base_us + self.base.elapsed().as_micros() as u64
    }
}

/// The header of a demo message: its sequence number and send time, big-endian;
/// the rest of the message is a pattern derived from the sequence number so
/// that corruption is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    seq: u64,
    sent_us: u64,
}

impl Probe {
    fn encode(&self, size: usize) -> Bytes {
        let mut buf = Vec::with_capacity(size.max(HEADER_LEN));
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&self.sent_us.to_be_bytes());
        buf.extend((HEADER_LEN..size).map(|i| pattern(self.seq, i)));
        Bytes::from(buf)
    }

    /// The probe, and whether the payload is intact; `None` if too short.
    fn decode(data: &[u8]) -> Option<(Probe, bool)> {
        let seq = u64::from_be_bytes(data.get(0..8)?.try_into().ok()?);
        let sent_us = u64::from_be_bytes(data.get(8..16)?.try_into().ok()?);
        let intact = data[HEADER_LEN..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(seq, HEADER_LEN + i));
        Some((Probe { seq, sent_us }, intact))
    }
}

fn pattern(seq: u64, index: usize) -> u8 {
    (seq.wrapping_mul(31).wrapping_add(index as u64) & 0xff) as u8
}

/// What the receiving application saw.
#[derive(Debug)]
struct Tally {
    /// Distinct messages received intact.
    delivered: u64,
    /// Messages received a second time.
    duplicated: u64,
    /// Messages received after a later one.
    out_of_order: u64,
    /// Messages whose bytes were not what was sent (or unreadable).
    corrupted: u64,
    /// Messages with a latency above the deadline (deadline mode only).
    over_deadline: u64,
    /// Highest sequence number seen.
    highest: Option<u64>,
    /// One bit per sequence number seen.
    seen: Vec<u64>,
    /// Application-measured one-way latency, µs.
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            delivered: 0,
            duplicated: 0,
            out_of_order: 0,
            corrupted: 0,
            over_deadline: 0,
            highest: None,
            seen: Vec::new(),
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        }
    }

    /// Records one received message, `now_us` on the demo clock.
    fn record(&mut self, data: &[u8], now_us: u64, deadline: Option<Duration>) {
        let Some((probe, intact)) = Probe::decode(data) else {
            self.corrupted += 1;
            return;
        };
        if !intact {
            self.corrupted += 1;
            return;
        }
        let (word, bit) = ((probe.seq / 64) as usize, probe.seq % 64);
        if word >= self.seen.len() {
            if word > 1 << 26 {
                self.corrupted += 1; // an absurd sequence number
                return;
            }
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicated += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        if self.highest.is_some_and(|h| probe.seq < h) {
            self.out_of_order += 1;
        }
        self.highest = Some(self.highest.map_or(probe.seq, |h| h.max(probe.seq)));
        self.delivered += 1;
        let latency = now_us.saturating_sub(probe.sent_us);
        if deadline.is_some_and(|d| latency > d.as_micros() as u64) {
            self.over_deadline += 1;
        }
        self.latency.saturating_record(latency.max(1));
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            0.0
        } else {
            self.latency.value_at_quantile(q) as f64 / 1e3
        }
    }
}

/// State shared between the sender, the receiver and the progress display.
struct Shared {
    sent: AtomicU64,
    phase: AtomicU8,
    tally: Mutex<Tally>,
}

impl Shared {
    fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

const PHASE_SENDING: u8 = 0;
const PHASE_DRAINING: u8 = 1;

/// Runs `surelink demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.size < HEADER_LEN {
        bail!("--size must be at least {HEADER_LEN} bytes (sequence number and send time)");
    }
    let total = args.total()?;
    let link = args.link_config()?;
    let config = EndpointConfig::default();
    let max = config.protocol.max_message_size;
    if args.size > max {
        bail!("--size must be at most {max} bytes");
    }
    let started = Instant::now();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));

    // Receiver, link, sender.
    let receiver = Endpoint::bind(loopback, config.clone()).context("cannot bind the receiver")?;
    let impairer = Impairer::start(
        ImpairConfig::new(loopback, receiver.local_addr())
            .with_both(link.clone())
            .with_seed(args.seed),
    )
    .context("cannot start the impaired link")?;
    let sender =
        Endpoint::client_with_config(loopback, config).context("cannot bind the sender")?;
    let accepting = {
        let receiver = receiver.clone();
        tokio::spawn(async move { receiver.accept().await })
    };
    let conn = sender
        .connect(impairer.local_addr())
        .await
        .context("the sender cannot connect through the impaired link")?;
    let rconn = tokio::time::timeout(Duration::from_secs(10), accepting)
        .await
        .context("the receiver did not see the connection")??
        .ok_or_else(|| anyhow!("the receiver stopped accepting"))?;
    if let Some(d) = args.deadline {
        conn.set_channel_delivery(0, Delivery::Deadline(d.as_micros() as u64));
    }
    let setup = started.elapsed();

    let clock = DemoClock::new();
    let shared = Arc::new(Shared {
        sent: AtomicU64::new(0),
        phase: AtomicU8::new(PHASE_SENDING),
        tally: Mutex::new(Tally::new()),
    });
    let receiving = tokio::spawn(receive(
        rconn.clone(),
        Arc::clone(&shared),
        clock,
        args.deadline,
    ));
    let progress = Progress::start(total, Arc::clone(&shared), conn.clone());

    let sending_started = Instant::now();
    let sent = send(&conn, &args, total, clock, &shared).await;
    let sending_time = sending_started.elapsed();
    shared.phase.store(PHASE_DRAINING, Ordering::Relaxed);
    let closed = match sent {
        Ok(()) => match tokio::time::timeout(DRAIN_LIMIT, conn.close()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow!("closing the sender's connection failed: {e}")),
            Err(_) => Err(anyhow!(
                "not everything was acknowledged within {DRAIN_LIMIT:?} after the last message"
            )),
        },
        Err(e) => Err(e),
    };
    let received = match tokio::time::timeout(RECEIVE_LIMIT, receiving).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(anyhow!("the receiver task failed: {e}")),
        Err(_) => Err(anyhow!("the receiver did not see the end of the stream")),
    };
    progress.finish();
    let elapsed = sending_started.elapsed();

    let sender_stats = conn.stats();
    let receiver_stats = rconn.stats();
    let clock_estimate = rconn.clock_estimate();
    drop((conn, rconn));
    let link_stats = impairer.shutdown().await;
    for endpoint in [&sender, &receiver] {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }

    let report = Report {
        args: &args,
        link: &link,
        total_sent: shared.sent.load(Ordering::Relaxed),
        setup,
        sending_time,
        elapsed,
        tally: &shared.tally(),
        sender: &sender_stats,
        receiver: &receiver_stats,
        clock: clock_estimate,
        link_stats: &link_stats,
        problems: Vec::new(),
    };
    let mut report = report;
    if let Err(e) = &closed {
        report.problems.push(format!("{e:#}"));
    }
    if let Err(e) = &received {
        report.problems.push(format!("{e:#}"));
    }
    report.check();
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        bail!("demo failed: {}", report.problems.join("; "))
    }
}

/// Sends `total` probes at `args.rate`, as a real-time source would.
async fn send(
    conn: &Connection,
    args: &DemoArgs,
    total: u64,
    clock: DemoClock,
    shared: &Shared,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    while seq < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * args.rate) as u64 + 1).min(total);
        while seq < due {
            let probe = Probe {
                seq,
                sent_us: clock.now_us(),
            };
            tokio::select! {
                sent = conn.send(probe.encode(args.size)) => {
                    sent.with_context(|| format!("cannot send message {seq}"))?;
                }
                ended = conn.closed() => {
                    return Err(anyhow!("the connection ended while sending: {}",
                        ended.map_or("closed by the peer".to_owned(), |e| e.to_string())));
                }
            }
            seq += 1;
            shared.sent.store(seq, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The receiving application: takes every message and checks it.
async fn receive(
    conn: Connection,
    shared: Arc<Shared>,
    clock: DemoClock,
    deadline: Option<Duration>,
) -> anyhow::Result<()> {
    loop {
        match conn.recv_message().await {
            Ok(Some(message)) => {
                let now = clock.now_us();
                shared.tally().record(&message.data, now, deadline);
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(anyhow!("the receiver's connection failed: {e}")),
        }
    }
}

/// The live display on stderr: a progress bar on a terminal, otherwise a plain
/// line per second.
struct Progress {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn start(total: u64, shared: Arc<Shared>, conn: Connection) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner:.green} {elapsed:>3} [{bar:28.cyan/blue}] {pos}/{len} sent  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        let period = if tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        let display = bar.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let sent = shared.sent.load(Ordering::Relaxed);
                let draining = shared.phase.load(Ordering::Relaxed) == PHASE_DRAINING;
                let stats = conn.stats();
                let line = {
                    let t = shared.tally();
                    format!(
                        "delivered {}  retransmissions {}  cwnd {:.1} KB  unacked {:.1} KB  latency p50 {:.1} ms  p99 {:.1} ms{}",
                        t.delivered,
                        stats.retransmissions,
                        stats.cwnd as f64 / 1e3,
                        conn.unacked_bytes() as f64 / 1e3,
                        t.quantile_ms(0.5),
                        t.quantile_ms(0.99),
                        if draining { "  (draining)" } else { "" }
                    )
                };
                match &display {
                    Some(bar) => {
                        bar.set_position(sent);
                        bar.set_message(line);
                        bar.tick();
                    }
                    None => eprintln!(
                        "surelink demo: {:>5.1}s  sent {sent}/{total}  {line}",
                        started.elapsed().as_secs_f64()
                    ),
                }
            }
        });
        Self { task, bar }
    }

    fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Everything the summary shows.
struct Report<'a> {
    args: &'a DemoArgs,
    link: &'a LinkConfig,
    total_sent: u64,
    setup: Duration,
    sending_time: Duration,
    elapsed: Duration,
    tally: &'a Tally,
    sender: &'a ConnectionStats,
    receiver: &'a ConnectionStats,
    clock: Option<ClockEstimate>,
    link_stats: &'a ImpairStats,
    problems: Vec<String>,
}

impl Report<'_> {
    fn lost(&self) -> u64 {
        self.total_sent.saturating_sub(self.tally.delivered)
    }

    fn delivery(&self) -> String {
        match self.args.deadline {
            Some(d) => format!("deadline {} ms", d.as_secs_f64() * 1e3),
            None => "reliable".to_owned(),
        }
    }

    /// Adds what went wrong to `problems`.
    fn check(&mut self) {
        let t = self.tally;
        if t.duplicated > 0 {
            self.problems
                .push(format!("{} messages delivered twice", t.duplicated));
        }
        if t.out_of_order > 0 {
            self.problems.push(format!(
                "{} messages delivered out of order",
                t.out_of_order
            ));
        }
        if t.corrupted > 0 {
            self.problems
                .push(format!("{} messages corrupted", t.corrupted));
        }
        if self.args.deadline.is_none() && self.lost() > 0 {
            self.problems.push(format!(
                "{} of {} messages not delivered",
                self.lost(),
                self.total_sent
            ));
        }
    }

    fn json(&self) -> Value {
        let t = self.tally;
        let s = self.sender;
        let r = self.receiver;
        // The sender's statistics, and the receiver's beside them.
        let mut transport = stats_json(s);
        transport.insert("receiver".into(), Value::Object(stats_json(r)));
        json!({
            "ok": self.problems.is_empty(),
            "problems": self.problems,
            "settings": {
                "duration_s": self.args.duration.as_secs_f64(),
                "rate_msgs_per_s": self.args.rate,
                "size_bytes": self.args.size,
                "link": self.link.to_string(),
                "seed": self.args.seed,
                "delivery": self.delivery(),
                "deadline_ms": self.args.deadline.map(|d| d.as_secs_f64() * 1e3),
            },
            "setup_s": self.setup.as_secs_f64(),
            "sending_s": self.sending_time.as_secs_f64(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "messages": {
                "sent": self.total_sent,
                "delivered": t.delivered,
                "lost": self.lost(),
                "duplicated": t.duplicated,
                "out_of_order": t.out_of_order,
                "corrupted": t.corrupted,
                "skipped": r.messages_skipped,
                "late": r.messages_late,
                "abandoned": s.messages_abandoned,
                "over_deadline": t.over_deadline,
            },
            "latency_ms": {
                "p50": t.quantile_ms(0.5),
                "p90": t.quantile_ms(0.9),
                "p99": t.quantile_ms(0.99),
                "p999": t.quantile_ms(0.999),
                "max": if t.latency.is_empty() { 0.0 } else { t.latency.max() as f64 / 1e3 },
                "min": if t.latency.is_empty() { 0.0 } else { t.latency.min() as f64 / 1e3 },
                "mean": t.latency.mean() / 1e3,
            },
            "core_latency_ms": {
                "p50": r.latency_p50_us as f64 / 1e3,
                "p99": r.latency_p99_us as f64 / 1e3,
                "p999": r.latency_p999_us as f64 / 1e3,
                "max": r.latency_max_us as f64 / 1e3,
            },
            "transport": transport,
            "link_counters": {
                "upstream": direction_json(&self.link_stats.upstream),
                "downstream": direction_json(&self.link_stats.downstream),
            },
            "clock": self.clock.map(|c| json!({
                "offset_ms": c.offset_us / 1e3,
                "error_bound_ms": c.error_bound_us / 1e3,
                "delay_ms": c.delay_us / 1e3,
                "drift_ppm": c.drift_ppm,
                "samples": c.samples,
                "steps": c.steps,
            })),
        })
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let t = self.tally;
        let s = self.sender;
        let r = self.receiver;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "surelink demo: {:.1} s of {} msg/s × {} B through an impaired loopback link ({} delivery)",
            self.args.duration.as_secs_f64(),
            self.args.rate,
            self.args.size,
            self.delivery()
        );
        let _ = writeln!(
            o,
            "  link, each way:  {}  (seed {})",
            self.link, self.args.seed
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "  messages    sent {}  delivered {}  lost {}  duplicated {}  out of order {}  corrupted {}",
            self.total_sent,
            t.delivered,
            self.lost(),
            t.duplicated,
            t.out_of_order,
            t.corrupted
        );
        if let Some(d) = self.args.deadline {
            let _ = writeln!(
                o,
                "              skipped by the receiver {} (of which arrived late {}), abandoned by the sender {}, over {} ms {}",
                r.messages_skipped,
                r.messages_late,
                s.messages_abandoned,
                d.as_secs_f64() * 1e3,
                t.over_deadline
            );
        }
        let max = if t.latency.is_empty() {
            0.0
        } else {
            t.latency.max() as f64 / 1e3
        };
        let _ = writeln!(
            o,
            "  latency     p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms  (send → receive, measured by the application)",
            t.quantile_ms(0.5),
            t.quantile_ms(0.9),
            t.quantile_ms(0.99),
            t.quantile_ms(0.999),
            max
        );
        let _ = writeln!(
            o,
            "  transport   packets sent {}, lost on the wire {}, retransmissions {} (R = {:.1}%), probe timeouts {}, rtt {:.1} ms (min {:.1} ms)",
            s.packets_sent,
            s.packets_lost,
            s.retransmissions,
            s.retransmission_rate() * 100.0,
            s.probe_timeouts,
            s.rtt.as_secs_f64() * 1e3,
            s.min_rtt.as_secs_f64() * 1e3
        );
        let _ = writeln!(
            o,
            "              receiver: packets {}, duplicates dropped {} (packets) + {} (fragments)",
            r.packets_received, r.duplicate_packets, r.duplicate_fragments
        );
        for (name, d) in [
            ("upstream  ", &self.link_stats.upstream),
            ("downstream", &self.link_stats.downstream),
        ] {
            let l = &d.link;
            let _ = writeln!(
                o,
                "  link {name}  datagrams {}, dropped {} (random {}, burst {}), duplicated {}, reordered {}",
                l.sent,
                l.dropped(),
                l.dropped_loss,
                l.dropped_burst,
                l.duplicated,
                l.reordered
            );
        }
        match self.clock {
            Some(c) => {
                let _ = writeln!(
                    o,
                    "  clock       receiver's estimate of the sender's clock: offset {:+.3} ms ± {:.3} ms, delay {:.3} ms, drift {:+.1} ppm, {} samples",
                    c.offset_us / 1e3,
                    c.error_bound_us / 1e3,
                    c.delay_us / 1e3,
                    c.drift_ppm,
                    c.samples
                );
            }
            None => {
                let _ = writeln!(o, "  clock       no estimate yet");
            }
        }
        let _ = writeln!(o);
        if self.problems.is_empty() {
            let what = if self.args.deadline.is_some() {
                "no message delivered twice or out of order"
            } else {
                "every message delivered exactly once, in order"
            };
            let _ = writeln!(o, "  OK: {what}");
        } else {
            let _ = writeln!(o, "  FAILED: {}", self.problems.join("; "));
        }
        o
    }
}

fn direction_json(d: &DirectionStats) -> Value {
    let l = &d.link;
    json!({
        "datagrams": l.sent,
        "delivered": l.delivered,
        "dropped": l.dropped(),
        "dropped_loss": l.dropped_loss,
        "dropped_burst": l.dropped_burst,
        "duplicated": l.duplicated,
        "reordered": l.reordered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_detect_corruption() {
        let p = Probe {
            seq: 42,
            sent_us: 1_700_000_000_000_000,
        };
        let data = p.encode(200);
        assert_eq!(data.len(), 200);
        assert_eq!(Probe::decode(&data), Some((p, true)));
        let mut bad = data.to_vec();
        bad[100] ^= 1;
        assert_eq!(Probe::decode(&bad), Some((p, false)));
        assert_eq!(Probe::decode(&data[..10]), None);
        assert_eq!(Probe::decode(&p.encode(16)), Some((p, true)));
    }

    #[test]
    fn the_tally_counts_duplicates_and_reordering() {
        let mut t = Tally::new();
        for seq in [0, 1, 3, 2, 3, 4] {
            let data = Probe { seq, sent_us: 100 }.encode(32);
            t.record(&data, 1_100, Some(Duration::from_micros(500)));
        }
        assert_eq!(t.delivered, 5);
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.corrupted, 0);
        assert_eq!(t.over_deadline, 5);
        assert_eq!(t.highest, Some(4));
    }

    #[test]
    fn the_default_link_parses() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            demo: DemoArgs,
        }
        let cli = Cli::parse_from(["demo"]);
        let link = cli.demo.link_config().expect("default link");
        assert!(link.burst.is_some());
        assert_eq!(cli.demo.total().ok(), Some(5000));
        let cli = Cli::parse_from(["demo", "--burst", "off", "--loss", "0"]);
        assert!(cli.demo.link_config().expect("link").burst.is_none());
        let cli = Cli::parse_from(["demo", "--loss", "150%"]);
        assert!(cli.demo.link_config().is_err());
        let cli = Cli::parse_from(["demo", "--link", "clean"]);
        assert!(cli.demo.link_config().expect("clean").is_clean());
    }
}
