//! The detailed breakdown behind the durable-session figures of the
//! benchmark harness (`surelink-bench --workloads durable`, which measures
//! the throughput ratios, fsyncs per second and real `kill -9` restarts of
//! the CLI; see docs/CHECKPOINTS.md): where the time and CPU go.
//!
//! ```text
//! cargo run --release -p surelink-session --example checkpoint_bench [-- MIB [RUNS]]
//! ```
//!
//! On loopback, in one process:
//!
//! 1. **Throughput** of a MIB-MiB (default 64) transfer in 64 KiB messages,
//!    median of RUNS (default 3): a plain connection (nothing durable, the
//!    receiver discards: the in-memory baseline; and the same writing the
//!    data to a file, without fsync); a durable session with
//!    both journals in memory (`MemStorage`, the session protocol's own
//!    cost); and with journals and output on disk (`FsStorage`, `FileSink`)
//!    under each durability policy. For each: MB/s, the ratio to the
//!    baseline, fsyncs per second, checkpoints, C = T/N and CPU s/GiB.
//! 2. **Sender restart → first resumed delivery**, in phases: halfway through
//!    a transfer the sender is dropped as a crash would (its task aborted:
//!    its uncommitted journal buffer is lost, its connection gone), then a
//!    new one opens the journal from disk, connects, resumes; the time until
//!    the receiver's sink gets the first resumed message, with the parts
//!    (journal recovery, connect, HELLO → WATERMARK). Median of 5.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use surelink::{Bytes, Endpoint, EndpointConfig};
use surelink_session::{
    Durability, DurableReceiver, DurableSender, DurableSink, FileSink, MemStorage, Outgoing,
    ReceiverEvent, SessionError, SessionOptions, Storage,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CHUNK: usize = 64 << 10;
/// The durability policies measured.
const POLICIES: [(&str, Durability); 3] = [
    ("none", Durability::None),
    (
        "interval 50ms",
        Durability::Interval(Duration::from_millis(50)),
    ),
    ("always", Durability::Always),
];
/// Messages per journal commit on the sender.
const BATCH: usize = 16;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().map_or(Ok(64), |a| a.parse())?;
    let runs: usize = args.get(1).map_or(Ok(3), |a| a.parse())?;
    let mut data = vec![0u8; mib << 20];
    rand::rngs::SmallRng::seed_from_u64(1).fill_bytes(&mut data);
    let data = Bytes::from(data);
    let dir = std::env::temp_dir().join(format!("surelink-ckpt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    println!("## Throughput, {mib} MiB in 64 KiB messages, median of {runs} runs\n");
    println!(
        "| variant | MB/s | ratio to in-memory | fsyncs/s | checkpoints | C = T/N | CPU s/GiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let baseline = median(runs, || plain(data.clone(), None)).await?;
    row(
        "plain connection (in-memory baseline)",
        &baseline,
        baseline.mbps,
    );
    let to_file = median(runs, || plain(data.clone(), Some(&dir))).await?;
    row(
        "plain connection, receiver writes a file",
        &to_file,
        baseline.mbps,
    );
    let variants: [(&str, Option<Durability>); 4] = [
        ("session, journals in memory", None),
        ("session on disk, durability none", Some(Durability::None)),
        (
            "session on disk, durability interval 50ms",
            Some(Durability::Interval(Duration::from_millis(50))),
        ),
        (
            "session on disk, durability always",
            Some(Durability::Always),
        ),
    ];
    for (name, durability) in variants {
        let m = median(runs, || session(data.clone(), durability, &dir)).await?;
        row(name, &m, baseline.mbps);
    }

    println!("\n## Sender restart → first resumed delivery, median of 5 runs (min–max)\n");
    println!(
        "| durability | total ms | journal recovery ms | journal MiB | connect ms | \
         HELLO → WATERMARK ms | → first re-sent message delivered ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, policy) in POLICIES {
        let mut restarts = Vec::new();
        for _ in 0..5 {
            restarts.push(sender_restart(data.clone(), &dir, policy).await?);
        }
        restarts.sort_by_key(|r| r.total);
        let r = &restarts[restarts.len() / 2];
        println!(
            "| {name} | {:.1} ({:.1}–{:.1}) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            ms(r.total),
            ms(restarts[0].total),
            ms(restarts[restarts.len() - 1].total),
            ms(r.open),
            r.journal_bytes as f64 / (1 << 20) as f64,
            ms(r.connect),
            ms(r.handshake),
            ms(r.first_message),
        );
    }

    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One throughput measurement.
#[derive(Debug, Clone, Default)]
struct Measure {
    mbps: f64,
    fsyncs_per_s: f64,
    /// CPU seconds (both sides) per GiB transferred.
    cpu_per_gib: f64,
    bytes: usize,
    checkpoints: u64,
    elapsed: Duration,
}

fn row(name: &str, m: &Measure, baseline: f64) {
    let c = if m.checkpoints > 0 {
        format!("{:.1} ms", ms(m.elapsed) / m.checkpoints as f64)
    } else {
        "–".to_owned()
    };
    println!(
        "| {name} | {:.0} | {:.2} | {:.0} | {} | {c} | {:.1} |",
        m.mbps,
        m.mbps / baseline,
        m.fsyncs_per_s,
        m.checkpoints,
        m.cpu_per_gib
    );
}

async fn median<F, Fut>(runs: usize, mut f: F) -> Result<Measure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Measure>>,
{
    let mut all = Vec::new();
    for _ in 0..runs {
        let cpu = cpu_time();
        let mut m = f().await?;
        m.cpu_per_gib = (cpu_time() - cpu) / (m.bytes as f64 / (1u64 << 30) as f64);
        all.push(m);
    }
    all.sort_by(|a, b| a.mbps.total_cmp(&b.mbps));
    Ok(all[all.len() / 2].clone())
}

/// CPU time (user + system, all threads) of this process so far, seconds
/// (from /proc: 10 ms resolution; 0 where unavailable).
fn cpu_time() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses): utime and
    // stime are the 12th and 13th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn endpoints() -> Result<(Endpoint, Endpoint)> {
    let server = Endpoint::bind("127.0.0.1:0".parse()?, EndpointConfig::default())?;
    let client = Endpoint::client("127.0.0.1:0".parse()?)?;
    Ok((server, client))
}

/// The baseline: a plain connection; the receiver discards, or appends to a
/// file in `dir` (no fsync).
async fn plain(data: Bytes, dir: Option<&Path>) -> Result<Measure> {
    let (server, client) = endpoints()?;
    let addr = server.local_addr();
    let total = data.len();
    let mut file = match dir {
        Some(dir) => Some(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(fresh_dir(dir)?.join("out.bin"))?,
        )),
        None => None,
    };
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.expect("a connection");
        let mut got = 0;
        while let Ok(Some(m)) = conn.recv().await {
            got += m.len();
            if let Some(file) = &mut file {
                std::io::Write::write_all(file, &m).expect("write");
            }
        }
        if let Some(file) = &mut file {
            std::io::Write::flush(file).expect("write");
        }
        let done = Instant::now();
        server.wait_idle().await;
        (got, done)
    });
    let started = Instant::now();
    let conn = client.connect(addr).await?;
    for start in (0..total).step_by(CHUNK) {
        conn.send(data.slice(start..(start + CHUNK).min(total)))
            .await?;
    }
    conn.close().await?;
    let (got, done) = receiver.await?;
    assert_eq!(got, total);
    let elapsed = done - started;
    Ok(Measure {
        mbps: total as f64 / elapsed.as_secs_f64() / 1e6,
        elapsed,
        bytes: total,
        ..Measure::default()
    })
}

/// A sink that counts (and can note its first write after being armed).
struct CountingSink {
    written: u64,
    first_write: Arc<Mutex<Option<Instant>>>,
}

impl DurableSink for CountingSink {
    fn write(&mut self, _channel: u64, data: &[u8]) -> std::io::Result<()> {
        self.written += data.len() as u64;
        note(&self.first_write);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn position(&self) -> u64 {
        self.written
    }
    fn restore(&mut self, position: u64) -> std::io::Result<()> {
        self.written = position;
        Ok(())
    }
}

/// A file sink that notes its first write after being armed.
struct TimedFileSink {
    file: FileSink,
    first_write: Arc<Mutex<Option<Instant>>>,
    position: Arc<AtomicU64>,
}

impl DurableSink for TimedFileSink {
    fn write(&mut self, channel: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write(channel, data)?;
        self.position.store(self.file.position(), Ordering::Relaxed);
        note(&self.first_write);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync()
    }
    fn position(&self) -> u64 {
        self.file.position()
    }
    fn restore(&mut self, position: u64) -> std::io::Result<()> {
        self.file.restore(position)
    }
}

/// Records the time of a write in an empty slot: the first write after the
/// slot was emptied.
fn note(slot: &Mutex<Option<Instant>>) {
    let mut slot = slot.lock().unwrap();
    if slot.is_none() {
        *slot = Some(Instant::now());
    }
}

fn options(durability: Durability) -> SessionOptions {
    SessionOptions::default().with_durability(durability)
}

/// Sends `data` from the resume cursor in batches, then finishes; retries
/// on connection failures.
async fn run_sender<S: Storage + Send>(
    tx: &mut DurableSender<S>,
    client: &Endpoint,
    addr: SocketAddr,
    data: &Bytes,
) -> std::result::Result<(), SessionError> {
    loop {
        let conn = match client.connect(addr).await {
            Ok(conn) => conn,
            Err(_) => continue,
        };
        match tx.attach(conn).await {
            Ok(_) => {}
            Err(e) if e.is_connection() => continue,
            Err(e) => return Err(e),
        }
        match stream(tx, data).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_connection() => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn stream<S: Storage + Send>(
    tx: &mut DurableSender<S>,
    data: &Bytes,
) -> std::result::Result<(), SessionError> {
    loop {
        let from = tx.resume_cursor() as usize;
        if from >= data.len() {
            return tx.finish().await;
        }
        let batch = (from..data.len())
            .step_by(CHUNK)
            .take(BATCH)
            .map(|start| {
                let end = (start + CHUNK).min(data.len());
                Outgoing {
                    channel: 0,
                    data: data.slice(start..end),
                    cursor: end as u64,
                }
            })
            .collect();
        tx.send_batch(batch).await?;
    }
}

/// A durable transfer: journals in memory (`None`) or on disk.
async fn session(data: Bytes, durability: Option<Durability>, dir: &Path) -> Result<Measure> {
    let run_dir = fresh_dir(dir)?;
    let (server, client) = endpoints()?;
    let addr = server.local_addr();
    let policy = durability.unwrap_or(Durability::None);
    let total = data.len();
    let started = Instant::now();
    let (elapsed, fsyncs, checkpoints) = match durability {
        None => {
            let sink = CountingSink {
                written: 0,
                first_write: Arc::new(Mutex::new(None)),
            };
            let mut rx = DurableReceiver::open(MemStorage::new(), sink, options(policy))?;
            let receiver = tokio::spawn(async move {
                rx.run(&server, |_| {}).await.map(|()| (rx, Instant::now()))
            });
            let mut tx = DurableSender::open(MemStorage::new(), "bench", options(policy))?;
            run_sender(&mut tx, &client, addr, &data).await?;
            let (rx, done) = receiver.await??;
            assert_eq!(rx.sink().written as usize, total);
            (done - started, 0, rx.stats().checkpoints)
        }
        Some(_) => {
            let sink = FileSink::open(run_dir.join("out.bin"))?;
            let mut rx = DurableReceiver::open_dir(run_dir.join("rx"), sink, options(policy))?;
            let receiver = tokio::spawn(async move {
                rx.run(&server, |_| {}).await.map(|()| (rx, Instant::now()))
            });
            let mut tx = DurableSender::open_dir(run_dir.join("tx"), "bench", options(policy))?;
            run_sender(&mut tx, &client, addr, &data).await?;
            let (rx, done) = receiver.await??;
            assert_eq!(rx.sink().position() as usize, total);
            let fsyncs =
                tx.journal_metrics().fsyncs + rx.journal_metrics().fsyncs + rx.stats().sink_syncs;
            (done - started, fsyncs, rx.stats().checkpoints)
        }
    };
    std::fs::remove_dir_all(&run_dir)?;
    Ok(Measure {
        mbps: total as f64 / elapsed.as_secs_f64() / 1e6,
        fsyncs_per_s: fsyncs as f64 / elapsed.as_secs_f64(),
        checkpoints,
        elapsed,
        bytes: total,
        cpu_per_gib: 0.0,
    })
}

static RUN: AtomicU64 = AtomicU64::new(0);

fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    let d = dir.join(format!("run{}", RUN.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

struct Restart {
    total: Duration,
    open: Duration,
    connect: Duration,
    handshake: Duration,
    first_message: Duration,
    journal_bytes: u64,
}

/// Drops the sender halfway (as a crash would), restarts it from its
/// journal, and times the first resumed delivery.
async fn sender_restart(data: Bytes, dir: &Path, policy: Durability) -> Result<Restart> {
    let run_dir = fresh_dir(dir)?;
    let (server, client) = endpoints()?;
    let addr = server.local_addr();
    let first_write = Arc::new(Mutex::new(Some(Instant::now())));
    let position = Arc::new(AtomicU64::new(0));
    let sink = TimedFileSink {
        file: FileSink::open(run_dir.join("out.bin"))?,
        first_write: first_write.clone(),
        position: position.clone(),
    };
    let mut rx = DurableReceiver::open_dir(run_dir.join("rx"), sink, options(policy))?;
    // Deliveries count from the moment the restarted sender's connection
    // takes over (messages of the old connection may still trickle in).
    let arm = first_write.clone();
    let accepted_at = Arc::new(Mutex::new(None));
    let accepted_slot = accepted_at.clone();
    let receiver = tokio::spawn(async move {
        rx.run(&server, move |event| {
            if let ReceiverEvent::Accepted { accepted, .. } = event {
                if !accepted.new_session {
                    *accepted_slot.lock().unwrap() = Some(Instant::now());
                    *arm.lock().unwrap() = None;
                }
            }
        })
        .await
    });

    let tx_dir = run_dir.join("tx");
    let doomed = {
        let (data, client, tx_dir) = (data.clone(), client.clone(), tx_dir.clone());
        tokio::spawn(async move {
            let mut tx = DurableSender::open_dir(&tx_dir, "bench", options(policy))?;
            run_sender(&mut tx, &client, addr, &data).await
        })
    };
    while position.load(Ordering::Relaxed) < data.len() as u64 / 2 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    doomed.abort();
    let _ = doomed.await;

    // The restart.
    let t0 = Instant::now();
    let mut tx = DurableSender::open_dir(&tx_dir, "bench", options(policy))?;
    let open = t0.elapsed();
    let journal_bytes = dir_size(&tx_dir);
    let client = Endpoint::client("127.0.0.1:0".parse()?)?;
    let t1 = Instant::now();
    let conn = client.connect(addr).await?;
    let connect = t1.elapsed();
    let t2 = Instant::now();
    tx.attach(conn).await?;
    // The first resumed delivery may come with the re-sent outbox (during
    // attach) or with the first new message.
    stream(&mut tx, &data).await?;
    receiver.await??;
    let first = first_write.lock().unwrap().expect("a resumed delivery");
    let accepted = accepted_at.lock().unwrap().expect("accepted");
    std::fs::remove_dir_all(&run_dir)?;
    Ok(Restart {
        total: first - t0,
        open,
        connect,
        handshake: accepted - t2,
        first_message: first - accepted,
        journal_bytes,
    })
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
