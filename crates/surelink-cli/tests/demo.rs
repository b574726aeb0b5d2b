//! `surelink demo`: sender and receiver in one process through an impaired
//! in-process link. Every message must arrive exactly once, in order, intact.

mod support;

use support::Proc;

#[test]
fn the_demo_delivers_every_message_exactly_once_in_order() {
    let mut demo = Proc::spawn("demo", &["demo", "--duration", "2s", "--json"]);
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
}

#[test]
fn the_text_summary_shows_the_figures() {
    let mut demo = Proc::spawn(
        "demo",
        &["demo", "--duration", "1s", "--rate", "500", "--seed", "3"],
    );
    let stdout = demo.wait_success();
    for needle in [
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
        &["demo", "--duration", "1s", "--deadline", "150ms", "--json"],
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
