//! SRT through Debian's `srt-tools` (libsrt 1.5), as child processes.
//!
//! * Real time and small messages: `srt-live-transmit` in live mode. The
//!   harness sends each message as a UDP datagram to the sending
//!   `srt-live-transmit` (`udp://` input, `srt://` caller output), which
//!   carries it over SRT (through the impairer) to the receiving one
//!   (`srt://` listener input, `udp://` output), which hands it back to the
//!   harness as a datagram. The loopback hops at both ends cost a few
//!   microseconds. The SRT latency (receiver buffer, TSBPD) is set to about
//!   4 × RTT, as SRT's guidance recommends, with a 20 ms floor on clean
//!   loopback.
//! * Bulk: `srt-file-transmit` (file mode, file congestion control) sends a
//!   file of the requested size; the receiver writes it into a FIFO that
//!   the harness reads and counts. CPU time is that of the two child
//!   processes (`RUSAGE_CHILDREN`).
//!
//! If the tools are missing, [`ensure`] installs `srt-tools` with apt when
//! the run allows it; otherwise SRT is reported as not available.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use super::udp::{UdpRx, UdpTx};
use super::{free_udp_port, loopback, wire, Diagnostics, Pair, Route, Rx, Tx};
use crate::cpu;
use crate::workload::BulkRun;

/// The live-mode tool.
pub(crate) const LIVE: &str = "srt-live-transmit";
/// The file-mode tool.
const FILE: &str = "srt-file-transmit";

/// Finds `name` on `PATH`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Installs the Debian `package` with `apt-get install -y` (and
/// `apt-get update` first if that fails).
pub(crate) fn apt_install(package: &str) -> Result<(), String> {
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    eprintln!("surelink-bench: installing {package} with apt-get");
    if !apt(&["install", "-y", package]) {
        let _ = apt(&["update"]);
        if !apt(&["install", "-y", package]) {
            return Err(format!("apt-get install -y {package} failed"));
        }
    }
    Ok(())
}

/// Whether SRT can be measured: `Ok(version line)` or `Err(why not)`.
/// With `install`, runs `apt-get install -y srt-tools` when the tools are
/// missing (and `apt-get update` first if that fails).
pub fn ensure(install: bool) -> Result<String, String> {
    if which(LIVE).is_none() || which(FILE).is_none() {
        if !install {
            return Err(format!(
                "{LIVE} / {FILE} not found (Debian package srt-tools; rerun with --install-peers)"
            ));
        }
        apt_install("srt-tools")?;
        if which(LIVE).is_none() || which(FILE).is_none() {
            return Err("srt-tools installed but its tools are not on PATH".to_owned());
        }
    }
    let out = std::process::Command::new(LIVE)
        .arg("-version")
        .output()
        .map_err(|e| format!("{LIVE} -version: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok(text
        .lines()
        .find(|l| l.contains("SRT Library version"))
        .unwrap_or("SRT (version unknown)")
        .trim()
        .to_owned())
}

fn spawn(tool: &str, args: &[String]) -> io::Result<Child> {
    Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// The SRT latency for a path with this RTT: 4 × RTT, at least 20 ms.
pub fn latency_for(rtt: Duration) -> Duration {
    (rtt * 4).max(Duration::from_millis(20))
}

/// The pair type of live mode.
pub type LivePair = Pair<UdpTx, UdpRx>;

/// Two `srt-live-transmit` processes, connected through the impairer if
/// `route` asks, with `latency`; the processes exit by themselves after
/// `lifetime` at the latest.
pub async fn open_live(
    route: Option<&Route>,
    latency: Duration,
    lifetime: Duration,
) -> io::Result<LivePair> {
    open_live_with_stats(route, latency, lifetime, None).await
}

/// Packets between two statistics lines of the receiving tool.
const STATS_EVERY: u32 = 100;

/// The options that make a live-mode tool write its cumulative counters as
/// JSON lines into `file` every [`STATS_EVERY`] packets.
pub(crate) fn stats_args(file: &Path) -> [String; 4] {
    [
        format!("-s:{STATS_EVERY}"),
        "-pf:json".to_owned(),
        "-f".to_owned(),
        format!("-statsout:{}", file.display()),
    ]
}

/// [`open_live`], and with `stats`, the receiving tool writes its cumulative
/// counters as JSON lines into that file every [`STATS_EVERY`] packets
/// (read them with [`receiver_stats`]).
pub async fn open_live_with_stats(
    route: Option<&Route>,
    latency: Duration,
    lifetime: Duration,
    stats: Option<&Path>,
) -> io::Result<LivePair> {
    let mut rx = UdpRx::bind(loopback(0))?;
    let out_port = rx.local_addr()?.port();
    let srt_port = free_udp_port()?;
    let in_port = free_udp_port()?;
    let latency_ms = latency.as_millis();
    let timeout = format!("-t:{}", lifetime.as_secs().max(1));
    let mut args = vec!["-a:no".to_owned(), timeout.clone()];
    if let Some(file) = stats {
        args.extend(stats_args(file));
    }
    args.extend([
        format!("srt://127.0.0.1:{srt_port}?mode=listener&latency={latency_ms}"),
        format!("udp://127.0.0.1:{out_port}"),
    ]);
    let receiver = spawn(LIVE, &args)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (to, impairer) = wire(loopback(srt_port), route)?;
    let sender = spawn(
        LIVE,
        &[
            "-a:no".into(),
            timeout,
            format!("udp://127.0.0.1:{in_port}"),
            format!("srt://{to}?mode=caller&latency={latency_ms}"),
        ],
    )?;
    let mut tx = UdpTx::connect(loopback(in_port)).await?;

    // The caller connects in the background: send probes until one comes
    // out at the far end, then let the stragglers drain.
    let started = Instant::now();
    loop {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(io::Error::other("SRT live: no data through within 10 s"));
        }
        match tx.send(Bytes::from_static(b"probe")).await {
            // The sending tool may not listen yet: the kernel reports the
            // ICMP port-unreachable of an earlier probe on this send.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            other => other?,
        }
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(20), rx.recv()).await {
            got?;
            break;
        }
    }
    let quiet = latency * 2 + Duration::from_millis(200);
    while let Ok(got) = tokio::time::timeout(quiet, rx.recv()).await {
        got?;
    }
    Ok(Pair {
        tx,
        rx,
        impairer,
        keep: vec![Box::new(receiver), Box::new(sender)],
    })
}

/// The receiving tool's own counters from the last line of its statistics
/// file (see [`open_live_with_stats`]): packets received, lost (gaps it
/// saw), dropped as too late to play (TSBPD), and arrived after their time.
/// Cumulative since the connection started, so they include the set-up
/// probes, and they miss the last (< [`STATS_EVERY`]) packets of a run.
pub fn receiver_stats(file: &Path) -> Option<Diagnostics> {
    let value = last_stats(file)?;
    let recv = value.get("recv")?;
    let field = |name: &str| recv.get(name).and_then(serde_json::Value::as_f64);
    Some(Diagnostics::from([
        ("srt_recv_packets", field("packets")?),
        ("srt_recv_lost", field("packetsLost")?),
        ("srt_recv_dropped_too_late", field("packetsDropped")?),
        ("srt_recv_belated", field("packetsBelated")?),
    ]))
}

/// The packets a sending tool retransmitted, from the last line of its
/// statistics file (see [`stats_args`]).
pub fn sender_retransmissions(file: &Path) -> Option<f64> {
    last_stats(file)?
        .get("send")?
        .get("packetsRetransmitted")?
        .as_f64()
}

/// The last JSON line of a statistics file of `srt-live-transmit`.
fn last_stats(file: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(file).ok()?;
    let last = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))?;
    serde_json::from_str(last).ok()
}

/// Makes a file of `bytes` bytes in `dir`.
fn make_payload(dir: &Path, bytes: u64) -> io::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("payload.bin");
    let mut file = io::BufWriter::new(std::fs::File::create(&path)?);
    let block: Vec<u8> = (0..65536u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(path)
}

/// Sends `bytes` with `srt-file-transmit` over clean loopback, bounded by
/// `limit`.
pub async fn bulk(bytes: u64, limit: Duration) -> io::Result<BulkRun> {
    let dir = tempfile::tempdir()?;
    let in_dir = dir.path().join("in");
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&in_dir)?;
    std::fs::create_dir(&out_dir)?;
    let payload = {
        let in_dir = in_dir.clone();
        tokio::task::spawn_blocking(move || make_payload(&in_dir, bytes))
            .await
            .map_err(io::Error::other)??
    };
    // The receiver names its output after the sender's file: make that
    // name a FIFO so the bytes come to the harness instead of a disk.
    let fifo = out_dir.join("payload.bin");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .map_err(io::Error::from)?;
    let mut pipe = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&fifo)?;

    let port = free_udp_port()?;
    let lifetime = limit.as_secs().max(1) + 5;
    let cpu_before = cpu::seconds(cpu::Scope::Children);
    let mut receiver = spawn(
        FILE,
        &[
            format!("srt://127.0.0.1:{port}?mode=listener"),
            format!("file://{}/", out_dir.display()),
        ],
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let mut sender = spawn(
        FILE,
        &[
            format!("file://{}", payload.display()),
            format!("srt://127.0.0.1:{port}"),
        ],
    )?;
    let mut received = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut last = start;
    let read = async {
        while received < bytes {
            let n = pipe.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            received += n as u64;
            last = Instant::now();
        }
        io::Result::Ok(())
    };
    let outcome = tokio::time::timeout(limit, read).await;
    let elapsed = last - start;
    // Both tools exit once the transfer is over; their CPU time counts only
    // after they were waited for.
    let waited = tokio::time::timeout(Duration::from_secs(lifetime.min(15)), async {
        let _ = sender.wait().await;
        let _ = receiver.wait().await;
    })
    .await;
    if waited.is_err() {
        let _ = sender.kill().await;
        let _ = receiver.kill().await;
    }
    let cpu_s = cpu::seconds(cpu::Scope::Children) - cpu_before;
    match outcome {
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("SRT bulk: {received} of {bytes} bytes after {limit:?}"),
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) if received < bytes => Err(io::Error::other(format!(
            "SRT bulk: only {received} of {bytes} bytes arrived"
        ))),
        Ok(Ok(())) => Ok(BulkRun::new(bytes, received, elapsed, cpu_s)),
    }
}
