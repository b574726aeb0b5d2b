//! `surelink-bench etcd-capacity`: how many receiver-group sessions one etcd
//! member carries at the default checkpoint interval.
//!
//! A receiver group's leader commits each checkpoint to etcd as one
//! transaction fenced by its term (`surelink_etcd::Leadership`, a
//! `ReceiverStore`); while data flows that is one write per session every
//! checkpoint interval (`SessionOptions::checkpoint_interval`, 20 ms: up to
//! 50 writes/s per session). For each session count N, this starts a fresh
//! one-member etcd (as the `standby` workload does), elects a leader in N
//! groups (each with its own etcd client, as N receiver processes would
//! have), then has every leader commit a receiver checkpoint every interval
//! for the given time, the N sessions' ticks spread evenly over the
//! interval. Measured: the commit latency (p50, p99, max), the commits/s
//! achieved against the N / interval asked for, the failed commits, and the
//! ticks missed because a session's previous commit had not returned yet
//! (commits fall behind the interval), and the etcd transactions that
//! carried the commits (the leaders' coalescer counters).
//!
//! With `--batched`, the N sessions are served by *one* leader of one group
//! instead (`Leadership::open_session`), as one receiver carrying many
//! sessions does: their checkpoints go through the leader's commit
//! coalescer, one fenced transaction per batch window (20 ms, split beyond
//! 128 puts), so the transactions/s stay about 50 × ⌈N / 128⌉ whatever N.
//! Every wait is bounded.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use hdrhistogram::Histogram;
use surelink_etcd::{CommitStats, EtcdAccess, Group, Leadership};
use surelink_session::{ReceiverStore, SessionOptions, SessionRecord};

use crate::standby::start_etcd;

/// Bound on electing all the leaders of one step.
const ELECTION_LIMIT: Duration = Duration::from_secs(120);
/// Lease of each leader (kept alive in the background meanwhile).
const LEASE_TTL: Duration = Duration::from_secs(5);
/// Size of the `peer` field of a receiver's checkpoint with one channel
/// (role, version, flags, position, count, channel and next id).
const CHECKPOINT_PEER_LEN: usize = 3 + 8 + 4 + 16;

/// `surelink-bench etcd-capacity`: sessions per etcd member.
#[derive(Debug, Parser)]
#[command(name = "surelink-bench etcd-capacity")]
struct Args {
    /// Concurrent sessions, each count against a fresh etcd.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    sessions: Vec<usize>,
    /// Seconds of committing per count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// One leader serves all the sessions, batching their checkpoints into
    /// shared transactions (instead of one group and leader per session).
    #[arg(long)]
    batched: bool,
}

/// One session's figures.
struct SessionFigures {
    latency_us: Histogram<u64>,
    commits: u64,
    errors: u64,
    missed: u64,
}

/// `surelink-bench etcd-capacity …`: `argv` starts with the subcommand's name.
pub fn main(argv: impl Iterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let args = Args::parse_from(argv);
    if args.sessions.iter().any(|&n| n == 0 || n > 5000) || !(1..=120).contains(&args.seconds) {
        bail!("every session count must be 1..=5000 and --seconds 1..=120");
    }
    let interval = SessionOptions::default().checkpoint_interval;
    let duration = Duration::from_secs(args.seconds);
    println!(
        "| sessions | commits/s asked | commits/s done | etcd txns/s | p50 | p99 | max | failed | ticks missed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.sessions {
        eprintln!("etcd-capacity: {n} sessions for {duration:?}");
        let dir = tempfile::tempdir()?;
        let (_etcd, url) = start_etcd(dir.path())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (figures, txns) = runtime.block_on(step(&url, n, interval, duration, args.batched))?;
        runtime.shutdown_timeout(Duration::from_secs(2));
        let mut latency = Histogram::<u64>::new(3).expect("valid precision");
        let (mut commits, mut errors, mut missed) = (0, 0, 0);
        for f in &figures {
            latency.add(&f.latency_us).expect("same bounds");
            commits += f.commits;
            errors += f.errors;
            missed += f.missed;
        }
        let ticks = commits + errors + missed;
        let ms = |us: u64| us as f64 / 1e3;
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {errors} | {missed} ({:.1} %) |",
            n as f64 / interval.as_secs_f64(),
            commits as f64 / duration.as_secs_f64(),
            txns.transactions as f64 / duration.as_secs_f64(),
            ms(latency.value_at_quantile(0.5)),
            ms(latency.value_at_quantile(0.99)),
            ms(latency.max()),
            100.0 * missed as f64 / ticks.max(1) as f64,
        );
    }
    Ok(())
}

/// Elects the leaders on the etcd at `url` (`n`, or one with `n` sessions
/// if `batched`), then has each session commit a checkpoint every
/// `interval` for `duration`. Returns each session's figures and the
/// leaders' transactions.
async fn step(
    url: &str,
    n: usize,
    interval: Duration,
    duration: Duration,
    batched: bool,
) -> anyhow::Result<(Vec<SessionFigures>, CommitStats)> {
    let groups = if batched { 1 } else { n };
    let elected = async {
        let mut leaders = Vec::with_capacity(groups);
        for i in 0..groups {
            leaders.push(elect(url, i).await?);
        }
        anyhow::Ok(leaders)
    };
    let leaders = tokio::time::timeout(ELECTION_LIMIT, elected)
        .await
        .context("electing the leaders took too long")??;
    let start = Instant::now() + interval;
    let first = |i: usize| start + interval.mul_f64(i as f64 / n as f64);
    let end = start + duration;
    if batched {
        let leadership = &leaders[0];
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let session = leadership.open_session(&format!("s{i}")).await?;
            tasks.push(tokio::spawn(commit_every(
                session,
                i,
                first(i),
                interval,
                end,
            )));
        }
        let (figures, _) = finish(tasks).await?;
        return Ok((figures, leadership.commit_stats()));
    }
    // Each leader commits its group's own session.
    let tasks = leaders
        .into_iter()
        .enumerate()
        .map(|(i, leadership)| tokio::spawn(commit_every(leadership, i, first(i), interval, end)))
        .collect();
    let (figures, leaders) = finish(tasks).await?;
    let txns =
        leaders
            .iter()
            .map(Leadership::commit_stats)
            .fold(CommitStats::default(), |sum, one| CommitStats {
                transactions: sum.transactions + one.transactions,
                checkpoints: sum.checkpoints + one.checkpoints,
            });
    Ok((figures, txns))
}

/// Connects to the etcd at `url` as a member of group `capacity-INDEX` and
/// wins its leadership.
async fn elect(url: &str, index: usize) -> anyhow::Result<Leadership> {
    let group = Group::connect(
        &EtcdAccess::new(vec![url.to_owned()]),
        &format!("capacity-{index}"),
        LEASE_TTL,
    )
    .await
    .with_context(|| format!("group {index}: cannot connect to etcd"))?;
    group
        .campaign("127.0.0.1:1", |_| {})
        .await
        .with_context(|| format!("group {index}: campaign failed"))
}

/// Waits for the session tasks: their figures, and their stores back.
async fn finish<S>(
    tasks: Vec<tokio::task::JoinHandle<(SessionFigures, S)>>,
) -> anyhow::Result<(Vec<SessionFigures>, Vec<S>)> {
    let mut figures = Vec::with_capacity(tasks.len());
    let mut stores = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (session, store) = task.await.context("a session task failed")?;
        figures.push(session);
        stores.push(store);
    }
    Ok((figures, stores))
}

/// Commits a checkpoint of session `index` to `store` at `first`, then
/// every `interval` until `end`; a tick that passed while a commit was
/// still pending is missed, not made up for. Hands the store back.
async fn commit_every<S: ReceiverStore>(
    mut store: S,
    index: usize,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> (SessionFigures, S) {
    let mut figures = SessionFigures {
        latency_us: Histogram::new(3).expect("valid precision"),
        commits: 0,
        errors: 0,
        missed: 0,
    };
    let mut session_id = [0u8; 16];
    session_id[..8].copy_from_slice(&(index as u64).to_le_bytes());
    let mut next = first;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let mut peer = vec![0u8; CHECKPOINT_PEER_LEN];
        peer[..8].copy_from_slice(&figures.commits.to_le_bytes());
        let record = SessionRecord {
            session_id,
            resume_token: [0x5a; 32],
            peer,
        };
        let sent = Instant::now();
        match store.commit(record, true).await {
            Ok(()) => {
                figures.commits += 1;
                let us = sent.elapsed().as_micros().max(1) as u64;
                figures
                    .latency_us
                    .record(us)
                    .expect("auto-resizing histogram");
            }
            Err(_) => figures.errors += 1,
        }
        next += interval;
        let now = Instant::now();
        while next <= now && next < end {
            figures.missed += 1;
            next += interval;
        }
    }
    (figures, store)
}
