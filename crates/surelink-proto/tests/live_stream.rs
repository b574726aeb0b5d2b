//! A live video stream on a virtual clock: frames of 10–15 datagrams every
//! 33 ms, and a key frame of 100 datagrams every second, on a deadline
//! channel, through 10 % random loss each way.
//!
//! Checks the real-time promises: each ordinary frame's burst leaves at the
//! instant it is queued (not spread over round trips), no message is
//! delivered after its deadline, nearly everything (key frames included)
//! arrives, the failure detector never suspects the healthy path, and a real
//! cut is still detected.

mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{ms, Sim};
use surelink_netem::LinkConfig;
use surelink_proto::wire::Delivery;
use surelink_proto::{Config, Event};

/// An MPEG-TS datagram (seven 188-byte packets).
const DATAGRAM: usize = 1316;
const FRAME_INTERVAL: Duration = Duration::from_millis(33);
const DEADLINE: Duration = Duration::from_millis(120);
const QUIET_AFTER_STREAM: Duration = Duration::from_secs(2);

/// Every this many frames comes a key frame.
const KEY_FRAME_INTERVAL: u64 = 30;
const KEY_FRAME_DATAGRAMS: u64 = 100;

fn is_key_frame(i: u64) -> bool {
    i % KEY_FRAME_INTERVAL == KEY_FRAME_INTERVAL / 2
}

/// Frame `i` of seed `seed` has 10–15 datagrams, a key frame 100.
fn frame_len(seed: u64, i: u64) -> u64 {
    if is_key_frame(i) {
        return KEY_FRAME_DATAGRAMS;
    }
    let mut x = (seed << 32 ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    10 + x % 6
}

fn link() -> LinkConfig {
    LinkConfig::clean()
        .with_loss(0.10)
        .with_delay(ms(10))
        .with_jitter(ms(1))
}

/// What one stream run observed.
#[derive(Debug, Default)]
struct StreamRun {
    datagrams: u64,
    delivered: u64,
    /// Delivered after the deadline: (seq, latency µs).
    late: Vec<(u64, u64)>,
    /// Ordinary frames whose datagrams did not all leave at the instant they
    /// were queued.
    held_back: Vec<u64>,
    /// Suspicion and failure events on either side while the path was healthy.
    false_alarms: Vec<Event>,
    /// Failure events while only heartbeats flowed after the stream.
    quiet_failures: Vec<Event>,
    /// Events on either side after the link was cut.
    after_cut: Vec<Event>,
}

/// Streams `frames` frames, then cuts the link and runs `after_cut` longer.
fn stream(seed: u64, frames: u64, after_cut: Duration) -> StreamRun {
    let mut sim = Sim::new(Config::default(), link(), link(), seed);
    let (ce, se) = sim.run_handshake(Duration::from_secs(5));
    assert!(ce.contains(&Event::Connected) && se.contains(&Event::Connected));
    sim.client
        .set_channel_delivery(0, Delivery::Deadline(DEADLINE.as_micros() as u64));
    let mut run = StreamRun::default();
    let start = sim.now;
    let mut seq = 0u64;
    for frame in 0..frames {
        let at = start + FRAME_INTERVAL * frame as u32;
        while sim.step(at) {
            drain(&mut sim, start, &mut run);
            take_events(&mut sim, Phase::Streaming, &mut run);
        }
        let before = sim.client.stats();
        let n = frame_len(seed, frame);
        for _ in 0..n {
            let mut m = vec![0u8; DATAGRAM];
            let sent = (sim.now - start).as_micros() as u64;
            m[..8].copy_from_slice(&sent.to_be_bytes());
            sim.client.send(sim.now, 0, Bytes::from(m)).expect("send");
            seq += 1;
        }
        run.datagrams += n;
        // Everything due at this instant moves now: the whole frame must
        // leave. Messages are packed into packets, so count new bytes on the
        // wire (headers add less than one held-back datagram would take away).
        sim.pump();
        let after = sim.client.stats();
        let new_bytes = (after.bytes_sent - before.bytes_sent)
            - (after.payload_bytes_retransmitted - before.payload_bytes_retransmitted);
        if new_bytes < n * DATAGRAM as u64 && !is_key_frame(frame) {
            run.held_back.push(frame);
        }
    }
    // The stream stops; heartbeats alone keep the path talking for a while.
    let end = sim.now + QUIET_AFTER_STREAM;
    while sim.step(end) {
        drain(&mut sim, start, &mut run);
        take_events(&mut sim, Phase::Quiet, &mut run);
    }
    sim.c2s.set_cut(true);
    sim.s2c.set_cut(true);
    let end = sim.now + after_cut;
    while sim.step(end) {
        take_events(&mut sim, Phase::Cut, &mut run);
    }
    take_events(&mut sim, Phase::Cut, &mut run);
    assert_eq!(seq, run.datagrams);
    run
}

/// What the run is doing when events are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Streaming,
    /// The stream has stopped; only heartbeats flow.
    Quiet,
    Cut,
}

/// Takes both sides' events: while streaming, suspicion and failure events
/// are false alarms; in the quiet period, failure events are; after the cut,
/// every event is kept.
fn take_events(sim: &mut Sim, phase: Phase, run: &mut StreamRun) {
    let mut events = Vec::new();
    while let Some(e) = sim.client.poll_event() {
        events.push(e);
    }
    if let Some(s) = sim.server.as_mut() {
        while let Some(e) = s.poll_event() {
            events.push(e);
        }
    }
    for e in events {
        let failure = matches!(e, Event::PathDown(_) | Event::ConnectionLost);
        let suspicion = matches!(e, Event::PathSuspect(_));
        match phase {
            Phase::Streaming if failure || suspicion => run.false_alarms.push(e),
            Phase::Quiet if failure => run.quiet_failures.push(e),
            Phase::Cut => run.after_cut.push(e),
            _ => {}
        }
    }
}

fn drain(sim: &mut Sim, start: std::time::Instant, run: &mut StreamRun) {
    let now_us = (sim.now - start).as_micros() as u64;
    let Some(s) = sim.server.as_mut() else {
        return;
    };
    while let Some(m) = s.recv() {
        let mut t = [0u8; 8];
        t.copy_from_slice(&m.data[..8]);
        let latency = now_us.saturating_sub(u64::from_be_bytes(t));
        if latency > DEADLINE.as_micros() as u64 {
            run.late.push((m.seq, latency));
        }
        run.delivered += 1;
    }
}

#[test]
fn a_bursty_live_stream_through_random_loss_is_sent_at_once_on_time_and_never_suspected() {
    for seed in 1..=8 {
        let run = stream(seed, 150, Duration::from_secs(3));
        eprintln!(
            "seed {seed}: {} of {} delivered",
            run.delivered, run.datagrams
        );
        assert!(run.late.is_empty(), "seed {seed}: late {:?}", run.late);
        assert!(
            run.held_back.is_empty(),
            "seed {seed}: frames held back {:?}",
            run.held_back
        );
        assert!(
            run.false_alarms.is_empty(),
            "seed {seed}: healthy path suspected: {:?}",
            run.false_alarms
        );
        // 10 % loss each way, 120 ms for a 20 ms round trip: several chances
        // to repair each loss; at most one datagram in a thousand misses.
        assert!(
            run.delivered * 1000 >= run.datagrams * 999,
            "seed {seed}: {} of {} delivered",
            run.delivered,
            run.datagrams
        );
        // Plain heartbeats through 10 % loss: a run of lost packets may raise
        // a suspicion (as on any idle path), never a failure.
        assert!(
            run.quiet_failures.is_empty(),
            "seed {seed}: healthy idle path failed: {:?}",
            run.quiet_failures
        );
        // The cut is still detected.
        assert!(
            run.after_cut
                .iter()
                .any(|e| matches!(e, Event::PathDown(_) | Event::ConnectionLost)),
            "seed {seed}: cut not detected: {:?}",
            run.after_cut
        );
    }
}
