//! The deadline workload: the real-time stream ([`workload::realtime`])
//! through the same impairer, with a delivery deadline of N × RTT (3 by
//! default) on both sides: surelink's channel in `Delivery::Deadline` mode
//! (`surelink-deadline`) and SRT live mode with its latency set to the same
//! value. Both give up on what cannot arrive in time instead of delaying
//! what follows: a message is either delivered or skipped.
//!
//! "Skipped" is what the receiving application never got (sent −
//! delivered). The receivers' own counters are kept beside it: surelink's
//! `messages_skipped` / `messages_late`, and SRT's too-late drops
//! (`packetsDropped`) from `srt-live-transmit`'s statistics.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use ::surelink::Delivery;
use serde::Serialize;

use crate::report::Settings;
use crate::rows::{why, Row};
use crate::run::isolated;
use crate::system::System;
use crate::transport::{srt, surelink, Mode, Route};
use crate::workload::{self, RtParams, RtRun};

/// The deadline rows at one loss rate.
#[derive(Debug, Clone, Serialize)]
pub struct DeadlineGroup {
    /// Random loss in each direction, percent.
    pub loss_percent: f64,
    /// The deadline (surelink) and latency (SRT), ms.
    pub deadline_ms: f64,
    /// One row per system.
    pub rows: Vec<Row<RtRun>>,
}

/// One deadline run of `system` through an impairer with `route`.
pub fn run(
    system: System,
    params: &RtParams,
    route: &Route,
    deadline: Duration,
) -> io::Result<RtRun> {
    let delivery = system.delivery();
    let secs = Duration::from_secs_f64(params.secs);
    isolated(secs + Duration::from_secs(60), move || async move {
        let r = Some(route);
        match system {
            System::SurelinkDeadline => {
                let pair = surelink::open(false, r, Mode::Realtime).await?;
                let micros = u64::try_from(deadline.as_micros()).unwrap_or(u64::MAX);
                pair.tx
                    .connection()
                    .set_channel_delivery(0, Delivery::Deadline(micros));
                workload::realtime(pair, params, delivery).await
            }
            System::Srt => {
                let dir = tempfile::tempdir()?;
                let stats = dir.path().join("srt-stats.json");
                let lifetime = secs + Duration::from_secs(60);
                let pair = srt::open_live_with_stats(r, deadline, lifetime, Some(&stats)).await?;
                let mut run = workload::realtime(pair, params, delivery).await?;
                run.receiver = srt::receiver_stats(&stats);
                Ok(run)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{system} does not take part in the deadline workload"),
            )),
        }
    })
}

/// The receiver's own count of what it gave up on, as a table cell.
pub(crate) fn own_count(run: &RtRun) -> String {
    let Some(d) = &run.receiver else {
        return "—".to_owned();
    };
    let get = |k: &str| d.get(k).copied().unwrap_or(f64::NAN);
    if d.contains_key("messages_skipped") {
        format!(
            "skipped {:.0} (late {:.0})",
            get("messages_skipped"),
            get("messages_late")
        )
    } else if d.contains_key("srt_recv_dropped_too_late") {
        format!(
            "too-late drops {:.0}, lost {:.0}",
            get("srt_recv_dropped_too_late"),
            get("srt_recv_lost")
        )
    } else {
        "—".to_owned()
    }
}

/// The deadline tables in markdown.
pub fn markdown(groups: &[DeadlineGroup], s: &Settings, runs: &str) -> String {
    let mut out = String::new();
    for group in groups {
        let _ = writeln!(
            out,
            "## Deadline: {} msg/s × {} B for {} s, {} ms ± {} ms each way, {}% loss each way, deadline / SRT latency {} ms = {} × RTT ({runs})\n",
            s.rt_rate,
            s.rt_size,
            s.rt_secs,
            s.delay_ms,
            s.jitter_ms,
            group.loss_percent,
            group.deadline_ms,
            s.deadline_rtts
        );
        let _ = writeln!(
            out,
            "| system | sent | delivered % | skipped % | receiver's own count | p50 ms | p99 ms | p99.9 ms | max ms | wire B / payload B |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|");
        for row in &group.rows {
            match &row.median {
                Some(m) => {
                    let pct = |v: u64| 100.0 * v as f64 / m.sent.max(1) as f64;
                    let _ = writeln!(
                        out,
                        "| {} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                        row.system,
                        m.sent,
                        pct(m.delivered),
                        pct(m.lost),
                        own_count(m),
                        m.p50_ms,
                        m.p99_ms,
                        m.p999_ms,
                        m.max_ms,
                        m.wire_per_payload
                    );
                }
                None => {
                    let _ = writeln!(out, "| {} | {} ||||||||| ", row.system, why(row));
                }
            }
        }
        out.push('\n');
    }
    out
}
