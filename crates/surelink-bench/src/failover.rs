//! The failover workload: the real-time stream ([`workload::paced`]) over
//! two impaired paths, the primary path cut (both directions) at a fixed
//! moment for a fixed time, then restored.
//!
//! surelink runs with two paths: the server binds two sockets
//! (`Endpoint::bind_many`), each behind its own in-process impairer, and the
//! client adds the second one with `Connection::add_path`, in backup mode
//! and in broadcast mode (`ProtocolConfig::path_mode`). The peers have no
//! failover across concurrently live paths, so they run on one path through
//! the same kind of impairer with the same cut, and the figures show what a
//! cut does to them. TCP cannot cross the impairer.
//!
//! Detection is read from the sender's events (`Connection::next_event`):
//! the arrival, after the cut, of the primary path's `PathSuspect`,
//! `PathDown`, and `FailedOver` away from it.

use std::any::Any;
use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use surelink::impair::ImpairHandle;
use surelink::{
    Connection, ConnectionEvent, Endpoint, EndpointConfig, PathId, PathMode, ProtocolConfig,
};

use crate::report::Settings;
use crate::rows::{med, why, Median, Row};
use crate::run::isolated;
use crate::system::System;
use crate::transport::surelink::{SurelinkRx, SurelinkTx};
use crate::transport::{kcp, loopback, quic, srt, udp, wire, Delivery, Mode, Pair, Route, Rx, Tx};
use crate::workload::{self, wire_bytes, RtParams, RtRun};

/// How a system uses the paths it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Paths {
    /// surelink, two paths, backup mode.
    Backup,
    /// surelink, two paths, broadcast mode.
    Broadcast,
    /// One path: the system cannot fail over to another.
    Single,
}

impl Paths {
    fn label(self) -> &'static str {
        match self {
            Paths::Backup => "backup",
            Paths::Broadcast => "broadcast",
            Paths::Single => "one path",
        }
    }
}

/// What the cut looks like.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverParams {
    /// The stream (rate, size, sending time).
    pub stream: RtParams,
    /// When the primary path is cut, seconds after the first message.
    pub cut_at_secs: f64,
    /// How long it stays cut, seconds.
    pub cut_secs: f64,
}

/// One failover run.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverRun {
    /// The stream's figures over the whole run (latency of every message;
    /// `lost` and `duplicated` as the application saw them; wire bytes
    /// over both paths).
    pub stream: RtRun,
    /// Cut → first snapshot with the primary path suspect or down (the
    /// core's `PathSuspect`), ms; surelink only, NaN otherwise.
    pub suspect_ms: f64,
    /// Cut → primary path down (`PathDown`), ms; surelink only.
    pub down_ms: f64,
    /// Cut → another path carries the data (`FailedOver`), ms; surelink
    /// backup mode only (in broadcast mode every live path carries it
    /// anyway, so there is nothing to switch: NaN).
    pub failed_over_ms: f64,
    /// Cut → first delivery of a message sent after the cut, ms.
    pub resume_ms: f64,
    /// Largest time between two consecutive deliveries, the later one in the
    /// switchover window, ms: the stall the application saw around the cut
    /// (a stall elsewhere, say from a busy machine, is not counted here but
    /// shows in the stream's maximum latency).
    pub max_gap_ms: f64,
    /// When that gap ended, ms after the cut.
    pub max_gap_at_ms: f64,
    /// Payload bytes the sender re-sent in the switchover window, by its
    /// own counter (surelink only, NaN otherwise).
    pub resent_payload_bytes: f64,
    /// Largest one-way latency of the messages sent from one RTT before the
    /// cut until the path came back (in flight at the cut or sent during it), ms.
    pub cut_latency_max_ms: f64,
    /// Wire bytes per payload byte in the steady window before the cut
    /// (broadcast's constant overhead shows here).
    pub wire_per_payload_before: f64,
    /// Wire bytes in the switchover window (from the cut until 2 s after
    /// the restoration, or the end of sending) minus what the steady rate
    /// before the cut would have put on the wire in as long; may be negative.
    pub extra_bytes: f64,
    /// Length of the switchover window, seconds.
    pub window_secs: f64,
}

/// One row of the failover table.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverRow {
    /// How the system used its paths.
    pub paths: Paths,
    /// Whether the system can fail over across paths at all, and how.
    pub multipath: &'static str,
    /// The figures.
    #[serde(flatten)]
    pub row: Row<FailoverRun>,
}

impl Median for FailoverRun {
    fn median(runs: &[Self]) -> Self {
        let streams: Vec<RtRun> = runs.iter().map(|r| r.stream.clone()).collect();
        FailoverRun {
            stream: RtRun::median(&streams),
            suspect_ms: med(runs, |r| r.suspect_ms),
            down_ms: med(runs, |r| r.down_ms),
            failed_over_ms: med(runs, |r| r.failed_over_ms),
            resume_ms: med(runs, |r| r.resume_ms),
            max_gap_ms: med(runs, |r| r.max_gap_ms),
            max_gap_at_ms: med(runs, |r| r.max_gap_at_ms),
            resent_payload_bytes: med(runs, |r| r.resent_payload_bytes),
            cut_latency_max_ms: med(runs, |r| r.cut_latency_max_ms),
            wire_per_payload_before: med(runs, |r| r.wire_per_payload_before),
            extra_bytes: med(runs, |r| r.extra_bytes),
            window_secs: med(runs, |r| r.window_secs),
        }
    }
}

/// What `system` can do with two paths.
fn multipath(system: System, paths: Paths) -> &'static str {
    match (system, paths) {
        (_, Paths::Backup) => "yes: backup mode (the standby takes over, then fails back)",
        (_, Paths::Broadcast) => "yes: broadcast mode (every packet on both paths)",
        (System::Quinn | System::QuinnDatagram, _) => {
            "no multipath (QUIC path migration is not failover across concurrently live paths): one path, same cut"
        }
        (System::Srt, _) => {
            "no: SRT socket groups/bonding not in Debian's build (srt_create_group fails): one path, same cut"
        }
        (System::Kcp, _) => "no multipath in KCP: one path, same cut",
        (System::Udp, _) => "no: one path, no reliability",
        (System::Tcp, _) => "no multipath (plain TCP)",
        (System::Surelink | System::SurelinkPlaintext | System::SurelinkDeadline, _) => {
            "yes, as surelink (measured for surelink only)"
        }
    }
}

/// The failover rows for `system` (two for surelink: backup and
/// broadcast; none for `surelink-deadline`, a variant of the real-time
/// stream only), measured or not as `row` says.
pub fn rows(system: System, row: impl Fn() -> Row<FailoverRun>) -> Vec<FailoverRow> {
    let modes: &[Paths] = match system {
        System::Surelink => &[Paths::Backup, Paths::Broadcast],
        System::SurelinkDeadline => &[],
        _ => &[Paths::Single],
    };
    modes
        .iter()
        .map(|&paths| FailoverRow {
            paths,
            multipath: multipath(system, paths),
            row: row(),
        })
        .collect()
}

/// One failover run of `system` with `paths`; `route` is each path's
/// impairment (the second path gets the next seed), `rtt` the round-trip
/// time it adds.
pub fn run(
    system: System,
    paths: Paths,
    params: &FailoverParams,
    route: &Route,
    rtt: Duration,
) -> io::Result<FailoverRun> {
    let delivery = system.delivery();
    let secs = Duration::from_secs_f64(params.stream.secs);
    isolated(secs + Duration::from_secs(60), move || async move {
        let r = Some(route);
        match (system, paths) {
            (System::Surelink, Paths::Backup | Paths::Broadcast) => {
                let mode = if paths == Paths::Backup {
                    PathMode::Backup
                } else {
                    PathMode::Broadcast
                };
                let (pair, watch) = two_paths(mode, route).await?;
                measure(pair, paths, Some(watch), params, delivery, rtt).await
            }
            (System::Quinn, Paths::Single) => {
                let pair = quic::open_stream(Mode::Realtime, r).await?;
                measure(single(pair), paths, None, params, delivery, rtt).await
            }
            (System::Kcp, Paths::Single) => {
                let pair = kcp::open(Mode::Realtime, r).await?;
                measure(single(pair), paths, None, params, delivery, rtt).await
            }
            (System::Udp, Paths::Single) => {
                let pair = udp::open(r).await?;
                measure(single(pair), paths, None, params, delivery, rtt).await
            }
            (System::Srt, Paths::Single) => {
                let lifetime = secs + Duration::from_secs(60);
                let pair = srt::open_live(r, srt::latency_for(rtt), lifetime).await?;
                measure(single(pair), paths, None, params, delivery, rtt).await
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{system} ({}) does not take part in failover",
                    paths.label()
                ),
            )),
        }
    })
}

/// A connection's halves, the impairers of its paths (the first is the one
/// cut) and what must stay alive meanwhile.
struct Setup<T, R> {
    tx: T,
    rx: R,
    impairers: Vec<ImpairHandle>,
    keep: Vec<Box<dyn Any + Send>>,
}

/// A one-path pair as a setup.
fn single<T: Tx, R: Rx>(pair: Pair<T, R>) -> Setup<T, R> {
    Setup {
        tx: pair.tx,
        rx: pair.rx,
        impairers: pair.impairer.into_iter().collect(),
        keep: pair.keep,
    }
}

/// surelink with two paths in `mode`: a server with two sockets, each behind
/// its own impairer; the client connects through the first and adds the
/// second, and the run starts once the second path is validated. Returns
/// the setup and the sending connection (to watch its paths).
async fn two_paths(
    mode: PathMode,
    route: &Route,
) -> io::Result<(Setup<SurelinkTx, SurelinkRx>, Connection)> {
    let protocol = ProtocolConfig {
        path_mode: mode,
        ..ProtocolConfig::default()
    };
    let config = EndpointConfig::default().with_protocol(protocol);
    let server = Endpoint::bind_many(&[loopback(0), loopback(0)], config.clone())
        .map_err(io::Error::other)?;
    let client = Endpoint::client_with_config(loopback(0), config).map_err(io::Error::other)?;
    let addrs = server.local_addrs();
    let second = Route {
        link: route.link.clone(),
        seed: route.seed.wrapping_add(1),
    };
    let (primary_to, primary) = wire(addrs[0], Some(route))?;
    let (backup_to, backup) = wire(addrs[1], Some(&second))?;
    let (connected, accepted) = tokio::join!(client.connect(primary_to), server.accept());
    let tx = connected.map_err(io::Error::other)?;
    let rx = accepted.ok_or_else(|| io::Error::other("server endpoint stopped"))?;
    tx.add_path(backup_to)
        .ok_or_else(|| io::Error::other("add_path refused the second path"))?;
    let started = Instant::now();
    loop {
        let ready = tx.path_stats().get(1).is_some_and(|p| p.state.is_usable());
        if ready {
            break;
        }
        if started.elapsed() > Duration::from_secs(5) {
            return Err(io::Error::other(
                "the second path was not validated within 5 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let watch = tx.clone();
    let setup = Setup {
        tx: SurelinkTx::new(tx, client.clone(), Mode::Realtime),
        rx: SurelinkRx::new(rx, Mode::Realtime),
        impairers: primary.into_iter().chain(backup).collect(),
        keep: vec![Box::new(server), Box::new(client)],
    };
    Ok((setup, watch))
}

/// Wire bytes offered to every impairer so far, with the instant.
fn wire_now(impairers: &[ImpairHandle]) -> (Instant, u64) {
    let bytes = impairers.iter().map(|i| wire_bytes(&i.stats())).sum();
    (Instant::now(), bytes)
}

/// What the cutting task saw.
struct Cut {
    /// Start of the steady window before the cut.
    before: (Instant, u64),
    /// The cut.
    cut: (Instant, u64),
    /// The restoration.
    restored: Instant,
    /// End of the switchover window.
    after: (Instant, u64),
    /// The sender's re-sent payload bytes at the cut and at the end of the
    /// window (surelink).
    resent: Option<(u64, u64)>,
}

/// The first instants, after `cut`, at which the sender's primary path was
/// suspect (or down), down, and no longer the one carrying the data.
#[derive(Default)]
struct Detection {
    suspect: Option<Instant>,
    down: Option<Instant>,
    failed_over: Option<Instant>,
}

/// Takes `conn`'s events until `until` (or until the primary was seen down
/// and the data moved off it), noting when each transition of the primary
/// path arrived after `from` (the cut).
async fn watch_paths(conn: Connection, from: Instant, until: Instant) -> Detection {
    let primary = PathId(0);
    let mut seen = Detection::default();
    while seen.failed_over.is_none() || seen.down.is_none() {
        let Ok(Some(event)) = tokio::time::timeout_at(until.into(), conn.next_event()).await else {
            break;
        };
        let now = Instant::now();
        if now < from {
            continue;
        }
        match event {
            ConnectionEvent::PathSuspect(p) if p == primary => {
                seen.suspect.get_or_insert(now);
            }
            ConnectionEvent::PathDown(p) if p == primary => {
                seen.suspect.get_or_insert(now);
                seen.down.get_or_insert(now);
            }
            ConnectionEvent::FailedOver { from: p, .. } if p == primary => {
                seen.failed_over.get_or_insert(now);
            }
            _ => {}
        }
    }
    seen
}

/// Runs the paced stream over `setup`, cuts its first impairer at the
/// scheduled moment, watches `watch`'s paths (surelink), and derives the
/// figures.
async fn measure<T: Tx, R: Rx>(
    setup: Setup<T, R>,
    paths: Paths,
    watch: Option<Connection>,
    params: &FailoverParams,
    delivery: Delivery,
    rtt: Duration,
) -> io::Result<FailoverRun> {
    let Setup {
        tx,
        rx,
        impairers,
        keep,
    } = setup;
    if impairers.is_empty() {
        return Err(io::Error::other("failover needs an impaired path"));
    }
    let impairers = Arc::new(impairers);
    let base = Instant::now();
    let cut_at = base + Duration::from_secs_f64(params.cut_at_secs);
    let restore_at = cut_at + Duration::from_secs_f64(params.cut_secs);
    let sending_ends = base + Duration::from_secs_f64(params.stream.secs);
    let window_ends = (restore_at + Duration::from_secs(2)).min(sending_ends);
    let steady = Duration::from_secs(1).min(Duration::from_secs_f64(params.cut_at_secs / 2.0));

    let links = Arc::clone(&impairers);
    let counter = watch.clone();
    let cutter = tokio::spawn(async move {
        let resent = || {
            counter
                .as_ref()
                .map(|c| c.stats().payload_bytes_retransmitted)
        };
        tokio::time::sleep_until((cut_at - steady).into()).await;
        let before = wire_now(&links);
        tokio::time::sleep_until(cut_at.into()).await;
        let cut = wire_now(&links);
        let resent_at_cut = resent();
        links[0].set_cut(true);
        tokio::time::sleep_until(restore_at.into()).await;
        links[0].set_cut(false);
        let restored = Instant::now();
        tokio::time::sleep_until(window_ends.into()).await;
        let after = wire_now(&links);
        Cut {
            before,
            cut,
            restored,
            after,
            resent: resent_at_cut.zip(resent()),
        }
    });
    let watcher = watch.map(|conn| {
        tokio::spawn(watch_paths(
            conn,
            cut_at,
            restore_at + Duration::from_secs(1),
        ))
    });

    let outcome = workload::paced(tx, rx, &params.stream, delivery, base).await;
    // Whatever happened, the cut ends and the tasks stop before we return.
    impairers[0].set_cut(false);
    let cut = cutter.await.map_err(io::Error::other);
    let mut detection = match watcher {
        Some(task) => task.await.map_err(io::Error::other)?,
        None => Detection::default(),
    };
    if paths != Paths::Backup {
        detection.failed_over = None;
    }
    let (trace, tx, rx) = outcome?;
    let cut = cut?;
    let total_wire: u64 = impairers.iter().map(|i| wire_bytes(&i.stats())).sum();
    drop((tx, rx, keep));
    drop(impairers);

    let ns = |t: Instant| t.duration_since(base).as_nanos() as u64;
    let ms_since_cut = |t: Option<Instant>| {
        t.map_or(f64::NAN, |t| {
            t.saturating_duration_since(cut.cut.0).as_secs_f64() * 1000.0
        })
    };
    let cut_ns = ns(cut.cut.0);
    let restored_ns = ns(cut.restored);
    let resume_ms = trace
        .arrivals
        .iter()
        .find(|a| a.sent_ns >= cut_ns)
        .map_or(f64::NAN, |a| (a.recv_ns - cut_ns) as f64 / 1e6);
    let window_ns = cut_ns..=ns(cut.after.0);
    let max_gap = trace
        .arrivals
        .windows(2)
        .filter(|w| window_ns.contains(&w[1].recv_ns))
        .map(|w| (w[1].recv_ns.saturating_sub(w[0].recv_ns), w[1].recv_ns))
        .max();
    let (max_gap_ms, max_gap_at_ms) = max_gap.map_or((f64::NAN, f64::NAN), |(gap, at)| {
        (gap as f64 / 1e6, (at as f64 - cut_ns as f64) / 1e6)
    });
    let affected_from = cut_ns.saturating_sub(rtt.as_nanos() as u64);
    let cut_latency_max_ms = trace
        .arrivals
        .iter()
        .filter(|a| a.sent_ns >= affected_from && a.sent_ns < restored_ns)
        .map(|a| a.recv_ns.saturating_sub(a.sent_ns))
        .max()
        .map_or(f64::NAN, |l| l as f64 / 1e6);

    let steady_secs = cut.cut.0.duration_since(cut.before.0).as_secs_f64();
    let steady_bytes = cut.cut.1.saturating_sub(cut.before.1) as f64;
    let steady_payload =
        steady_secs * f64::from(params.stream.rate) * params.stream.size.max(16) as f64;
    let window_secs = cut.after.0.duration_since(cut.cut.0).as_secs_f64();
    let window_bytes = cut.after.1.saturating_sub(cut.cut.1) as f64;
    let extra_bytes = window_bytes - steady_bytes / steady_secs.max(1e-9) * window_secs;

    Ok(FailoverRun {
        stream: RtRun::from_trace(trace, params.stream.size.max(16), total_wire)?,
        suspect_ms: ms_since_cut(detection.suspect),
        down_ms: ms_since_cut(detection.down),
        failed_over_ms: ms_since_cut(detection.failed_over),
        resume_ms,
        max_gap_ms,
        max_gap_at_ms,
        resent_payload_bytes: cut.resent.map_or(f64::NAN, |(at_cut, after)| {
            after.saturating_sub(at_cut) as f64
        }),
        cut_latency_max_ms,
        wire_per_payload_before: steady_bytes / steady_payload.max(1.0),
        extra_bytes,
        window_secs,
    })
}

/// Milliseconds with two decimals, or a dash.
fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "—".to_owned()
    }
}

/// A byte count, or a dash.
fn bytes(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "—".to_owned()
    }
}

/// The failover tables in markdown: detection and recovery, then latency
/// and bytes.
pub fn markdown(rows: &[FailoverRow], s: &Settings, runs: &str) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let f = &s.failover;
    let _ = writeln!(
        out,
        "## Failover: {} msg/s × {} B for {} s, {} ms ± {} ms each way, primary path cut at {} s for {} s ({runs})\n",
        s.rt_rate, s.rt_size, f.stream.secs, s.delay_ms, s.jitter_ms, f.cut_at_secs, f.cut_secs
    );
    let _ = writeln!(
        out,
        "| system | paths | fails over? | suspect ms | down ms | failed over ms | resume ms | max gap ms | lost | dup |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let row = &r.row;
        let head = format!("| {} | {} | {} |", row.system, r.paths.label(), r.multipath);
        match &row.median {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "{head} {} | {} | {} | {} | {} | {} | {} |",
                    ms(m.suspect_ms),
                    ms(m.down_ms),
                    ms(m.failed_over_ms),
                    ms(m.resume_ms),
                    ms(m.max_gap_ms),
                    m.stream.lost,
                    m.stream.duplicated,
                );
            }
            None => {
                let _ = writeln!(out, "{head} {} |||||| ", why(row));
            }
        }
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "| system | paths | p50 ms | p99 ms | max ms | max latency at cut ms | wire B / payload B before cut | extra wire bytes in switchover | re-sent payload bytes |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let row = &r.row;
        let head = format!("| {} | {} |", row.system, r.paths.label());
        match &row.median {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "{head} {} | {} | {} | {} | {:.2} | {} | {} |",
                    ms(m.stream.p50_ms),
                    ms(m.stream.p99_ms),
                    ms(m.stream.max_ms),
                    ms(m.cut_latency_max_ms),
                    m.wire_per_payload_before,
                    bytes(m.extra_bytes),
                    bytes(m.resent_payload_bytes),
                );
            }
            None => {
                let _ = writeln!(out, "{head} {} |||||||", why(row));
            }
        }
    }
    out.push('\n');
    out
}
