//! The `mpegts` workload end to end, briefly: ffmpeg plays a 2-second clip
//! in real time through `surelink impair` without loss or protection, and
//! the harness must see every datagram come out, TS packets in them, and
//! no continuity error. Needs ffmpeg (Debian package `ffmpeg`, installed
//! with apt-get when missing) and the `surelink` binary next to the harness
//! (`cargo build -p surelink-cli`); without them the test fails and says so.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn a_short_clip_through_a_clean_link_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("mpegts.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_surelink-bench"))
        .args(["mpegts", "--duration", "2", "--runs", "1"])
        // Installs ffmpeg with apt-get if it is missing, as the harness
        // does for its peers; fails naming the package if that fails.
        .args([
            "--system",
            "udp",
            "--link",
            "10ms-0%",
            "--install-peers",
            "--json",
        ])
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start surelink-bench");
    let limit = Duration::from_secs(240);
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("surelink-bench mpegts did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("collect output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "surelink-bench mpegts failed:\n{stderr}"
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let row = &report["links"][0]["rows"][0];
    assert_eq!(row["system"], "udp");
    assert_eq!(row["errors"].as_array().map(Vec::len), Some(0), "{row}");
    let run = &row["median"];
    let sent = run["stream"]["sent"].as_u64().unwrap();
    // 2 s of a 4 Mbit/s stream in 1316-byte datagrams: hundreds of them.
    assert!(sent > 100, "only {sent} datagrams sent");
    assert_eq!(run["stream"]["lost"], 0, "{run}");
    assert_eq!(run["stream"]["duplicated"], 0, "{run}");
    // Lateness is reported for every system, and adds to the losses.
    let late = run["late"].as_u64().expect("a late count");
    assert_eq!(run["lost_or_late"].as_u64(), Some(late), "{run}");
    // Every byte that came out parsed as TS packets.
    let payload = run["stream"]["payload_bytes"].as_u64().unwrap();
    assert_eq!(run["ts_packets"].as_u64().unwrap() * 188, payload, "{run}");
    assert_eq!(run["cc_errors"], 0, "{run}");
    assert_eq!(run["source_cc_errors"], 0, "{run}");
    assert!(
        run["stream"]["wire_per_payload"].as_f64().unwrap() >= 1.0,
        "{run}"
    );
}
