//! Forward error correction on deadline channels, at the connection level, on
//! virtual time: a deadline channel whose budget is below two round trips
//! (so a retransmission cannot arrive in time) crosses a lossy
//! `surelink-netem` link; FEC must recover what it can, byte-exact, never
//! late, never twice, and everything else must be skipped.

mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{ms, Sim};
use surelink_netem::{GilbertElliott, LinkConfig};
use surelink_proto::fec::{AutoFec, FecConfig, FecScheme};
use surelink_proto::wire::Delivery;
use surelink_proto::{Config, ConnectionStats, Event};

/// One way 20 ms (RTT 40 ms).
fn link() -> LinkConfig {
    LinkConfig::clean().with_delay(ms(20))
}

/// The budget: 50 ms, below two round trips (80 ms).
const DEADLINE_US: u64 = 50_000;
const MESSAGES: u64 = 300;
const SIZE: usize = 1000;

/// Deterministic content of message `seq` after its 8-byte send time.
fn body(seq: u64) -> impl Iterator<Item = u8> {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    })
    .take(SIZE - 8)
}

/// What a run observed at the receiving application.
struct Run {
    /// Sequence numbers delivered, in delivery order.
    delivered: Vec<u64>,
    /// Sequence numbers reported skipped.
    skipped: Vec<u64>,
    client: ConnectionStats,
    server: ConnectionStats,
}

/// Sends `MESSAGES` messages of `SIZE` bytes every 2 ms with `delivery`
/// from a client configured with `fec`, and checks on the way that every
/// message delivered is intact, in order, once, and within its deadline.
fn run(seed: u64, c2s: LinkConfig, fec: FecConfig, delivery: Delivery) -> Run {
    let client_config = Config {
        fec,
        ..Config::default()
    };
    let s2c = link().with_loss(0.02);
    let mut sim = Sim::with_configs(client_config, Config::default(), c2s, s2c, seed);
    sim.server_ep.set_clock(sim.start, 0);
    sim.client_ep.set_clock(sim.start, 0);
    sim.run_handshake(Duration::from_secs(5));
    sim.client.set_channel_delivery(0, delivery);
    let limit = sim.now + Duration::from_secs(30);
    let (mut next, mut next_at, mut closing) = (0u64, sim.now, false);
    let mut delivered = Vec::new();
    let mut skipped = Vec::new();
    while sim.now < limit {
        while next < MESSAGES && sim.now >= next_at {
            let sent_us = (sim.now - sim.start).as_micros() as u64;
            let mut m = sent_us.to_be_bytes().to_vec();
            m.extend(body(next));
            sim.client.send(sim.now, 0, Bytes::from(m)).expect("send");
            next += 1;
            next_at += ms(2);
        }
        if next == MESSAGES && !closing {
            sim.client.close(sim.now);
            closing = true;
        }
        let now_us = (sim.now - sim.start).as_micros() as u64;
        if let Some(s) = sim.server.as_mut() {
            while let Some(m) = s.recv() {
                let sent_us = u64::from_be_bytes(m.data[..8].try_into().unwrap());
                assert!(
                    m.data[8..].iter().copied().eq(body(m.seq)),
                    "seed {seed}: message {} corrupt",
                    m.seq
                );
                if let Delivery::Deadline(d) = delivery {
                    // Within the deadline, allowing for the clock estimate's
                    // error (well under a millisecond on this link).
                    assert!(
                        now_us - sent_us <= d + 1_000,
                        "seed {seed}: message {} late by {} µs",
                        m.seq,
                        now_us - sent_us - d
                    );
                }
                delivered.push(m.seq);
            }
            while let Some(ev) = s.poll_event() {
                if let Event::Skipped { from, to, .. } = ev {
                    skipped.extend(from..to);
                }
            }
        }
        if sim.client.is_drained() && sim.server.as_ref().is_some_and(|s| s.is_drained()) {
            break;
        }
        let app_wake = (next < MESSAGES).then_some(next_at);
        let step_limit = app_wake.map_or(limit, |t| t.min(limit));
        if !sim.step(step_limit) && app_wake.is_none() && sim.next_wake().is_none() {
            break;
        }
    }
    // Every message delivered or skipped, never both, never twice, in order.
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "seed {seed}: delivered out of order or twice"
    );
    let mut all: Vec<u64> = delivered.iter().chain(&skipped).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..MESSAGES).collect::<Vec<_>>(),
        "seed {seed}: messages unaccounted for or duplicated"
    );
    Run {
        delivered,
        skipped,
        client: sim.client.stats(),
        server: sim.server.as_ref().expect("server").stats(),
    }
}

/// 100 seeds of 5 % random loss and 100 of Gilbert bursts (mean length 2,
/// about 4 % loss): with Reed-Solomon 8+4 the deadline channel loses at most a
/// fifth of what it loses without FEC, the receiver counts what it rebuilt,
/// and every delivered message is intact, on time and delivered once.
#[test]
fn fec_recovers_losses_a_budget_below_two_round_trips_cannot_retransmit() {
    let fec = FecConfig::Fixed(FecScheme::ReedSolomon {
        source: 8,
        repair: 4,
    });
    for (name, c2s) in [
        ("random 5 %", link().with_loss(0.05)),
        (
            "bursts",
            link().with_burst(GilbertElliott::gilbert(0.02, 0.5)),
        ),
    ] {
        let (mut skipped_off, mut skipped_fec, mut recovered, mut repairs) = (0, 0, 0, 0);
        for seed in 0..100u64 {
            let off = run(
                seed,
                c2s.clone(),
                FecConfig::Off,
                Delivery::Deadline(DEADLINE_US),
            );
            let on = run(seed, c2s.clone(), fec, Delivery::Deadline(DEADLINE_US));
            assert_eq!(off.client.fec_source_packets, 0);
            assert_eq!(off.server.fec_recovered_packets, 0);
            assert!(on.client.fec_source_packets > 0, "seed {seed}: unprotected");
            assert_eq!(on.server.messages_skipped, on.skipped.len() as u64);
            skipped_off += off.skipped.len();
            skipped_fec += on.skipped.len();
            recovered += on.server.fec_recovered_packets;
            repairs += on.client.fec_repair_packets_sent;
        }
        eprintln!(
            "{name}: skipped {skipped_off} without FEC, {skipped_fec} with RS 8+4 \
             ({recovered} packets rebuilt, {repairs} repair packets)"
        );
        assert!(
            skipped_off > 100,
            "{name}: the link must defeat retransmission ({skipped_off} skipped without FEC)"
        );
        assert!(
            skipped_fec * 5 <= skipped_off,
            "{name}: {skipped_fec} skipped with FEC against {skipped_off} without"
        );
        assert!(recovered > 0 && repairs > 0, "{name}: nothing recovered");
    }
}

/// XOR row/column parity protects and recovers through the same frames.
#[test]
fn xor_parity_recovers_on_a_deadline_channel() {
    let fec = FecConfig::Fixed(FecScheme::Xor { rows: 2, cols: 4 });
    let (mut skipped_off, mut skipped_fec, mut recovered) = (0, 0, 0);
    for seed in 0..20u64 {
        let c2s = link().with_loss(0.03);
        skipped_off += run(
            seed,
            c2s.clone(),
            FecConfig::Off,
            Delivery::Deadline(DEADLINE_US),
        )
        .skipped
        .len();
        let on = run(seed, c2s, fec, Delivery::Deadline(DEADLINE_US));
        skipped_fec += on.skipped.len();
        recovered += on.server.fec_recovered_packets;
    }
    assert!(recovered > 0);
    assert!(
        skipped_fec * 2 <= skipped_off,
        "{skipped_fec} skipped with XOR against {skipped_off} without"
    );
}

/// Only deadline-channel packets are protected: a reliable channel with FEC
/// configured sends no FEC frame and still delivers everything.
#[test]
fn reliable_channels_are_never_protected() {
    let fec = FecConfig::Fixed(FecScheme::ReedSolomon {
        source: 8,
        repair: 4,
    });
    let out = run(1, link().with_loss(0.05), fec, Delivery::Reliable);
    assert_eq!(out.delivered.len() as u64, MESSAGES);
    assert_eq!(out.client.fec_source_packets, 0);
    assert_eq!(out.client.fec_repair_packets_sent, 0);
}

/// `auto` leaves a clean link with time to retransmit unprotected, and
/// protects a budget below two round trips even before it has seen a loss.
#[test]
fn auto_protects_only_when_retransmission_cannot_arrive_in_time() {
    let auto = FecConfig::Auto(AutoFec::default());
    let roomy = run(2, link(), auto, Delivery::Deadline(200_000));
    assert_eq!(roomy.client.fec_source_packets, 0);
    assert_eq!(roomy.delivered.len() as u64, MESSAGES);
    let tight = run(2, link(), auto, Delivery::Deadline(DEADLINE_US));
    assert!(tight.client.fec_source_packets > 0);
    assert!(tight.client.fec_repair_packets_sent > 0);
    assert_eq!(tight.delivered.len() as u64, MESSAGES);
}

/// At 5 % loss and a budget below two round trips, `auto` recovers most of
/// what is lost.
#[test]
fn auto_recovers_most_losses_below_two_round_trips() {
    let auto = FecConfig::Auto(AutoFec::default());
    let (mut skipped_off, mut skipped_auto) = (0, 0);
    for seed in 0..20u64 {
        let c2s = link().with_loss(0.05);
        skipped_off += run(
            seed,
            c2s.clone(),
            FecConfig::Off,
            Delivery::Deadline(DEADLINE_US),
        )
        .skipped
        .len();
        skipped_auto += run(seed, c2s, auto, Delivery::Deadline(DEADLINE_US))
            .skipped
            .len();
    }
    eprintln!("skipped {skipped_off} without FEC, {skipped_auto} with auto");
    assert!(
        skipped_auto * 4 <= skipped_off,
        "{skipped_auto} skipped with auto against {skipped_off} without"
    );
}
