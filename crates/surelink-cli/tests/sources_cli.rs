//! Many senders into one receiver, over real UDP on loopback: `recv
//! --out-dir` (one file per sender and an index), with `--state` across a
//! `kill -9` of the receiver and of one sender, and `recv --to udp://
//! --tag-source` (each datagram tagged with its sender) and `--route` (each
//! sender's datagrams to its own address); `recv --merge`, also with
//! `--state` across a `kill -9` of the receiver; and a receiver stopped by
//! SIGTERM right after its senders finished writes every message they saw
//! acknowledged, in each of these modes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{random_bytes, s, udp_with_big_buffer, Proc, PROCESS_LIMIT, STARTUP_LIMIT};

/// Starts `count` senders of distinct content (`len` bytes each) to `addr`;
/// returns the inputs.
fn start_senders(
    dir: &std::path::Path,
    addr: SocketAddr,
    count: u64,
    len: usize,
) -> (Vec<Vec<u8>>, Vec<Proc>) {
    let mut inputs = Vec::new();
    let mut senders = Vec::new();
    for i in 0..count {
        let data = random_bytes(100 + i, len + i as usize);
        let input = dir.join(format!("in-{i}.bin"));
        std::fs::write(&input, &data).unwrap();
        inputs.push(data);
        senders.push(Proc::spawn(
            "send",
            &["send", "--to", &addr.to_string(), "--in", s(&input)],
        ));
    }
    (inputs, senders)
}

fn index(dir: &std::path::Path) -> Vec<serde_json::Value> {
    support::json_lines(&std::fs::read_to_string(dir.join("index.jsonl")).unwrap())
}

#[test]
fn twenty_senders_land_in_twenty_byte_identical_files_with_an_index() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let mut recv = Proc::spawn(
        "recv",
        &["recv", "--listen", "127.0.0.1:0", "--out-dir", s(&out)],
    );
    let addr = recv.listening_addr();
    let (inputs, mut senders) = start_senders(work.path(), addr, 20, 256 << 10);
    for sender in &mut senders {
        sender.wait_success();
    }
    // A sender exits once its bytes are acknowledged; the receiver says when
    // each file is written and synced.
    for _ in 0..20 {
        let line = recv
            .find_line("complete", PROCESS_LIMIT)
            .unwrap_or_else(|| panic!("not every file completed:\n{}", recv.stderr()));
        assert!(!line.contains("incomplete"), "{line}");
    }
    recv.terminate();
    recv.wait_success();

    let entries = index(&out);
    assert_eq!(entries.len(), 20, "{entries:?}");
    let mut sources = BTreeSet::new();
    let mut matched = BTreeSet::new();
    for entry in &entries {
        assert_eq!(entry["complete"], true, "{entry}");
        let file = entry["file"].as_str().unwrap();
        let source = entry["source"].as_str().unwrap();
        let session = entry["session"].as_str().unwrap();
        assert_eq!(file, format!("{source}-{session}.bin"));
        sources.insert(source.to_owned());
        let got = std::fs::read(out.join(file)).unwrap();
        assert_eq!(entry["bytes"].as_u64(), Some(got.len() as u64), "{entry}");
        let start = entry["start_us"].as_u64().unwrap();
        assert!(entry["end_us"].as_u64().unwrap() >= start, "{entry}");
        let which = inputs
            .iter()
            .position(|input| *input == got)
            .unwrap_or_else(|| panic!("{file} matches no input"));
        assert!(matched.insert(which), "two files hold input {which}");
    }
    assert_eq!(sources.len(), 20, "one source per sender: {sources:?}");
    // Only the 20 files and the index are left in the directory.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 21);
}

/// Total bytes of the `.bin` files in `dir`.
fn output_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Waits (bounded) until `done` holds; the failure message names `what`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROCESS_LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn durable_sources_survive_killing_the_receiver_and_one_sender() {
    const SENDERS: usize = 3;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let state = work.path().join("recv-state");
    let listen = support::free_addr();
    let recv_args = [
        "recv",
        "--listen",
        &listen,
        "--out-dir",
        s(&out),
        "--state",
        s(&state),
    ];
    let mut recv = Proc::spawn("recv", &recv_args);
    recv.wait_for_line("listening on");
    let mut inputs = Vec::new();
    let mut send_args = Vec::new();
    for i in 0..SENDERS {
        let data = random_bytes(200 + i as u64, (4 << 20) + i);
        let input = work.path().join(format!("in-{i}.bin"));
        std::fs::write(&input, &data).unwrap();
        inputs.push(data);
        let tx_state = work.path().join(format!("send-state-{i}"));
        send_args.push(
            [
                "send",
                "--to",
                &listen,
                "--in",
                s(&input),
                "--state",
                s(&tx_state),
                "--max-unconfirmed",
                "64KiB",
                "--reconnect-for",
                "60s",
            ]
            .map(str::to_owned),
        );
    }
    let spawn_sender = |i: usize| {
        let args: Vec<&str> = send_args[i].iter().map(String::as_str).collect();
        Proc::spawn(&format!("send#{i}"), &args)
    };
    let mut senders: Vec<Proc> = (0..SENDERS).map(spawn_sender).collect();
    // Kill both once data is flowing, well before the 12 MiB are through.
    wait_until("no data arrived", || output_bytes(&out) >= 512 << 10);
    recv.kill();
    senders[0].kill();
    let mut recv = Proc::spawn("recv#2", &recv_args);
    recv.wait_for_line("listening on");
    senders[0] = spawn_sender(0);
    for sender in &mut senders {
        sender.wait_success();
    }
    wait_until("not every session was recorded complete", || {
        let entries = index(&out);
        entries.len() == SENDERS && entries.iter().all(|e| e["complete"] == true)
    });
    recv.terminate();
    recv.wait_success();
    let log = recv.stderr();
    // Every session was cut by the kill and resumed by the new receiver.
    let resumed: BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains(" resumed by "))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(resumed.len(), SENDERS, "{log}");

    let mut matched = BTreeSet::new();
    for entry in index(&out) {
        let file = entry["file"].as_str().unwrap();
        assert_eq!(entry["session"].as_str().unwrap().len(), 32, "{entry}");
        let got = std::fs::read(out.join(file)).unwrap();
        assert_eq!(entry["bytes"].as_u64(), Some(got.len() as u64), "{entry}");
        let which = inputs
            .iter()
            .position(|input| *input == got)
            .unwrap_or_else(|| panic!("{file} ({} bytes) matches no input", got.len()));
        assert!(matched.insert(which), "two files hold input {which}");
    }
    assert_eq!(matched.len(), SENDERS);
    // Each complete session's state was removed.
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "session states left: {left:?}");
}

/// The receiver's datagram sink: a UDP socket on loopback with a large
/// receive buffer (so that the test's own socket does not drop datagrams
/// while this thread is descheduled) and a short read timeout, and its
/// `udp://` address for `recv --to`.
fn udp_sink() -> (UdpSocket, String) {
    let sink = udp_with_big_buffer();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let target = format!("udp://{}", sink.local_addr().unwrap());
    (sink, target)
}

#[test]
fn tagged_datagrams_name_their_sender_and_sequence() {
    let work = tempfile::tempdir().unwrap();
    let (sink, target) = udp_sink();
    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &target,
            "--tag-source",
        ],
    );
    let addr = recv.listening_addr();
    let (inputs, mut senders) = start_senders(work.path(), addr, 3, 32 << 10);
    for sender in &mut senders {
        sender.wait_success();
    }
    let expected: usize = inputs.iter().map(Vec::len).sum();
    // Per source: the sequence numbers and payloads, in arrival order.
    let mut streams: BTreeMap<[u8; 8], Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    let mut received = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + STARTUP_LIMIT;
    while received < expected && Instant::now() < deadline {
        let Ok(n) = sink.recv(&mut buf) else { continue };
        assert!(n >= 16, "a datagram without its header");
        let source: [u8; 8] = buf[..8].try_into().unwrap();
        let seq = u64::from_be_bytes(buf[8..16].try_into().unwrap());
        streams
            .entry(source)
            .or_default()
            .push((seq, buf[16..n].to_vec()));
        received += n - 16;
    }
    recv.terminate();
    recv.wait_success();
    assert_eq!(received, expected, "payload bytes forwarded");
    assert_eq!(streams.len(), 3, "three sources");
    let mut matched = BTreeSet::new();
    for messages in streams.values() {
        let seqs: Vec<u64> = messages.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        let stream: Vec<u8> = messages.iter().flat_map(|(_, d)| d.clone()).collect();
        let which = inputs
            .iter()
            .position(|i| *i == stream)
            .expect("a sender's input");
        assert!(matched.insert(which));
    }
}

/// Runs `surelink keygen --out path`; returns the public key it printed.
fn keygen(path: &std::path::Path) -> String {
    let out = support::run(&["keygen", "--out", s(path)]);
    assert!(out.status.success(), "keygen: {}", out.stderr);
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("public-key:"))
        .unwrap_or_else(|| panic!("no public key in {:?}", out.stdout))
        .trim()
        .to_owned()
}

/// Reads datagrams from `sink` until `expected` payload bytes came or the
/// startup limit passed; returns them concatenated.
fn read_datagrams(sink: &UdpSocket, expected: usize) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + STARTUP_LIMIT;
    while received.len() < expected && Instant::now() < deadline {
        if let Ok(n) = sink.recv(&mut buf) {
            received.extend_from_slice(&buf[..n]);
        }
    }
    received
}

#[test]
fn routed_senders_reach_their_own_address_and_the_others_the_default() {
    let work = tempfile::tempdir().unwrap();
    let keys: Vec<_> = (0..3)
        .map(|i| {
            let path = work.path().join(format!("sender-{i}.key"));
            let public = keygen(&path);
            (path, public)
        })
        .collect();
    // Senders 0 and 1 have a route each; sender 2 goes to --to.
    let sinks: Vec<_> = (0..3).map(|_| udp_sink()).collect();
    let route = |i: usize| format!("{}={}", keys[i].1, sinks[i].1);
    let (route0, route1) = (route(0), route(1));
    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &sinks[2].1,
            "--route",
            &route0,
            "--route",
            &route1,
        ],
    );
    let addr = recv.listening_addr().to_string();
    let inputs: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(300 + i, 24 << 10)).collect();
    for (i, data) in inputs.iter().enumerate() {
        let input = work.path().join(format!("in-{i}.bin"));
        std::fs::write(&input, data).unwrap();
        let mut sender = Proc::spawn(
            "send",
            &[
                "send",
                "--to",
                &addr,
                "--in",
                s(&input),
                "--key",
                s(&keys[i].0),
            ],
        );
        sender.wait_success();
    }
    let outputs: Vec<Vec<u8>> = sinks
        .iter()
        .zip(&inputs)
        .map(|((sink, _), input)| read_datagrams(sink, input.len()))
        .collect();
    recv.terminate();
    recv.wait_success();
    for (i, (output, input)) in outputs.iter().zip(&inputs).enumerate() {
        assert!(
            output == input,
            "sender {i}: {} of {} bytes, or other bytes",
            output.len(),
            input.len()
        );
    }
}

#[test]
fn a_route_without_a_full_public_key_is_a_usage_error() {
    let out = support::run(&[
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "udp://127.0.0.1:9",
        "--route",
        "1a2b:3c4d:5e6f:7a8b=udp://127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("not the short fingerprint"),
        "{}",
        out.stderr
    );
}

/// One record of `recv --merge --out`: source, sequence, corrected time,
/// error bound, late-by, payload.
type Record = ([u8; 8], u64, u64, u32, u32, Vec<u8>);

fn parse_records(mut bytes: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    let be = |b: &[u8]| -> u64 { b.iter().fold(0, |v, &x| (v << 8) | u64::from(x)) };
    while !bytes.is_empty() {
        assert!(bytes.len() >= 36, "a torn record");
        let len = be(&bytes[32..36]) as usize;
        records.push((
            bytes[..8].try_into().unwrap(),
            be(&bytes[8..16]),
            be(&bytes[16..24]),
            be(&bytes[24..28]) as u32,
            be(&bytes[28..32]) as u32,
            bytes[36..36 + len].to_vec(),
        ));
        bytes = &bytes[36 + len..];
    }
    records
}

#[test]
fn merged_records_come_in_send_time_order_with_their_source() {
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("merged.bin");
    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--merge",
            "--out",
            s(&output),
            "--merge-window",
            "50ms",
            "--late",
            "deliver",
        ],
    );
    let addr = recv.listening_addr();
    let (inputs, mut senders) = start_senders(work.path(), addr, 4, 64 << 10);
    for sender in &mut senders {
        sender.wait_success();
    }
    for _ in 0..4 {
        recv.find_line("finished:", PROCESS_LIMIT)
            .unwrap_or_else(|| panic!("not every sender finished:\n{}", recv.stderr()));
    }
    recv.terminate();
    recv.wait_success();
    let records = parse_records(&std::fs::read(&output).unwrap());
    let mut streams: BTreeMap<[u8; 8], Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    let mut last_time = 0;
    for (source, seq, time_us, bound, late_by, data) in records {
        if late_by == 0 {
            assert!(time_us >= last_time, "records out of time order");
            last_time = time_us;
        }
        assert!(bound > 0, "an error bound of 0");
        streams.entry(source).or_default().push((seq, data));
    }
    assert_eq!(streams.len(), 4, "four sources");
    let mut matched = BTreeSet::new();
    for messages in streams.values() {
        let seqs: Vec<u64> = messages.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        let stream: Vec<u8> = messages.iter().flat_map(|(_, d)| d.clone()).collect();
        let which = inputs
            .iter()
            .position(|i| *i == stream)
            .expect("a sender's input");
        assert!(matched.insert(which));
    }
    assert!(
        recv.stderr().contains("surelink recv: merged "),
        "{}",
        recv.stderr()
    );
}

#[test]
fn merged_datagrams_carry_the_record_header_without_a_length() {
    let work = tempfile::tempdir().unwrap();
    let (sink, target) = udp_sink();
    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--merge",
            "--to",
            &target,
            "--merge-window",
            "20ms",
        ],
    );
    let addr = recv.listening_addr();
    let (inputs, mut senders) = start_senders(work.path(), addr, 2, 16 << 10);
    for sender in &mut senders {
        sender.wait_success();
    }
    let expected: usize = inputs.iter().map(Vec::len).sum();
    let mut streams: BTreeMap<[u8; 8], Vec<u8>> = BTreeMap::new();
    let mut received = 0;
    let mut last_time = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + STARTUP_LIMIT;
    while received < expected && Instant::now() < deadline {
        let Ok(n) = sink.recv(&mut buf) else { continue };
        assert!(n >= 32, "a datagram without its record header");
        let time_us = u64::from_be_bytes(buf[16..24].try_into().unwrap());
        assert!(time_us >= last_time, "datagrams out of time order");
        last_time = time_us;
        let source: [u8; 8] = buf[..8].try_into().unwrap();
        streams
            .entry(source)
            .or_default()
            .extend_from_slice(&buf[32..n]);
        received += n - 32;
    }
    recv.terminate();
    recv.wait_success();
    assert_eq!(received, expected, "payload bytes forwarded");
    let mut got: Vec<&Vec<u8>> = streams.values().collect();
    got.sort();
    let mut want: Vec<&Vec<u8>> = inputs.iter().collect();
    want.sort();
    assert_eq!(
        got, want,
        "each source's payloads, in order, are one sender's input"
    );
}

/// Checks a merged output against the senders' inputs: each source's
/// records carry ids 0, 1, 2, … once each and its payloads concatenate to
/// one input; records not flagged late come in corrected-time order.
fn check_merged(records: Vec<Record>, inputs: &[Vec<u8>]) {
    let mut streams: BTreeMap<[u8; 8], Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    let mut last_time = 0;
    for (source, seq, time_us, _bound, late_by, data) in records {
        if late_by == 0 {
            assert!(time_us >= last_time, "records out of time order");
            last_time = time_us;
        }
        streams.entry(source).or_default().push((seq, data));
    }
    assert_eq!(streams.len(), inputs.len(), "one stream per sender");
    let mut matched = BTreeSet::new();
    for messages in streams.values() {
        let seqs: Vec<u64> = messages.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "each message once, in its sender's order"
        );
        let stream: Vec<u8> = messages.iter().flat_map(|(_, d)| d.clone()).collect();
        let which = inputs
            .iter()
            .position(|i| *i == stream)
            .unwrap_or_else(|| panic!("a stream of {} bytes matches no input", stream.len()));
        assert!(matched.insert(which), "two streams hold input {which}");
    }
}

#[test]
fn a_durable_merge_survives_killing_the_receiver() {
    const SENDERS: usize = 3;
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("merged.bin");
    let state = work.path().join("recv-state");
    let listen = support::free_addr();
    let recv_args = [
        "recv",
        "--listen",
        &listen,
        "--merge",
        "--out",
        s(&output),
        "--state",
        s(&state),
        "--merge-window",
        "50ms",
        "--late",
        "deliver",
    ];
    let mut recv = Proc::spawn("recv", &recv_args);
    recv.wait_for_line("listening on");
    let mut inputs = Vec::new();
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let data = random_bytes(300 + i as u64, (2 << 20) + i);
        let input = work.path().join(format!("in-{i}.bin"));
        std::fs::write(&input, &data).unwrap();
        inputs.push(data);
        let tx_state = work.path().join(format!("send-state-{i}"));
        senders.push(Proc::spawn(
            &format!("send#{i}"),
            &[
                "send",
                "--to",
                &listen,
                "--in",
                s(&input),
                "--state",
                s(&tx_state),
                "--max-unconfirmed",
                "64KiB",
                "--reconnect-for",
                "60s",
            ],
        ));
    }
    // Kill the receiver once every sender's session has started and records
    // are being merged, well before the 6 MiB are through (a sender that had
    // not connected yet would start afresh, not resume).
    for _ in 0..SENDERS {
        recv.find_line(" started by ", PROCESS_LIMIT)
            .unwrap_or_else(|| panic!("not every session started:\n{}", recv.stderr()));
    }
    let merged_len = || std::fs::metadata(&output).map_or(0, |m| m.len());
    wait_until("nothing was merged", || merged_len() >= 256 << 10);
    recv.kill();
    let mut recv = Proc::spawn("recv#2", &recv_args);
    recv.wait_for_line("listening on");
    for sender in &mut senders {
        sender.wait_success();
    }
    // A sender exits once its END is checkpointed: everything is spooled.
    for _ in 0..SENDERS {
        recv.find_line("merged completely", PROCESS_LIMIT)
            .unwrap_or_else(|| panic!("not every session was merged:\n{}", recv.stderr()));
    }
    recv.terminate();
    recv.wait_success();
    let log = recv.stderr();
    assert_eq!(
        log.lines().filter(|l| l.contains(" resumed by ")).count(),
        SENDERS,
        "every session was cut by the kill and resumed:\n{log}"
    );
    check_merged(parse_records(&std::fs::read(&output).unwrap()), &inputs);
    // The merged sessions' spools and states are gone; the merge journal stays.
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["merge"], "session states left: {left:?}");
}

#[test]
fn a_damaged_merge_journal_stops_the_receiver_and_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("merged.bin");
    let state = work.path().join("state");
    let args = [
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--merge",
        "--out",
        s(&output),
        "--state",
        s(&state),
    ];
    let mut recv = Proc::spawn("recv", &args);
    recv.wait_for_line("listening on");
    recv.terminate();
    recv.wait_success();
    std::fs::write(&output, b"merged records").unwrap();
    for entry in std::fs::read_dir(state.join("merge")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        bytes.extend_from_slice(&[0x5a; 64]);
        std::fs::write(&path, bytes).unwrap();
    }
    let done = support::run(&args);
    assert_eq!(done.status.code(), Some(6), "{}", done.stderr);
    assert!(
        done.stderr.contains("merge journal") && done.stderr.contains("damaged"),
        "{}",
        done.stderr
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"merged records");
}

#[test]
fn a_durable_merge_to_datagrams_is_a_usage_error() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let done = support::run(&[
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--merge",
        "--to",
        "udp://127.0.0.1:9",
        "--state",
        s(&state),
    ]);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains("--merge --state needs --out FILE"),
        "{}",
        done.stderr
    );
}

/// Reads datagrams from `sink` until `receiver_gone` is set and none is
/// left (bounded); returns them in arrival order.
fn read_until_gone(sink: &UdpSocket, receiver_gone: &AtomicBool) -> Vec<Vec<u8>> {
    let mut datagrams = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + PROCESS_LIMIT;
    while Instant::now() < deadline {
        // Read after looking at the flag: a datagram sent before the flag
        // was set is in the socket's buffer by then.
        let gone = receiver_gone.load(Ordering::SeqCst);
        match sink.recv(&mut buf) {
            Ok(n) => datagrams.push(buf[..n].to_vec()),
            Err(_) if gone => break,
            Err(_) => {}
        }
    }
    datagrams
}

/// Reads the datagrams of a merge (`recv --merge --to`) from `sink` until
/// `receiver_gone` is set and none is left; returns them as records.
fn read_merged_datagrams(sink: &UdpSocket, receiver_gone: &AtomicBool) -> Vec<Record> {
    let be = |b: &[u8]| -> u64 { b.iter().fold(0, |v, &x| (v << 8) | u64::from(x)) };
    read_until_gone(sink, receiver_gone)
        .into_iter()
        .map(|d| {
            assert!(d.len() >= 32, "a datagram without its record header");
            (
                d[..8].try_into().unwrap(),
                be(&d[8..16]),
                be(&d[16..24]),
                be(&d[24..28]) as u32,
                be(&d[28..32]) as u32,
                d[32..].to_vec(),
            )
        })
        .collect()
}

/// How many senders the stop tests start: enough that the receiver's output
/// falls behind its transport.
const SENDERS: u64 = 12;

/// Starts `count` senders of `len`-byte inputs (and a few more bytes each)
/// sent in 256-byte messages: many small messages, so that the receiver's
/// transport acknowledges them faster than its output takes them from the
/// connections. Returns the inputs.
fn start_small_message_senders(
    dir: &std::path::Path,
    addr: SocketAddr,
    count: u64,
    len: usize,
) -> (Vec<Vec<u8>>, Vec<Proc>) {
    let mut inputs = Vec::new();
    let mut senders = Vec::new();
    for i in 0..count {
        let data = random_bytes(300 + i, len + i as usize);
        let input = dir.join(format!("in-{i}.bin"));
        std::fs::write(&input, &data).unwrap();
        inputs.push(data);
        let args = [
            "send",
            "--to",
            &addr.to_string(),
            "--in",
            s(&input),
            "--chunk",
            "256",
        ];
        senders.push(Proc::spawn("send", &args));
    }
    (inputs, senders)
}

/// Runs `recv --to udp://…` with `extra` arguments and `count` senders,
/// waits until every sender has exited successfully (the receiver's
/// transport then has acknowledged all of its messages), stops the receiver
/// with SIGTERM right then and returns the inputs and every datagram the
/// receiver forwarded.
fn stop_a_datagram_receiver_after_its_senders(
    count: u64,
    extra: &[&str],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, String) {
    let work = tempfile::tempdir().unwrap();
    let (sink, target) = udp_sink();
    let receiver_gone = Arc::new(AtomicBool::new(false));
    let reader = {
        let receiver_gone = receiver_gone.clone();
        std::thread::spawn(move || read_until_gone(&sink, &receiver_gone))
    };
    let mut args = vec!["recv", "--listen", "127.0.0.1:0", "--to", &target];
    args.extend_from_slice(extra);
    let mut recv = Proc::spawn("recv", &args);
    let addr = recv.listening_addr();
    // 256 KiB each: enough messages for the output to fall behind, few
    // enough datagrams that the test's socket keeps them all.
    let (inputs, mut senders) = start_small_message_senders(work.path(), addr, count, 256 << 10);
    for sender in &mut senders {
        sender.wait_success();
    }
    recv.terminate();
    recv.wait_success();
    receiver_gone.store(true, Ordering::SeqCst);
    (inputs, reader.join().unwrap(), recv.stderr())
}

/// Untagged, the senders' datagrams interleave: checks that every 256-byte
/// message of every input was forwarded once (the messages of random inputs
/// differ).
fn assert_every_message_forwarded_once(inputs: &[Vec<u8>], mut datagrams: Vec<Vec<u8>>) {
    let mut messages: Vec<Vec<u8>> = inputs
        .iter()
        .flat_map(|i| i.chunks(256).map(<[u8]>::to_vec))
        .collect();
    messages.sort();
    datagrams.sort();
    assert_eq!(datagrams.len(), messages.len(), "datagrams forwarded");
    assert!(
        datagrams == messages,
        "the datagrams are not the inputs' messages"
    );
}

#[test]
fn a_stopped_datagram_receiver_forwards_every_message_its_senders_had_acknowledged() {
    let (inputs, datagrams, _) = stop_a_datagram_receiver_after_its_senders(SENDERS, &[]);
    assert_every_message_forwarded_once(&inputs, datagrams);
}

#[test]
fn a_stopped_datagram_receiver_forwards_what_its_playout_held() {
    // A playout delay no transfer here comes near: when the stop comes,
    // every acknowledged message is still held back for its playout time.
    let (inputs, datagrams, log) =
        stop_a_datagram_receiver_after_its_senders(2, &["--playout", "1h"]);
    assert!(log.contains("written out early"), "{log}");
    assert_every_message_forwarded_once(&inputs, datagrams);
}

#[test]
fn a_stopped_tagging_receiver_forwards_every_message_its_senders_had_acknowledged() {
    let (inputs, datagrams, _) =
        stop_a_datagram_receiver_after_its_senders(SENDERS, &["--tag-source"]);
    // Per source: the sequence numbers and payloads, in arrival order.
    let mut streams: BTreeMap<[u8; 8], Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for d in &datagrams {
        assert!(d.len() >= 16, "a datagram without its header");
        let seq = u64::from_be_bytes(d[8..16].try_into().unwrap());
        streams
            .entry(d[..8].try_into().unwrap())
            .or_default()
            .push((seq, d[16..].to_vec()));
    }
    assert_eq!(streams.len(), SENDERS as usize, "one stream per sender");
    let mut matched = BTreeSet::new();
    for messages in streams.values() {
        let seqs: Vec<u64> = messages.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        let stream: Vec<u8> = messages.iter().flat_map(|(_, d)| d.clone()).collect();
        let which = inputs
            .iter()
            .position(|i| *i == stream)
            .unwrap_or_else(|| panic!("a stream of {} bytes is no sender's input", stream.len()));
        assert!(matched.insert(which));
    }
}

#[test]
fn a_stopped_out_dir_receiver_writes_every_message_its_senders_had_acknowledged() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let mut recv = Proc::spawn(
        "recv",
        &["recv", "--listen", "127.0.0.1:0", "--out-dir", s(&out)],
    );
    let addr = recv.listening_addr();
    let (inputs, mut senders) = start_small_message_senders(work.path(), addr, SENDERS, 1 << 20);
    for sender in &mut senders {
        sender.wait_success();
    }
    recv.terminate();
    recv.wait_success();
    let entries = index(&out);
    assert_eq!(entries.len(), SENDERS as usize, "{entries:?}");
    let mut matched = BTreeSet::new();
    for entry in &entries {
        assert_eq!(entry["complete"], true, "{entry}");
        let data = std::fs::read(out.join(entry["file"].as_str().unwrap())).unwrap();
        assert_eq!(entry["bytes"], data.len() as u64, "{entry}");
        let which = inputs
            .iter()
            .position(|i| *i == data)
            .unwrap_or_else(|| panic!("{entry}: not a sender's input"));
        assert!(matched.insert(which));
    }
}

#[test]
fn a_stopped_merge_forwards_every_message_its_senders_had_acknowledged() {
    let work = tempfile::tempdir().unwrap();
    let (sink, target) = udp_sink();
    let receiver_gone = Arc::new(AtomicBool::new(false));
    let reader = {
        let receiver_gone = receiver_gone.clone();
        std::thread::spawn(move || read_merged_datagrams(&sink, &receiver_gone))
    };
    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--merge",
            "--to",
            &target,
            "--late",
            "deliver",
        ],
    );
    let addr = recv.listening_addr();
    let (inputs, mut senders) = start_small_message_senders(work.path(), addr, SENDERS, 1 << 20);
    // A sender exits successfully only once the receiver's transport has
    // acknowledged its every message; the receiver is stopped right then.
    for sender in &mut senders {
        sender.wait_success();
    }
    recv.terminate();
    recv.wait_success();
    receiver_gone.store(true, Ordering::SeqCst);
    let records = reader.join().unwrap();
    check_merged(records, &inputs);
    assert!(
        recv.stderr().contains("surelink recv: merged "),
        "{}",
        recv.stderr()
    );
}
