//! Seeded simulations of packed batches (`send_batch`): batches of small
//! messages, interleaved with messages sent on their own, cross a link that
//! loses, duplicates and reorders; every message arrives once, in order and
//! intact, whether the receiver takes them one by one (`recv`) or batch by
//! batch (`recv_batch`), on a virtual clock.

mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{message, rough_link, Sim};
use surelink_netem::LinkConfig;
use surelink_proto::{Config, Event, MessageBatch, SendError};

/// Messages per run.
const MESSAGES: u64 = 4_000;

/// Batch sizes the sender cycles through; a 0 stands for one message sent
/// on its own with `send`.
const BATCHES: [u64; 6] = [300, 1, 0, 57, 900, 2];

/// What one run delivered.
struct Run {
    /// Every message, in delivery order.
    delivered: Vec<Bytes>,
    /// Sequence numbers of the units (batches and lone messages) received,
    /// in order.
    units: Vec<u64>,
    retransmissions: u64,
    /// The sender's count of its messages sent and acknowledged.
    sent_acked: (u64, u64),
    closed: bool,
}

/// Sends [`MESSAGES`] messages of up to `max_size` bytes (message `i` is
/// `message(i, max_size)`), in the batches of [`BATCHES`]; the receiver
/// takes them one by one if `one_by_one`, else batch by batch.
fn run(seed: u64, link: LinkConfig, max_size: usize, one_by_one: bool) -> Run {
    let mut sim = Sim::new(Config::default(), link.clone(), link, seed);
    let deadline = sim.start + Duration::from_secs(600);
    let mut next = 0u64;
    let mut unit = 0usize;
    let mut batch = MessageBatch::new();
    let mut closing = false;
    let mut out = Run {
        delivered: Vec::new(),
        units: Vec::new(),
        retransmissions: 0,
        sent_acked: (0, 0),
        closed: false,
    };
    let mut closed = (false, false);
    while sim.now < deadline {
        // Sender: fill the next unit, hand it over, move on once queued.
        while next < MESSAGES {
            let size = BATCHES[unit % BATCHES.len()];
            let queued = if size == 0 {
                let seq = next;
                match sim.client.send(sim.now, 0, message(seq, max_size)) {
                    Ok(_) => 1,
                    Err(SendError::Blocked) => break,
                    Err(e) => panic!("seed {seed}: send: {e}"),
                }
            } else {
                if batch.is_empty() {
                    for i in next..(next + size).min(MESSAGES) {
                        batch.push(&message(i, max_size));
                    }
                }
                let count = batch.len() as u64;
                match sim.client.send_batch(sim.now, 0, &mut batch) {
                    Ok(Some(_)) => count,
                    Ok(None) => unreachable!("the batch is not empty"),
                    Err(SendError::Blocked) => break,
                    Err(e) => panic!("seed {seed}: send_batch: {e}"),
                }
            };
            assert!(batch.is_empty(), "a queued batch is left empty");
            next += queued;
            unit += 1;
        }
        if next == MESSAGES && !closing {
            sim.client.close(sim.now);
            closing = true;
        }
        // Receiver.
        if let Some(s) = sim.server.as_mut() {
            if one_by_one {
                while let Some(m) = s.recv() {
                    if out.units.last() != Some(&m.seq) {
                        out.units.push(m.seq);
                    }
                    out.delivered.push(m.data);
                }
            } else {
                while let Some(b) = s.recv_batch() {
                    out.units.push(b.seq);
                    assert!(!b.is_empty());
                    out.delivered.extend(b.iter().map(Bytes::copy_from_slice));
                }
            }
            while let Some(ev) = s.poll_event() {
                closed.1 |= matches!(ev, Event::Closed { error: None });
            }
        }
        while let Some(ev) = sim.client.poll_event() {
            closed.0 |= matches!(ev, Event::Closed { error: None });
        }
        if closed == (true, true) {
            out.closed = true;
            break;
        }
        if !sim.step(deadline) && sim.next_wake().is_none() {
            break;
        }
    }
    let stats = sim.client.stats();
    out.retransmissions = stats.retransmissions;
    out.sent_acked = (stats.messages_sent, stats.messages_acked);
    out
}

fn assert_all_once_in_order(out: &Run, max_size: usize, ctx: &str) {
    assert_eq!(
        out.delivered.len() as u64,
        MESSAGES,
        "{ctx}: messages delivered"
    );
    if let Some(i) = (0..MESSAGES).position(|i| out.delivered[i as usize] != message(i, max_size)) {
        panic!("{ctx}: message {i} is not the one sent {i}th");
    }
    let expected_units: Vec<u64> = (0..out.units.len() as u64).collect();
    assert_eq!(
        out.units, expected_units,
        "{ctx}: one sequence number per unit, in order"
    );
    assert_eq!(
        out.sent_acked,
        (MESSAGES, MESSAGES),
        "{ctx}: the sender counts each message of a batch, sent and acknowledged"
    );
    assert!(out.closed, "{ctx}: both sides closed gracefully");
}

#[test]
fn packed_batches_arrive_whole_once_and_in_order_through_loss_duplication_and_reordering() {
    let mut retransmissions = 0;
    for seed in 0..8 {
        let link = rough_link(seed);
        // Messages of up to 64 bytes (one-byte record lengths) in half the
        // runs, up to 700 (two-byte lengths, batches of many packets) in the
        // others; taken one by one in half of each.
        let max_size = [64, 700][seed as usize % 2];
        let one_by_one = seed % 4 < 2;
        let out = run(seed, link, max_size, one_by_one);
        assert_all_once_in_order(&out, max_size, &format!("seed {seed}"));
        retransmissions += out.retransmissions;
    }
    assert!(
        retransmissions > 50,
        "the loss really happened: {retransmissions}"
    );
}

#[test]
fn a_batch_larger_than_the_largest_message_is_refused_and_kept() {
    let config = Config {
        max_message_size: 1_000,
        ..Config::default()
    };
    let link = LinkConfig::clean().with_delay(Duration::from_millis(5));
    let mut sim = Sim::new(config, link.clone(), link, 1);
    let mut batch = MessageBatch::new();
    for _ in 0..20 {
        batch.push(&[7u8; 60]);
    }
    assert!(batch.packed_len() > 1_000);
    let refused = sim.client.send_batch(sim.now, 0, &mut batch);
    assert!(
        matches!(refused, Err(SendError::TooLarge { size, max: 1_000 }) if size == batch.packed_len()),
        "{refused:?}"
    );
    assert_eq!(batch.len(), 20, "the refused batch is left as it was");
    assert_eq!(
        sim.client.send_batch(sim.now, 0, &mut MessageBatch::new()),
        Ok(None),
        "an empty batch queues nothing"
    );
}
