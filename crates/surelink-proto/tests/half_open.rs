//! A client counts itself connected as soon as the server's answer (m2)
//! arrives; the server completes only when the client's last message (m3)
//! arrives. On virtual time: every client datagram after m2 is lost for a
//! while (an overflowing server socket queue does this), then the path
//! heals.
//!
//! **The server keeps an answered handshake as long as the client keeps
//! repeating its last message.** The client repeats m3 until it hears a
//! protected packet from the server, for up to its idle timeout. The server
//! used to drop its half-open state after `handshake_timeout` (5 s) even
//! after answering: a client whose m3 copies were all lost for longer than
//! that was connected on its side, unknown on the server's, and died of
//! its idle timeout (10 s) with nothing to show for it.

mod harness;

use std::time::Duration;

use harness::Sim;
use surelink_netem::LinkConfig;
use surelink_proto::{Config, Event};

fn link() -> LinkConfig {
    LinkConfig::clean().with_delay(Duration::from_millis(5))
}

/// Events of a side, each with the virtual time it was seen at.
type Seen = Vec<(Duration, Event)>;

/// Steps the simulation until `until` (from the start), collecting events.
fn run_until(sim: &mut Sim, until: Duration, client: &mut Seen, server: &mut Seen) {
    let until = sim.start + until;
    loop {
        let at = sim.now - sim.start;
        while let Some(e) = sim.client.poll_event() {
            client.push((at, e));
        }
        if let Some(s) = sim.server.as_mut() {
            while let Some(e) = s.poll_event() {
                server.push((at, e));
            }
        }
        if !sim.step(until) {
            break;
        }
    }
}

fn closed(seen: &Seen) -> Option<&(Duration, Event)> {
    seen.iter().find(|(_, e)| matches!(e, Event::Closed { .. }))
}

/// Runs a handshake in which the client→server direction is cut from the
/// moment the server has answered the client's first message until
/// `outage` later; returns both sides' events up to 30 s.
fn handshake_with_lost_completion(config: Config, outage: Duration, seed: u64) -> (Seen, Seen) {
    let mut sim = Sim::new(config, link(), link(), seed);
    let (mut client, mut server) = (Seen::new(), Seen::new());
    // The server takes m1 and sends m2 in the same step.
    while sim.server.is_none() {
        assert!(
            sim.step(sim.start + Duration::from_secs(2)),
            "the server never heard the client"
        );
    }
    let cut_at = sim.now - sim.start;
    sim.c2s.set_cut(true);
    run_until(&mut sim, cut_at + outage, &mut client, &mut server);
    assert!(
        client.iter().any(|(_, e)| *e == Event::Connected),
        "the client did not count itself connected during the outage"
    );
    sim.c2s.set_cut(false);
    run_until(&mut sim, Duration::from_secs(30), &mut client, &mut server);
    (client, server)
}

#[test]
fn an_answered_handshake_outlives_a_loss_of_the_clients_last_message_longer_than_the_handshake_timeout(
) {
    let config = Config::default();
    let outage = config.handshake_timeout + Duration::from_secs(2);
    assert!(outage < config.idle_timeout);
    for seed in 0..4 {
        let (client, server) = handshake_with_lost_completion(config.clone(), outage, seed);
        assert!(
            server.iter().any(|(_, e)| *e == Event::Connected),
            "seed {seed}: the server never completed (server events {server:?})"
        );
        assert_eq!(
            closed(&client),
            None,
            "seed {seed}: the client's connection ended"
        );
        assert_eq!(
            closed(&server),
            None,
            "seed {seed}: the server's connection ended"
        );
    }
}

#[test]
fn an_answered_handshake_still_ends_when_the_client_is_gone_for_its_idle_timeout() {
    let config = Config::default();
    // The client's last message never arrives: both sides give up by the
    // idle timeout (plus the server's drain), not later.
    let (client, server) =
        handshake_with_lost_completion(config.clone(), Duration::from_secs(60), 1);
    let (client_end, _) = closed(&client).expect("the client's connection ended");
    let (server_end, _) = closed(&server).expect("the server's half-open connection ended");
    assert!(*client_end <= config.idle_timeout + Duration::from_secs(1));
    assert!(*server_end <= config.idle_timeout + Duration::from_secs(1));
    assert!(!server.iter().any(|(_, e)| *e == Event::Connected));
}
