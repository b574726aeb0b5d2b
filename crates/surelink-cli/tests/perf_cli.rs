//! `surelink perf server` / `surelink perf client` as real processes on
//! loopback: the counts of both sides add up, the JSON has every figure, and
//! the server serves one client after another. No assertion on speed.

mod support;

use serde_json::Value;
use support::Proc;

fn start_server() -> (Proc, String) {
    let mut server = Proc::spawn(
        "perf server",
        &["perf", "server", "--listen", "127.0.0.1:0"],
    );
    let addr = server.addr_after("listening on ").to_string();
    (server, addr)
}

fn run_client(addr: &str, extra: &[&str]) -> Value {
    let mut args = vec!["perf", "client", "--to", addr, "--json"];
    args.extend_from_slice(extra);
    let stdout = Proc::spawn("perf client", &args).wait_success();
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}"))
}

fn number(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(v, |v, key| &v[*key])
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v:#}"))
}

#[test]
fn a_rate_limited_run_delivers_every_message_and_reports_both_sides() {
    let (mut server, addr) = start_server();
    // 3 connections × 50 msg/s × 1 s: 50 sends per connection (the first at
    // its offset within the first interval, then every 20 ms).
    let result = run_client(
        &addr,
        &[
            "--connections",
            "3",
            "--rate",
            "50",
            "--size",
            "100",
            "--duration",
            "1s",
        ],
    );
    let sent = result["messages_sent"].as_u64().expect("messages_sent");
    assert_eq!(sent, 150, "{result:#}");
    assert_eq!(
        result["messages_received"].as_u64(),
        Some(sent),
        "{result:#}"
    );
    assert_eq!(result["lost"].as_u64(), Some(0), "{result:#}");
    assert_eq!(result["bytes_received"].as_u64(), Some(sent * 100));
    assert_eq!(result["connections"].as_u64(), Some(3));
    assert_eq!(result["latency_ms"]["samples"].as_u64(), Some(sent));
    let (p50, p99, max) = (
        number(&result, &["latency_ms", "p50"]),
        number(&result, &["latency_ms", "p99"]),
        number(&result, &["latency_ms", "max"]),
    );
    assert!(p50 <= p99 && p99 <= max, "{result:#}");
    assert!(number(&result, &["messages_per_s"]) > 0.0);
    assert!(number(&result, &["client", "cpu_s"]) > 0.0, "{result:#}");
    assert!(number(&result, &["server", "cpu_s"]) >= 0.0, "{result:#}");
    assert!(number(&result, &["client", "peak_rss_kib"]) > 0.0);
    assert!(number(&result, &["server", "peak_rss_kib"]) > 0.0);
    assert!(result["retransmissions"].is_u64());
    let lost = result["packets_lost"].as_u64().expect("packets_lost");
    let spurious = result["spurious_losses"].as_u64().expect("spurious_losses");
    assert!(spurious <= lost, "{result:#}");

    // Unbounded rate, a second client on the same server: whatever was
    // sent arrived, byte for byte.
    let result = run_client(&addr, &["--size", "64", "--duration", "300ms"]);
    let sent = result["messages_sent"].as_u64().expect("messages_sent");
    assert!(sent > 0, "{result:#}");
    assert_eq!(
        result["messages_received"].as_u64(),
        Some(sent),
        "{result:#}"
    );
    assert_eq!(result["bytes_received"].as_u64(), Some(sent * 64));
    assert!(result["rate_per_connection"].is_null());

    server.terminate();
    server.wait_success();
}

#[test]
fn at_rate_zero_the_connections_only_stay_open() {
    let (mut server, addr) = start_server();
    let result = run_client(
        &addr,
        &["--connections", "5", "--rate", "0", "--duration", "300ms"],
    );
    assert_eq!(result["connections"].as_u64(), Some(5), "{result:#}");
    assert_eq!(result["messages_sent"].as_u64(), Some(0), "{result:#}");
    assert_eq!(result["messages_received"].as_u64(), Some(0), "{result:#}");
    assert_eq!(result["latency_ms"]["samples"].as_u64(), Some(0));
    server.terminate();
    server.wait_success();
}

#[test]
fn the_text_summary_names_every_figure() {
    let (mut server, addr) = start_server();
    let stdout = Proc::spawn(
        "perf client",
        &[
            "perf",
            "client",
            "--to",
            &addr,
            "--rate",
            "20",
            "--size",
            "10",
            "--duration",
            "500ms",
        ],
    )
    .wait_success();
    for word in [
        "sent 10 ",
        "received 10 ",
        "lost 0",
        "declared lost ",
        "(spurious) ",
        "msg/s",
        "MiB/s",
        "p99",
        "client",
        "server peak",
    ] {
        assert!(stdout.contains(word), "{word:?} missing from:\n{stdout}");
    }
    server.terminate();
    server.wait_success();
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &[
            "perf",
            "client",
            "--to",
            "127.0.0.1:9",
            "--connections",
            "0",
        ][..],
        &["perf", "client", "--to", "127.0.0.1:9", "--rate", "nan"][..],
        &["perf", "client", "--to", "127.0.0.1:9", "--rate", "-5"][..],
    ] {
        let finished = support::run(args);
        assert_eq!(finished.status.code(), Some(2), "{args:?}: {finished:?}");
    }
}

#[test]
fn sessions_that_fail_after_connecting_are_counted_and_the_run_exits_5() {
    // At -vv the server logs each connection it accepts.
    let mut server = Proc::spawn_default_log(
        "perf server",
        &["perf", "server", "-vv", "--listen", "127.0.0.1:0"],
    );
    let addr = server.addr_after("listening on ").to_string();
    let mut client = Proc::spawn(
        "perf client",
        &[
            "perf",
            "client",
            "--to",
            &addr,
            "--json",
            "--connections",
            "3",
            "--rate",
            "0",
            "--duration",
            "2s",
        ],
    );
    for _ in 0..3 {
        server.wait_for_line("perf connection accepted");
    }
    // The server vanishes while every session idles: each one fails.
    server.kill();
    let (status, stdout) = client.wait();
    assert_eq!(
        status.code(),
        Some(5),
        "stdout:\n{stdout}\nstderr:\n{}",
        client.stderr()
    );
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}"));
    assert_eq!(result["connections"].as_u64(), Some(3), "{result:#}");
    assert_eq!(result["sessions_failed"].as_u64(), Some(3), "{result:#}");
    assert!(
        client
            .stderr()
            .contains("3 of 3 sessions failed after connecting"),
        "{}",
        client.stderr()
    );
}
