//! Seeded simulations of message bundles: many small reliable messages
//! queued together travel as MSG_BUNDLE frames, far fewer frames than
//! messages, and every message still arrives once, in order and intact
//! through loss, reordering and duplication, on a virtual clock.

mod harness;

use std::time::Duration;

use harness::{assert_exactly_once, rough_link, Sim, Workload};
use surelink_netem::LinkConfig;
use surelink_proto::crypto::Security;
use surelink_proto::wire::{Frame, FrameIter, Header, Reader};
use surelink_proto::Config;

const MESSAGES: u64 = 3_000;

/// The message-carrying frames of the client's datagrams.
#[derive(Debug, Default)]
struct Carried {
    /// MSG frames.
    msg_frames: u64,
    /// MSG_BUNDLE frames.
    bundles: u64,
    /// Messages inside the bundles.
    bundled_messages: u64,
}

fn carried(datagrams: &[Vec<u8>]) -> Carried {
    let mut c = Carried::default();
    for d in datagrams {
        let mut r = Reader::new(d);
        if Header::decode(&mut r).is_err() {
            continue;
        }
        let payload = &d[d.len() - r.remaining()..];
        for frame in FrameIter::new(payload).flatten() {
            match frame {
                Frame::Msg(_) => c.msg_frames += 1,
                Frame::Bundle(b) => {
                    c.bundles += 1;
                    c.bundled_messages += b.messages().count() as u64;
                }
                _ => {}
            }
        }
    }
    c
}

/// Sends [`MESSAGES`] messages of up to `max_size` bytes, all queued at
/// once, over `link` both ways; checks exactly-once, in-order, intact
/// delivery and returns what the client's datagrams carried and how many
/// fragments it retransmitted.
fn transfer(seed: u64, link: LinkConfig, max_size: usize) -> (Carried, u64) {
    transfer_in_batches(seed, link, max_size, 1)
}

/// [`transfer`], the messages handed over `batch` at a time with
/// `send_many` when `batch` is above 1.
fn transfer_in_batches(seed: u64, link: LinkConfig, max_size: usize, batch: u64) -> (Carried, u64) {
    let config = Config {
        // Plaintext, so that the frames can be counted on the wire.
        security: Security::InsecurePlaintext,
        ..Config::default()
    };
    let mut sim = Sim::new(config, link.clone(), link, seed);
    sim.capture = Some((Vec::new(), Vec::new()));
    sim.send_batch = batch;
    let w = Workload {
        messages: MESSAGES,
        max_size,
        interval: Duration::ZERO,
    };
    let out = sim.run_transfer(&w, Duration::from_secs(600));
    assert_exactly_once(&out, MESSAGES, &format!("seed {seed}"));
    let (client, _) = sim.capture.take().expect("capture");
    let retransmitted = out.client_stats.expect("stats").retransmissions;
    (carried(&client), retransmitted)
}

#[test]
fn small_messages_travel_bundled_and_arrive_once_in_order_through_loss() {
    let mut retransmitted = 0;
    for seed in 0..12 {
        let link = LinkConfig::clean()
            .with_loss([0.02, 0.05, 0.1][seed as usize % 3])
            .with_delay(Duration::from_millis(10))
            .with_jitter(Duration::from_millis(2))
            .with_duplicate(0.01);
        let (c, r) = transfer(seed, link, 64);
        retransmitted += r;
        let frames = c.msg_frames + c.bundles;
        assert!(
            frames * 4 < MESSAGES,
            "seed {seed}: {frames} message frames for {MESSAGES} messages: {c:?}"
        );
        assert!(
            c.bundled_messages > MESSAGES / 2,
            "seed {seed}: most messages travel in bundles: {c:?}"
        );
    }
    assert!(
        retransmitted > 100,
        "the loss really happened: {retransmitted}"
    );
}

#[test]
fn a_clean_link_carries_a_batch_of_small_messages_in_bundles_only() {
    let (c, retransmitted) = transfer(7, LinkConfig::clean(), 64);
    assert_eq!(retransmitted, 0);
    // Each message once, nearly all of them in bundles of many.
    assert_eq!(c.bundled_messages + c.msg_frames, MESSAGES);
    assert!(c.bundles * 10 < MESSAGES, "{c:?}");
}

#[test]
fn messages_larger_than_a_packet_still_travel_as_fragments() {
    // Sizes up to 6000 bytes: the small ones bundle, the large ones are
    // cut into MSG fragments; everything arrives through 5 % loss.
    let link = LinkConfig::clean()
        .with_loss(0.05)
        .with_delay(Duration::from_millis(5));
    let (c, _) = transfer(3, link, 6_000);
    assert!(c.msg_frames > 0 && c.bundles > 0, "{c:?}");
}

#[test]
fn send_many_batches_arrive_once_in_order_and_intact_through_loss_duplication_and_reordering() {
    // Sizes up to 700 bytes: most are copied into the sender's per-channel
    // buffer (up to 256 bytes) and bundled, the larger keep their own
    // buffer; batches of 1 to 400 messages per call.
    let mut retransmitted = 0;
    for seed in 0..8 {
        let link = rough_link(seed);
        let batch = [400, 1, 37, 2][seed as usize % 4];
        let (c, r) = transfer_in_batches(seed, link, 700, batch);
        retransmitted += r;
        assert!(c.bundles > 0, "seed {seed}: {c:?}");
    }
    assert!(
        retransmitted > 50,
        "the loss really happened: {retransmitted}"
    );
}
