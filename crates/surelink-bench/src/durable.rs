//! The `durable` workload: what durable sessions (`--state`, docs/CHECKPOINTS.md)
//! cost, and how fast a killed side resumes.
//!
//! Each run measures, over loopback:
//!
//! 1. **Throughput** of an N-MiB transfer in 64 KiB messages, in this process
//!    (two tokio workers, like every other workload): two baselines without
//!    `--state` — a plain surelink connection whose receiver discards (the
//!    in-memory baseline) and one whose receiver writes the output file, as
//!    `surelink recv --out FILE` does without `--state` (no fsync) — then a
//!    durable session with journals and output file on disk under each
//!    durability policy (`none`, `interval` 50 ms, `always`), their outbox
//!    copying every message into the sender's journal, and once more under
//!    `interval` with a *replayable* outbox that refers to the input file
//!    instead (a `FileSource`, as `surelink send --in FILE --state` uses).
//!    For each: MB/s, the ratios to both baselines, and fsyncs per second
//!    (both journals and the output file). Each session's files are removed
//!    once it is measured, and the replayable outbox goes first in even runs
//!    and last in odd ones: a session runs slower while the files of the
//!    ones before it are still being written back.
//! 2. **Restart → first resumed delivery** with the real command-line tool
//!    (the `surelink` binary next to this one: build it with
//!    `cargo build --release -p surelink-cli`): `surelink recv --state` and
//!    `surelink send --state` (default durability) as child processes; when
//!    half the input has arrived, one of them gets SIGKILL and is started again
//!    with the same arguments; the time from that start until the output file
//!    grows again (for a killed receiver: beyond the checkpoint it cut the
//!    output back to). Then the transfer must complete with the output
//!    identical to the input.
//!
//! Every wait is bounded; a run that fails is reported with its error.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::{RngCore as _, SeedableRng as _};
use serde::Serialize;
use surelink::{Bytes, Endpoint, EndpointConfig};
use surelink_session::{
    Durability, DurableReceiver, DurableSender, DurableSink as _, FileSink, FileSource, Outgoing,
    SessionOptions,
};
use tokio::io::AsyncWriteExt as _;

use crate::report::Target;
use crate::rows::median;

/// Message size of every transfer.
const CHUNK: usize = 64 << 10;
/// Messages per journal commit on the sender (1 MiB, like `send --state`).
const BATCH: usize = 16;
/// Bound on any one wait (a line, progress, an exit).
const WAIT_LIMIT: Duration = Duration::from_secs(60);
/// How often the output file is polled while waiting for it to grow.
const POLL: Duration = Duration::from_micros(500);

/// The `interval` policy measured (the default's 50 ms).
const INTERVAL: Durability = Durability::Interval(Duration::from_millis(50));

/// The durability policies measured, with their names.
const POLICIES: [(&str, Durability); 3] = [
    ("none", Durability::None),
    ("interval", INTERVAL),
    ("always", Durability::Always),
];

/// One transfer's throughput.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
    /// File and directory fsyncs per second (journals and output).
    pub fsyncs_per_s: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct DurableRun {
    /// Plain connection, receiver discards.
    pub in_memory: Throughput,
    /// Plain connection, receiver writes the output file (no `--state`).
    pub plain_file: Throughput,
    /// Durable session, durability `none`.
    pub none: Throughput,
    /// Durable session, durability `interval` 50 ms.
    pub interval: Throughput,
    /// Durable session, durability `always`.
    pub always: Throughput,
    /// Durable session, durability `interval` 50 ms, the outbox referring
    /// to the input file.
    pub interval_replayable: Throughput,
    /// `none` MB/s ÷ in-memory MB/s.
    pub none_ratio: f64,
    /// `interval` MB/s ÷ in-memory MB/s.
    pub interval_ratio: f64,
    /// `always` MB/s ÷ in-memory MB/s.
    pub always_ratio: f64,
    /// `interval`, replayable outbox, MB/s ÷ in-memory MB/s.
    pub interval_replayable_ratio: f64,
    /// `none` MB/s ÷ plain-file MB/s.
    pub none_vs_file: f64,
    /// `interval` MB/s ÷ plain-file MB/s.
    pub interval_vs_file: f64,
    /// `always` MB/s ÷ plain-file MB/s.
    pub always_vs_file: f64,
    /// `interval`, replayable outbox, MB/s ÷ plain-file MB/s.
    pub interval_replayable_vs_file: f64,
    /// `surelink send` killed and restarted: restart → first resumed delivery, ms.
    pub sender_restart_ms: Option<f64>,
    /// `surelink recv` killed and restarted: restart → first resumed delivery, ms.
    pub receiver_restart_ms: Option<f64>,
}

/// The workload's results: every run and the medians.
#[derive(Debug, Clone, Serialize)]
pub struct DurableReport {
    /// Transfer size, MiB.
    pub mib: u64,
    /// Successful runs.
    pub runs: Vec<DurableRun>,
    /// Errors of failed runs (or of the restart part of a run).
    pub errors: Vec<String>,
    /// Field-by-field medians over `runs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median: Option<DurableRun>,
}

impl DurableReport {
    /// No runs yet.
    pub fn new(mib: u64) -> Self {
        Self {
            mib,
            runs: Vec::new(),
            errors: Vec::new(),
            median: None,
        }
    }

    /// Runs the workload once; progress to stderr under `tag`.
    pub fn run(&mut self, tag: &str) {
        // Alternate whether the replayable outbox is measured before or
        // after the copying ones: a session runs slower while the files of
        // the ones before it are still being written back.
        let replayable_first = (self.runs.len() + self.errors.len()) % 2 == 0;
        match run_once(self.mib, tag, replayable_first, &mut self.errors) {
            Ok(run) => {
                eprintln!(
                    "{tag} durable: in-memory {:.0} MB/s, plain file {:.0} MB/s; \
                     none {:.2}/{:.2}, interval {:.2}/{:.2}, always {:.2}/{:.2}, \
                     interval replayable {:.2}/{:.2}; \
                     restart → delivery: sender {}, receiver {}",
                    run.in_memory.mb_per_s,
                    run.plain_file.mb_per_s,
                    run.none_ratio,
                    run.none_vs_file,
                    run.interval_ratio,
                    run.interval_vs_file,
                    run.always_ratio,
                    run.always_vs_file,
                    run.interval_replayable_ratio,
                    run.interval_replayable_vs_file,
                    ms(run.sender_restart_ms),
                    ms(run.receiver_restart_ms),
                );
                self.runs.push(run);
            }
            Err(e) => {
                eprintln!("{tag} durable: failed: {e:#}");
                self.errors.push(format!("{e:#}"));
            }
        }
    }

    /// Fills the medians.
    pub fn finish(&mut self) {
        if self.runs.is_empty() {
            return;
        }
        let runs = &self.runs;
        let m = |f: &dyn Fn(&DurableRun) -> f64| median(runs.iter().map(f).collect());
        let tp = |f: &dyn Fn(&DurableRun) -> &Throughput| Throughput {
            mb_per_s: m(&|r| f(r).mb_per_s),
            fsyncs_per_s: m(&|r| f(r).fsyncs_per_s),
        };
        let opt = |f: &dyn Fn(&DurableRun) -> Option<f64>| {
            Some(m(&|r| f(r).unwrap_or(f64::NAN))).filter(|v| !v.is_nan())
        };
        self.median = Some(DurableRun {
            in_memory: tp(&|r| &r.in_memory),
            plain_file: tp(&|r| &r.plain_file),
            none: tp(&|r| &r.none),
            interval: tp(&|r| &r.interval),
            always: tp(&|r| &r.always),
            interval_replayable: tp(&|r| &r.interval_replayable),
            none_ratio: m(&|r| r.none_ratio),
            interval_ratio: m(&|r| r.interval_ratio),
            always_ratio: m(&|r| r.always_ratio),
            interval_replayable_ratio: m(&|r| r.interval_replayable_ratio),
            none_vs_file: m(&|r| r.none_vs_file),
            interval_vs_file: m(&|r| r.interval_vs_file),
            always_vs_file: m(&|r| r.always_vs_file),
            interval_replayable_vs_file: m(&|r| r.interval_replayable_vs_file),
            sender_restart_ms: opt(&|r| r.sender_restart_ms),
            receiver_restart_ms: opt(&|r| r.receiver_restart_ms),
        });
    }

    /// The targets for durable sessions.
    pub fn targets(&self) -> Vec<Target> {
        let m = self.median.as_ref();
        // "In memory" is the same transfer without `--state`, i.e. writing
        // the same output file; the ratio to a receiver that discards is
        // shown next to it.
        type Ratios = fn(&DurableRun) -> (f64, f64);
        let ratio = |id, name: &str, f: Ratios, bound: f64| Target {
            id,
            required: format!(
                "--state, durability {name}: ≥ {bound} × throughput without --state \
                 (same output file)"
            ),
            measured: m.map_or("not measured".into(), |m| {
                let (file, discard) = f(m);
                format!("{file:.2} ({discard:.2} of a receiver that discards)")
            }),
            met: m.map(|m| f(m).0 >= bound),
        };
        let restart = m.and_then(|m| Some((m.sender_restart_ms?, m.receiver_restart_ms?)));
        vec![
            // `send --in FILE --state` refers to its input rather than
            // copying it: the interval target is the replayable outbox's.
            ratio(
                "durable_interval_ratio",
                "interval (outbox referring to the input file)",
                |m| (m.interval_replayable_vs_file, m.interval_replayable_ratio),
                0.8,
            ),
            ratio(
                "durable_always_ratio",
                "always",
                |m| (m.always_vs_file, m.always_ratio),
                0.5,
            ),
            Target {
                id: "durable_restart_to_delivery",
                required: "kill -9 and restart of either side → first resumed delivery < 1 s"
                    .into(),
                measured: restart.map_or("not measured".into(), |(s, r)| {
                    format!("sender {s:.1} ms, receiver {r:.1} ms")
                }),
                met: restart.map(|(s, r)| s < 1000.0 && r < 1000.0),
            },
        ]
    }

    /// The markdown section.
    pub fn markdown(&self, runs: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Durable sessions: {} MiB in 64 KiB messages ({runs})\n",
            self.mib
        );
        let Some(m) = &self.median else {
            let _ = writeln!(out, "No successful run: {}\n", self.errors.join("; "));
            return out;
        };
        let _ = writeln!(
            out,
            "| variant | MB/s | ratio to plain, file | ratio to plain, discard | fsyncs/s |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        let file_ratio = m.plain_file.mb_per_s / m.in_memory.mb_per_s;
        let rows = [
            (
                "plain connection, receiver discards",
                &m.in_memory,
                None,
                1.0,
            ),
            (
                "plain connection, output file (no `--state`)",
                &m.plain_file,
                Some(1.0),
                file_ratio,
            ),
            (
                "`--state`, durability none",
                &m.none,
                Some(m.none_vs_file),
                m.none_ratio,
            ),
            (
                "`--state`, durability interval 50 ms",
                &m.interval,
                Some(m.interval_vs_file),
                m.interval_ratio,
            ),
            (
                "`--state`, durability always",
                &m.always,
                Some(m.always_vs_file),
                m.always_ratio,
            ),
            (
                "`--state`, durability interval 50 ms, outbox referring to the input file",
                &m.interval_replayable,
                Some(m.interval_replayable_vs_file),
                m.interval_replayable_ratio,
            ),
        ];
        for (name, t, vs_file, vs_discard) in rows {
            let vs_file = vs_file.map_or("–".into(), |r| format!("{r:.2}"));
            let _ = writeln!(
                out,
                "| {name} | {:.0} | {vs_file} | {vs_discard:.2} | {:.0} |",
                t.mb_per_s, t.fsyncs_per_s
            );
        }
        let _ = writeln!(
            out,
            "\n| `surelink` CLI, `kill -9` of | restart → first resumed delivery |"
        );
        let _ = writeln!(out, "|---|---:|");
        let _ = writeln!(out, "| sender | {} |", ms(m.sender_restart_ms));
        let _ = writeln!(out, "| receiver | {} |", ms(m.receiver_restart_ms));
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nErrors: {}", self.errors.join("; "));
        }
        out.push('\n');
        out
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1} ms"))
}

/// One run: throughput in process (the replayable outbox first or after
/// the copying ones), then the restarts with the CLI (whose failure is
/// recorded in `errors` without losing the throughput figures).
fn run_once(
    mib: u64,
    tag: &str,
    replayable_first: bool,
    errors: &mut Vec<String>,
) -> anyhow::Result<DurableRun> {
    let mut data = vec![0u8; (mib as usize) << 20];
    rand::rngs::SmallRng::seed_from_u64(mib).fill_bytes(&mut data);
    let data = Bytes::from(data);
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.bin");
    std::fs::write(&input, &data)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let limit = WAIT_LIMIT + Duration::from_secs(mib);
    let ((in_memory, plain_file), policies, interval_replayable) = runtime.block_on(async {
        tokio::time::timeout(limit, async {
            let in_memory = plain(data.clone(), None).await?;
            let plain_file = plain(data.clone(), Some(&dir.path().join("plain.bin"))).await?;
            // Each session's files are removed once it is measured, so that
            // the next one does not run while they are written back.
            let replayable_dir = dir.path().join("interval-replayable");
            let replayable = || async {
                let t = session(data.clone(), INTERVAL, &replayable_dir, Some(&input)).await?;
                std::fs::remove_dir_all(&replayable_dir)?;
                anyhow::Ok(t)
            };
            let first = if replayable_first {
                Some(replayable().await?)
            } else {
                None
            };
            let mut policies = Vec::new();
            for (name, policy) in POLICIES {
                let run_dir = dir.path().join(name);
                policies.push(session(data.clone(), policy, &run_dir, None).await?);
                std::fs::remove_dir_all(&run_dir)?;
            }
            let replayable = match first {
                Some(t) => t,
                None => replayable().await?,
            };
            anyhow::Ok(((in_memory, plain_file), policies, replayable))
        })
        .await
        .context("throughput: gave up")?
    })?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    let [none, interval, always]: [Throughput; 3] = policies.try_into().expect("one per policy");
    let ratio = |t: &Throughput| t.mb_per_s / in_memory.mb_per_s;
    let vs_file = |t: &Throughput| t.mb_per_s / plain_file.mb_per_s;
    let mut restart = |victim: Victim| match restart_cli(&data, dir.path(), victim) {
        Ok(ms) => Some(ms),
        Err(e) => {
            eprintln!("{tag} durable: {victim:?} restart failed: {e:#}");
            errors.push(format!("{victim:?} restart: {e:#}"));
            None
        }
    };
    let sender_restart_ms = restart(Victim::Sender);
    let receiver_restart_ms = restart(Victim::Receiver);
    Ok(DurableRun {
        none_ratio: ratio(&none),
        interval_ratio: ratio(&interval),
        always_ratio: ratio(&always),
        none_vs_file: vs_file(&none),
        interval_vs_file: vs_file(&interval),
        always_vs_file: vs_file(&always),
        interval_replayable_ratio: ratio(&interval_replayable),
        interval_replayable_vs_file: vs_file(&interval_replayable),
        in_memory,
        plain_file,
        none,
        interval,
        always,
        interval_replayable,
        sender_restart_ms,
        receiver_restart_ms,
    })
}

fn endpoints() -> anyhow::Result<(Endpoint, Endpoint)> {
    let server = Endpoint::bind("127.0.0.1:0".parse()?, EndpointConfig::default())?;
    let client = Endpoint::client("127.0.0.1:0".parse()?)?;
    Ok((server, client))
}

/// A baseline: a plain connection whose receiver discards, or (with `out`)
/// writes each message to that file as it arrives, like `surelink recv --out`
/// without `--state` (no fsync).
async fn plain(data: Bytes, out: Option<&Path>) -> anyhow::Result<Throughput> {
    let (server, client) = endpoints()?;
    let addr = server.local_addr();
    let total = data.len();
    let mut file = match out {
        Some(path) => Some(tokio::fs::File::create(path).await?),
        None => None,
    };
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?;
        let mut got = 0;
        while let Some(m) = conn.recv().await? {
            got += m.len();
            if let Some(file) = &mut file {
                file.write_all(&m).await?;
                file.flush().await?;
            }
        }
        anyhow::Ok((got, Instant::now()))
    });
    let started = Instant::now();
    let conn = client.connect(addr).await?;
    for start in (0..total).step_by(CHUNK) {
        conn.send(data.slice(start..(start + CHUNK).min(total)))
            .await?;
    }
    conn.close().await?;
    let (got, done) = receiver.await??;
    if got != total {
        bail!("the plain receiver got {got} of {total} bytes");
    }
    Ok(Throughput {
        mb_per_s: total as f64 / (done - started).as_secs_f64() / 1e6,
        fsyncs_per_s: 0.0,
    })
}

/// A durable session with journals and output in `dir`; with `replay_from`
/// (the file holding `data`), its outbox refers to that file instead of
/// copying the messages.
async fn session(
    data: Bytes,
    policy: Durability,
    dir: &Path,
    replay_from: Option<&Path>,
) -> anyhow::Result<Throughput> {
    std::fs::create_dir_all(dir)?;
    let options = SessionOptions::default().with_durability(policy);
    let (server, client) = endpoints()?;
    let addr = server.local_addr();
    let total = data.len();
    let out = dir.join("out.bin");
    let sink = FileSink::open(&out)?;
    let mut rx = DurableReceiver::open_dir(dir.join("rx"), sink, options.clone())?;
    let receiver =
        tokio::spawn(async move { rx.run(&server, |_| {}).await.map(|()| (rx, Instant::now())) });
    let started = Instant::now();
    let mut tx = match replay_from {
        Some(input) => DurableSender::open_dir_with_source(
            dir.join("tx"),
            "bench",
            FileSource::open(input)?,
            options,
        )?,
        None => DurableSender::open_dir(dir.join("tx"), "bench", options)?,
    };
    tx.attach(client.connect(addr).await?).await?;
    loop {
        let from = tx.resume_cursor() as usize;
        if from >= total {
            break;
        }
        let batch = (from..total)
            .step_by(CHUNK)
            .take(BATCH)
            .map(|start| {
                let end = (start + CHUNK).min(total);
                Outgoing {
                    channel: 0,
                    data: data.slice(start..end),
                    cursor: end as u64,
                }
            })
            .collect();
        tx.send_batch(batch).await?;
    }
    tx.finish().await?;
    let (rx, done) = receiver.await??;
    let elapsed = (done - started).as_secs_f64();
    if rx.sink().position() != total as u64 {
        bail!(
            "the session receiver wrote {} of {total} bytes",
            rx.sink().position()
        );
    }
    let (t, r) = (tx.journal_metrics(), rx.journal_metrics());
    let fsyncs = t.fsyncs + t.dir_syncs + r.fsyncs + r.dir_syncs + rx.stats().sink_syncs;
    Ok(Throughput {
        mb_per_s: total as f64 / elapsed / 1e6,
        fsyncs_per_s: fsyncs as f64 / elapsed,
    })
}

/// Which process is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Sender,
    Receiver,
}

/// A child process (the CLI, or any tool) whose stderr lines arrive on a
/// channel; killed when dropped.
pub(crate) struct Proc {
    child: Child,
    lines: Receiver<String>,
}

impl Proc {
    /// Starts `bin` (a path, or a name looked up on `PATH`) with `args`.
    pub(crate) fn spawn(bin: &Path, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let (tx, lines) = channel();
        let pipe = child.stderr.take().context("no stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits (bounded) for a stderr line containing `marker` and returns it.
    pub(crate) fn wait_line(&mut self, marker: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("no line with {marker:?} from the CLI"),
            }
        }
    }

    /// The stderr lines that arrived since the last call (or the start).
    pub(crate) fn take_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// SIGKILL, then reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for a successful exit.
    pub(crate) fn wait_success(&mut self, what: &str) -> anyhow::Result<()> {
        self.wait_success_within(what, WAIT_LIMIT)
    }

    /// Waits at most `limit` for a successful exit.
    pub(crate) fn wait_success_within(
        &mut self,
        what: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{what} exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{what} did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `surelink` binary built next to this one.
pub(crate) fn cli() -> anyhow::Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("surelink");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p surelink-cli)",
            bin.display()
        );
    }
    Ok(bin)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Polls (bounded) until `path` is longer than `len`; returns when it was seen.
fn wait_growth(path: &Path, len: u64) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if file_len(path) > len {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{} did not grow beyond {len} bytes", path.display());
        }
        std::thread::sleep(POLL);
    }
}

/// Polls (bounded) until `path` has not changed length for `quiet`.
fn wait_quiet(path: &Path, quiet: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut len = file_len(path);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(POLL);
        let now_len = file_len(path);
        if now_len != len {
            (len, since) = (now_len, Instant::now());
        } else if since.elapsed() >= quiet {
            return Ok(len);
        }
        if Instant::now() > deadline {
            bail!("{} kept growing", path.display());
        }
    }
}

/// A transfer with the CLI in which `victim` is killed halfway and
/// restarted; returns restart → first resumed delivery in ms.
fn restart_cli(data: &[u8], dir: &Path, victim: Victim) -> anyhow::Result<f64> {
    let bin = cli()?;
    let run = dir.join(format!("cli-{victim:?}"));
    std::fs::create_dir_all(&run)?;
    let input = run.join("in.bin");
    let output = run.join("out.bin");
    std::fs::write(&input, data)?;
    let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port)).to_string();
    let s = |p: &Path| p.display().to_string();
    let recv_args: Vec<String> = [
        "recv",
        "--listen",
        &listen,
        "--out",
        &s(&output),
        "--state",
        &s(&run.join("recv-state")),
        "--once",
    ]
    .map(String::from)
    .into();
    let send_args: Vec<String> = [
        "send",
        "--to",
        &listen,
        "--in",
        &s(&input),
        "--state",
        &s(&run.join("send-state")),
    ]
    .map(String::from)
    .into();
    let mut recv = Proc::spawn(&bin, &recv_args)?;
    recv.wait_line("listening on")?;
    let mut send = Proc::spawn(&bin, &send_args)?;
    wait_growth(&output, data.len() as u64 / 2)?;
    if file_len(&output) >= data.len() as u64 {
        bail!("the transfer ended before the kill: use a larger --durable-mib");
    }
    let elapsed = match victim {
        Victim::Sender => {
            send.kill();
            // What was in flight lands first: then the output stands still.
            let len = wait_quiet(&output, Duration::from_millis(50))?;
            let restarted = Instant::now();
            send = Proc::spawn(&bin, &send_args)?;
            wait_growth(&output, len)? - restarted
        }
        Victim::Receiver => {
            recv.kill();
            let restarted = Instant::now();
            recv = Proc::spawn(&bin, &recv_args)?;
            // Printed once the output was cut back to its checkpoint.
            recv.wait_line("listening on")?;
            let len = file_len(&output);
            wait_growth(&output, len)? - restarted
        }
    };
    send.wait_success("surelink send")?;
    recv.wait_success("surelink recv")?;
    if std::fs::read(&output)? != data {
        bail!("the output differs from the input after the {victim:?} restart");
    }
    Ok(elapsed.as_secs_f64() * 1e3)
}
