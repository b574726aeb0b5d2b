//! End to end: the harness in `--quick` mode for surelink (also its
//! deadline variant), TCP and raw UDP (the systems that need nothing from
//! outside), every workload, checking the shape of the JSON and that a plot
//! was written. No figure is asserted on, only behaviour (surelink loses
//! nothing): benchmarks are not tests.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs the binary with `args`, killing it after `limit`.
fn run(args: &[&str], limit: Duration) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_surelink-bench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start surelink-bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("surelink-bench did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("collect output");
    (
        status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn rows<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} is not an array: {value}"))
}

fn row<'a>(rows: &'a [Value], system: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["system"] == system)
        .unwrap_or_else(|| panic!("no row for {system}"))
}

fn assert_number(v: &Value, what: &str) {
    assert!(v.as_f64().is_some(), "{what} is not a number: {v}");
}

#[test]
fn quick_run_writes_tables_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let plot = dir.path().join("latency.svg");
    let (ok, stdout, stderr) = run(
        &[
            "--quick",
            "--systems",
            "surelink,surelink-deadline,tcp,udp",
            "--bulk-mib",
            "2",
            "--small-secs",
            "0.3",
            "--rt-secs",
            "0.5",
            "--durable-mib",
            "8",
            "--losses",
            "0,2",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
        Duration::from_secs(240),
    );
    assert!(
        ok,
        "surelink-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // Markdown tables on stdout.
    for heading in [
        "## Bulk",
        "## Small messages",
        "## Real time",
        "## Failover",
        "## Deadline",
        "## Targets",
    ] {
        assert!(stdout.contains(heading), "no {heading:?} in\n{stdout}");
    }

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["settings"]["quick"], true);
    assert_eq!(report["settings"]["runs"], 1);
    assert_eq!(report["settings"]["bulk_mib"], 2);
    assert_number(&report["machine"]["cpus"], "machine.cpus");
    assert_eq!(rows(&report["systems"], "systems").len(), 4);

    let bulk = rows(&report["bulk"], "bulk");
    for system in ["surelink", "tcp", "udp"] {
        let r = row(bulk, system);
        assert_eq!(r["status"], "ok", "bulk {system}: {r}");
        assert_eq!(rows(&r["runs"], "runs").len(), 1);
        for field in [
            "mib_per_s",
            "secs",
            "cpu_s",
            "cpu_s_per_mib",
            "delivered_fraction",
        ] {
            assert_number(&r["median"][field], field);
        }
        assert_eq!(r["median"]["bytes"], 2 << 20);
    }
    // surelink and TCP are reliable: everything arrived.
    assert_eq!(row(bulk, "surelink")["median"]["received"], 2 << 20);
    assert_eq!(row(bulk, "tcp")["median"]["received"], 2 << 20);

    let small = rows(&report["small"], "small");
    for system in ["surelink", "tcp", "udp"] {
        let r = row(small, system);
        assert_eq!(r["status"], "ok", "small {system}: {r}");
        assert_number(&r["median"]["msgs_per_s"], "msgs_per_s");
        assert_eq!(r["median"]["size"], 64);
    }

    let realtime = rows(&report["realtime"], "realtime");
    assert_eq!(realtime.len(), 2);
    for group in realtime {
        assert_number(&group["loss_percent"], "loss_percent");
        let group_rows = rows(&group["rows"], "rows");
        let tcp = row(group_rows, "tcp");
        assert_eq!(tcp["status"], "not_applicable");
        assert!(tcp["note"].is_string());
        for system in ["surelink", "udp"] {
            let r = row(group_rows, system);
            assert_eq!(r["status"], "ok", "realtime {system}: {r}");
            let m = &r["median"];
            for field in [
                "sent",
                "delivered",
                "lost",
                "duplicated",
                "p50_ms",
                "p99_ms",
                "p999_ms",
                "max_ms",
                "wire_bytes",
                "payload_bytes",
                "wire_per_payload",
            ] {
                assert_number(&m[field], field);
            }
            assert_eq!(m["sent"], 500);
        }
        // surelink is reliable: nothing lost.
        assert_eq!(row(group_rows, "surelink")["median"]["lost"], 0);
    }

    // Failover: surelink in both modes, UDP on one path, TCP not applicable.
    let failover = rows(&report["failover"], "failover");
    let modes: Vec<_> = failover
        .iter()
        .map(|r| (r["system"].as_str().unwrap(), r["paths"].as_str().unwrap()))
        .collect();
    assert_eq!(
        modes,
        [
            ("surelink", "backup"),
            ("surelink", "broadcast"),
            ("tcp", "single"),
            ("udp", "single")
        ]
    );
    for r in failover {
        assert!(r["multipath"].is_string(), "{r}");
        if r["system"] == "tcp" {
            assert_eq!(r["status"], "not_applicable");
            continue;
        }
        assert_eq!(r["status"], "ok", "failover: {r}");
        let m = &r["median"];
        for field in [
            "resume_ms",
            "max_gap_ms",
            "cut_latency_max_ms",
            "wire_per_payload_before",
            "extra_bytes",
            "window_secs",
        ] {
            assert_number(&m[field], field);
        }
        assert_number(&m["stream"]["p99_ms"], "stream.p99_ms");
        assert_eq!(m["stream"]["sent"], 2000);
        if r["system"] == "surelink" {
            // The cut is seen, and surelink delivers everything exactly once.
            assert_number(&m["suspect_ms"], "suspect_ms");
            assert_number(&m["down_ms"], "down_ms");
            assert_eq!(m["stream"]["lost"], 0, "{r}");
            assert_eq!(m["stream"]["duplicated"], 0, "{r}");
        }
    }
    assert_number(&failover[0]["median"]["failed_over_ms"], "failed_over_ms");

    // Deadline: only the deadline variant (SRT was not selected).
    let deadline = rows(&report["deadline"], "deadline");
    assert_eq!(deadline.len(), 2);
    for group in deadline {
        assert_number(&group["deadline_ms"], "deadline_ms");
        let group_rows = rows(&group["rows"], "rows");
        assert_eq!(group_rows.len(), 1);
        let r = row(group_rows, "surelink-deadline");
        assert_eq!(r["status"], "ok", "deadline: {r}");
        let m = &r["median"];
        for field in ["delivered", "lost", "p50_ms", "p99_ms", "p999_ms", "max_ms"] {
            assert_number(&m[field], field);
        }
        assert_number(&m["receiver"]["messages_skipped"], "messages_skipped");
        assert_eq!(m["sent"], 500);
    }

    let ratios = &report["ratios"];
    assert_number(&ratios["bulk_throughput"]["tcp"], "bulk ratio vs tcp");
    assert_number(&ratios["bulk_throughput"]["udp"], "bulk ratio vs udp");
    assert_number(&ratios["small_rate"]["tcp"], "small ratio vs tcp");
    assert_number(&ratios["realtime_p99"]["2%"]["udp"], "p99 ratio vs udp");

    let targets = rows(&report["targets"], "targets");
    let ids: Vec<_> = targets.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "bulk_vs_quinn",
            "bulk_vs_srt",
            "bulk_vs_udp",
            "realtime_zero_loss",
            "realtime_p99_bound",
            "realtime_beats_reliable_peers",
            "small_vs_quinn",
            "durable_interval_ratio",
            "durable_always_ratio",
            "durable_restart_to_delivery"
        ]
    );
    // Durable sessions: the throughput part runs in process; the restart
    // part needs the `surelink` binary and may report an error instead.
    let durable = &report["durable"];
    assert_eq!(durable["mib"], 8);
    for field in [
        "interval_ratio",
        "always_ratio",
        "none_ratio",
        "interval_vs_file",
        "always_vs_file",
        "none_vs_file",
    ] {
        assert_number(&durable["median"][field], field);
    }
    for baseline in ["in_memory", "plain_file"] {
        assert_number(&durable["median"][baseline]["mb_per_s"], baseline);
    }
    for t in targets {
        assert!(t["required"].is_string() && t["measured"].is_string());
        assert!(t["met"].is_boolean() || t["met"].is_null());
    }
    // quinn was not run: its targets are not evaluated rather than guessed.
    assert!(targets[0]["met"].is_null());
    assert!(targets[2]["met"].is_boolean());

    assert_eq!(report["plot"], plot.to_str().unwrap());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.contains("surelink"), "no legend entry for surelink");
}

#[test]
fn bad_arguments_are_rejected() {
    let (ok, _, stderr) = run(&["--runs", "0"], Duration::from_secs(30));
    assert!(!ok);
    assert!(stderr.contains("--runs"), "{stderr}");
    let (ok, _, _) = run(&["--systems", "carrier-pigeon"], Duration::from_secs(30));
    assert!(!ok);
    assert!(Path::new(env!("CARGO_BIN_EXE_surelink-bench")).exists());
}
