//! `surelink time serve` / `surelink time query` over real sockets on loopback.
//!
//! Both processes timestamp with the same wall clock, so the measured offset
//! must be close to zero: the acceptance bound is |offset| < 1 ms.

mod support;

use support::Proc;

fn start_server() -> (Proc, String) {
    let mut server = Proc::spawn("time serve", &["time", "serve", "--listen", "127.0.0.1:0"]);
    let addr = server.addr_after("serving on ").to_string();
    (server, addr)
}

#[test]
fn a_query_on_loopback_finds_no_offset() {
    let (mut server, addr) = start_server();
    let mut query = Proc::spawn(
        "time query",
        &["time", "query", &addr, "--count", "50", "--json"],
    );
    let stdout = query.wait_success();
    let result: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}"));
    let offset = result["offset_us"].as_f64().expect("offset_us");
    assert!(
        offset.abs() < 1_000.0,
        "|offset| must be < 1 ms: {result:#}"
    );
    assert!(
        result["samples"].as_u64().expect("samples") >= 50,
        "{result:#}"
    );
    let bound = result["error_bound_us"].as_f64().expect("error bound");
    let delay = result["delay_us"].as_f64().expect("delay");
    assert!(bound > 0.0 && delay >= 0.0, "{result:#}");
    assert!(result["drift_ppm"].is_number(), "{result:#}");
    assert_eq!(result["server"], addr.as_str());

    // The human-readable form, and the server serves one client after another.
    let mut query = Proc::spawn("time query", &["time", "query", &addr, "--count", "10"]);
    let stdout = query.wait_success();
    let line = stdout.trim();
    assert!(line.starts_with(&format!("{addr}: offset ")), "{line}");
    assert!(line.contains(" ms ± ") && line.contains(", delay ") && line.contains(", drift "));

    server.terminate();
    server.wait_success();
}

#[test]
fn a_query_without_a_server_fails_within_its_timeout() {
    // A bound but silent port: nothing answers there.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let mut query = Proc::spawn(
        "time query",
        &["time", "query", &addr, "--timeout", "300ms"],
    );
    let (status, stdout) = query.wait();
    assert_eq!(status.code(), Some(4), "no connection: {}", query.stderr());
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        query.stderr().contains("surelink: error: cannot connect"),
        "{}",
        query.stderr()
    );
}
