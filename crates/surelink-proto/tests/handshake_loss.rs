//! Loss during the handshake, on a virtual clock: the client's last
//! handshake message (the one that completes it on the server) is lost
//! while the data packets it sent right after it arrive.
//!
//! **The server does not take data before its handshake completes.** In
//! plaintext mode a Data packet needs no keys, so a server still waiting
//! for the client's last message used to accept one: the packet armed the
//! delayed-ACK timer, but nothing is sent before the handshake completes, so
//! the ACK deadline stayed in the past, `poll_timeout` returned it forever
//! and the virtual clock could not move on to the client's repetition of its
//! last message (the harness's "no progress"). Such a packet is now dropped
//! unread, as it is in encrypted mode (no keys yet): the client repeats its
//! last message until the server answers, and repairs the data as it would
//! any loss.
//!
//! Each run sends a few small messages spaced out, so that a single data
//! packet arrives on its own (a single one arms the delayed ACK; several
//! ask for an immediate one), over 30 % loss each way.

mod harness;

use std::time::Duration;

use harness::{assert_exactly_once, Sim, Traced, Workload};
use surelink_netem::LinkConfig;
use surelink_proto::wire::{Header, PacketKind, Reader};
use surelink_proto::{Config, Security};

/// The first seed on which plaintext mode stopped making progress.
const PLAINTEXT_STALL_SEED: u64 = 1;
const SEEDS: u64 = 40;

fn lossy() -> LinkConfig {
    LinkConfig::clean()
        .with_loss(0.3)
        .with_delay(Duration::from_millis(10))
}

fn plaintext() -> Config {
    Config {
        security: Security::InsecurePlaintext,
        ..Config::default()
    }
}

fn workload() -> Workload {
    Workload {
        messages: 5,
        max_size: 100,
        interval: Duration::from_millis(30),
    }
}

/// Runs the workload over lossy links with `config` on both sides, with a
/// trace; asserts exactly-once delivery and a graceful close.
fn transfer(config: Config, seed: u64) -> Vec<Traced> {
    let mut sim = Sim::new(config, lossy(), lossy(), seed);
    sim.trace = Some(Vec::new());
    let out = sim.run_transfer(&workload(), Duration::from_secs(60));
    assert_exactly_once(&out, workload().messages, &format!("seed {seed}"));
    sim.trace.take().expect("trace")
}

/// The kind of packet `d` is, if its header reads.
fn kind(d: &Traced) -> Option<PacketKind> {
    Header::decode(&mut Reader::new(&d.data))
        .ok()
        .map(|h| h.kind)
}

/// True if the client's first Handshake packet (its last handshake message)
/// was lost and a Data packet it sent before repeating that message reached
/// the server.
fn data_arrived_before_handshake_completed(trace: &[Traced]) -> bool {
    let mut client = trace.iter().filter(|d| d.from_client);
    let Some(first) = client.find(|d| kind(d) == Some(PacketKind::Handshake)) else {
        return false;
    };
    first.fate.is_dropped()
        && client
            .take_while(|d| kind(d) != Some(PacketKind::Handshake))
            .any(|d| kind(d) == Some(PacketKind::Data) && !d.fate.is_dropped())
}

#[test]
fn plaintext_server_handshake_completion_lost_while_data_arrives() {
    let trace = transfer(plaintext(), PLAINTEXT_STALL_SEED);
    assert!(
        data_arrived_before_handshake_completed(&trace),
        "the seed no longer loses the client's last handshake message ahead of its data"
    );
}

#[test]
fn handshakes_under_loss_complete_and_deliver_in_both_modes() {
    for (mode, config) in [("plaintext", plaintext()), ("encrypted", Config::default())] {
        let mut scenario_seen = 0;
        for seed in 0..SEEDS {
            let trace = transfer(config.clone(), seed);
            if data_arrived_before_handshake_completed(&trace) {
                scenario_seen += 1;
            }
        }
        assert!(
            scenario_seen > 0,
            "{mode}: no seed lost the client's last handshake message ahead of its data"
        );
    }
}
