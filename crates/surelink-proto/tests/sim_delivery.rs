//! Seeded simulations: exactly-once, in-order delivery through loss, bursts,
//! delay, jitter, reordering, duplication and a blackout, on a virtual clock.

mod harness;

use std::time::Duration;

use harness::{assert_exactly_once, ms, Sim, Workload};
use surelink_netem::{GilbertElliott, LinkConfig};
use surelink_proto::{Config, ConnectionStats};

const SEEDS: u64 = 200;
const LIMIT: Duration = Duration::from_secs(600);

/// A small pseudo-random generator so each seed picks its own parameters.
fn pick(seed: u64, salt: u64, n: u64) -> u64 {
    let mut x = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x % n
}

fn workload(seed: u64) -> Workload {
    Workload {
        messages: 150 + pick(seed, 1, 100),
        max_size: [200, 1500, 6000][pick(seed, 2, 3) as usize],
        interval: Duration::ZERO,
    }
}

/// Runs one seeded transfer and returns (sender, receiver) stats so callers can
/// check that the impairment really happened.
fn run(seed: u64, link: LinkConfig, ctx: &str) -> (ConnectionStats, ConnectionStats) {
    let w = workload(seed);
    let mut sim = Sim::new(Config::default(), link.clone(), link, seed);
    let out = sim.run_transfer(&w, LIMIT);
    assert_exactly_once(&out, w.messages, &format!("{ctx} seed {seed}"));
    (out.client_stats.unwrap(), out.server_stats.unwrap())
}

#[test]
fn random_loss_delay_and_jitter() {
    let mut retransmitted = 0;
    for seed in 0..SEEDS {
        let delay = ms(pick(seed, 3, 101));
        let link = LinkConfig::clean()
            .with_loss(pick(seed, 4, 21) as f64 / 100.0)
            .with_delay(delay)
            .with_jitter(ms(pick(seed, 5, 11)));
        retransmitted += run(seed, link, "random loss").0.retransmissions;
    }
    assert!(
        retransmitted > 1000,
        "the loss really happened: {retransmitted}"
    );
}

fn burst_link(seed: u64) -> LinkConfig {
    LinkConfig::clean()
        .with_burst(GilbertElliott {
            p_good_to_bad: 0.01 + pick(seed, 6, 5) as f64 / 100.0,
            p_bad_to_good: 0.2 + pick(seed, 7, 5) as f64 / 10.0,
            loss_good: 0.0,
            loss_bad: 0.8,
        })
        .with_delay(ms(5 + pick(seed, 8, 50)))
        .with_jitter(ms(2))
}

#[test]
fn burst_loss() {
    let mut lost = 0;
    for seed in 0..SEEDS {
        lost += run(seed, burst_link(seed), "burst loss").0.packets_lost;
    }
    assert!(lost > 1000, "bursts really dropped packets: {lost}");
}

/// Regression (seed 86 of `burst_loss`): every acknowledgement of the sender's
/// CLOSE was lost while the receiver lingered; the sender must still end
/// gracefully, since all its data had been acknowledged.
#[test]
fn burst_loss_seed_86_close_acknowledgement_lost() {
    run(86, burst_link(86), "burst loss regression");
}

#[test]
fn reordering_and_duplication() {
    let mut duplicates = 0;
    for seed in 0..SEEDS {
        let link = LinkConfig::clean()
            .with_loss(pick(seed, 9, 6) as f64 / 100.0)
            .with_delay(ms(10 + pick(seed, 10, 40)))
            .with_jitter(ms(5))
            .with_reorder(0.05 + pick(seed, 11, 20) as f64 / 100.0, ms(15))
            .with_duplicate(pick(seed, 12, 20) as f64 / 100.0);
        let (_, receiver) = run(seed, link, "reorder+dup");
        duplicates += receiver.duplicate_packets;
    }
    assert!(duplicates > 1000, "duplicates really arrived: {duplicates}");
}

#[test]
fn two_second_blackout() {
    for seed in 0..SEEDS {
        // A slow sender so the blackout always lands mid-transfer.
        let w = Workload {
            messages: 200,
            max_size: 1200,
            interval: ms(20),
        };
        let cut_at = ms(200 + pick(seed, 13, 2500));
        let link = LinkConfig::clean()
            .with_loss(pick(seed, 14, 5) as f64 / 100.0)
            .with_delay(ms(10 + pick(seed, 15, 40)))
            .with_jitter(ms(3))
            .with_cut(cut_at, Duration::from_secs(2));
        let mut sim = Sim::new(Config::default(), link.clone(), link, seed);
        let out = sim.run_transfer(&w, LIMIT);
        assert_exactly_once(&out, w.messages, &format!("blackout seed {seed}"));
    }
}

#[test]
fn clean_link_needs_no_retransmission() {
    let w = Workload {
        messages: 2000,
        max_size: 4000,
        interval: Duration::ZERO,
    };
    let link = LinkConfig::clean().with_delay(ms(10));
    let mut sim = Sim::new(Config::default(), link.clone(), link, 1);
    let out = sim.run_transfer(&w, LIMIT);
    assert_exactly_once(&out, w.messages, "clean");
    let s = out.client_stats.unwrap();
    assert_eq!(s.packets_lost, 0);
    assert_eq!(s.retransmissions, 0);
}

#[test]
fn large_messages_are_fragmented_and_reassembled() {
    let w = Workload {
        messages: 6,
        max_size: 3 << 20,
        interval: Duration::ZERO,
    };
    let link = LinkConfig::clean()
        .with_loss(0.05)
        .with_delay(ms(5))
        .with_reorder(0.1, ms(3));
    let mut sim = Sim::new(Config::default(), link.clone(), link, 7);
    let out = sim.run_transfer(&w, LIMIT);
    assert_exactly_once(&out, w.messages, "large");
}
