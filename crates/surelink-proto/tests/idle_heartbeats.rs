//! Heartbeats of idle connections, on virtual time: an idle, healthy path
//! backs its heartbeats off up to `heartbeat_max_interval` (a handful of
//! datagrams a second instead of fifty), the peer's failure detector expects
//! the longer gaps (no suspicion), a cut idle path is still detected, a
//! cut while data flows is detected as fast as with fixed heartbeats, and
//! sparse messages (one a second) leave the heartbeats backed off.

mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{jittered_5ms_link, ms, Sim};
use surelink_proto::conn::PathId;
use surelink_proto::{Config, Event};

/// The default configuration, or one whose heartbeats never back off.
fn config(backoff: bool) -> Config {
    let mut c = Config::default();
    if !backoff {
        c.heartbeat_max_interval = c.heartbeat_interval;
    }
    c
}

/// An established connection with a datagram capture on.
fn connected(config: Config, seed: u64) -> Sim {
    let mut sim = Sim::new(config, jittered_5ms_link(), jittered_5ms_link(), seed);
    let (ce, se) = sim.run_handshake(Duration::from_secs(2));
    assert!(ce.contains(&Event::Connected) && se.contains(&Event::Connected));
    sim.capture = Some((Vec::new(), Vec::new()));
    sim
}

/// Events of (client, server), with the virtual time they were seen at.
type Seen = (Vec<(Duration, Event)>, Vec<(Duration, Event)>);

/// Runs for `span` with nothing to send, collecting events.
fn run_idle(sim: &mut Sim, span: Duration, seen: &mut Seen) {
    let until = sim.now + span;
    loop {
        collect(sim, seen);
        if !sim.step(until) {
            break;
        }
    }
    collect(sim, seen);
}

fn collect(sim: &mut Sim, seen: &mut Seen) {
    let at = sim.now - sim.start;
    while let Some(e) = sim.client.poll_event() {
        seen.0.push((at, e));
    }
    if let Some(s) = sim.server.as_mut() {
        while let Some(e) = s.poll_event() {
            seen.1.push((at, e));
        }
        while s.recv().is_some() {}
    }
}

/// Sends a 100-byte message every `period` for `span` (the first at once),
/// collecting events.
fn run_messages(sim: &mut Sim, span: Duration, period: Duration, seen: &mut Seen) {
    let until = sim.now + span;
    let mut next = sim.now;
    while sim.now < until {
        if sim.now >= next {
            // Blocked sends are fine: the flow only has to keep going.
            let _ = sim.client.send(sim.now, 0, Bytes::from(vec![7u8; 100]));
            next += period;
        }
        collect(sim, seen);
        sim.step(next.min(until));
    }
    collect(sim, seen);
}

fn datagrams_sent(sim: &Sim) -> (usize, usize) {
    let (c, s) = sim.capture.as_ref().expect("capture on");
    (c.len(), s.len())
}

fn suspicions(events: &[(Duration, Event)]) -> Vec<&(Duration, Event)> {
    events
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                Event::PathSuspect(_) | Event::PathDown(_) | Event::ConnectionLost
            )
        })
        .collect()
}

#[test]
fn an_idle_connection_sends_a_few_heartbeats_a_second_and_is_never_suspected() {
    for seed in 0..4 {
        let mut sim = connected(config(true), seed);
        let mut seen = Seen::default();
        run_idle(&mut sim, Duration::from_secs(30), &mut seen);
        let (client, server) = datagrams_sent(&sim);
        // Fixed 20 ms heartbeats would be 1,500 PINGs per side (plus PONGs
        // and ACKs). Backed off: ~6 PINGs to reach 1 s, then one a second
        // per side, each answered by a PONG and an ACK.
        assert!(
            client < 30 * 4 && server < 30 * 4,
            "seed {seed}: {client} / {server} datagrams in 30 s idle"
        );
        assert!(
            suspicions(&seen.0).is_empty() && suspicions(&seen.1).is_empty(),
            "seed {seed}: a healthy idle path was suspected: {seen:?}"
        );
        assert!(!sim.client.is_closed(), "seed {seed}: the connection ended");
    }
}

#[test]
fn without_backoff_an_idle_connection_heartbeats_every_interval() {
    // The yardstick of the test above: the same run with backoff disabled.
    let mut sim = connected(config(false), 1);
    let mut seen = Seen::default();
    run_idle(&mut sim, Duration::from_secs(30), &mut seen);
    let (client, server) = datagrams_sent(&sim);
    assert!(client > 1_400 && server > 1_400, "{client} / {server}");
}

/// Cuts both directions at the current instant and keeps sending a message
/// every `period` (or nothing); returns when the client first reported the
/// path suspect, relative to the cut. Nothing may have been suspected
/// before the cut.
fn detect_cut(sim: &mut Sim, seen: &mut Seen, period: Option<Duration>) -> Duration {
    assert!(
        suspicions(&seen.0).is_empty() && suspicions(&seen.1).is_empty(),
        "suspected before the cut: {seen:?}"
    );
    let cut_at = sim.now - sim.start;
    sim.c2s.set_cut(true);
    sim.s2c.set_cut(true);
    let before = seen.0.len();
    match period {
        Some(period) => run_messages(sim, Duration::from_secs(5), period, seen),
        None => run_idle(sim, Duration::from_secs(5), seen),
    }
    seen.0[before..]
        .iter()
        .find(|(_, e)| *e == Event::PathSuspect(PathId(0)))
        .map(|(at, _)| *at - cut_at)
        .unwrap_or_else(|| panic!("the cut was not detected: {:?}", &seen.0[before..]))
}

#[test]
fn an_idle_connection_still_detects_a_cut_path() {
    for seed in 0..4 {
        let mut sim = connected(config(true), seed);
        let mut seen = Seen::default();
        run_idle(&mut sim, Duration::from_secs(10), &mut seen);
        let detected = detect_cut(&mut sim, &mut seen, None);
        // The peer announced 1 s heartbeats: suspicion comes within about
        // one interval plus the learned deviation of the last packet heard.
        assert!(
            detected < ms(3_000),
            "seed {seed}: detected after {detected:?}"
        );
    }
}

/// Over 6 seeds: a connection idle long enough to back its heartbeats off
/// fully, then carrying a message every `period`, then cut, detects the cut
/// within the same few heartbeat intervals as one whose heartbeats never
/// back off (the learned history differs a little: a tenth of one interval
/// is allowed).
fn assert_a_cut_under_messages_is_detected_as_fast_as_with_fixed_heartbeats(period: Duration) {
    for seed in 0..6 {
        let mut times = Vec::new();
        for backoff in [true, false] {
            let mut sim = connected(config(backoff), seed);
            let mut seen = Seen::default();
            run_idle(&mut sim, Duration::from_secs(5), &mut seen);
            run_messages(&mut sim, ms(500 + seed * 37), period, &mut seen);
            times.push(detect_cut(&mut sim, &mut seen, Some(period)));
        }
        let (backed_off, fixed) = (times[0], times[1]);
        eprintln!(
            "seed {seed}: cut under messages every {period:?} detected after {backed_off:?} with backoff, {fixed:?} without"
        );
        assert!(
            backed_off <= fixed + ms(2) && fixed < ms(100),
            "seed {seed}: {backed_off:?} with backoff vs {fixed:?} without"
        );
    }
}

#[test]
fn a_cut_while_data_flows_is_detected_as_fast_as_with_fixed_heartbeats() {
    assert_a_cut_under_messages_is_detected_as_fast_as_with_fixed_heartbeats(ms(1));
}

#[test]
fn a_message_a_second_leaves_the_heartbeats_backed_off() {
    // A message a second is no stream (data packets more than five base
    // intervals apart): each side keeps one heartbeat a second, as idle.
    // Before, every message (queued, or arrived) sent the next PING back to
    // 20 ms and the backoff restarted: about seven PINGs a second per side,
    // each answered by a PONG, over 15 datagrams a second per side.
    for seed in 0..4 {
        let mut sim = connected(config(true), seed);
        let mut seen = Seen::default();
        run_messages(&mut sim, Duration::from_secs(5), ms(1_000), &mut seen);
        sim.capture = Some((Vec::new(), Vec::new()));
        run_messages(&mut sim, Duration::from_secs(60), ms(1_000), &mut seen);
        let (client, server) = datagrams_sent(&sim);
        eprintln!("seed {seed}: {client} / {server} datagrams in 60 s at a message a second");
        // Idle, a side sends fewer than 4 datagrams a second (its PING, its
        // PONG to the peer's, ACKs of them); the message adds one packet on
        // the client and its ACK on the server.
        assert!(
            client < 60 * 5 && server < 60 * 5,
            "seed {seed}: {client} / {server} datagrams in 60 s at a message a second"
        );
        assert!(
            suspicions(&seen.0).is_empty() && suspicions(&seen.1).is_empty(),
            "seed {seed}: a healthy path was suspected: {seen:?}"
        );
        let delivered = sim.server.as_ref().map(|s| s.stats().messages_delivered);
        assert_eq!(delivered, Some(65), "seed {seed}: every message arrives");
    }
}

#[test]
fn a_cut_under_a_message_every_10_ms_is_detected_as_fast_as_with_fixed_heartbeats() {
    // Messages 10 ms apart are a stream: the heartbeats go back to the base
    // interval with the second data packet, so a cut is detected within the
    // same few base intervals as with heartbeats that never back off.
    assert_a_cut_under_messages_is_detected_as_fast_as_with_fixed_heartbeats(ms(10));
}

/// A backed-off idle connection whose server stalls: for `stall`, every
/// datagram the server sends takes that much longer (its driver, busy with
/// thousands of other sessions, sends late). Returns the suspicions seen by
/// either side and the datagrams each side sent in the 20 s around it.
fn idle_through_a_stall(seed: u64, stall: Duration) -> (usize, (usize, usize)) {
    let mut sim = connected(config(true), seed);
    let mut seen = Seen::default();
    run_idle(&mut sim, Duration::from_secs(10), &mut seen);
    sim.capture = Some((Vec::new(), Vec::new()));
    sim.s2c
        .set_config(jittered_5ms_link().with_delay(ms(5) + stall))
        .expect("valid link");
    run_idle(&mut sim, Duration::from_secs(5), &mut seen);
    sim.s2c.set_config(jittered_5ms_link()).expect("valid link");
    run_idle(&mut sim, Duration::from_secs(15), &mut seen);
    assert!(!sim.client.is_closed(), "seed {seed}: the connection ended");
    let suspected = suspicions(&seen.0).len() + suspicions(&seen.1).len();
    (suspected, datagrams_sent(&sim))
}

#[test]
fn a_stall_of_a_tenth_of_the_backed_off_interval_is_not_a_suspicion() {
    // Thousands of idle sessions on one loaded endpoint: a heartbeat that
    // leaves 100 ms late was enough to suspect every one of them, and each
    // suspect path went back to 20 ms heartbeats (and made its peer expect
    // them), which loaded the endpoint further.
    for seed in 0..4 {
        let (suspected, (client, server)) = idle_through_a_stall(seed, ms(100));
        assert_eq!(suspected, 0, "seed {seed}: a 100 ms stall was suspected");
        assert!(
            client < 20 * 4 && server < 20 * 4,
            "seed {seed}: {client} / {server} datagrams in 20 s"
        );
    }
}
