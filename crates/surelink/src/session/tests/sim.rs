//! The crash/restart scenarios of the parent module on the simulated
//! network ([`crate::sim`]), on a paused tokio clock: hundreds of seeds by
//! default, each with its own seeded loss, delay, jitter, reordering and
//! duplication, and crashes of the sender, the receiver, both, or a power
//! loss at seeded moments. Virtual time makes each run take milliseconds of
//! CPU however long it lasts in simulated time, and the same seed replays
//! the same run.
//!
//! `SURELINK_SIM_SEEDS=N` runs N seeds per test instead of the default.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use surelink_netem::LinkConfig;

use super::{scenario, Durability, Net, Outcome, Scenario, SimNetwork, Victim, Victims};

/// Seeds per test by default (four tests run them, in parallel).
const DEFAULT_SEEDS: u64 = 75;

/// Messages per scenario (about 560 KiB).
const MESSAGES: u64 = 750;

/// Crashes aimed for per scenario.
const CRASHES: usize = 6;

fn sim_seeds() -> u64 {
    std::env::var("SURELINK_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS)
}

/// The network of seed `seed`: 0–5 % loss, 1–30 ms one-way delay with up
/// to a third of it as jitter, sometimes reordering and duplication; the
/// same in both directions.
fn network(seed: u64) -> SimNetwork {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5151_5151);
    let delay = Duration::from_micros(rng.gen_range(1_000..30_000));
    let mut link = LinkConfig::clean()
        .with_loss(rng.gen_range(0.0..0.05))
        .with_delay(delay)
        .with_jitter(delay / rng.gen_range(3..10));
    if rng.gen_bool(0.3) {
        link = link.with_reorder(
            rng.gen_range(0.0..0.02),
            delay / 2 + Duration::from_millis(1),
        );
    }
    if rng.gen_bool(0.3) {
        link = link.with_duplicate(rng.gen_range(0.0..0.01));
    }
    let network = SimNetwork::new(seed);
    network
        .try_set_default_link(link)
        .expect("a valid link configuration");
    network
}

/// Runs one seed on its own simulated network.
async fn run(seed: u64, durability: Durability, power_loss: bool, victims: Victims) -> Outcome {
    let net = Net::Sim(network(seed));
    let outcome = scenario(
        &net,
        Scenario {
            seed,
            count: MESSAGES,
            crashes: CRASHES,
            durability,
            power_loss,
            victims,
        },
    )
    .await;
    if let Net::Sim(network) = &net {
        let hosts: u64 = outcome
            .crashes
            .iter()
            .map(|(victim, _, _)| if *victim == Victim::Both { 2 } else { 1 })
            .sum();
        assert_eq!(
            network.stats().crashes,
            hosts,
            "every crash took a host down (seed {seed})"
        );
    }
    outcome
}

/// Runs `seeds` seeds from `first` and reports the totals.
async fn run_seeds(
    name: &str,
    first: u64,
    durability: impl Fn(u64) -> Durability,
    power_loss: bool,
    victims: Victims,
) {
    let (mut crashes, mut simulated) = (0, Duration::ZERO);
    let seeds = sim_seeds();
    for seed in first..first + seeds {
        let outcome = run(seed, durability(seed), power_loss, victims).await;
        crashes += outcome.crashes.len();
        simulated += outcome.completed_after;
    }
    eprintln!("{name}: {seeds} seeds, {crashes} crashes, {simulated:?} simulated");
}

#[tokio::test(start_paused = true)]
async fn simulated_sender_crashes_lose_and_repeat_nothing() {
    run_seeds(
        "sender crashes",
        0,
        super::durability,
        false,
        Victims::Only(Victim::Sender),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn simulated_receiver_crashes_lose_and_repeat_nothing() {
    run_seeds(
        "receiver crashes",
        10_000,
        super::durability,
        false,
        Victims::Only(Victim::Receiver),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn simulated_crashes_of_either_or_both_sides_lose_and_repeat_nothing() {
    run_seeds(
        "sender, receiver or both",
        20_000,
        super::durability,
        false,
        Victims::Any,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn simulated_power_losses_with_always_durability_lose_and_repeat_nothing() {
    run_seeds(
        "power losses",
        30_000,
        |_| Durability::Always,
        true,
        Victims::Any,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_seed_replays_identically() {
    let digest =
        |outcome: &Outcome, network: &SimNetwork| format!("{outcome:?} {:?}", network.stats());
    let mut runs = Vec::new();
    for _ in 0..2 {
        let network = network(7);
        let net = Net::Sim(network.clone());
        let outcome = scenario(
            &net,
            Scenario {
                seed: 7,
                count: MESSAGES,
                crashes: CRASHES,
                durability: Durability::Interval(Duration::from_millis(10)),
                power_loss: false,
                victims: Victims::Any,
            },
        )
        .await;
        assert!(!outcome.crashes.is_empty());
        runs.push(digest(&outcome, &network));
    }
    assert_eq!(runs[0], runs[1], "the same seed gave different runs");
}
