//! The delivery options of `send` (`--deadline`, `--unreliable`) and `recv`
//! (`--playout`), end to end over real UDP on loopback.
//!
//! The deadline test is about time, so it measures time, with a tolerance for
//! the two plain UDP hops outside surelink's control (application → gateway,
//! receiver → application) and for scheduling on a busy machine.

mod support;

use std::collections::HashSet;
use std::io::Write as _;
use std::net::UdpSocket;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{json_lines, udp_with_big_buffer, Proc, PROCESS_LIMIT};

/// Wall-clock µs since the Unix epoch: the processes on this host share it.
fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

#[test]
fn a_deadline_gateway_through_a_lossy_link_is_never_late_and_never_stalls() {
    const N: u64 = 1_500;
    const DEADLINE_MS: u64 = 80;
    // The UDP hops outside surelink and scheduling on a loaded two-core machine.
    const TOLERANCE_MS: u64 = 20;

    let sink = udp_with_big_buffer();
    sink.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let sink_addr = sink.local_addr().expect("addr");

    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &format!("udp://{sink_addr}"),
            "--once",
            "--stats-interval",
            "500ms",
        ],
    );
    let recv_addr = recv.addr_after("listening on ");
    let mut impair = Proc::spawn(
        "impair",
        &[
            "impair",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &recv_addr.to_string(),
            "--loss",
            "5%",
            "--burst",
            "1%:30%",
            "--delay",
            "10ms",
            "--seed",
            "7",
            "--json",
        ],
    );
    let impair_addr = impair.addr_after("listening on ");
    let mut send = Proc::spawn(
        "send",
        &[
            "send",
            "--to",
            &impair_addr.to_string(),
            "--from",
            "udp://127.0.0.1:0",
            "--deadline",
            &format!("{DEADLINE_MS}ms"),
            "--stats-interval",
            "500ms",
        ],
    );
    let gateway = send.addr_after("gateway listening on ");

    // Feed N datagrams at about 500 a second, each with its number and send time.
    let feeder = thread::spawn(move || {
        let source = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let start = Instant::now();
        for i in 0..N {
            let due = start + Duration::from_millis(i * 2);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let mut d = Vec::with_capacity(64);
            d.extend_from_slice(&i.to_be_bytes());
            d.extend_from_slice(&wall_us().to_be_bytes());
            d.resize(64, 0xa5);
            source.send_to(&d, gateway).expect("send to the gateway");
        }
    });

    // (number, lateness in µs) of every datagram that arrives, until a while
    // after the last was fed in.
    let mut got: Vec<(u64, u64)> = Vec::new();
    let mut buf = [0u8; 2048];
    let limit = Instant::now() + PROCESS_LIMIT;
    let mut quiet_since = Instant::now();
    loop {
        if Instant::now() > limit
            || (feeder.is_finished() && quiet_since.elapsed() > Duration::from_secs(2))
        {
            break;
        }
        match sink.recv_from(&mut buf) {
            Ok((n, _)) => {
                let now = wall_us();
                assert_eq!(n, 64, "datagram of {n} bytes");
                let i = u64::from_be_bytes(buf[0..8].try_into().expect("8 bytes"));
                let sent = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
                got.push((i, now.saturating_sub(sent)));
                quiet_since = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("sink: {e}"),
        }
    }
    feeder.join().expect("feeder");
    send.terminate();
    send.wait_success();
    recv.wait_success();
    impair.terminate();
    let impair_out = impair.wait_success();
    let context = || {
        format!(
            "send stderr:\n{}\nrecv stderr:\n{}\nimpair:\n{impair_out}",
            send.stderr(),
            recv.stderr()
        )
    };

    let max_lateness = got.iter().map(|(_, l)| *l).max().unwrap_or(0);
    eprintln!(
        "deadline gateway: {} of {N} datagrams arrived, latest {:.1} ms after sending",
        got.len(),
        max_lateness as f64 / 1e3
    );
    // The link really lost datagrams.
    let counters: serde_json::Value = serde_json::from_str(impair_out.trim()).expect("impair JSON");
    let dropped = counters["upstream"]["dropped"].as_u64().expect("dropped")
        + counters["downstream"]["dropped"].as_u64().expect("dropped");
    assert!(dropped > 0, "the link dropped nothing: {}", context());

    // Never late: no datagram arrives more than the deadline after it was sent.
    let late: Vec<_> = got
        .iter()
        .filter(|(_, lateness)| *lateness > (DEADLINE_MS + TOLERANCE_MS) * 1_000)
        .collect();
    assert!(
        late.is_empty(),
        "{} of {} datagrams arrived later than {DEADLINE_MS} ms (+{TOLERANCE_MS} ms), e.g. {:?}\n{}",
        late.len(),
        got.len(),
        &late[..late.len().min(10)],
        context()
    );
    // Exactly once and in order.
    let mut seen = HashSet::new();
    for (i, _) in &got {
        assert!(seen.insert(*i), "datagram {i} arrived twice");
    }
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "datagrams out of order"
    );
    // Never stalls: losses are repaired or skipped, and delivery goes on to the end.
    assert!(
        got.len() as u64 >= N * 7 / 10,
        "only {} of {N} datagrams arrived\n{}",
        got.len(),
        context()
    );
    let last = got.last().map_or(0, |(i, _)| *i);
    assert!(
        last >= N - 50,
        "delivery stopped at datagram {last} of {N}\n{}",
        context()
    );

    // The receiver reports skips, lateness and latency percentiles.
    let stats = json_lines(&recv.stderr());
    let last_stats = stats
        .last()
        .unwrap_or_else(|| panic!("no stats\n{}", context()));
    for key in [
        "messages_skipped",
        "messages_late",
        "latency_p50_us",
        "latency_p99_us",
        "latency_p999_us",
        "latency_max_us",
    ] {
        assert!(last_stats[key].is_u64(), "no {key} in {last_stats}");
    }
    assert_eq!(
        last_stats["messages_delivered"].as_u64(),
        Some(got.len() as u64),
        "{last_stats}"
    );
    let send_stats = json_lines(&send.stderr());
    let send_last = send_stats.last().expect("send stats");
    assert!(send_last["messages_abandoned"].is_u64(), "{send_last}");
}

#[test]
fn playout_is_accepted_and_reflected_in_the_stats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.bin");
    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--out",
            out.to_str().expect("path"),
            "--once",
            "--playout",
            "100ms",
            "--stats-interval",
            "200ms",
        ],
    );
    let addr = recv.addr_after("listening on ").to_string();
    let mut send = Proc::spawn_with(
        "send",
        &["send", "--to", &addr, "--chunk", "1KiB"],
        Stdio::piped(),
    );
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    {
        let mut stdin = send.child().stdin.take().expect("stdin");
        stdin.write_all(&data).expect("write");
    }
    send.wait_success();
    recv.wait_success();
    assert_eq!(std::fs::read(&out).expect("output"), data, "bytes differ");

    let stats = json_lines(&recv.stderr());
    let last = stats.last().expect("a stats line");
    assert_eq!(last["playout_delay_ms"], 100.0, "{last}");
    assert!(last["messages_delivered"].as_u64().expect("delivered") >= 20);
    assert_eq!(last["messages_skipped"], 0, "{last}");
    // Held until 100 ms after sending: nothing comes out sooner (the clocks
    // are the same wall clock here, so the estimate is within a millisecond).
    let p50 = last["latency_p50_us"].as_u64().expect("p50");
    assert!(
        p50 >= 95_000,
        "latency p50 {p50} µs with a 100 ms playout: {last}"
    );
}

#[test]
fn a_stopped_receiver_writes_out_what_its_playout_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.bin");
    // A playout delay no transfer here comes near: every message the
    // transport acknowledges is still held back when the stop comes.
    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--out",
            out.to_str().expect("path"),
            "--playout",
            "1h",
        ],
    );
    let addr = recv.addr_after("listening on ").to_string();
    let mut send = Proc::spawn_with(
        "send",
        &["send", "--to", &addr, "--chunk", "1KiB"],
        Stdio::piped(),
    );
    let data = support::random_bytes(11, 256 << 10);
    {
        let mut stdin = send.child().stdin.take().expect("stdin");
        stdin.write_all(&data).expect("write");
    }
    // The sender exits successfully only once every message is acknowledged.
    send.wait_success();
    recv.terminate();
    recv.wait_success();
    let got = std::fs::read(&out).expect("output");
    assert_eq!(got.len(), data.len(), "{}", recv.stderr());
    assert!(got == data, "output differs from input");
    assert!(
        recv.stderr().contains("written out early"),
        "{}",
        recv.stderr()
    );
}

#[test]
fn unreliable_sending_works_on_a_clean_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.bin");
    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--out",
            out.to_str().expect("path"),
            "--once",
        ],
    );
    let addr = recv.addr_after("listening on ").to_string();
    let mut send = Proc::spawn_with(
        "send",
        &[
            "send",
            "--to",
            &addr,
            "--unreliable",
            "--stats-interval",
            "10s",
        ],
        Stdio::piped(),
    );
    let data = b"sent once, without retransmission\n".repeat(100);
    {
        let mut stdin = send.child().stdin.take().expect("stdin");
        stdin.write_all(&data).expect("write");
    }
    send.wait_success();
    recv.wait_success();
    // Loopback does not lose datagrams at this rate; whatever arrived is the input.
    let got = std::fs::read(&out).expect("output");
    assert_eq!(got, data);
    // The flags conflict.
    let mut bad = Proc::spawn(
        "send",
        &["send", "--to", &addr, "--unreliable", "--deadline", "80ms"],
    );
    let (status, _) = bad.wait();
    assert_eq!(status.code(), Some(2), "a usage error");
}
