//! Receiver groups with real processes and a real etcd (built with the
//! `etcd` feature; `etcd` from Debian's `etcd-server` on PATH): two or
//! three `surelink recv --group` members share one output, a `surelink send
//! --state --group` streams to whichever leads, and the leader is killed
//! with SIGKILL, or paused with SIGSTOP beyond its lease and woken up, or
//! loses its etcd member, mid-stream.
//!
//! Checked every time: file mode ends byte-identical to the input; datagram
//! mode delivers every message at least once, and every duplicate is a
//! message at or after the watermark the new leader took over from. The
//! sender paces itself by the leader's checkpoints (`--max-unconfirmed
//! 64KiB`), so the transfer is still going when a fault is injected: each
//! fault waits (bounded) for the output to grow first. No assertion is
//! about time.

#![cfg(feature = "etcd")]

mod support;

use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use support::etcd::Etcd;
use support::{free_addr, s, Proc};

/// Bound on waiting for a line or for progress.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
/// The lease TTL the tests run with (etcd's minimum is below it with the
/// test cluster's timings).
const LEASE_TTL: &str = "1s";
/// Size of a datagram-mode message (one record of the input).
const RECORD: usize = 1024;

/// A receiver group's test bench: etcd, the group's key, the members'
/// arguments and a shared log.
struct Bench {
    etcd: Etcd,
    dir: tempfile::TempDir,
    key: String,
    log: Arc<Mutex<String>>,
}

impl Bench {
    fn new(etcd_members: usize) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("group.key");
        let out = support::run(&["keygen", "--out", s(&key)]);
        assert!(out.status.success(), "keygen: {}", out.stderr);
        Bench {
            etcd: Etcd::start(etcd_members),
            key: s(&key).to_owned(),
            dir,
            log: Arc::new(Mutex::new(String::new())),
        }
    }

    fn path(&self, name: &str) -> String {
        s(&self.dir.path().join(name)).to_owned()
    }

    /// Starts a group member listening on a fresh port, writing to
    /// `output` (`--out PATH` or `--to udp://…`), talking to `etcd`.
    fn member(&self, name: &str, output: &[&str], etcd: &str) -> Proc {
        let listen = free_addr();
        let mut args = vec![
            "recv",
            "--listen",
            &listen,
            "--group",
            "g",
            "--etcd",
            etcd,
            "--lease-ttl",
            LEASE_TTL,
            "--key",
            &self.key,
            "--once",
        ];
        args.extend_from_slice(output);
        Proc::spawn_logged(name, &args, &self.log)
    }

    /// Starts the sender of `input`.
    fn sender(&self, input: &str) -> Proc {
        let state = self.path("tx-state");
        let etcd = self.etcd.endpoints();
        let args = [
            "send",
            "--group",
            "g",
            "--etcd",
            &etcd,
            "--in",
            input,
            "--state",
            &state,
            "--max-unconfirmed",
            "64KiB",
            "--chunk",
            "1KiB",
        ];
        Proc::spawn_logged("send", &args, &self.log)
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}; log:\n{}", self.log.lock().unwrap());
    }

    /// Waits (bounded) for `p` to print `marker`.
    fn expect_line(&self, p: &mut Proc, marker: &str) -> String {
        p.find_line(marker, WAIT_LIMIT)
            .unwrap_or_else(|| self.fail(&format!("no line with {marker:?}")))
    }

    /// Waits for `p` (named `who` in the failure) and fails unless it exited 0.
    fn expect_success(&self, p: &mut Proc, who: &str) {
        let (status, _) = p.wait();
        if !status.success() {
            self.fail(&format!("{who} exited with {status}"));
        }
    }

    /// Fails unless the file at `output` holds exactly `data`.
    fn expect_exact(&self, output: &str, data: &[u8]) {
        let got = std::fs::read(output).unwrap();
        if got != data {
            self.fail(&format!(
                "the output differs from the input ({} bytes, expected {})",
                got.len(),
                data.len()
            ));
        }
    }

    /// Waits (bounded) until `progress()` reaches `at_least`.
    fn wait_progress(&self, at_least: usize, progress: impl Fn() -> usize) {
        let deadline = Instant::now() + WAIT_LIMIT;
        while progress() < at_least {
            if Instant::now() > deadline {
                self.fail(&format!("no progress to {at_least}"));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `len` random bytes (seeded), written to `path`.
fn random_file(path: &str, len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

fn file_len(path: &str) -> usize {
    std::fs::metadata(Path::new(path)).map_or(0, |m| m.len() as usize)
}

/// The watermark a member took over from: N in "session …: N messages committed".
fn committed(line: &str) -> u64 {
    let before = line
        .split(" messages committed")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no watermark in {line:?}"));
    before
        .parse()
        .unwrap_or_else(|_| panic!("no watermark in {line:?}"))
}

/// File mode: members A and B on one shared output; A leads and is killed
/// (or paused) once the output has grown; B takes over and the output
/// ends byte-identical to the input.
fn file_mode_takeover(fault: Fault) {
    let bench = Bench::new(1);
    let input = bench.path("in.bin");
    let output = bench.path("out.bin");
    let data = random_file(&input, 6 << 20, 13);
    let etcd = bench.etcd.endpoints();
    let mut a = bench.member("A", &["--out", &output], &etcd);
    // Listening: its port is taken before B picks one.
    bench.expect_line(&mut a, "listening on");
    let mut b = bench.member("B", &["--out", &output], &etcd);
    bench.expect_line(&mut b, "standing by");
    let mut send = bench.sender(&input);
    bench.wait_progress(1 << 20, || file_len(&output));
    match fault {
        Fault::Kill => a.kill(),
        Fault::Pause => a.signal("STOP"),
    }
    bench.expect_line(&mut b, "leading (term");
    bench.expect_line(&mut b, "resumed by");
    if fault == Fault::Pause {
        // The zombie wakes up while B serves: it must stop, not write.
        a.signal("CONT");
        let deposed = bench.expect_line(&mut a, "deposed");
        // It stopped on its own lease's deadline, before etcd had to refuse
        // a checkpoint with its stale fencing token.
        if deposed.contains("stale") {
            bench.fail(&format!("the paused leader tried to commit: {deposed}"));
        }
    }
    bench.expect_success(&mut send, "the sender");
    bench.expect_success(&mut b, "the new leader");
    bench.expect_exact(&output, &data);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
}

#[test]
fn file_mode_kill_9_of_the_leader_mid_stream_leaves_the_output_exact() {
    file_mode_takeover(Fault::Kill);
}

#[test]
fn a_leader_paused_beyond_its_lease_wakes_up_deposed_and_writes_nothing() {
    file_mode_takeover(Fault::Pause);
}

/// Collects datagrams into per-index counts until stopped.
struct Collector {
    counts: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Collector {
    fn start(socket: UdpSocket, records: usize) -> Collector {
        let counts = Arc::new(Mutex::new(vec![0u32; records]));
        let stop = Arc::new(AtomicBool::new(false));
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let thread = {
            let counts = counts.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = socket.recv(&mut buf) else {
                        continue;
                    };
                    assert_eq!(n, RECORD, "one record per datagram");
                    let index = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
                    counts.lock().unwrap()[index] += 1;
                }
            })
        };
        Collector {
            counts,
            stop,
            thread: Some(thread),
        }
    }

    fn distinct(&self) -> usize {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|&&c| c > 0)
            .count()
    }

    fn finish(mut self) -> Vec<u32> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.counts.lock().unwrap().clone()
    }
}

/// Datagram mode: A leads, is killed mid-stream, B takes over; every
/// message arrives at least once, and duplicates only at or after the
/// watermark B took over from.
#[test]
fn datagram_mode_kill_9_of_the_leader_delivers_every_message_at_least_once() {
    let bench = Bench::new(1);
    let records = 4000;
    let input = bench.path("in.bin");
    let mut data = vec![0u8; records * RECORD];
    for (i, record) in data.chunks_mut(RECORD).enumerate() {
        record[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    std::fs::write(&input, &data).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = format!("udp://{}", socket.local_addr().unwrap());
    let collector = Collector::start(socket, records);
    let etcd = bench.etcd.endpoints();
    let mut a = bench.member("A", &["--to", &to], &etcd);
    // Listening: its port is taken before B picks one.
    bench.expect_line(&mut a, "listening on");
    let mut b = bench.member("B", &["--to", &to], &etcd);
    bench.expect_line(&mut b, "standing by");
    let mut send = bench.sender(&input);
    bench.wait_progress(records / 4, || collector.distinct());
    a.kill();
    let takeover = bench.expect_line(&mut b, "messages committed");
    let watermark = committed(&takeover);
    bench.expect_success(&mut send, "the sender");
    // Everything was confirmed to the sender, so it was sent: wait for the
    // collector to have it all (bounded), then stop it.
    bench.wait_progress(records, || collector.distinct());
    let counts = collector.finish();
    let duplicates: Vec<usize> = (0..records).filter(|&i| counts[i] > 1).collect();
    eprintln!(
        "{} duplicates, all at or after the watermark {watermark}",
        duplicates.len()
    );
    if let Some(early) = duplicates.iter().find(|&&i| (i as u64) < watermark) {
        bench.fail(&format!(
            "message {early} was delivered twice, but the watermark was {watermark}"
        ));
    }
}

/// Three etcd members; the leader talks to one of them only, which is
/// killed: the leader cannot renew its lease, stops, and B (talking to the
/// others) takes over; the output stays exact.
#[test]
fn losing_the_etcd_member_the_leader_talks_to_hands_over_with_the_output_exact() {
    let mut bench = Bench::new(3);
    let input = bench.path("in.bin");
    let output = bench.path("out.bin");
    let data = random_file(&input, 6 << 20, 29);
    let mut a = bench.member("A", &["--out", &output], &bench.etcd.endpoint(0));
    // Listening: its port is taken before B picks one.
    bench.expect_line(&mut a, "listening on");
    let others = format!("{},{}", bench.etcd.endpoint(1), bench.etcd.endpoint(2));
    let mut b = bench.member("B", &["--out", &output], &others);
    bench.expect_line(&mut b, "standing by");
    let mut send = bench.sender(&input);
    bench.wait_progress(1 << 20, || file_len(&output));
    bench.etcd.kill(0);
    bench.expect_line(&mut a, "deposed");
    bench.expect_line(&mut b, "leading (term");
    bench.expect_success(&mut send, "the sender");
    bench.expect_success(&mut b, "the new leader");
    bench.expect_exact(&output, &data);
}

/// Two takeovers in a row: A leads and is killed, B takes over and is
/// killed in turn once the output has grown again, C finishes; the output
/// is exact.
#[test]
fn two_takeovers_in_a_row_leave_the_output_exact() {
    let bench = Bench::new(1);
    let input = bench.path("in.bin");
    let output = bench.path("out.bin");
    let data = random_file(&input, 8 << 20, 41);
    let etcd = bench.etcd.endpoints();
    let mut a = bench.member("A", &["--out", &output], &etcd);
    bench.expect_line(&mut a, "listening on");
    let mut b = bench.member("B", &["--out", &output], &etcd);
    bench.expect_line(&mut b, "standing by");
    let mut c = bench.member("C", &["--out", &output], &etcd);
    bench.expect_line(&mut c, "standing by");
    let mut send = bench.sender(&input);
    bench.wait_progress(1 << 20, || file_len(&output));
    a.kill();
    // B or C takes over; the other stands by for the next term.
    let (mut next, mut last) = loop {
        if b.find_line("resumed by", Duration::from_millis(50))
            .is_some()
        {
            break (b, c);
        }
        if c.find_line("resumed by", Duration::from_millis(50))
            .is_some()
        {
            break (c, b);
        }
        if !send.is_running() {
            bench.fail("the sender exited before a second leader resumed");
        }
    };
    let resumed_at = file_len(&output);
    bench.wait_progress(resumed_at + (1 << 20), || file_len(&output));
    next.kill();
    bench.expect_line(&mut last, "resumed by");
    bench.expect_success(&mut send, "the sender");
    bench.expect_success(&mut last, "the third leader");
    bench.expect_exact(&output, &data);
}

/// etcd unreachable for longer than the lease (the only member paused):
/// the leader cannot renew, so it stops (deposed) rather than go on
/// without being able to prove it leads; once etcd is back a member takes
/// the lead again, the sender resumes, and the output is exact.
#[test]
fn etcd_unreachable_beyond_the_lease_stops_the_leader_and_the_group_resumes_after() {
    let bench = Bench::new(1);
    let input = bench.path("in.bin");
    let output = bench.path("out.bin");
    let data = random_file(&input, 6 << 20, 53);
    let etcd = bench.etcd.endpoints();
    let mut a = bench.member("A", &["--out", &output], &etcd);
    bench.expect_line(&mut a, "listening on");
    let mut b = bench.member("B", &["--out", &output], &etcd);
    bench.expect_line(&mut b, "standing by");
    let mut send = bench.sender(&input);
    bench.wait_progress(1 << 20, || file_len(&output));
    bench.etcd.signal(0, "STOP");
    bench.expect_line(&mut a, "deposed");
    bench.etcd.signal(0, "CONT");
    bench.expect_success(&mut send, "the sender");
    bench.expect_exact(&output, &data);
}
