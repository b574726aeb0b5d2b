//! Receiver groups with real processes and a real etcd (built with the
//! `etcd` feature; `etcd` from Debian's `etcd-server` on PATH): two or
//! three `surelink recv --group` members share one output, a `surelink send
//! --state --group` streams to whichever leads, and the leader is killed
//! with SIGKILL, or paused with SIGSTOP beyond its lease and woken up, or
//! loses its etcd member, or is cut off from the sender (not from etcd)
//! behind a `surelink impair` proxy, mid-stream. Also: a suspicion the
//! leader must ignore, and etcd with authentication and with TLS.
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
use support::etcd::{Etcd, ServerTls};
use support::{free_addr, s, Proc};

/// Where `recv/send --etcd-user` read the password from.
const PASSWORD_VAR: &str = "SURELINK_ETCD_PASSWORD";

/// Bound on waiting for a line or for progress.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
/// The lease TTL the tests run with (etcd's minimum is below it with the
/// test cluster's timings).
const LEASE_TTL: &str = "1s";
/// A lease TTL from which a standby can end a dead leader's term before
/// etcd expires its lease (a 1 s TTL gives no proof of a missed renewal).
const EARLY_END_TTL: &str = "2s";
/// Size of a datagram-mode message (one record of the input).
const RECORD: usize = 1024;

/// A receiver group's test bench: etcd, the group's key, the members'
/// arguments and a shared log.
struct Bench {
    etcd: Etcd,
    dir: tempfile::TempDir,
    key: String,
    log: Arc<Mutex<String>>,
    lease_ttl: &'static str,
}

impl Bench {
    fn new(etcd_members: usize) -> Bench {
        Bench::with_lease_ttl(etcd_members, LEASE_TTL)
    }

    /// A bench whose members hold leases of `lease_ttl`.
    fn with_lease_ttl(etcd_members: usize, lease_ttl: &'static str) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("group.key");
        let out = support::run(&["keygen", "--out", s(&key)]);
        assert!(out.status.success(), "keygen: {}", out.stderr);
        Bench {
            etcd: Etcd::start(etcd_members),
            key: s(&key).to_owned(),
            dir,
            log: Arc::new(Mutex::new(String::new())),
            lease_ttl,
        }
    }

    fn path(&self, name: &str) -> String {
        s(&self.dir.path().join(name)).to_owned()
    }

    /// Starts a group member listening on a fresh port, writing to
    /// `output` (`--out PATH` or `--to udp://…`), talking to `etcd`.
    fn member(&self, name: &str, output: &[&str], etcd: &str) -> Proc {
        self.member_with(name, &free_addr(), etcd, output, &[])
    }

    /// Starts a member of group `g` listening on `listen`, talking to
    /// `etcd`, with `more` arguments (its output, …) and environment `env`.
    fn member_with(
        &self,
        name: &str,
        listen: &str,
        etcd: &str,
        more: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut args = vec![
            "recv",
            "--listen",
            listen,
            "--group",
            "g",
            "--etcd",
            etcd,
            "--lease-ttl",
            self.lease_ttl,
            "--key",
            &self.key,
            "--once",
        ];
        args.extend_from_slice(more);
        Proc::spawn_logged_env(name, &args, env, &self.log)
    }

    /// Starts the sender of `input`.
    fn sender(&self, input: &str) -> Proc {
        self.sender_with(input, &[], &[])
    }

    /// Starts the sender of `input` with `more` arguments and environment `env`.
    fn sender_with(&self, input: &str, more: &[&str], env: &[(&str, &str)]) -> Proc {
        let state = self.path("tx-state");
        let etcd = self.etcd.endpoints();
        let mut args = vec![
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
        args.extend_from_slice(more);
        Proc::spawn_logged_env("send", &args, env, &self.log)
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

/// File mode: members A and B on one shared output, with leases of
/// `lease_ttl`; A leads and is killed (or paused) once the output has
/// grown; B takes over — ending A's term early first if the TTL allows it
/// (`early_end`) — and the output ends byte-identical to the input.
fn file_mode_takeover(fault: Fault, lease_ttl: &'static str, early_end: bool) {
    let bench = Bench::with_lease_ttl(1, lease_ttl);
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
    if early_end {
        bench.expect_line(&mut b, "ending its term early");
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
    file_mode_takeover(Fault::Kill, LEASE_TTL, false);
}

#[test]
fn a_leader_paused_beyond_its_lease_wakes_up_deposed_and_writes_nothing() {
    file_mode_takeover(Fault::Pause, LEASE_TTL, false);
}

/// SIGSTOP of the leader with 2 s leases: its sender suspects it, the
/// standby ends its term early (the lease still alive) and serves; woken
/// up, the old leader is past its own deadline and stops without writing
/// (nor trying a stale commit); the output is exact.
#[test]
fn a_leader_paused_while_suspected_is_replaced_early_and_wakes_up_deposed() {
    file_mode_takeover(Fault::Pause, EARLY_END_TTL, true);
}

/// With a 2 s lease, kill -9 of the leader mid-stream: the sender finds
/// every path down and records a suspicion at once; the standby sees it,
/// reads from the lease's remaining TTL that the leader stopped renewing,
/// and revokes the lease, so it leads before etcd would have expired the
/// lease (the revocation succeeds only while the lease lives). The output
/// is exact.
#[test]
fn kill_9_of_a_suspected_leader_ends_its_term_before_its_lease_expires() {
    a_killed_suspected_leader_is_replaced_before_its_lease_expires(EARLY_END_TTL);
}

/// The same with a 1 s lease, whose remaining-TTL readings prove nothing:
/// the standby's proof is the leader's alive key, unchanged for longer
/// than the leader may own its term after a renewal.
#[test]
fn kill_9_of_a_suspected_leader_with_a_one_second_lease_ends_its_term_on_its_alive_key() {
    a_killed_suspected_leader_is_replaced_before_its_lease_expires(LEASE_TTL);
}

/// kill -9 of the leader mid-stream with leases of `lease_ttl`: the
/// standby ends the dead leader's term (revoking a lease still alive),
/// then leads, and the output is exact.
fn a_killed_suspected_leader_is_replaced_before_its_lease_expires(lease_ttl: &'static str) {
    let bench = Bench::with_lease_ttl(1, lease_ttl);
    let input = bench.path("in.bin");
    let output = bench.path("out.bin");
    let data = random_file(&input, 6 << 20, 17);
    let etcd = bench.etcd.endpoints();
    let mut a = bench.member("A", &["--out", &output], &etcd);
    let term = term_of(&bench.expect_line(&mut a, "leading (term"));
    bench.expect_line(&mut a, "listening on");
    let mut b = bench.member("B", &["--out", &output], &etcd);
    bench.expect_line(&mut b, "standing by");
    let mut send = bench.sender(&input);
    bench.wait_progress(1 << 20, || file_len(&output));
    a.kill();
    bench.expect_line(&mut send, "is unreachable; told etcd");
    // In this order: B ends A's term (its lease still alive in etcd, or
    // the revocation would have failed), then leads.
    let ended = bench.expect_line(&mut b, "ending its term early");
    if !ended.contains(&format!("(term {term})")) {
        bench.fail(&format!("B ended another term than A's {term}: {ended}"));
    }
    let leading = bench.expect_line(&mut b, "leading (term");
    if term_of(&leading) == term {
        bench.fail(&format!("B leads A's term: {leading}"));
    }
    bench.expect_line(&mut b, "resumed by");
    bench.expect_success(&mut send, "the sender");
    bench.expect_success(&mut b, "the new leader");
    bench.expect_exact(&output, &data);
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

/// True if process `pid` holds the file at `path` open (Linux's
/// `/proc/PID/fd`): a process without a descriptor of the output cannot
/// write to it.
fn holds_open(pid: u32, path: &str) -> bool {
    let target = std::fs::canonicalize(path).unwrap();
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| link == target))
    })
}

/// Sends `command` to a `surelink impair --control` port and checks the answer.
fn control(addr: &str, command: &str) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.send_to(command.as_bytes(), addr).unwrap();
    let mut buf = [0u8; 1024];
    let len = socket
        .recv(&mut buf)
        .expect("an answer from the control port");
    let answer = String::from_utf8_lossy(&buf[..len]);
    assert!(answer.contains("\"ok\":true"), "{command}: {answer}");
}

/// A leader cut off from the sender but not from etcd. A advertises the
/// address of a `surelink impair` proxy in front of it, which is cut
/// mid-stream: the sender's failure detector gives up on A and records a
/// suspicion in etcd; A, hearing nothing from the sender either, steps
/// down; B takes over and the output ends exact. No split brain: A had
/// closed the output before B led. After `restore`, A stays a standby.
#[test]
fn a_leader_cut_off_from_the_sender_steps_down_and_a_standby_takes_over() {
    let bench = Bench::new(1);
    let input = bench.path("in.bin");
    let output = bench.path("out.bin");
    let data = random_file(&input, 6 << 20, 61);
    let etcd = bench.etcd.endpoints();
    let a_listen = free_addr();
    let mut proxy = Proc::spawn_logged(
        "proxy",
        &[
            "impair",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &a_listen,
            "--control",
            "127.0.0.1:0",
        ],
        &bench.log,
    );
    let proxy_addr = proxy.addr_after("listening on ").to_string();
    let control_addr = proxy.addr_after("control on ").to_string();
    let mut a = bench.member_with(
        "A",
        &a_listen,
        &etcd,
        &["--out", &output, "--advertise", &proxy_addr],
        &[],
    );
    bench.expect_line(&mut a, "listening on");
    let mut b = bench.member("B", &["--out", &output], &etcd);
    let standby = bench.expect_line(&mut b, "standing by");
    assert!(
        standby.contains(&proxy_addr),
        "A publishes the proxy: {standby}"
    );
    let mut send = bench.sender(&input);
    bench.wait_progress(1 << 20, || file_len(&output));
    let a_pid = a.child().id();
    assert!(holds_open(a_pid, &output), "the leader writes the output");
    control(&control_addr, "cut");
    bench.expect_line(&mut a, "stepping down");
    let leading = bench.expect_line(&mut b, "leading (term");
    // A closed the output before it revoked its lease, so before B led.
    if holds_open(a_pid, &output) {
        bench.fail(&format!(
            "A still holds the output open once B leads ({leading})"
        ));
    }
    control(&control_addr, "restore");
    bench.expect_line(&mut b, "resumed by");
    // A campaigns again only once B has led, and stands by behind it.
    let b_term = term_of(&leading);
    let behind = bench.expect_line(&mut a, "standing by");
    if !behind.contains(&format!("(term {b_term})")) {
        bench.fail(&format!(
            "A stands by behind another term than B's {b_term}: {behind}"
        ));
    }
    if holds_open(a_pid, &output) {
        bench.fail("A, standing by, holds the output open");
    }
    bench.expect_success(&mut send, "the sender");
    bench.expect_success(&mut b, "the new leader");
    bench.expect_exact(&output, &data);
}

/// The term in a "leading (term N, …)" line.
fn term_of(line: &str) -> String {
    line.split("term ")
        .nth(1)
        .and_then(|t| t.split([',', ')']).next())
        .unwrap_or_else(|| panic!("no term in {line:?}"))
        .to_owned()
}

/// A suspicion of the leader's term written to etcd while the leader still
/// hears its sender (a wrong or lying sender) and still renews its lease
/// does not depose it: the leader serves the whole transfer, the standby
/// (which reads the lease's TTL while the suspicion lasts) never ends its
/// term, and never leads during it.
#[test]
fn a_suspicion_from_a_sender_the_leader_still_hears_does_not_depose_it() {
    a_suspicion_of_a_leader_that_renews_deposes_nothing(EARLY_END_TTL);
}

/// The same with a 1 s lease: the standby watches the leader's alive key,
/// which keeps changing, so it never ends the term.
#[test]
fn a_suspicion_of_a_leader_renewing_a_one_second_lease_deposes_nothing() {
    a_suspicion_of_a_leader_that_renews_deposes_nothing(LEASE_TTL);
}

/// A lying suspicion while the leader serves with leases of `lease_ttl`:
/// nothing happens, and the transfer completes with the first leader.
fn a_suspicion_of_a_leader_that_renews_deposes_nothing(lease_ttl: &'static str) {
    let bench = Bench::with_lease_ttl(1, lease_ttl);
    let input = bench.path("in.bin");
    let output = bench.path("out.bin");
    let data = random_file(&input, 4 << 20, 73);
    let etcd = bench.etcd.endpoints();
    let mut a = bench.member("A", &["--out", &output], &etcd);
    let term = term_of(&bench.expect_line(&mut a, "leading (term"));
    bench.expect_line(&mut a, "listening on");
    let mut b = bench.member("B", &["--out", &output], &etcd);
    bench.expect_line(&mut b, "standing by");
    let mut send = bench.sender(&input);
    bench.wait_progress(1 << 20, || file_len(&output));
    bench.etcd.put(
        &format!("/surelink/groups/g/suspicions/{term}/liar"),
        "liar",
    );
    bench.expect_success(&mut send, "the sender");
    bench.expect_success(&mut a, "the leader");
    if a.stderr().contains("stepping down") {
        bench.fail("the leader stepped down on a suspicion while it heard its sender");
    }
    if b.stderr().contains("ending its term early") {
        bench.fail("the standby ended the term of a leader that renewed its lease");
    }
    // B leads only once A resigned after the transfer: it found it complete.
    let took_over = bench.expect_line(&mut b, "messages committed");
    if !took_over.contains("(complete)") {
        bench.fail(&format!(
            "B led before the transfer was complete: {took_over}"
        ));
    }
    bench.expect_exact(&output, &data);
}

/// etcd with authentication on, and a user whose role reaches only the
/// group's prefix: a wrong password is refused, naming the cause; the
/// right one for another group is refused access to its keys; the right
/// one for the group serves a transfer exactly.
#[test]
fn with_etcd_authentication_a_wrong_password_is_named_and_the_right_one_works() {
    let bench = Bench::new(1);
    bench
        .etcd
        .enable_auth("member", "right-password", "/surelink/groups/g/");
    let etcd = bench.etcd.endpoints();
    let input = bench.path("in.bin");
    let output = bench.path("out.bin");
    let data = random_file(&input, 256 << 10, 67);
    let user = ["--etcd-user", "member", "--out", &output];
    let refused = |name: &str, args: &[&str], env: &[(&str, &str)], cause: &str| {
        let mut p = Proc::spawn_logged_env(name, args, env, &bench.log);
        let (status, _) = p.wait();
        if status.success() || !p.stderr().contains(cause) {
            bench.fail(&format!("{name}: expected a failure naming {cause:?}"));
        }
    };
    let listen = free_addr();
    let recv = |group: &'static str| {
        vec![
            "recv",
            "--listen",
            &listen,
            "--group",
            group,
            "--etcd",
            &etcd,
            "--key",
            &bench.key,
            "--etcd-user",
            "member",
            "--out",
            &output,
        ]
    };
    refused(
        "wrong",
        &recv("g"),
        &[(PASSWORD_VAR, "wrong-password")],
        "etcd refused the user name or password",
    );
    refused(
        "elsewhere",
        &recv("h"),
        &[(PASSWORD_VAR, "right-password")],
        "etcd refused access to the group's keys /surelink/groups/h/",
    );
    let right = [(PASSWORD_VAR, "right-password")];
    let mut a = bench.member_with("A", &free_addr(), &etcd, &user, &right);
    bench.expect_line(&mut a, "listening on");
    let mut send = bench.sender_with(&input, &["--etcd-user", "member"], &right);
    bench.expect_success(&mut send, "the sender");
    bench.expect_success(&mut a, "the leader");
    bench.expect_exact(&output, &data);
}

/// PEM files of a test PKI: one CA signing the etcd member's certificate
/// (for 127.0.0.1) and a client's.
struct Pki {
    ca: String,
    server: ServerTls,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new(bench: &Bench) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let write = |name: &str, pem: String| {
            let path = bench.path(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let leaf = |name: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
            params.extended_key_usages = usages;
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (
                write(&format!("{name}.pem"), cert.pem()),
                write(&format!("{name}-key.pem"), key.serialize_pem()),
            )
        };
        let ca = write("ca.pem", ca_cert.pem());
        // etcd's own gateway dials the member with the server certificate.
        let (server_cert, server_key) = leaf(
            "server",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_cert, client_key) = leaf("client", vec![ExtendedKeyUsagePurpose::ClientAuth]);
        Pki {
            server: ServerTls {
                cert: server_cert.into(),
                key: server_key.into(),
                client_ca: ca.clone().into(),
            },
            ca,
            client_cert,
            client_key,
        }
    }
}

/// etcd serving clients over TLS only and requiring client certificates:
/// a member and a sender with the CA and a client certificate serve a
/// transfer exactly; a member without a client certificate is refused.
#[test]
fn over_etcd_tls_with_client_certificates_a_group_serves_a_transfer() {
    let mut bench = Bench::new(1);
    let pki = Pki::new(&bench);
    // Replace the plain cluster by one serving TLS (the plain one is killed).
    bench.etcd = Etcd::start_tls(&pki.server);
    let etcd = bench.etcd.endpoints();
    assert!(etcd.starts_with("https://"), "{etcd}");
    let input = bench.path("in.bin");
    let output = bench.path("out.bin");
    let data = random_file(&input, 256 << 10, 71);
    let tls = [
        "--etcd-ca",
        &pki.ca,
        "--etcd-cert",
        &pki.client_cert,
        "--etcd-key",
        &pki.client_key,
    ];
    let mut anonymous = bench.member_with(
        "anonymous",
        &free_addr(),
        &etcd,
        &["--etcd-ca", &pki.ca, "--out", &output],
        &[],
    );
    let (status, _) = anonymous.wait();
    if status.success() || !anonymous.stderr().contains("cannot use etcd") {
        bench.fail("a member without a client certificate was not refused");
    }
    let mut more = tls.to_vec();
    more.extend(["--out", &output]);
    let mut a = bench.member_with("A", &free_addr(), &etcd, &more, &[]);
    bench.expect_line(&mut a, "listening on");
    let mut send = bench.sender_with(&input, &tls, &[]);
    bench.expect_success(&mut send, "the sender");
    bench.expect_success(&mut a, "the leader");
    bench.expect_exact(&output, &data);
}
