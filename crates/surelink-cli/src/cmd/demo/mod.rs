//! `surelink demo`: a self-contained showcase of every mechanism of surelink,
//! told as a story in one process.
//!
//! [`run`] drives five steps one after another, each through in-process
//! [`Impairer`]s on 127.0.0.1 (ephemeral ports):
//!
//! 1. **loss**: one stream through the configured link (random and bursty
//!    loss, delay, jitter, reordering, duplication): the sender behaves like
//!    a real-time source, `--rate` messages per second of `--size` bytes for
//!    `--duration`, each carrying its sequence number and send time
//!    ([`Probe`]); the receiving application checks every message (exactly
//!    once, in order, intact) and measures its latency. With `--deadline`
//!    the channel uses [`Delivery::Deadline`];
//! 2. **failover** and 3. **crash_restart**: see [`story`];
//! 4. **deadline**: a stream on a 60 ms deadline channel through a link whose
//!    delay spikes past it: skipped, never delivered late;
//! 5. **clock**: step 1's receiver's estimate of the sender's clock. The
//!    sender's endpoint timestamps with this host's clock moved by a
//!    seed-chosen offset ([`sender_clock_offset_us`], up to ±500 ms), so the
//!    estimate is shown against a known true value, which its error bound
//!    must cover.
//!
//! Each step's line is shown as it completes, with live progress on stderr
//! (a progress bar or spinner on a terminal, plain lines otherwise); then a
//! table mechanism by mechanism and step 1 in detail go to stdout, or one
//! JSON object with `--json` (step 1's figures at the top level and a
//! `steps` array). `--plot` writes the latency timeline ([`plot`]). The
//! command succeeds when every step's invariants held.

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

mod plot;
mod story;
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
    /// How long step 1 (loss) sends (e.g. 3s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
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
    /// Step 1 delivers with this deadline (e.g. 80ms) instead of reliably: late messages are skipped, not waited for.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// Print the summary as one JSON object on stdout (a `steps` array, and step 1's figures at the top level).
    #[arg(long)]
    pub json: bool,
    /// Shorter steps 2–4 (1 s of traffic each instead of 3 s).
    #[arg(long)]
    pub quick: bool,
    /// Write the latency timeline, with the story's events marked, to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
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
pub(super) struct DemoClock {
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

    pub(super) fn now_us(&self) -> u64 {
        self.base_us + self.base.elapsed().as_micros() as u64
    }
}

/// The header of a demo message: its sequence number and send time, big-endian;
/// the rest of the message is a pattern derived from the sequence number so
/// that corruption is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Probe {
    pub(super) seq: u64,
    pub(super) sent_us: u64,
}

impl Probe {
    pub(super) fn encode(&self, size: usize) -> Bytes {
        let mut buf = Vec::with_capacity(size.max(HEADER_LEN));
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&self.sent_us.to_be_bytes());
        buf.extend((HEADER_LEN..size).map(|i| pattern(self.seq, i)));
        Bytes::from(buf)
    }

    /// The probe, and whether the payload is intact; `None` if too short.
    pub(super) fn decode(data: &[u8]) -> Option<(Probe, bool)> {
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
pub(super) struct Tally {
    /// Distinct messages received intact.
    delivered: u64,
    /// Messages received a second time.
    duplicated: u64,
    /// Messages received after a later one.
    out_of_order: u64,
    /// Messages whose bytes were not what was sent (or unreadable).
    corrupted: u64,
    /// Messages with a latency above the deadline (deadline mode only), as
    /// the application measures it: from before `send` to after `recv`.
    over_deadline: u64,
    /// Messages the transport delivered with its own latency (from when it
    /// took the message to its delivery) above the deadline.
    delivered_late: u64,
    /// Highest sequence number seen.
    highest: Option<u64>,
    /// One bit per sequence number seen.
    seen: Vec<u64>,
    /// Application-measured one-way latency, µs.
    latency: Histogram<u64>,
    /// (receive time on the demo clock, latency), µs, of every delivered
    /// message: the latency timeline `--plot` draws.
    timeline: Vec<(u64, u64)>,
}

impl Tally {
    fn new() -> Self {
        Self {
            delivered: 0,
            duplicated: 0,
            out_of_order: 0,
            corrupted: 0,
            over_deadline: 0,
            delivered_late: 0,
            highest: None,
            seen: Vec::new(),
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            timeline: Vec::new(),
        }
    }

    /// Records one received message, `now_us` on the demo clock.
    pub(super) fn record(&mut self, data: &[u8], now_us: u64, deadline: Option<Duration>) {
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
        self.timeline.push((now_us, latency));
    }

    pub(super) fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            0.0
        } else {
            self.latency.value_at_quantile(q) as f64 / 1e3
        }
    }
}

/// State shared between the sender, the receiver and the progress display.
pub(super) struct Shared {
    pub(super) sent: AtomicU64,
    pub(super) phase: AtomicU8,
    tally: Mutex<Tally>,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            phase: AtomicU8::new(PHASE_SENDING),
            tally: Mutex::new(Tally::new()),
        }
    }

    pub(super) fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tally, leaving an empty one behind.
    pub(super) fn take_tally(&self) -> Tally {
        std::mem::replace(&mut *self.tally(), Tally::new())
    }
}

const PHASE_SENDING: u8 = 0;
const PHASE_DRAINING: u8 = 1;

/// One step of the story as the summary shows it.
struct Step {
    /// Its name on screen.
    name: &'static str,
    /// The mechanism it shows.
    mechanism: &'static str,
    /// The one-line result with its figures.
    line: String,
    /// Its key figure, for the table.
    headline: String,
    /// The figures, for `--json`.
    figures: Value,
    /// Whether its invariants held.
    pass: bool,
}

impl Step {
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "mechanism": self.mechanism,
            "summary": self.line,
            "headline": self.headline,
            "figures": self.figures,
            "pass": self.pass,
        })
    }
}

/// Runs `surelink demo`: the five steps one after another, then the
/// summary (text or JSON) and the plot.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.size < HEADER_LEN {
        bail!("--size must be at least {HEADER_LEN} bytes (sequence number and send time)");
    }
    let total = args.total()?;
    let link = args.link_config()?;
    let max = EndpointConfig::default().protocol.max_message_size;
    if args.size > max {
        bail!("--size must be at most {max} bytes");
    }
    let clock = DemoClock::new();
    let pace = Pace {
        rate: args.rate,
        size: args.size,
    };
    let step_time = if args.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };
    let step_total = ((args.rate * step_time.as_secs_f64()).round() as u64).max(1);
    let since_start = |us: u64| us.saturating_sub(clock.base_us) as f64 / 1e6;
    let mut steps = Vec::new();
    let mut markers = Vec::new();
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut plot_points = |tally: &Tally| {
        points.extend(
            tally
                .timeline
                .iter()
                .map(|&(at, lat)| (since_start(at), lat as f64 / 1e3)),
        );
    };

    // 1. Loss: the configured link, reliable (or --deadline) delivery.
    let loss = run_stream(
        StreamPlan {
            duration: args.duration,
            pace,
            total,
            link,
            seed: args.seed,
            deadline: args.deadline,
            sender_clock_offset_us: sender_clock_offset_us(args.seed),
        },
        clock,
        "1. loss",
    )
    .await?;
    plot_points(&loss.tally);
    let line = format!(
        "1. Loss on the link ({}): {} messages, {} retransmitted, {} lost, p99 {:.1} ms",
        loss.plan.link,
        loss.total_sent,
        loss.sender.retransmissions,
        loss.lost(),
        loss.tally.quantile_ms(0.99)
    );
    steps.push(Step {
        name: "loss",
        mechanism: "retransmission",
        figures: json!({
            "sent": loss.total_sent,
            "delivered": loss.tally.delivered,
            "lost": loss.lost(),
            "duplicated": loss.tally.duplicated,
            "retransmissions": loss.sender.retransmissions,
            "p99_ms": loss.tally.quantile_ms(0.99),
        }),
        pass: loss.problems.is_empty(),
        headline: format!(
            "{} retransmitted, {} lost",
            loss.sender.retransmissions,
            loss.lost()
        ),
        line,
    });
    show(&steps, args.json);

    // 2. Failover: the primary path is cut for good 40 % into the step.
    let cut_after = step_time.mul_f64(0.4);
    let failover = with_spinner(
        "2. failover: two paths, the primary is cut",
        story::failover(pace, step_total, cut_after, args.seed, clock),
    )
    .await?;
    plot_points(&failover.tally);
    let detected = failover.after_cut(story::primary_down);
    let switched =
        failover.after_cut(|e| matches!(e, surelink::ConnectionEvent::FailedOver { .. }));
    let to = failover.failed_over_to();
    let lost = failover.sent.saturating_sub(failover.tally.delivered);
    markers.push(plot::Marker {
        at_s: since_start(failover.cut_us),
        label: "cut".into(),
    });
    if let Some(us) = switched {
        markers.push(plot::Marker {
            at_s: since_start(failover.cut_us + us),
            label: "failover".into(),
        });
    }
    let ms = |us: Option<u64>| us.map(|us| us as f64 / 1e3);
    let line = format!(
        "2. Primary path cut at {:.1} s: {}, {}, {lost} of {} messages lost",
        cut_after.as_secs_f64(),
        ms(detected).map_or("not detected".into(), |d| format!("detected in {d:.0} ms")),
        match (to, ms(switched)) {
            (Some(to), Some(d)) => format!("failed over to path {to} in {d:.0} ms"),
            _ => "no failover".into(),
        },
        failover.sent
    );
    steps.push(Step {
        name: "failover",
        mechanism: "failure detection, failover",
        figures: json!({
            "sent": failover.sent,
            "delivered": failover.tally.delivered,
            "lost": lost,
            "duplicated": failover.tally.duplicated,
            "cut_at_s": cut_after.as_secs_f64(),
            "detected_ms": ms(detected),
            "failover_ms": ms(switched),
            "failed_over_to": to,
            "events": failover.events.iter().map(|(at, e)| json!({
                "at_s": since_start(*at),
                "event": format!("{e:?}"),
            })).collect::<Vec<_>>(),
            "problems": failover.problems,
        }),
        pass: failover.problems.is_empty()
            && to.is_some()
            && lost == 0
            && failover.tally.duplicated == 0
            && failover.tally.out_of_order == 0,
        headline: format!(
            "{}, {lost} lost",
            ms(switched).map_or("no failover".into(), |d| format!("failover in {d:.0} ms"))
        ),
        line,
    });
    show(&steps, args.json);

    // 3. Crash and restart of the receiver of a durable session.
    let durable = with_spinner(
        "3. crash: a durable session, the receiver is killed and restarted",
        story::crash_and_restart(pace, step_total, args.seed, clock),
    )
    .await?;
    markers.push(plot::Marker {
        at_s: since_start(durable.crash_us),
        label: "crash".into(),
    });
    markers.push(plot::Marker {
        at_s: since_start(durable.restart_us),
        label: "restart".into(),
    });
    let t = &durable.tally;
    let lost = durable.sent.saturating_sub(t.delivered);
    let line = format!(
        "3. Receiver killed and restarted: {} from its checkpoint, {} of {} messages lost, {} repeated ({} re-sent by the sender)",
        durable
            .resumed_at
            .map_or("did not resume".into(), |m| format!("resumed at message {m}")),
        lost,
        durable.sent,
        t.duplicated,
        durable.resent
    );
    steps.push(Step {
        name: "crash_restart",
        mechanism: "checkpoints",
        figures: json!({
            "sent": durable.sent,
            "delivered": t.delivered,
            "lost": lost,
            "duplicated": t.duplicated,
            "out_of_order": t.out_of_order,
            "corrupted": t.corrupted,
            "resumed": durable.resumed_at.is_some(),
            "resumed_at": durable.resumed_at,
            "resent": durable.resent,
            "crash_at_s": since_start(durable.crash_us),
            "restart_at_s": since_start(durable.restart_us),
        }),
        pass: durable.resumed_at.is_some()
            && lost == 0
            && t.duplicated == 0
            && t.out_of_order == 0
            && t.corrupted == 0,
        headline: format!(
            "{}, {lost} lost, {} repeated",
            durable
                .resumed_at
                .map_or("not resumed".into(), |m| format!("resumed at {m}")),
            t.duplicated
        ),
        line,
    });
    show(&steps, args.json);

    // 4. A deadline channel on a link whose delay spikes past it.
    let deadline = Duration::from_millis(60);
    let spiky: LinkConfig = DEADLINE_LINK
        .parse()
        .map_err(|e| anyhow!("invalid link: {e}"))?;
    let skipping = run_stream(
        StreamPlan {
            duration: step_time,
            pace,
            total: step_total,
            link: spiky,
            seed: args.seed,
            deadline: Some(deadline),
            sender_clock_offset_us: 0,
        },
        clock,
        "4. deadline",
    )
    .await?;
    plot_points(&skipping.tally);
    let skipped = skipping.receiver.messages_skipped;
    let late = skipping.tally.delivered_late;
    let line = format!(
        "4. Deadline {} ms on a link with {}: {skipped} of {} skipped ({:.1} %), {late} delivered late, p99 {:.1} ms",
        deadline.as_millis(),
        skipping.plan.link,
        skipping.total_sent,
        skipped as f64 * 100.0 / skipping.total_sent.max(1) as f64,
        skipping.tally.quantile_ms(0.99)
    );
    steps.push(Step {
        name: "deadline",
        mechanism: "deadline delivery",
        figures: json!({
            "deadline_ms": deadline.as_secs_f64() * 1e3,
            "sent": skipping.total_sent,
            "delivered": skipping.tally.delivered,
            "skipped": skipped,
            "late": late,
            "arrived_after_deadline_dropped": skipping.receiver.messages_late,
            "over_deadline_app": skipping.tally.over_deadline,
            "duplicated": skipping.tally.duplicated,
            "out_of_order": skipping.tally.out_of_order,
        }),
        pass: skipping.problems.is_empty() && late == 0,
        headline: format!("{skipped} skipped, {late} late"),
        line,
    });
    show(&steps, args.json);

    // 5. The clock estimate of step 1's receiver: the sender's clock was set
    // `true_offset` ahead of this host's, so the bound must cover that.
    let true_offset_us = loss.plan.sender_clock_offset_us as f64;
    let clock_step = match loss.clock {
        Some(c) => Step {
            name: "clock",
            mechanism: "time synchronisation",
            line: format!(
                "5. Clock: sender's clock estimated at {:+.3} ms ± {:.3} ms from the receiver's; set to {:+.3} ms (error {:.3} ms, {} samples)",
                c.offset_us / 1e3,
                c.error_bound_us / 1e3,
                true_offset_us / 1e3,
                (c.offset_us - true_offset_us).abs() / 1e3,
                c.samples
            ),
            figures: json!({
                "offset_ms": c.offset_us / 1e3,
                "error_bound_ms": c.error_bound_us / 1e3,
                "true_offset_ms": true_offset_us / 1e3,
                "samples": c.samples,
            }),
            pass: (c.offset_us - true_offset_us).abs() <= c.error_bound_us,
            headline: format!(
                "{:+.3} ms ± {:.3} ms (true {:+.3} ms)",
                c.offset_us / 1e3,
                c.error_bound_us / 1e3,
                true_offset_us / 1e3
            ),
        },
        None => Step {
            name: "clock",
            mechanism: "time synchronisation",
            line: "5. Clock: no estimate".into(),
            headline: "no estimate".into(),
            figures: json!({
                "offset_ms": null,
                "error_bound_ms": null,
                "true_offset_ms": true_offset_us / 1e3,
            }),
            pass: false,
        },
    };
    steps.push(clock_step);
    show(&steps, args.json);

    if let Some(path) = &args.plot {
        plot::write_svg(path, &points, &markers)?;
    }
    let ok = steps.iter().all(|s| s.pass);
    if args.json {
        let mut summary = loss.json();
        summary["ok"] = json!(ok);
        summary["steps"] = Value::Array(steps.iter().map(Step::json).collect());
        summary["markers"] = Value::Array(
            markers
                .iter()
                .map(|m| json!({ "at_s": m.at_s, "event": m.label }))
                .collect(),
        );
        println!("{summary}");
    } else {
        print!("{}", story_text(&steps, &loss));
    }
    if ok {
        Ok(())
    } else {
        let failed: Vec<_> = steps.iter().filter(|s| !s.pass).map(|s| s.name).collect();
        bail!("demo failed: step {} did not hold", failed.join(", "))
    }
}

/// The link of step 4: 2 % loss and a delay that spikes to 50 ms each way,
/// so a retransmission rarely makes the 60 ms deadline.
const DEADLINE_LINK: &str = "loss=2%,delay=20ms,jitter=30ms";

/// Runs `step` with a spinner named `label` on a terminal (stderr), or one
/// plain line saying it started otherwise.
async fn with_spinner<T>(label: &str, step: impl std::future::Future<Output = T>) -> T {
    if !std::io::stderr().is_terminal() {
        eprintln!("surelink demo: {label} ...");
        return step.await;
    }
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    spinner.set_style(
        ProgressStyle::with_template("{spinner:.green} {elapsed:>3} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(label.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(100));
    let outcome = step.await;
    spinner.finish_and_clear();
    outcome
}

/// Shows the newest step's line as it completes: on stdout as part of the
/// text summary, or on stderr when stdout carries the JSON object.
fn show(steps: &[Step], json: bool) {
    match steps.last() {
        Some(step) if json => eprintln!("surelink demo: {}", step.line),
        Some(step) => println!("{}", step.line),
        None => {}
    }
}

/// The end of the text summary (each step's line was shown as it
/// completed): the table mechanism by mechanism, then step 1 in detail.
fn story_text(steps: &[Step], loss: &Report) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o);
    let figure_width = steps
        .iter()
        .map(|step| step.headline.chars().count())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        o,
        "  {:<28} {:<14} {:<figure_width$} result",
        "mechanism", "step", "figure"
    );
    for step in steps {
        let _ = writeln!(
            o,
            "  {:<28} {:<14} {:<figure_width$} {}",
            step.mechanism,
            step.name,
            step.headline,
            if step.pass { "ok" } else { "FAILED" }
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "Step 1 in detail:");
    o.push_str(&loss.text());
    o
}

/// How a demo source paces its messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    /// Messages per second.
    pub rate: f64,
    /// Bytes per message.
    pub size: usize,
}

/// One stream of probes through one impaired link: what step 1 (loss) and
/// step 4 (deadline) run.
#[derive(Debug, Clone)]
struct StreamPlan {
    duration: Duration,
    pace: Pace,
    total: u64,
    link: LinkConfig,
    seed: u64,
    deadline: Option<Duration>,
    /// How far the sender's clock is set ahead of this host's, µs.
    sender_clock_offset_us: i64,
}

/// The offset of step 1's sender's clock from this host's, µs: between
/// −500 ms and +500 ms, chosen by `seed` (a splitmix64 step), so that the
/// clock step has a true value to show other than 0.
fn sender_clock_offset_us(seed: u64) -> i64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % 1_000_001) as i64 - 500_000
}

/// Runs one stream (sender, impaired link, receiving application) and
/// reports what happened; `label` names it on the live view.
async fn run_stream(plan: StreamPlan, clock: DemoClock, label: &str) -> anyhow::Result<Report> {
    let config = EndpointConfig::default();
    let started = Instant::now();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));

    // Receiver, link, sender.
    let receiver = Endpoint::bind(loopback, config.clone()).context("cannot bind the receiver")?;
    let impairer = Impairer::start(
        ImpairConfig::new(loopback, receiver.local_addr())
            .with_both(plan.link.clone())
            .with_seed(plan.seed),
    )
    .context("cannot start the impaired link")?;
    let sender = Endpoint::client_with_config(
        loopback,
        config.with_clock_offset_us(plan.sender_clock_offset_us),
    )
    .context("cannot bind the sender")?;
    let (conn, rconn) = connect_pair(&sender, &receiver, impairer.local_addr()).await?;
    if let Some(d) = plan.deadline {
        conn.set_channel_delivery(0, Delivery::Deadline(d.as_micros() as u64));
    }
    let setup = started.elapsed();

    let shared = Arc::new(Shared::new());
    let receiving = tokio::spawn(receive(
        rconn.clone(),
        Arc::clone(&shared),
        clock,
        plan.deadline,
    ));
    let progress = Progress::start(plan.total, Arc::clone(&shared), conn.clone(), label);

    let sending_started = Instant::now();
    let sent = send(&conn, plan.pace, plan.total, clock, &shared).await;
    let sending_time = sending_started.elapsed();
    shared.phase.store(PHASE_DRAINING, Ordering::Relaxed);
    let closed = close_sender(&conn, sent).await;
    let received = join_receiver(receiving).await;
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

    let mut report = Report {
        total_sent: shared.sent.load(Ordering::Relaxed),
        plan,
        setup,
        sending_time,
        elapsed,
        tally: shared.take_tally(),
        sender: sender_stats,
        receiver: receiver_stats,
        clock: clock_estimate,
        link_stats,
        problems: Vec::new(),
    };
    for outcome in [closed, received] {
        if let Err(e) = outcome {
            report.problems.push(format!("{e:#}"));
        }
    }
    report.check();
    Ok(report)
}

/// Connects `sender` to `receiver` through `via` (an impairer in front of
/// the receiver); returns the sender's and the receiver's connection.
pub(super) async fn connect_pair(
    sender: &Endpoint,
    receiver: &Endpoint,
    via: SocketAddr,
) -> anyhow::Result<(Connection, Connection)> {
    let accepting = {
        let receiver = receiver.clone();
        tokio::spawn(async move { receiver.accept().await })
    };
    let conn = sender
        .connect(via)
        .await
        .context("the sender cannot connect through the impaired link")?;
    let rconn = tokio::time::timeout(Duration::from_secs(10), accepting)
        .await
        .context("the receiver did not see the connection")??
        .ok_or_else(|| anyhow!("the receiver stopped accepting"))?;
    Ok((conn, rconn))
}

/// Closes the sender's connection once everything is acknowledged (if
/// sending went well), bounded by [`DRAIN_LIMIT`].
pub(super) async fn close_sender(
    conn: &Connection,
    sent: anyhow::Result<()>,
) -> anyhow::Result<()> {
    sent?;
    match tokio::time::timeout(DRAIN_LIMIT, conn.close()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("closing the sender's connection failed: {e}")),
        Err(_) => Err(anyhow!(
            "not everything was acknowledged within {DRAIN_LIMIT:?} after the last message"
        )),
    }
}

/// Waits (bounded by [`RECEIVE_LIMIT`]) for the receiving application to
/// see the end of the stream.
pub(super) async fn join_receiver(
    receiving: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    match tokio::time::timeout(RECEIVE_LIMIT, receiving).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(anyhow!("the receiver task failed: {e}")),
        Err(_) => Err(anyhow!("the receiver did not see the end of the stream")),
    }
}

/// Sends `total` probes at `pace`, as a real-time source would.
pub(super) async fn send(
    conn: &Connection,
    pace: Pace,
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
        let due = ((start.elapsed().as_secs_f64() * pace.rate) as u64 + 1).min(total);
        while seq < due {
            let probe = Probe {
                seq,
                sent_us: clock.now_us(),
            };
            tokio::select! {
                sent = conn.send(probe.encode(pace.size)) => {
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
pub(super) async fn receive(
    conn: Connection,
    shared: Arc<Shared>,
    clock: DemoClock,
    deadline: Option<Duration>,
) -> anyhow::Result<()> {
    loop {
        match conn.recv_message().await {
            Ok(Some(message)) => {
                let now = clock.now_us();
                let mut tally = shared.tally();
                tally.record(&message.data, now, deadline);
                if deadline.is_some_and(|d| message.latency_us > d.as_micros() as u64) {
                    tally.delivered_late += 1;
                }
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
    fn start(total: u64, shared: Arc<Shared>, conn: Connection, label: &str) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                &format!("{label} {{spinner:.green}} {{elapsed:>3}} [{{bar:20.cyan/blue}}] {{pos}}/{{len}} sent  {{msg}}"),
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
        let label = label.to_owned();
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
                        "surelink demo: {label} {:>5.1}s  sent {sent}/{total}  {line}",
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
struct Report {
    plan: StreamPlan,
    total_sent: u64,
    setup: Duration,
    sending_time: Duration,
    elapsed: Duration,
    tally: Tally,
    sender: ConnectionStats,
    receiver: ConnectionStats,
    clock: Option<ClockEstimate>,
    link_stats: ImpairStats,
    problems: Vec<String>,
}

impl Report {
    fn lost(&self) -> u64 {
        self.total_sent.saturating_sub(self.tally.delivered)
    }

    fn delivery(&self) -> String {
        match self.plan.deadline {
            Some(d) => format!("deadline {} ms", d.as_secs_f64() * 1e3),
            None => "reliable".to_owned(),
        }
    }

    /// Adds what went wrong to `problems`.
    fn check(&mut self) {
        let t = &self.tally;
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
        if self.plan.deadline.is_none() && self.lost() > 0 {
            self.problems.push(format!(
                "{} of {} messages not delivered",
                self.lost(),
                self.total_sent
            ));
        }
    }

    fn json(&self) -> Value {
        let t = &self.tally;
        let s = &self.sender;
        let r = &self.receiver;
        // The sender's statistics, and the receiver's beside them.
        let mut transport = stats_json(s);
        transport.insert("receiver".into(), Value::Object(stats_json(r)));
        json!({
            "ok": self.problems.is_empty(),
            "problems": self.problems,
            "settings": {
                "duration_s": self.plan.duration.as_secs_f64(),
                "rate_msgs_per_s": self.plan.pace.rate,
                "size_bytes": self.plan.pace.size,
                "link": self.plan.link.to_string(),
                "seed": self.plan.seed,
                "delivery": self.delivery(),
                "deadline_ms": self.plan.deadline.map(|d| d.as_secs_f64() * 1e3),
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
        let t = &self.tally;
        let s = &self.sender;
        let r = &self.receiver;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "surelink demo: {:.1} s of {} msg/s × {} B through an impaired loopback link ({} delivery)",
            self.plan.duration.as_secs_f64(),
            self.plan.pace.rate,
            self.plan.pace.size,
            self.delivery()
        );
        let _ = writeln!(
            o,
            "  link, each way:  {}  (seed {})",
            self.plan.link, self.plan.seed
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
        if let Some(d) = self.plan.deadline {
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
            let what = if self.plan.deadline.is_some() {
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
        assert_eq!(cli.demo.total().ok(), Some(3000));
        let cli = Cli::parse_from(["demo", "--burst", "off", "--loss", "0"]);
        assert!(cli.demo.link_config().expect("link").burst.is_none());
        let cli = Cli::parse_from(["demo", "--loss", "150%"]);
        assert!(cli.demo.link_config().is_err());
        let cli = Cli::parse_from(["demo", "--link", "clean"]);
        assert!(cli.demo.link_config().expect("clean").is_clean());
    }
}
