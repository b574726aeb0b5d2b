//! ffmpeg's real datagram timing (`data/mpegts_datagrams.txt`) on a deadline
//! channel at SRT's end-to-end budget on this link (99 ms, about 4.5 round
//! trips), 10 ms ± 1 ms each way with 10 % random loss each way, on a
//! virtual clock, every datagram traced with its fate.
//!
//! **A message is lost only when it had no chance.** With 4.5 round trips of
//! budget a message lost on the wire has room for three retransmissions,
//! each judged lost one round trip plus the reordering window after it
//! left, provided a later packet is acknowledged: the tail probe that
//! follows the last packet of deadline data (`conn/transmit.rs`). So a
//! message the receiver gives up on must have been dropped in every
//! transmission, and either transmitted [`ATTEMPTS_IN_BUDGET`] times, or the
//! feedback that would have shown one of its transmissions lost in time was
//! dropped too: the first ack-eliciting packet sent after it, or the first
//! acknowledgement the receiver sent after that packet arrived. Without
//! tail probes the sender waited up to a heartbeat interval to learn of a
//! lost retransmission, and on this fixture gave up on messages sent only
//! three times with all their feedback delivered.
//!
//! **A stream that starts after a quiet period is sent at once.** ffmpeg's
//! first key frame (93 datagrams at once) after a second of heartbeats
//! leaves within a round trip: the heartbeats' delivery-rate samples are
//! application-limited and never read as a bottleneck
//! (`conn/congestion/delivery_rate.rs`).

mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::{ms, Sim, Traced};
use surelink_netem::LinkConfig;
use surelink_proto::crypto::Security;
use surelink_proto::fec::FecConfig;
use surelink_proto::wire::{Delivery, Frame, FrameIter, Header, Reader};
use surelink_proto::{Config, Event};

/// SRT's measured end-to-end latency on this link at its default setting.
const BUDGET: Duration = Duration::from_millis(99);
/// Transmissions of a lost message that fit in [`BUDGET`]: the original and
/// three retransmissions, each about a round trip and a reordering window
/// (27 ms) after the one before, the last arriving 11 ms later (92 ms).
const ATTEMPTS_IN_BUDGET: usize = 4;
const SEEDS: u64 = 60;
/// The receiver gives up on a missing message this long before its
/// deadline (an eighth of it, at most 2 ms; `conn/reassembly.rs`).
const GIVE_UP_MARGIN: Duration = Duration::from_millis(2);
/// ffmpeg's first burst: the clip's first key frame.
const FIRST_KEY_FRAME: usize = 93;
const DATAGRAM: usize = 1316;

/// 10 ms ± 1 ms, with `loss`.
fn link(loss: f64) -> LinkConfig {
    LinkConfig::clean()
        .with_loss(loss)
        .with_delay(ms(10))
        .with_jitter(ms(1))
}

/// A connected pair in plaintext (so the trace can be read) without FEC,
/// channel 0 a deadline channel, the receiver playing out at [`BUDGET`],
/// after a second of heartbeats on `link` (the clock estimate rests on
/// samples, and the live controller has the heartbeats' delivery-rate
/// samples), with a trace on; the handshake runs on `link` too.
fn connected(seed: u64, link: LinkConfig) -> Sim {
    let client = Config {
        security: Security::InsecurePlaintext,
        fec: FecConfig::Off,
        ..Config::default()
    };
    let server = Config {
        security: Security::InsecurePlaintext,
        playout_delay: Some(BUDGET),
        ..client.clone()
    };
    let mut sim = Sim::with_configs(client, server, link.clone(), link, seed);
    let (client_events, server_events) = sim.run_handshake(Duration::from_secs(5));
    assert!(
        client_events.contains(&Event::Connected) && server_events.contains(&Event::Connected),
        "seed {seed}: no handshake: {client_events:?} {server_events:?}"
    );
    sim.client
        .set_channel_delivery(0, Delivery::Deadline(BUDGET.as_micros() as u64));
    let warm = sim.now + Duration::from_secs(1);
    while sim.step(warm) {}
    sim.trace = Some(Vec::new());
    sim
}

/// Plays `input` on channel 0 from now on; returns the sequence numbers the
/// receiver gave up on and when each message was queued.
fn play(sim: &mut Sim, input: &[(Duration, usize)]) -> (Vec<u64>, Vec<Instant>) {
    let start = sim.now;
    let mut skipped = Vec::new();
    let mut queued = Vec::new();
    let drain = |sim: &mut Sim, skipped: &mut Vec<u64>| {
        let s = sim.server.as_mut().expect("server");
        while s.recv().is_some() {}
        while let Some(ev) = s.poll_event() {
            if let Event::Skipped { from, to, .. } = ev {
                skipped.extend(from..to);
            }
        }
    };
    for (i, &(offset, size)) in input.iter().enumerate() {
        while sim.step(start + offset) {
            drain(sim, &mut skipped);
        }
        queued.push(sim.now);
        sim.client
            .send(sim.now, 0, Bytes::from(vec![0u8; size]))
            .expect("send");
        // Datagrams given at the same instant are sent together.
        if input.get(i + 1).is_none_or(|&(next, _)| next > offset) {
            sim.pump();
        }
    }
    let end = sim.now + ms(500);
    while sim.step(end) {
        drain(sim, &mut skipped);
    }
    drain(sim, &mut skipped);
    (skipped, queued)
}

/// What a traced datagram carries.
#[derive(Debug, Default)]
struct Content {
    /// Sequence numbers of the channel-0 messages in it.
    messages: Vec<u64>,
    ack: bool,
    ack_eliciting: bool,
}

fn content(d: &Traced) -> Content {
    let mut r = Reader::new(&d.data);
    let mut c = Content::default();
    if Header::decode(&mut r).is_err() {
        return c;
    }
    let payload = &d.data[d.data.len() - r.remaining()..];
    for frame in FrameIter::new(payload) {
        match frame.expect("a well-formed frame") {
            Frame::Ack(_) => c.ack = true,
            Frame::Padding(_) => {}
            Frame::Msg(m) => {
                c.ack_eliciting = true;
                if m.channel == 0 {
                    c.messages.push(m.seq);
                }
            }
            _ => c.ack_eliciting = true,
        }
    }
    c
}

/// Why a message the receiver gave up on was lost, from the trace.
#[derive(Debug)]
struct LossAnatomy {
    /// Each transmission: when it left and when it arrived (`None`:
    /// dropped), ms after the message was queued.
    transmissions: Vec<(f64, Option<f64>)>,
    /// A transmission's successor or the acknowledgement of it was dropped.
    feedback_dropped: bool,
}

impl LossAnatomy {
    /// Every transmission was dropped or arrived after the receiver gave
    /// up, and the sender made every attempt the budget holds, or the link
    /// also dropped what would have told it in time.
    fn had_no_chance(&self) -> bool {
        let gives_up = (BUDGET - GIVE_UP_MARGIN).as_secs_f64() * 1e3;
        self.transmissions
            .iter()
            .all(|&(_, arrived)| arrived.is_none_or(|at| at > gives_up))
            && (self.transmissions.len() >= ATTEMPTS_IN_BUDGET || self.feedback_dropped)
    }
}

fn anatomy(trace: &[Traced], seq: u64, queued: Instant) -> LossAnatomy {
    let contents: Vec<Content> = trace.iter().map(content).collect();
    let mut transmissions = Vec::new();
    let mut feedback_dropped = false;
    let from_client = |i: usize| trace[i].from_client;
    for (i, d) in trace.iter().enumerate() {
        if !(d.from_client && contents[i].messages.contains(&seq)) {
            continue;
        }
        let after = |t: Instant| t.saturating_duration_since(queued).as_secs_f64() * 1e3;
        transmissions.push((after(d.at), d.fate.deliver_at().map(after)));
        // The first later ack-eliciting packet judges this one, through the
        // receiver's first acknowledgement sent once it arrived.
        let successor = (i + 1..trace.len()).find(|&j| {
            from_client(j) && contents[j].ack_eliciting && !contents[j].messages.contains(&seq)
        });
        let Some(successor) = successor else {
            continue;
        };
        let Some(arrived) = trace[successor].fate.deliver_at() else {
            feedback_dropped = true;
            continue;
        };
        let ack = (successor + 1..trace.len())
            .find(|&j| !from_client(j) && contents[j].ack && trace[j].at >= arrived);
        if ack.is_some_and(|j| trace[j].fate.is_dropped()) {
            feedback_dropped = true;
        }
    }
    LossAnatomy {
        transmissions,
        feedback_dropped,
    }
}

#[test]
fn at_ten_percent_loss_each_way_a_message_is_lost_only_when_it_had_no_chance() {
    let input = harness::ffmpeg_datagrams();
    let mut lost = 0;
    let mut chances_missed = Vec::new();
    for seed in 1..=SEEDS {
        let mut sim = connected(seed, link(0.10));
        let (skipped, queued) = play(&mut sim, &input);
        let trace = sim.trace.take().expect("trace");
        lost += skipped.len();
        for seq in skipped {
            let a = anatomy(&trace, seq, queued[seq as usize]);
            println!("seed {seed}, message {seq}: {a:?}");
            if !a.had_no_chance() {
                chances_missed.push((seed, seq, a));
            }
        }
    }
    println!(
        "{SEEDS} seeds × {} datagrams at 10 % loss each way, {} ms: {lost} lost",
        input.len(),
        BUDGET.as_millis()
    );
    assert!(
        chances_missed.is_empty(),
        "lost with a chance left: {chances_missed:#?}"
    );
}

#[test]
fn the_first_key_frame_after_a_quiet_second_leaves_within_a_round_trip() {
    for seed in 1..=5 {
        let mut sim = connected(seed, link(0.0));
        let input = vec![(Duration::ZERO, DATAGRAM); FIRST_KEY_FRAME];
        let start = sim.now;
        let (skipped, _) = play(&mut sim, &input);
        assert!(skipped.is_empty(), "seed {seed}: skipped {skipped:?}");
        // When each message first left.
        let mut first_sent: BTreeMap<u64, Duration> = BTreeMap::new();
        for d in sim.trace.as_ref().expect("trace") {
            for seq in content(d).messages {
                first_sent.entry(seq).or_insert(d.at - start);
            }
        }
        assert_eq!(first_sent.len(), FIRST_KEY_FRAME, "seed {seed}");
        let last = first_sent.values().max().expect("sent");
        assert!(
            *last < ms(20),
            "seed {seed}: the burst's last datagram left {last:?} after it was queued"
        );
    }
}
