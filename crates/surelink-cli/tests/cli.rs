//! End-to-end tests of the `surelink` binary over real UDP on loopback.
//!
//! Every process is spawned with its stderr read by a thread; addresses are
//! learnt from the "listening on" lines (ports are chosen by binding port 0),
//! and every wait is bounded: a process that does not finish in time is killed
//! and the test fails with its stderr.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use support::{random_bytes, udp_with_big_buffer, Proc, PROCESS_LIMIT};
use surelink::proto::wire::{Header, PacketKind};

fn start_receiver(extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["recv", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut recv = Proc::spawn("recv", &args);
    let addr = recv.listening_addr();
    (recv, addr)
}

#[test]
fn a_file_arrives_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let data = random_bytes(1, 10 << 20);
    std::fs::write(&input, &data).unwrap();
    // A longer file already there is replaced whole, not overwritten in place.
    std::fs::write(&output, vec![7u8; 11 << 20]).unwrap();

    let (mut recv, addr) = start_receiver(&["--out", output.to_str().unwrap(), "--once"]);
    let mut send = Proc::spawn(
        "send",
        &[
            "send",
            "--to",
            &addr.to_string(),
            "--in",
            input.to_str().unwrap(),
            "--stats-interval",
            "1s",
        ],
    );
    send.wait_success();
    recv.wait_success();
    let got = std::fs::read(&output).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "output differs from input");
    // The final stats line is JSON.
    let stats = send.stderr();
    let last = stats
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a stats line");
    assert!(
        last.contains("\"messages_acked\"") && last.contains("\"retransmission_rate\""),
        "{last}"
    );
}

#[test]
fn stdin_to_stdout_with_small_chunks() {
    let data = random_bytes(2, 300_000);
    let mut recv = Proc::spawn("recv", &["recv", "--listen", "127.0.0.1:0", "--once"]);
    let addr = recv.listening_addr();
    let mut send = Proc::spawn_with(
        "send",
        &["send", "--to", &addr.to_string(), "--chunk", "1000"],
        Stdio::piped(),
    );
    let mut stdin = send.child().stdin.take().unwrap();
    let input = data.clone();
    let feeder = thread::spawn(move || {
        stdin.write_all(&input).unwrap();
        // Dropping stdin is the end of the stream.
    });
    feeder.join().unwrap();
    send.wait_success();
    let got = recv.wait_success_bytes();
    assert!(
        got == data,
        "stdout differs: {} of {} bytes",
        got.len(),
        data.len()
    );
}

#[test]
fn a_second_signal_ends_a_gateway_stuck_closing() {
    let sink = udp_with_big_buffer();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let (recv, addr) = start_receiver(&["--to", &format!("udp://{sink_addr}")]);
    // A long idle timeout: without the second signal, the close would wait
    // for the stopped receiver's acknowledgement for ten minutes.
    let mut send = Proc::spawn(
        "send",
        &[
            "send",
            "--to",
            &addr.to_string(),
            "--from",
            "udp://127.0.0.1:0",
            "--idle-timeout",
            "600s",
        ],
    );
    let gateway = send.listening_addr();
    let source = UdpSocket::bind("127.0.0.1:0").unwrap();
    // One datagram through, so the connection is up.
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + PROCESS_LIMIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the first datagram never came through"
        );
        source.send_to(b"first", gateway).unwrap();
        if matches!(sink.recv_from(&mut buf), Ok((5, _))) {
            break;
        }
    }
    // The receiver stops answering; the next datagram is never acknowledged.
    recv.signal("STOP");
    source.send_to(b"second", gateway).unwrap();
    send.terminate();
    send.wait_for_line("stopping: closing the connection");
    send.terminate();
    let (status, _) = send.wait();
    let stderr = send.stderr();
    recv.signal("CONT");
    recv.terminate();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted again while closing"),
        "{stderr}"
    );
}

#[test]
fn the_datagram_gateway_delivers_every_datagram() {
    const N: u32 = 2_000;
    let sink = udp_with_big_buffer();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sink_addr = sink.local_addr().unwrap();

    let (mut recv, addr) = start_receiver(&[
        "--to",
        &format!("udp://{sink_addr}"),
        "--once",
        "--stats-interval",
        "10s",
    ]);
    let mut send = Proc::spawn(
        "send",
        &[
            "send",
            "--to",
            &addr.to_string(),
            "--from",
            "udp://127.0.0.1:0",
            "--stats-interval",
            "10s",
        ],
    );
    let gateway = send.listening_addr();

    let payload = |i: u32| -> Vec<u8> {
        let len = 4 + (i as usize * 37) % 1_200;
        let mut v = i.to_be_bytes().to_vec();
        v.extend((4..len).map(|k| (k as u32 ^ i) as u8));
        v
    };
    let source = UdpSocket::bind("127.0.0.1:0").unwrap();
    let fed = Arc::new(AtomicBool::new(false));
    let fed_flag = fed.clone();
    let feeder = thread::spawn(move || {
        for i in 0..N {
            source.send_to(&payload(i), gateway).unwrap();
            if i % 20 == 19 {
                // A moderate, bounded rate: at most 20 datagrams a millisecond.
                thread::sleep(Duration::from_millis(1));
            }
        }
        fed_flag.store(true, Ordering::Relaxed);
    });

    // Collect until everything arrived, or nothing more arrived for a long
    // while after the last datagram was fed in (bounded either way).
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + PROCESS_LIMIT;
    let mut last_arrival = Instant::now();
    while got.len() < N as usize && Instant::now() < deadline {
        if fed.load(Ordering::Relaxed) && last_arrival.elapsed() > Duration::from_secs(10) {
            break;
        }
        match sink.recv_from(&mut buf) {
            Ok((n, _)) => {
                got.push(buf[..n].to_vec());
                last_arrival = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("sink: {e}"),
        }
    }
    feeder.join().unwrap();
    send.terminate();
    send.wait_success();
    recv.wait_success();

    if got.len() != N as usize {
        let seen: HashSet<u32> = got
            .iter()
            .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
            .collect();
        let missing: Vec<u32> = (0..N).filter(|i| !seen.contains(i)).take(20).collect();
        panic!(
            "{} of {N} datagrams arrived; first missing: {missing:?}\nsend stderr:\n{}\nrecv stderr:\n{}",
            got.len(),
            send.stderr(),
            recv.stderr()
        );
    }
    let mut seen = HashSet::new();
    for d in &got {
        let i = u32::from_be_bytes(d[..4].try_into().unwrap());
        assert!(seen.insert(i), "datagram {i} arrived twice");
        assert!(*d == payload(i), "datagram {i} content differs");
    }
    assert_eq!(seen.len(), N as usize);
    // In order: one connection, one sender socket, loopback.
    let order: Vec<u32> = got
        .iter()
        .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "datagrams out of order"
    );
}

/// Random datagrams; most start with a well-formed surelink header (any kind,
/// any flags, a random connection id) followed by random bytes.
fn garbage(rng: &mut SmallRng) -> Vec<u8> {
    const KINDS: [PacketKind; 6] = [
        PacketKind::Initial,
        PacketKind::Handshake,
        PacketKind::Data,
        PacketKind::Retry,
        PacketKind::Reject,
        PacketKind::Reset,
    ];
    let mut out = Vec::new();
    if rng.gen_bool(0.8) {
        Header {
            kind: KINDS[rng.gen_range(0..KINDS.len())],
            flags: rng.gen_range(0..4),
            dcid: rng.gen(),
            pn: rng.gen_range(0..1 << 20),
        }
        .encode(&mut out);
    }
    // Initials must be padded to 1200 bytes to be looked at: often pad.
    let len = if rng.gen_bool(0.3) {
        1_200
    } else {
        rng.gen_range(0..1_500)
    };
    let start = out.len();
    out.resize(start.max(len), 0);
    rng.fill_bytes(&mut out[start..]);
    out
}

#[test]
fn garbage_thrown_at_the_receiver_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let data = random_bytes(3, 10 << 20);
    std::fs::write(&input, &data).unwrap();

    let (mut recv, addr) = start_receiver(&["--out", output.to_str().unwrap(), "--once"]);
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let thrower = thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rng = SmallRng::seed_from_u64(4);
        let mut sent = 0u32;
        // Bounded in count and rate.
        while !stop.load(Ordering::Relaxed) && sent < 50_000 {
            let _ = socket.send_to(&garbage(&mut rng), addr);
            sent += 1;
            if sent % 10 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        sent
    });
    let mut send = Proc::spawn(
        "send",
        &[
            "send",
            "--to",
            &addr.to_string(),
            "--in",
            input.to_str().unwrap(),
        ],
    );
    send.wait_success();
    done.store(true, Ordering::Relaxed);
    let thrown = thrower.join().unwrap();
    recv.wait_success();
    assert!(thrown > 0);
    // The receiver saw (and dropped) the garbage.
    let stderr = recv.stderr();
    let dropped: u64 = ["malformed=", "unknown_connection=", "refused="]
        .iter()
        .map(|key| {
            let at = stderr
                .find(key)
                .unwrap_or_else(|| panic!("no {key} in stderr:\n{stderr}"));
            let digits: String = stderr[at + key.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<u64>().unwrap()
        })
        .sum();
    assert!(dropped > 0, "no garbage reached the receiver:\n{stderr}");
    let got = std::fs::read(&output).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "output differs from input");
}

#[test]
fn an_unreachable_peer_fails_after_the_connect_timeout() {
    // Bound but never read: nobody answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut send = Proc::spawn_with(
        "send",
        &["send", "--to", &addr, "--connect-timeout", "300ms"],
        Stdio::piped(),
    );
    let (status, _) = send.wait();
    assert_eq!(status.code(), Some(4), "stderr:\n{}", send.stderr());
    let stderr = send.stderr();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("surelink: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    let line = errors[0];
    assert!(
        line.contains(&format!("cannot connect to {addr}"))
            && line.contains("no answer")
            && line.contains("300ms"),
        "unclear error: {line}"
    );
}

/// The files in `dir`, sorted (to see that no temporary file was left behind).
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_receiver_that_cannot_listen_leaves_an_existing_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("precious.txt");
    std::fs::write(&output, b"precious data\n").unwrap();
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            &addr,
            "--out",
            output.to_str().unwrap(),
            "--once",
        ],
    );
    let (status, _) = recv.wait();
    assert_eq!(
        status.code(),
        Some(3),
        "recv should fail: {}",
        recv.stderr()
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"precious data\n");
    assert_eq!(files_in(dir.path()), ["precious.txt"]);
    // The operating system's reason, once.
    let stderr = recv.stderr();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("surelink: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        line.contains(&format!("cannot bind UDP socket to {addr}")),
        "{line}"
    );
    assert_eq!(line.matches("os error").count(), 1, "{line}");
}

#[test]
fn an_interrupted_receiver_leaves_an_existing_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("precious.txt");
    std::fs::write(&output, b"precious data\n").unwrap();
    let (mut recv, _addr) = start_receiver(&["--out", output.to_str().unwrap(), "--once"]);
    recv.terminate();
    let (status, _) = recv.wait();
    assert_eq!(
        status.code(),
        Some(130),
        "recv should fail: {}",
        recv.stderr()
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"precious data\n");
    assert_eq!(files_in(dir.path()), ["precious.txt"]);
}

#[test]
fn a_stopped_receiver_completes_the_file_of_a_sender_that_finished() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("copy.bin");
    std::fs::write(&output, b"the previous contents\n").unwrap();
    let input = dir.path().join("in.bin");
    let data = random_bytes(5, 4 << 20);
    std::fs::write(&input, &data).unwrap();
    let (mut recv, addr) = start_receiver(&["--out", output.to_str().unwrap()]);
    // Many small messages: the receiver's transport acknowledges them faster
    // than the output writes them.
    let mut send = Proc::spawn(
        "send",
        &[
            "send",
            "--to",
            &addr.to_string(),
            "--in",
            input.to_str().unwrap(),
            "--chunk",
            "256",
        ],
    );
    // The sender exits successfully only once every message is acknowledged;
    // the receiver is stopped right then.
    send.wait_success();
    recv.terminate();
    recv.wait_success();
    let got = std::fs::read(&output).unwrap();
    assert_eq!(got.len(), data.len(), "{}", recv.stderr());
    assert!(got == data, "output differs from input");
    assert_eq!(files_in(dir.path()), ["copy.bin", "in.bin"]);
}

/// Sends 2 MiB (random, from `seed`) to a receiver whose stdout nobody reads
/// yet: it writes a pipe's worth and waits, while its transport acknowledges
/// the rest (the flow-control window holds it all). Returns once the sender
/// has exited successfully, i.e. once every message is acknowledged.
fn acknowledged_to_a_receiver_holding_stdout(seed: u64) -> (Proc, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let data = random_bytes(seed, 2 << 20);
    std::fs::write(&input, &data).unwrap();
    let mut recv = Proc::spawn_holding_stdout("recv", &["recv", "--listen", "127.0.0.1:0"]);
    let addr = recv.listening_addr();
    let mut send = Proc::spawn(
        "send",
        &[
            "send",
            "--to",
            &addr.to_string(),
            "--in",
            input.to_str().unwrap(),
        ],
    );
    send.wait_success();
    (recv, data)
}

#[test]
fn a_stopped_receiver_writes_out_what_it_held_for_a_blocked_stdout() {
    let (mut recv, data) = acknowledged_to_a_receiver_holding_stdout(7);
    recv.terminate();
    recv.read_stdout();
    let got = recv.wait_success_bytes();
    assert_eq!(got.len(), data.len(), "{}", recv.stderr());
    assert!(got == data, "output differs from input");
}

#[test]
fn a_second_signal_ends_a_receiver_stuck_writing_out() {
    // Nothing ever reads the receiver's stdout: after the first signal it
    // waits to write out what it holds, for good.
    let (mut recv, _) = acknowledged_to_a_receiver_holding_stdout(8);
    recv.terminate();
    recv.wait_for_line("stopping");
    assert!(recv.is_running(), "{}", recv.stderr());
    recv.terminate();
    let (status, _) = recv.wait_bytes();
    assert_eq!(status.code(), Some(130), "{}", recv.stderr());
    assert!(
        recv.stderr().contains("interrupted again"),
        "{}",
        recv.stderr()
    );
}

#[test]
fn a_receiver_stopped_mid_stream_leaves_an_existing_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("precious.txt");
    std::fs::write(&output, b"precious data\n").unwrap();
    let (mut recv, addr) = start_receiver(&["--out", output.to_str().unwrap()]);
    let mut send = Proc::spawn_with("send", &["send", "--to", &addr.to_string()], Stdio::piped());
    let mut stdin = send.child().stdin.take().unwrap();
    stdin.write_all(&random_bytes(6, 64 << 10)).unwrap();
    stdin.flush().unwrap();
    // The stream has begun, and the sender is not done: its stdin is open.
    recv.wait_for_line("sender connected");
    recv.terminate();
    let (status, _) = recv.wait();
    assert!(
        status.success(),
        "without --once a stop is the normal end: {}",
        recv.stderr()
    );
    assert!(
        recv.stderr().contains("no sender finished"),
        "{}",
        recv.stderr()
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"precious data\n");
    assert_eq!(files_in(dir.path()), ["precious.txt"]);
    // The sender learns that the receiver stopped.
    drop(stdin);
    let (status, _) = send.wait();
    assert!(!status.success(), "{}", send.stderr());
}

#[test]
fn usage_errors_exit_with_status_two() {
    for args in [
        &["send"][..],
        &["send", "--to", "127.0.0.1:1", "--chunk", "0"],
        &["send", "--to", "127.0.0.1:1", "--connect-timeout", "soon"],
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--out",
            "x",
            "--to",
            "udp://127.0.0.1:1",
        ],
        &["send", "--to", "127.0.0.1:1", "--reconnect-for", "1m"],
        &["recv", "--listen", "127.0.0.1:0", "--idle-timeout", "0s"],
        &["frobnicate"],
    ] {
        let mut p = Proc::spawn("surelink", args);
        let (status, _) = p.wait();
        assert_eq!(status.code(), Some(2), "{args:?}: {status}\n{}", p.stderr());
    }
}

#[test]
fn a_missing_input_exits_with_the_local_file_status() {
    let args = [
        "send",
        "--to",
        "127.0.0.1:1",
        "--in",
        "/nonexistent/surelink-test-input",
    ];
    let mut p = Proc::spawn("surelink", &args);
    let (status, _) = p.wait();
    assert_eq!(status.code(), Some(3), "{status}\n{}", p.stderr());
    assert!(
        p.stderr()
            .contains("cannot read /nonexistent/surelink-test-input"),
        "{}",
        p.stderr()
    );
}
