//! The failure detector under the caller's own receive backlog, on virtual
//! time. A peer whose datagrams wait in our socket queue (our driver fell
//! behind) and then arrive in a burst is alive: told how far its input lags
//! (`Connection::set_received_through`), the connection judges the peer's
//! silence as of the instant its socket was last drained and does not suspect
//! it. A peer that is truly silent is still detected, within the same time as
//! before when the caller keeps up, and soon after a backlog ends otherwise.

mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{jittered_5ms_link, ms, Backlog, Sim};
use surelink_proto::conn::PathId;
use surelink_proto::{Config, Event};

/// An established connection.
fn connected(seed: u64) -> Sim {
    let mut sim = Sim::new(
        Config::default(),
        jittered_5ms_link(),
        jittered_5ms_link(),
        seed,
    );
    let (ce, se) = sim.run_handshake(Duration::from_secs(2));
    assert!(ce.contains(&Event::Connected) && se.contains(&Event::Connected));
    sim
}

/// The client's events since the start, with the virtual time they were seen at.
type Seen = Vec<(Duration, Event)>;

/// The client sends a 100-byte message every 10 ms for `span` (a stream:
/// both sides heartbeat every 20 ms), collecting the client's events.
fn run_messages(sim: &mut Sim, span: Duration, seen: &mut Seen) {
    let until = sim.now + span;
    let mut next = sim.now;
    while sim.now < until {
        if sim.now >= next {
            // Blocked sends are fine: the flow only has to keep going.
            let _ = sim.client.send(sim.now, 0, Bytes::from(vec![7u8; 100]));
            next += ms(10);
        }
        collect(sim, seen);
        sim.step(next.min(until));
    }
    collect(sim, seen);
}

fn collect(sim: &mut Sim, seen: &mut Seen) {
    let at = sim.now - sim.start;
    while let Some(e) = sim.client.poll_event() {
        seen.push((at, e));
    }
    if let Some(s) = sim.server.as_mut() {
        while s.poll_event().is_some() {}
        while s.recv().is_some() {}
    }
}

fn suspicions(seen: &Seen) -> Vec<&(Duration, Event)> {
    seen.iter()
        .filter(|(_, e)| {
            matches!(
                e,
                Event::PathSuspect(_) | Event::PathDown(_) | Event::ConnectionLost
            )
        })
        .collect()
}

/// The client's socket is not read for `stall` while a stream flows; then
/// the datagrams held arrive in one burst and the stream goes on for a
/// second. Returns the client's events.
fn stream_through_a_backlog(seed: u64, stall: Duration, reported: bool) -> Seen {
    let mut sim = connected(seed);
    let mut seen = Seen::new();
    run_messages(&mut sim, ms(1_000), &mut seen);
    sim.client_backlog = Some(Backlog {
        since: sim.now,
        reported,
        held: Vec::new(),
    });
    run_messages(&mut sim, stall, &mut seen);
    let held = sim.client_backlog.as_ref().map_or(0, |b| b.held.len());
    assert!(held > 10, "seed {seed}: only {held} datagrams held");
    sim.end_client_backlog();
    run_messages(&mut sim, ms(1_000), &mut seen);
    assert!(!sim.client.is_closed(), "seed {seed}: the connection ended");
    seen
}

#[test]
fn a_peer_heard_late_behind_our_own_backlog_is_not_suspected() {
    for seed in 0..4 {
        let seen = stream_through_a_backlog(seed, ms(500), true);
        assert!(
            suspicions(&seen).is_empty(),
            "seed {seed}: a live peer behind our backlog was suspected: {seen:?}"
        );
    }
}

#[test]
fn without_the_backlog_reported_the_same_peer_is_suspected() {
    // The yardstick of the test above: the connection not told of the
    // backlog takes it for the peer's silence.
    for seed in 0..4 {
        let seen = stream_through_a_backlog(seed, ms(500), false);
        assert!(
            seen.iter().any(|(_, e)| *e == Event::PathDown(PathId(0))),
            "seed {seed}: a 500 ms backlog went unnoticed: {seen:?}"
        );
    }
}

/// A stream flows for a second, then the server falls silent (its
/// direction is cut) and, with `backlog`, the client's socket goes unread
/// for that long from the same instant. Returns when the client reported
/// the path down, after the cut.
fn detect_silence(seed: u64, backlog: Option<Duration>) -> Duration {
    let mut sim = connected(seed);
    let mut seen = Seen::new();
    run_messages(&mut sim, ms(1_000), &mut seen);
    assert!(suspicions(&seen).is_empty(), "seed {seed}: {seen:?}");
    let cut_at = sim.now - sim.start;
    sim.s2c.set_cut(true);
    if let Some(stall) = backlog {
        sim.client_backlog = Some(Backlog {
            since: sim.now,
            reported: true,
            held: Vec::new(),
        });
        run_messages(&mut sim, stall, &mut seen);
        assert!(
            !seen.iter().any(|(_, e)| *e == Event::PathDown(PathId(0))),
            "seed {seed}: judged down during the backlog: {seen:?}"
        );
        sim.end_client_backlog();
    }
    run_messages(&mut sim, ms(3_000), &mut seen);
    seen.iter()
        .find(|(_, e)| *e == Event::PathDown(PathId(0)))
        .map(|(at, _)| *at - cut_at)
        .unwrap_or_else(|| panic!("seed {seed}: the silence was not detected: {seen:?}"))
}

#[test]
fn a_truly_silent_peer_is_still_detected() {
    for seed in 0..4 {
        // Keeping up, the connection is told a lag of zero: detection is
        // the plain detector's (a few 20 ms heartbeat intervals).
        let keeping_up = detect_silence(seed, None);
        // Behind a 300 ms backlog, the silence is judged once the socket is
        // drained again: no later than two backlogs after the plain bound.
        // (The datagrams held count as heard when the burst is read, not
        // when they arrived, and their heartbeats teach the detector a wider
        // deviation: about 480 ms against 50 ms.)
        let stall = ms(300);
        let behind = detect_silence(seed, Some(stall));
        eprintln!(
            "seed {seed}: silence detected after {keeping_up:?} keeping up, {behind:?} behind a {stall:?} backlog"
        );
        assert!(keeping_up < ms(100), "seed {seed}: {keeping_up:?}");
        assert!(
            behind >= stall && behind <= keeping_up.max(stall) + 2 * stall,
            "seed {seed}: {behind:?} behind a {stall:?} backlog, {keeping_up:?} keeping up"
        );
    }
}
