//! Computes ratios and the targets over the rows (see
//! [`crate::rows`] for rows and medians), and renders the markdown tables.
//! The same [`Report`] is what `--json` writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::deadline::DeadlineGroup;
use crate::failover::{FailoverParams, FailoverRow};
use crate::rows::{why, Row};
use crate::system::System;
use crate::workload::{BulkRun, RtRun, SmallRun};

/// The real-time rows at one loss rate.
#[derive(Debug, Clone, Serialize)]
pub struct RtGroup {
    /// Random loss in each direction, percent.
    pub loss_percent: f64,
    /// One row per system.
    pub rows: Vec<Row<RtRun>>,
}

/// One of the targets, evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// Short identifier.
    pub id: &'static str,
    /// What is required.
    pub required: String,
    /// What was measured.
    pub measured: String,
    /// `None` when it could not be evaluated (a system missing).
    pub met: Option<bool>,
}

/// Settings of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Bulk size, MiB.
    pub bulk_mib: u64,
    /// Small-message window, seconds.
    pub small_secs: f64,
    /// Small message size, bytes.
    pub small_size: usize,
    /// Small messages handed over one per call (`--per-message`) instead of
    /// in 64 KiB batches.
    pub small_per_message: bool,
    /// Real-time sending time, seconds.
    pub rt_secs: f64,
    /// Durable-session transfer size, MiB.
    pub durable_mib: u64,
    /// Real-time rate, messages per second.
    pub rt_rate: u32,
    /// Real-time message size, bytes.
    pub rt_size: usize,
    /// One-way delay of the impairer, each way, ms.
    pub delay_ms: f64,
    /// Jitter of the impairer, each way, ms.
    pub jitter_ms: f64,
    /// Loss rates, percent, each way.
    pub losses_percent: Vec<f64>,
    /// The impairer's seed.
    pub seed: u64,
    /// The failover workload's stream and cut.
    pub failover: FailoverParams,
    /// The deadline workload's deadline (and SRT latency), in RTTs.
    pub deadline_rtts: u32,
    /// Runs per figure.
    pub runs: u32,
    /// Whether `--quick` was given.
    pub quick: bool,
}

/// What the machine and build were.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available.
    pub cpus: usize,
    /// `release` or `debug`.
    pub profile: &'static str,
}

/// A system's availability.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    /// The system.
    pub system: System,
    /// Whether it could be measured.
    pub available: bool,
    /// Version or reason.
    pub detail: String,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// Settings.
    pub settings: Settings,
    /// Machine.
    pub machine: Machine,
    /// Systems and their availability.
    pub systems: Vec<Peer>,
    /// Bulk rows.
    pub bulk: Vec<Row<BulkRun>>,
    /// Small-message rows.
    pub small: Vec<Row<SmallRun>>,
    /// Real-time groups, one per loss rate.
    pub realtime: Vec<RtGroup>,
    /// Failover rows (surelink twice: backup and broadcast).
    pub failover: Vec<FailoverRow>,
    /// Deadline groups, one per loss rate.
    pub deadline: Vec<DeadlineGroup>,
    /// Durable sessions, if that workload ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable: Option<crate::durable::DurableReport>,
    /// surelink's figure over each peer's (bulk MiB/s, small msgs/s) and
    /// each peer's p99 / p99.9 over surelink's (real time), from medians.
    pub ratios: Ratios,
    /// The targets.
    pub targets: Vec<Target>,
    /// The plot written, if any.
    pub plot: Option<String>,
}

/// Ratios against each peer, from medians.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// surelink MiB/s ÷ peer MiB/s.
    pub bulk_throughput: BTreeMap<String, f64>,
    /// peer CPU s/MiB ÷ surelink CPU s/MiB.
    pub bulk_cpu_per_mib: BTreeMap<String, f64>,
    /// surelink msgs/s ÷ peer msgs/s.
    pub small_rate: BTreeMap<String, f64>,
    /// Per loss rate: peer p99 ÷ surelink p99.
    pub realtime_p99: BTreeMap<String, BTreeMap<String, f64>>,
    /// Per loss rate: peer p99.9 ÷ surelink p99.9.
    pub realtime_p999: BTreeMap<String, BTreeMap<String, f64>>,
}

fn find<T>(rows: &[Row<T>], system: System) -> Option<&T> {
    rows.iter()
        .find(|r| r.system == system)
        .and_then(|r| r.median.as_ref())
}

/// The loss label used as a key: `2%`.
pub fn loss_key(loss: f64) -> String {
    format!("{loss}%")
}

impl Report {
    /// Fills `ratios` and `targets` from the rows.
    pub fn evaluate(&mut self) {
        let me = System::Surelink;
        let mut ratios = Ratios::default();
        if let Some(mine) = find(&self.bulk, me) {
            for row in &self.bulk {
                if let (Some(peer), true) = (row.median.as_ref(), row.system != me) {
                    ratios
                        .bulk_throughput
                        .insert(row.system.to_string(), mine.mib_per_s / peer.mib_per_s);
                    ratios.bulk_cpu_per_mib.insert(
                        row.system.to_string(),
                        peer.cpu_s_per_mib / mine.cpu_s_per_mib,
                    );
                }
            }
        }
        if let Some(mine) = find(&self.small, me) {
            for row in &self.small {
                if let (Some(peer), true) = (row.median.as_ref(), row.system != me) {
                    ratios
                        .small_rate
                        .insert(row.system.to_string(), mine.msgs_per_s / peer.msgs_per_s);
                }
            }
        }
        for group in &self.realtime {
            let Some(mine) = find(&group.rows, me) else {
                continue;
            };
            let (mut p99, mut p999) = (BTreeMap::new(), BTreeMap::new());
            for row in &group.rows {
                if let (Some(peer), true) = (row.median.as_ref(), row.system != me) {
                    p99.insert(row.system.to_string(), peer.p99_ms / mine.p99_ms);
                    p999.insert(row.system.to_string(), peer.p999_ms / mine.p999_ms);
                }
            }
            ratios
                .realtime_p99
                .insert(loss_key(group.loss_percent), p99);
            ratios
                .realtime_p999
                .insert(loss_key(group.loss_percent), p999);
        }
        self.ratios = ratios;
        self.targets = self.targets_now();
    }

    fn throughput_target(
        &self,
        id: &'static str,
        peer: System,
        factor: f64,
        small: bool,
    ) -> Target {
        let (mine, theirs, unit) = if small {
            (
                find(&self.small, System::Surelink).map(|r| r.msgs_per_s),
                find(&self.small, peer).map(|r| r.msgs_per_s),
                "msgs/s",
            )
        } else {
            (
                find(&self.bulk, System::Surelink).map(|r| r.mib_per_s),
                find(&self.bulk, peer).map(|r| r.mib_per_s),
                "MiB/s",
            )
        };
        let required = format!("surelink ≥ {factor}× {peer}");
        match (mine, theirs) {
            (Some(m), Some(t)) => Target {
                id,
                required,
                measured: format!("{:.2}× ({} vs {} {unit})", m / t, fmt_num(m), fmt_num(t)),
                met: Some(m >= factor * t),
            },
            _ => Target {
                id,
                required,
                measured: format!("not measured (surelink or {peer} missing)"),
                met: None,
            },
        }
    }

    fn targets_now(&self) -> Vec<Target> {
        let mut targets = vec![
            self.throughput_target("bulk_vs_quinn", System::Quinn, 1.5, false),
            self.throughput_target("bulk_vs_srt", System::Srt, 2.0, false),
            self.throughput_target("bulk_vs_udp", System::Udp, 0.6, false),
        ];
        let group = self
            .realtime
            .iter()
            .find(|g| (g.loss_percent - 2.0).abs() < 1e-9);
        let row = group.and_then(|g| g.rows.iter().find(|r| r.system == System::Surelink));
        let bound = self.settings.delay_ms + 1.5 * 2.0 * self.settings.delay_ms;
        match row.filter(|r| !r.runs.is_empty()) {
            Some(row) => {
                let worst_lost = row.runs.iter().map(|r| r.lost).max().unwrap_or(0);
                targets.push(Target {
                    id: "realtime_zero_loss",
                    required: "real time at 2% loss: zero messages lost (every run)".into(),
                    measured: format!(
                        "{} lost in the worst of {} runs",
                        worst_lost,
                        row.runs.len()
                    ),
                    met: Some(worst_lost == 0),
                });
                let median = row.median.as_ref().expect("finished row");
                let worst_p99 = row.runs.iter().map(|r| r.p99_ms).fold(f64::NAN, f64::max);
                targets.push(Target {
                    id: "realtime_p99_bound",
                    required: format!(
                        "real time at 2% loss: p99 ≤ one-way delay + 1.5 × RTT = {bound} ms"
                    ),
                    measured: format!(
                        "p99 {:.2} ms (median), {:.2} ms (worst run)",
                        median.p99_ms, worst_p99
                    ),
                    met: Some(median.p99_ms <= bound),
                });
                let mut beaten = Vec::new();
                let mut all = true;
                let mut any = false;
                for peer in group.map(|g| g.rows.as_slice()).unwrap_or(&[]) {
                    if !peer.system.is_reliable_peer() {
                        continue;
                    }
                    let Some(p) = peer.median.as_ref() else {
                        beaten.push(format!("{}: {}", peer.system, peer.status.label()));
                        continue;
                    };
                    any = true;
                    let ok = median.p99_ms < p.p99_ms && median.p999_ms < p.p999_ms;
                    all &= ok;
                    beaten.push(format!(
                        "{}: p99 {:.2} vs {:.2} ms, p99.9 {:.2} vs {:.2} ms{}",
                        peer.system,
                        median.p99_ms,
                        p.p99_ms,
                        median.p999_ms,
                        p.p999_ms,
                        if ok { "" } else { " (NOT lower)" }
                    ));
                }
                targets.push(Target {
                    id: "realtime_beats_reliable_peers",
                    required: "real time at 2% loss: lower p99 and p99.9 than every reliable peer"
                        .into(),
                    measured: if beaten.is_empty() {
                        "no reliable peer measured".into()
                    } else {
                        beaten.join("; ")
                    },
                    met: any.then_some(all),
                });
            }
            None => {
                for (id, required) in [
                    (
                        "realtime_zero_loss",
                        "real time at 2% loss: zero lost".to_owned(),
                    ),
                    (
                        "realtime_p99_bound",
                        format!("real time at 2% loss: p99 ≤ {bound} ms"),
                    ),
                    (
                        "realtime_beats_reliable_peers",
                        "real time at 2% loss: lower p99 and p99.9 than every reliable peer"
                            .to_owned(),
                    ),
                ] {
                    targets.push(Target {
                        id,
                        required,
                        measured: "not measured (needs surelink at 2% loss)".into(),
                        met: None,
                    });
                }
            }
        }
        targets.push(self.throughput_target("small_vs_quinn", System::Quinn, 1.5, true));
        if let Some(durable) = &self.durable {
            targets.extend(durable.targets());
        }
        targets
    }

    /// The markdown tables.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let runs = if s.runs == 1 {
            "1 run".to_owned()
        } else {
            format!("median of {} runs", s.runs)
        };
        let _ = writeln!(
            out,
            "# surelink-bench ({runs}, {} CPUs, {} build)\n",
            self.machine.cpus, self.machine.profile
        );
        let _ = writeln!(out, "`{}`\n", self.command);

        if !self.bulk.is_empty() {
            let _ = writeln!(
                out,
                "## Bulk: {} MiB over clean loopback ({runs})\n",
                s.bulk_mib
            );
            let _ = writeln!(
                out,
                "| system | MiB/s | seconds | CPU s | CPU s/MiB | delivered | surelink ÷ system (MiB/s) |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
            for row in &self.bulk {
                match &row.median {
                    Some(m) => {
                        let ratio = self
                            .ratios
                            .bulk_throughput
                            .get(row.system.name())
                            .map(|r| format!("{r:.2}×"))
                            .unwrap_or_else(|| "—".into());
                        let _ = writeln!(
                            out,
                            "| {} | {:.1} | {:.2} | {:.2} | {:.4} | {:.1}% | {} |",
                            row.system,
                            m.mib_per_s,
                            m.secs,
                            m.cpu_s,
                            m.cpu_s_per_mib,
                            m.delivered_fraction * 100.0,
                            ratio
                        );
                    }
                    None => {
                        let _ = writeln!(out, "| {} | {} |||||| ", row.system, why(row));
                    }
                }
            }
            out.push('\n');
        }

        if !self.small.is_empty() {
            let _ = writeln!(
                out,
                "## Small messages: {} B, as fast as possible for {} s, {} ({runs})\n",
                s.small_size,
                s.small_secs,
                if s.small_per_message {
                    "one message per call"
                } else {
                    "64 KiB of messages per call"
                }
            );
            let _ = writeln!(out, "| system | messages/s | surelink ÷ system |");
            let _ = writeln!(out, "|---|---:|---:|");
            for row in &self.small {
                match &row.median {
                    Some(m) => {
                        let ratio = self
                            .ratios
                            .small_rate
                            .get(row.system.name())
                            .map(|r| format!("{r:.2}×"))
                            .unwrap_or_else(|| "—".into());
                        let _ = writeln!(
                            out,
                            "| {} | {} | {} |",
                            row.system,
                            fmt_num(m.msgs_per_s),
                            ratio
                        );
                    }
                    None => {
                        let _ = writeln!(out, "| {} | {} ||", row.system, why(row));
                    }
                }
            }
            out.push('\n');
        }

        for group in &self.realtime {
            let _ = writeln!(
                out,
                "## Real time: {} msg/s × {} B for {} s, {} ms ± {} ms each way, {}% loss each way ({runs})\n",
                s.rt_rate, s.rt_size, s.rt_secs, s.delay_ms, s.jitter_ms, group.loss_percent
            );
            let _ = writeln!(
                out,
                "| system | sent | delivered | lost | dup | p50 ms | p99 ms | p99.9 ms | max ms | wire B / payload B | p99 vs surelink |"
            );
            let _ = writeln!(
                out,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            let key = loss_key(group.loss_percent);
            for row in &group.rows {
                match &row.median {
                    Some(m) => {
                        let ratio = self
                            .ratios
                            .realtime_p99
                            .get(&key)
                            .and_then(|r| r.get(row.system.name()))
                            .map(|r| format!("{r:.2}×"))
                            .unwrap_or_else(|| "—".into());
                        let _ = writeln!(
                            out,
                            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                            row.system,
                            m.sent,
                            m.delivered,
                            m.lost,
                            m.duplicated,
                            m.p50_ms,
                            m.p99_ms,
                            m.p999_ms,
                            m.max_ms,
                            m.wire_per_payload,
                            ratio
                        );
                    }
                    None => {
                        let _ = writeln!(out, "| {} | {} |||||||||| ", row.system, why(row));
                    }
                }
            }
            out.push('\n');
        }

        out.push_str(&crate::failover::markdown(&self.failover, s, &runs));
        out.push_str(&crate::deadline::markdown(&self.deadline, s, &runs));
        if let Some(durable) = &self.durable {
            out.push_str(&durable.markdown(&runs));
        }

        if !self.targets.is_empty() {
            let _ = writeln!(out, "## Targets (surelink, encrypted)\n");
            let _ = writeln!(out, "| target | measured | met |");
            let _ = writeln!(out, "|---|---|---|");
            for t in &self.targets {
                let met = match t.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "not evaluated",
                };
                let _ = writeln!(out, "| {} | {} | {} |", t.required, t.measured, met);
            }
            out.push('\n');
        }
        if let Some(plot) = &self.plot {
            let _ = writeln!(out, "Latency plot: `{plot}`");
        }
        out
    }
}

/// A number with thousands separators when large, two decimals when small.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    if v.abs() < 1000.0 {
        return format!("{v:.1}");
    }
    let digits = format!("{:.0}", v.abs());
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if v < 0.0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}
