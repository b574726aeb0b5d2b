//! A bursty live stream through a short link cut, on a virtual clock: frames
//! of 13 MPEG-TS datagrams every 33 ms (a key frame of 29 every 2 s), on a
//! 99 ms and a 97 ms deadline over 10 ms ± 1 ms each way, the receiver
//! playing out at the deadline, and both directions cut for 200 ms in the
//! middle.
//!
//! Messages sent during the first part of the cut are necessarily late:
//! losing them is the deadline promise. The sender cannot see the path
//! return; it learns that it did when the first packet it sends afterwards
//! is acknowledged (an outage probe, sent every few milliseconds while the
//! path is silent and deadline data is alive, or the next frame if that
//! comes first), and that acknowledgement is also what shows the cut's
//! packets lost. From then on everything still alive
//! must go at once, earliest deadline first: not paced at the input rate,
//! not held back by a window or a probe timer that grew during the cut, and
//! not given up on by the receiver. So every message whose deadline is at
//! least a round trip plus one crossing after that first packet (plus a
//! millisecond for the burst) is delivered, on time; so is everything sent
//! before the cut; nothing is ever delivered late.

mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::{ms, Sim};
use surelink_netem::LinkConfig;
use surelink_proto::wire::Delivery;
use surelink_proto::Config;

/// An MPEG-TS datagram (seven 188-byte packets).
const DATAGRAM: usize = 1316;
const FRAME_INTERVAL: Duration = Duration::from_millis(33);
const DEADLINE: Duration = Duration::from_millis(99);
const FRAMES: u64 = 90;
/// The one-way delay of the link, at most (10 ms ± 1 ms).
const MAX_ONE_WAY: Duration = Duration::from_millis(11);
const CUT_LENGTH: Duration = Duration::from_millis(200);

/// Datagrams in frame `i`: a key frame every 60.
fn frame_len(i: u64) -> u64 {
    if i % 60 == 0 {
        29
    } else {
        13
    }
}

/// What one stream observed, times in µs since the stream started.
#[derive(Debug, Default)]
struct CutRun {
    /// Every message sent: seq → send time.
    sent: BTreeMap<u64, u64>,
    /// Every message delivered: seq → latency.
    delivered: BTreeMap<u64, u64>,
    /// When the cut began and ended.
    cut: (u64, u64),
    /// The receiver's clock error bound, as of the last look at the receiver.
    bound_us: u64,
    /// Messages the receiver gave up on.
    skipped: u64,
    /// Messages the receiver dropped because they completed after their deadline.
    dropped_late: u64,
}

fn advance(sim: &mut Sim, until: Instant, start: Instant, run: &mut CutRun) {
    while sim.step(until) {
        drain(sim, start, run);
    }
    drain(sim, start, run);
}

fn drain(sim: &mut Sim, start: Instant, run: &mut CutRun) {
    let now_us = (sim.now - start).as_micros() as u64;
    let Some(s) = sim.server.as_mut() else {
        return;
    };
    run.bound_us = s
        .clock_estimate(sim.now)
        .map_or(0, |e| e.error_bound_us.ceil() as u64);
    while let Some(m) = s.recv() {
        let mut t = [0u8; 8];
        t.copy_from_slice(&m.data[..8]);
        let latency = now_us.saturating_sub(u64::from_be_bytes(t));
        run.delivered.insert(m.seq, latency);
    }
}

/// Streams `FRAMES` frames with both directions cut for `CUT_LENGTH` from
/// `cut_at` after the stream starts.
fn stream(seed: u64, cut_at: Duration, deadline: Duration) -> CutRun {
    let link = LinkConfig::clean().with_delay(ms(10)).with_jitter(ms(1));
    let server = Config {
        playout_delay: Some(deadline),
        ..Config::default()
    };
    let mut sim = Sim::with_configs(Config::default(), server, link.clone(), link, seed);
    sim.run_handshake(Duration::from_secs(5));
    // Heartbeats for a second first, so the receiver's clock estimate rests
    // on samples.
    let warm = sim.now + Duration::from_secs(1);
    while sim.step(warm) {}
    sim.client
        .set_channel_delivery(0, Delivery::Deadline(deadline.as_micros() as u64));
    let start = sim.now;
    let mut run = CutRun {
        cut: (
            cut_at.as_micros() as u64,
            (cut_at + CUT_LENGTH).as_micros() as u64,
        ),
        ..CutRun::default()
    };
    let (cut_start, cut_end) = (start + cut_at, start + cut_at + CUT_LENGTH);
    let mut seq = 0;
    for frame in 0..FRAMES {
        let at = start + FRAME_INTERVAL * frame as u32;
        for (edge, cut) in [(cut_start, true), (cut_end, false)] {
            if sim.now < edge && edge <= at {
                advance(&mut sim, edge, start, &mut run);
                sim.c2s.set_cut(cut);
                sim.s2c.set_cut(cut);
            }
        }
        advance(&mut sim, at, start, &mut run);
        for _ in 0..frame_len(frame) {
            let mut m = vec![0u8; DATAGRAM];
            let sent = (sim.now - start).as_micros() as u64;
            m[..8].copy_from_slice(&sent.to_be_bytes());
            sim.client.send(sim.now, 0, Bytes::from(m)).expect("send");
            run.sent.insert(seq, sent);
            seq += 1;
        }
        sim.pump();
    }
    let end = sim.now + ms(500);
    advance(&mut sim, end, start, &mut run);
    let stats = sim.server.as_ref().expect("server").stats();
    run.skipped = stats.messages_skipped;
    run.dropped_late = stats.messages_late;
    run
}

/// The messages sent from 150 ms before the cut to 150 ms after it, one line
/// each: seq, send time, deadline relative to the path's return, outcome.
fn outcome_table(run: &CutRun) -> String {
    let (from, to) = (run.cut.0.saturating_sub(150_000), run.cut.1 + 150_000);
    let mut out = String::new();
    for (seq, &sent) in &run.sent {
        if sent < from || sent > to {
            continue;
        }
        let ahead = (sent + DEADLINE.as_micros() as u64) as i64 - run.cut.1 as i64;
        let outcome = run
            .delivered
            .get(seq)
            .map_or("lost".to_string(), |l| format!("{} ms", l / 1000));
        out.push_str(&format!(
            "seq {seq} sent {} ms, deadline {ahead:+} µs after the cut: {outcome}\n",
            sent / 1000
        ));
    }
    out
}

/// The longest interval between two outage probes at this RTT (an eighth of
/// about 21 ms), plus a little.
const PROBE_INTERVAL: Duration = Duration::from_millis(3);

#[test]
fn after_a_cut_everything_still_within_its_deadline_once_the_path_is_known_back_is_delivered() {
    // A retransmission needs an acknowledgement of the first packet across
    // the returned path (a round trip) and one more crossing; allow one more
    // millisecond for the burst of everything still alive.
    let recovery = (MAX_ONE_WAY * 3 + ms(1)).as_micros() as u64;
    let (mut skipped, mut unavoidable) = (0, 0);
    // 99 ms is three frame intervals (deadlines fall on frame times), 97 ms
    // is not (the budget of the MPEG-TS benchmark).
    for deadline in [DEADLINE, ms(97)] {
        for seed in 1..=4 {
            for cut_at in [ms(1005), ms(1012), ms(1020), ms(1030)] {
                let run = stream(seed, cut_at, deadline);
                let deadline = deadline.as_micros() as u64;
                let table = outcome_table(&run);
                let ctx = format!("seed {seed}, cut at {cut_at:?}, deadline {deadline} µs");
                let late: Vec<_> = run
                    .delivered
                    .iter()
                    .filter(|(_, &l)| l > deadline + run.bound_us)
                    .collect();
                assert!(late.is_empty(), "{ctx}: delivered late {late:?}\n{table}");
                if deadline == DEADLINE.as_micros() as u64 {
                    assert_eq!(run.dropped_late, 0, "{ctx}: dropped as late\n{table}");
                }
                // At 97 ms a deadline can fall within the link's jitter of
                // the earliest arrival of a retransmission: the sender, which
                // counts half the smoothed RTT for the crossing, may send one
                // that arrives a fraction of a millisecond late, and the
                // receiver drops it (never delivers it late: checked above).
                // The first packet the sender sends once the path is back:
                // an outage probe within a probe interval of the return, or
                // the first frame at or after it if that comes sooner.
                let next_frame = run
                    .sent
                    .values()
                    .copied()
                    .find(|&sent| sent >= run.cut.1)
                    .expect("frames after the cut");
                let first_across = next_frame.min(run.cut.1 + PROBE_INTERVAL.as_micros() as u64);
                let missed: Vec<_> = run
                    .sent
                    .iter()
                    .filter(|(seq, &sent)| {
                        let in_time =
                            sent < run.cut.0 || sent + deadline >= first_across + recovery;
                        in_time && !run.delivered.contains_key(seq)
                    })
                    .map(|(seq, _)| *seq)
                    .collect();
                assert!(
                    missed.is_empty(),
                    "{ctx}: sent before the cut or still in time once the path was known back, \
                     never delivered: {missed:?}\n{table}"
                );
                assert_eq!(
                    run.delivered.len() as u64 + run.skipped,
                    run.sent.len() as u64,
                    "{ctx}: every message is delivered or skipped"
                );
                // The test must see the cut: the frames sent early in it are lost.
                assert!(run.skipped > 0, "{ctx}: the cut cost nothing\n{table}");
                skipped += run.skipped;
                // Not even an oracle could deliver what was sent in the cut
                // with a deadline before the path's return plus one crossing.
                unavoidable += run
                    .sent
                    .values()
                    .filter(|&&s| s >= run.cut.0 && s + deadline < run.cut.1 + 10_000)
                    .count() as u64;
            }
        }
    }
    println!("32 cuts: {skipped} messages skipped, {unavoidable} of them unavoidable");
}
