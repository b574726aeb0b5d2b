//! `surelink demo`: the story in one process (loss, a path cut, a receiver
//! crash and restart, a deadline channel, the clock estimate), each step's
//! invariants asserted from its JSON; step 1's stream must arrive exactly
//! once, in order, intact.

mod support;

use support::Proc;

/// The step called `name` of the summary's `steps` array.
fn step<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    summary["steps"]
        .as_array()
        .expect("a steps array")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name:?} in {summary:#}"))
}

#[test]
fn the_demo_delivers_every_message_exactly_once_in_order() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let svg = dir.path().join("timeline.svg");
    let svg_arg = svg.to_str().expect("UTF-8 path");
    let mut demo = Proc::spawn(
        "demo",
        &[
            "demo",
            "--quick",
            "--duration",
            "2s",
            "--json",
            "--plot",
            svg_arg,
        ],
    );
    let stdout = demo.wait_success();
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}"));
    let m = &summary["messages"];
    let sent = m["sent"].as_u64().expect("sent");
    assert_eq!(sent, 2000, "1000 msg/s for 2 s: {summary:#}");
    assert_eq!(m["delivered"], sent, "{summary:#}");
    assert_eq!(m["lost"], 0, "{summary:#}");
    assert_eq!(m["duplicated"], 0, "{summary:#}");
    assert_eq!(m["out_of_order"], 0, "{summary:#}");
    assert_eq!(m["corrupted"], 0, "{summary:#}");
    assert_eq!(summary["ok"], true, "{summary:#}");

    // The link really was bad, and the transport really recovered.
    let up = &summary["link_counters"]["upstream"];
    assert!(up["dropped"].as_u64().expect("dropped") > 0, "{summary:#}");
    assert!(
        summary["transport"]["retransmissions"]
            .as_u64()
            .expect("retransmissions")
            > 0,
        "{summary:#}"
    );
    // Percentiles are ordered and there is a clock estimate.
    let l = &summary["latency_ms"];
    let q = |k: &str| l[k].as_f64().expect("latency");
    assert!(q("p50") > 0.0 && q("p50") <= q("p90") && q("p90") <= q("p99"));
    assert!(
        q("p99") <= q("p999") && q("p999") <= q("max"),
        "{summary:#}"
    );
    assert!(summary["clock"]["samples"].as_u64().expect("clock") > 0);

    // The story, step by step, in order.
    let names: Vec<_> = summary["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(
        names,
        ["loss", "failover", "crash_restart", "deadline", "clock"],
        "{summary:#}"
    );
    for s in summary["steps"].as_array().expect("steps") {
        assert_eq!(s["pass"], true, "{s:#}");
        assert!(!s["mechanism"].as_str().expect("mechanism").is_empty());
    }
    // 1. Loss: recovered by retransmission.
    let f = &step(&summary, "loss")["figures"];
    assert_eq!(f["lost"], 0, "{f:#}");
    assert!(
        f["retransmissions"].as_u64().expect("retransmissions") > 0,
        "{f:#}"
    );
    // 2. The primary path is cut: detected, failed over to path 1, nothing lost.
    let f = &step(&summary, "failover")["figures"];
    assert_eq!(f["failed_over_to"], 1, "{f:#}");
    assert!(f["detected_ms"].as_f64().is_some(), "{f:#}");
    assert!(f["sent"].as_u64().expect("sent") > 0, "{f:#}");
    assert_eq!(f["lost"], 0, "{f:#}");
    assert_eq!(f["duplicated"], 0, "{f:#}");
    let events = f["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["event"]
            .as_str()
            .expect("event")
            .starts_with("FailedOver")),
        "{f:#}"
    );
    // 3. The receiver crashed and resumed from its checkpoint: the output
    // holds every message once.
    let f = &step(&summary, "crash_restart")["figures"];
    assert_eq!(f["resumed"], true, "{f:#}");
    assert!(f["resumed_at"].as_u64().expect("resumed_at") > 0, "{f:#}");
    assert_eq!(f["delivered"], f["sent"], "{f:#}");
    assert_eq!(f["lost"], 0, "{f:#}");
    assert_eq!(f["duplicated"], 0, "{f:#}");
    assert_eq!(f["out_of_order"], 0, "{f:#}");
    // 4. The deadline channel skips instead of delivering late.
    let f = &step(&summary, "deadline")["figures"];
    assert!(f["skipped"].as_u64().is_some(), "{f:#}");
    assert_eq!(f["late"], 0, "{f:#}");
    assert_eq!(f["duplicated"], 0, "{f:#}");
    assert_eq!(
        f["delivered"].as_u64().expect("delivered") + f["skipped"].as_u64().expect("skipped"),
        f["sent"].as_u64().expect("sent"),
        "{f:#}"
    );
    // 5. The clock estimate has an error bound, and it covers the true
    // offset: the sender's clock set away from this host's by the demo.
    let f = &step(&summary, "clock")["figures"];
    let bound = f["error_bound_ms"].as_f64().expect("error bound");
    let true_offset = f["true_offset_ms"].as_f64().expect("true offset");
    assert!(true_offset.abs() > bound, "an offset to find: {f:#}");
    assert!(
        (f["offset_ms"].as_f64().expect("offset") - true_offset).abs() <= bound,
        "{f:#}"
    );

    // The plot: an SVG with the story's events marked.
    let svg = std::fs::read_to_string(&svg).expect("the plot was written");
    assert!(
        svg.starts_with("<svg"),
        "not SVG: {}",
        &svg[..svg.len().min(200)]
    );
    // Each marker is a red label (the points are blue, the axes black).
    let red_labels: Vec<&str> = svg
        .split("fill=\"#FF0000\">")
        .skip(1)
        .filter_map(|rest| rest.split("</text>").next())
        .map(str::trim)
        .collect();
    for marker in ["cut", "failover", "crash", "restart"] {
        assert!(
            red_labels.contains(&marker),
            "no {marker:?} marker: {red_labels:?}"
        );
    }
}

#[test]
fn the_text_summary_shows_the_figures() {
    let mut demo = Proc::spawn(
        "demo",
        &[
            "demo",
            "--quick",
            "--duration",
            "1s",
            "--rate",
            "500",
            "--seed",
            "3",
        ],
    );
    let stdout = demo.wait_success();
    for needle in [
        "1. Loss on the link",
        "2. Primary path cut at ",
        "3. Receiver killed and restarted: resumed at message ",
        "4. Deadline 60 ms",
        "5. Clock: sender's clock estimated at ",
        "from the receiver's; set to ",
        "mechanism",
        "retransmission ",
        "failure detection, failover ",
        "checkpoints ",
        "deadline delivery ",
        "time synchronisation ",
        "sent 500  delivered 500  lost 0  duplicated 0  out of order 0",
        "latency     p50 ",
        "p99.9 ",
        "retransmissions ",
        "link upstream ",
        "clock ",
        "OK: every message delivered exactly once, in order",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    // Progress went to stderr as plain lines (stderr is not a terminal here).
    assert!(
        demo.stderr().contains("surelink demo: "),
        "{}",
        demo.stderr()
    );
}

#[test]
fn a_deadline_demo_never_delivers_twice_or_out_of_order() {
    let mut demo = Proc::spawn(
        "demo",
        &[
            "demo",
            "--quick",
            "--duration",
            "1s",
            "--deadline",
            "150ms",
            "--json",
        ],
    );
    let stdout = demo.wait_success();
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    let m = &summary["messages"];
    assert_eq!(m["duplicated"], 0, "{summary:#}");
    assert_eq!(m["out_of_order"], 0, "{summary:#}");
    assert!(
        m["delivered"].as_u64().expect("delivered") > 0,
        "{summary:#}"
    );
    assert_eq!(summary["settings"]["deadline_ms"], 150.0);
}

#[test]
fn bad_demo_arguments_fail_with_one_line() {
    for args in [
        &["demo", "--size", "8"][..],
        &["demo", "--loss", "150%"][..],
        &["demo", "--rate", "0"][..],
    ] {
        let mut demo = Proc::spawn("demo", args);
        let (status, _) = demo.wait();
        assert_eq!(status.code(), Some(1), "{args:?}: {}", demo.stderr());
        assert!(
            demo.stderr().contains("surelink: error:"),
            "{args:?}: {}",
            demo.stderr()
        );
    }
}
