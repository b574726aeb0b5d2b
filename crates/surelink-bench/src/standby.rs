//! `surelink-bench standby`: how fast a receiver group replaces a dead
//! leader, against the lease TTL.
//!
//! Each run starts a one-member etcd (the `etcd` binary, Debian's
//! `etcd-server`, on free 127.0.0.1 ports, heartbeat 50 ms and election
//! timeout 500 ms so that 1 s leases are allowed), two members of a group
//! in datagram mode (`surelink recv --group … --to udp://…`, the `surelink`
//! binary next to this one, built with `--features etcd`) and a sender
//! (`surelink send --group … --state`, 1 KiB records each carrying its
//! index, paced by the checkpoints with `--max-unconfirmed 64KiB`). Once a
//! quarter of the records has arrived, the leader gets SIGKILL; measured:
//! the time from the kill to the first datagram delivered afterwards (by
//! the new leader), the records lost (must be 0) and duplicated once the
//! sender exited, and the new leader's etcd commits per second (its
//! checkpoints over the rest of the transfer). Every wait is bounded.
//!
//! A lost record is told apart by where it went missing: below the
//! watermark the new leader took over from (the old leader wrote it to its
//! UDP socket and committed it) or at or above it (the new leader's
//! share), and the collector's own socket reports how many datagrams the
//! kernel dropped on it (the `drops` column of `/proc/net/udp`) — a
//! collector thread starved of CPU, not the group, if they add up — and
//! the members' logs say how many datagrams their output sockets refused
//! to send (`cannot forward a datagram`, printed per run). The
//! collector's socket asks for a receive buffer of [`COLLECTOR_RCVBUF`].

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;

use crate::durable::{cli, Proc};

/// Records per run (1 KiB each).
const RECORDS: usize = 8000;
/// Size of one record.
const RECORD: usize = 1024;
/// Bound on any wait of a run.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(2);
/// Receive buffer the collector's socket asks for (Linux caps it at
/// `net.core.rmem_max`, and doubles it for its bookkeeping).
const COLLECTOR_RCVBUF: usize = 4 << 20;

/// `surelink-bench standby`: leader kill -9 → first delivery by the new leader.
#[derive(Debug, Parser)]
#[command(name = "surelink-bench standby")]
struct Args {
    /// Lease TTLs to measure, in whole seconds.
    #[arg(long, value_delimiter = ',', default_value = "1,2,5")]
    ttls: Vec<u64>,
    /// Runs per TTL.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// One run's figures.
struct Run {
    takeover: Duration,
    lost: usize,
    /// Lost records below the watermark the new leader took over from.
    lost_below_watermark: usize,
    /// Datagrams the kernel dropped on the collector's socket.
    collector_drops: u64,
    /// Datagrams the members' output sockets could not send (each logged).
    refused: usize,
    duplicated: u64,
    commits_per_sec: f64,
}

/// `surelink-bench standby …`: `argv` starts with the subcommand's name.
pub fn main(argv: impl Iterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let args = Args::parse_from(argv);
    if args.runs == 0 || args.runs > 20 || args.ttls.iter().any(|&t| t == 0 || t > 30) {
        bail!("--runs must be 1..=20 and every TTL 1..=30 seconds");
    }
    let bin = cli()?;
    println!(
        "| lease TTL | runs | takeover median (min–max) | lost (below / from the watermark) \
         | collector socket drops | duplicated | etcd commits/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &ttl in &args.ttls {
        let mut runs = Vec::new();
        for i in 0..args.runs {
            eprintln!("standby: TTL {ttl} s, run {}/{}", i + 1, args.runs);
            let r = run(&bin, ttl)?;
            eprintln!(
                "standby: takeover {:.0} ms, lost {} ({} below the watermark), collector \
                 socket drops {}, sends refused {}, duplicated {}",
                r.takeover.as_secs_f64() * 1e3,
                r.lost,
                r.lost_below_watermark,
                r.collector_drops,
                r.refused,
                r.duplicated
            );
            runs.push(r);
        }
        let mut takeovers: Vec<Duration> = runs.iter().map(|r| r.takeover).collect();
        takeovers.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let lost = runs.iter().map(|r| r.lost).sum::<usize>();
        let below = runs.iter().map(|r| r.lost_below_watermark).sum::<usize>();
        println!(
            "| {ttl} s | {} | {:.0} ms ({:.0}–{:.0}) | {lost} ({below} / {}) | {} | {} | {:.0} |",
            runs.len(),
            ms(takeovers[takeovers.len() / 2]),
            ms(takeovers[0]),
            ms(takeovers[takeovers.len() - 1]),
            lost - below,
            runs.iter().map(|r| r.collector_drops).sum::<u64>(),
            runs.iter().map(|r| r.duplicated).sum::<u64>(),
            runs.iter().map(|r| r.commits_per_sec).sum::<f64>() / runs.len() as f64,
        );
    }
    Ok(())
}

/// A free TCP address on 127.0.0.1.
fn free_tcp() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A free UDP address on 127.0.0.1.
fn free_udp() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// How many of a member's stderr `lines` say its output socket refused
/// a datagram (the group's datagram mode logs it and goes on).
fn refused_datagrams(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| l.contains("cannot forward a datagram"))
        .count()
}

/// The collector's socket: 127.0.0.1, a receive buffer of [`COLLECTOR_RCVBUF`].
fn collector_socket() -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(COLLECTOR_RCVBUF)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    Ok(socket.into())
}

/// Datagrams the kernel dropped on the IPv4 UDP socket bound to `addr`
/// since it was made: the `drops` column (the last) of its line in
/// `/proc/net/udp`, whose local address is `HEXADDR:HEXPORT`.
fn socket_drops(addr: SocketAddr) -> anyhow::Result<u64> {
    let SocketAddr::V4(v4) = addr else {
        bail!("{addr} is not IPv4");
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/udp").context("cannot read /proc/net/udp")?;
    table
        .lines()
        .skip(1)
        .find(|line| line.split_whitespace().nth(1) == Some(local.as_str()))
        .and_then(|line| line.split_whitespace().last()?.parse().ok())
        .with_context(|| format!("no line for {addr} in /proc/net/udp"))
}

/// Starts a one-member etcd in `dir` and waits (bounded) until it is healthy.
pub(crate) fn start_etcd(dir: &std::path::Path) -> anyhow::Result<(Proc, String)> {
    let (client, peer) = (free_tcp()?, free_tcp()?);
    let args: Vec<String> = [
        "--data-dir".to_owned(),
        dir.join("etcd").display().to_string(),
        "--listen-client-urls".to_owned(),
        format!("http://{client}"),
        "--advertise-client-urls".to_owned(),
        format!("http://{client}"),
        "--listen-peer-urls".to_owned(),
        format!("http://{peer}"),
        "--initial-advertise-peer-urls".to_owned(),
        format!("http://{peer}"),
        "--initial-cluster".to_owned(),
        format!("default=http://{peer}"),
        "--heartbeat-interval".to_owned(),
        "50".to_owned(),
        "--election-timeout".to_owned(),
        "500".to_owned(),
    ]
    .into();
    let etcd = Proc::spawn(std::path::Path::new("etcd"), &args)
        .context("etcd (Debian package etcd-server) is needed")?;
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let healthy = TcpStream::connect(client).ok().and_then(|mut s| {
            use std::io::Write as _;
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n").ok()?;
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            Some(text.contains("\"health\":\"true\""))
        });
        if healthy == Some(true) {
            return Ok((etcd, format!("http://{client}")));
        }
        if Instant::now() > deadline {
            bail!("etcd did not become healthy");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Arrivals per record index, and the first arrival from a new leader
/// after the kill.
#[derive(Default)]
struct Arrivals {
    counts: Vec<u32>,
    distinct: usize,
    /// Where the killed leader's datagrams came from.
    old_leader: Option<SocketAddr>,
    kill: Option<Instant>,
    first_after_kill: Option<Instant>,
}

/// One kill -9 of the leader with lease TTL `ttl` seconds.
fn run(bin: &std::path::Path, ttl: u64) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let (_etcd, etcd_url) = start_etcd(dir.path())?;
    let input = dir.path().join("in.bin");
    let mut data = vec![0u8; RECORDS * RECORD];
    for (i, record) in data.chunks_mut(RECORD).enumerate() {
        record[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    std::fs::write(&input, &data)?;

    let socket = collector_socket()?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let collector_addr = socket.local_addr()?;
    let to = format!("udp://{collector_addr}");
    let arrivals = Arc::new(Mutex::new(Arrivals {
        counts: vec![0; RECORDS],
        ..Arrivals::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (arrivals, stop) = (arrivals.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let now = Instant::now();
                if n < 8 {
                    continue;
                }
                let index = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")) as usize;
                let mut a = arrivals.lock().expect("lock");
                if a.kill.is_none() {
                    a.old_leader = Some(from);
                } else if a.first_after_kill.is_none() && a.old_leader != Some(from) {
                    // Still-queued datagrams of the dead leader do not count.
                    a.first_after_kill = Some(now);
                }
                if let Some(count) = a.counts.get_mut(index) {
                    *count += 1;
                    if *count == 1 {
                        a.distinct += 1;
                    }
                }
            }
        })
    };

    let ttl_arg = format!("{ttl}s");
    let member = |listen: SocketAddr| -> anyhow::Result<Proc> {
        let args: Vec<String> = [
            "recv",
            "--listen",
            &listen.to_string(),
            "--group",
            "bench",
            "--etcd",
            &etcd_url,
            "--lease-ttl",
            &ttl_arg,
            "--insecure-plaintext",
            "--once",
            "--to",
            &to,
        ]
        .map(str::to_owned)
        .into();
        Proc::spawn(bin, &args)
    };
    let mut a = member(free_udp()?)?;
    a.wait_line("listening on")?;
    let mut b = member(free_udp()?)?;
    b.wait_line("standing by")?;
    let state = dir.path().join("tx-state").display().to_string();
    let send_args: Vec<String> = [
        "send",
        "--group",
        "bench",
        "--etcd",
        &etcd_url,
        "--in",
        &input.display().to_string(),
        "--state",
        &state,
        "--chunk",
        "1KiB",
        "--max-unconfirmed",
        "64KiB",
        "--insecure-plaintext",
    ]
    .map(str::to_owned)
    .into();
    let mut send = Proc::spawn(bin, &send_args)?;

    let wait_distinct = |at_least: usize| -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT_LIMIT;
        while arrivals.lock().expect("lock").distinct < at_least {
            if Instant::now() > deadline {
                bail!(
                    "only {} records arrived",
                    arrivals.lock().expect("lock").distinct
                );
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    };
    wait_distinct(RECORDS / 4)?;
    arrivals.lock().expect("lock").kill = Some(Instant::now());
    a.kill();
    // "… session …: N messages committed, …": the watermark B took over from.
    let took_over = b.wait_line("messages committed")?;
    let watermark = took_over
        .split(" messages committed")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
        .with_context(|| format!("no watermark in {took_over:?}"))?;
    b.wait_line("resumed by")?;
    let resumed = Instant::now();
    send.wait_success("the sender")?;
    b.wait_success("the new leader")?;
    let finished = Instant::now();
    // "… N checkpoints committed to etcd in this term" (its stderr may
    // still be arriving: bounded).
    let mut commits = None;
    let mut refused = refused_datagrams(&a.take_lines());
    for _ in 0..100 {
        let lines = b.take_lines();
        refused += refused_datagrams(&lines);
        commits = lines.iter().find_map(|l| {
            let (before, _) = l.split_once(" checkpoints committed to etcd")?;
            before.rsplit(' ').next()?.parse::<u64>().ok()
        });
        if commits.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let commits = commits.context("the new leader did not report its etcd commits")?;
    // Everything was confirmed to the sender: wait (bounded) for the rest to land.
    let _ = wait_distinct(RECORDS);
    let collector_drops = socket_drops(collector_addr)?;
    stop.store(true, Ordering::Relaxed);
    let _ = collector.join();
    let a = arrivals.lock().expect("lock");
    let (Some(kill), Some(first)) = (a.kill, a.first_after_kill) else {
        bail!("nothing arrived after the kill");
    };
    Ok(Run {
        takeover: first - kill,
        lost: RECORDS - a.distinct,
        lost_below_watermark: a.counts[..watermark.min(RECORDS)]
            .iter()
            .filter(|&&c| c == 0)
            .count(),
        collector_drops,
        refused,
        duplicated: a
            .counts
            .iter()
            .map(|&c| u64::from(c.saturating_sub(1)))
            .sum(),
        commits_per_sec: commits as f64 / (finished - resumed).as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket nobody reads, sent more than its buffer holds: the kernel
    /// drops the rest, and `socket_drops` reads exactly how many.
    #[test]
    fn socket_drops_counts_what_an_unread_socket_dropped() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = collector.local_addr().unwrap();
        assert_eq!(socket_drops(addr).unwrap(), 0);
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = 2000;
        for _ in 0..sent {
            sender.send_to(&[0u8; RECORD], addr).unwrap();
        }
        collector.set_nonblocking(true).unwrap();
        let mut buf = [0u8; RECORD];
        let mut read = 0;
        while collector.recv(&mut buf).is_ok() {
            read += 1;
        }
        let drops = socket_drops(addr).unwrap();
        assert!(
            drops > 0,
            "a default buffer holds fewer than {sent} datagrams"
        );
        assert_eq!(read + drops, sent);
    }
}
