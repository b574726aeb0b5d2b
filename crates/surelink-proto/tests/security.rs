//! Security in the core: handshake success and failure matrix, no plaintext on
//! the wire, replay and tampering, key updates, and flood defences.

mod harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::{assert_exactly_once, Sim, Workload};
use rand::SeedableRng;
use surelink_netem::LinkConfig;
use surelink_proto::wire::{Frame, Header, PacketKind};
use surelink_proto::{
    close_code, Config, ConnectionError, CryptoConfig, DatagramEvent, Endpoint, Event, Identity,
    PublicKey, Security,
};

fn identity(n: u8) -> Identity {
    Identity::from_private([n; 32])
}

fn encrypted(c: CryptoConfig) -> Config {
    Config {
        security: Security::Encrypted(c),
        ..Config::default()
    }
}

fn crypto(id: u8) -> CryptoConfig {
    CryptoConfig {
        identity: Some(identity(id)),
        ..CryptoConfig::default()
    }
}

fn clean() -> LinkConfig {
    LinkConfig::clean().with_delay(Duration::from_millis(5))
}

fn closed_error(events: &[Event]) -> Option<Option<ConnectionError>> {
    events.iter().find_map(|e| match e {
        Event::Closed { error } => Some(error.clone()),
        _ => None,
    })
}

/// Runs a handshake; returns (client events, server events, sim).
fn handshake(client: Config, server: Config) -> (Vec<Event>, Vec<Event>, Sim) {
    let mut sim = Sim::with_configs(client, server, clean(), clean(), 11);
    let (c, s) = sim.run_handshake(Duration::from_secs(30));
    (c, s, sim)
}

#[test]
fn ephemeral_keys_connect_and_authenticate_each_other() {
    let (c, s, sim) = handshake(Config::default(), Config::default());
    assert!(c.contains(&Event::Connected), "{c:?}");
    assert!(s.contains(&Event::Connected), "{s:?}");
    let server = sim.server.as_ref().unwrap();
    assert_eq!(
        server.peer_key(),
        Some(sim.client_ep.identity().unwrap().public())
    );
    assert_eq!(
        sim.client.peer_key(),
        Some(sim.server_ep.identity().unwrap().public())
    );
}

#[test]
fn expected_server_key_matches() {
    let client = encrypted(CryptoConfig {
        peer_key: Some(identity(2).public()),
        ..crypto(1)
    });
    let (c, s, _) = handshake(client, encrypted(crypto(2)));
    assert!(c.contains(&Event::Connected) && s.contains(&Event::Connected));
}

#[test]
fn wrong_server_key_fails_on_both_sides_with_distinct_errors() {
    let client = encrypted(CryptoConfig {
        peer_key: Some(identity(9).public()),
        ..crypto(1)
    });
    let (c, s, _) = handshake(client, encrypted(crypto(2)));
    assert_eq!(
        closed_error(&c),
        Some(Some(ConnectionError::PeerKeyMismatch {
            expected: identity(9).public(),
            got: identity(2).public()
        }))
    );
    assert!(!c.contains(&Event::Connected));
    match closed_error(&s) {
        Some(Some(ConnectionError::Rejected { code, reason })) => {
            assert_eq!(code, close_code::SERVER_KEY_MISMATCH);
            assert!(reason.contains("expected server key"), "{reason}");
        }
        other => panic!("server: {other:?}"),
    }
    assert!(!s.contains(&Event::Connected));
}

#[test]
fn allow_list_admits_and_refuses() {
    let allow = |keys: Vec<PublicKey>| {
        encrypted(CryptoConfig {
            allow: Some(keys),
            ..crypto(2)
        })
    };
    let (c, s, _) = handshake(encrypted(crypto(1)), allow(vec![identity(1).public()]));
    assert!(c.contains(&Event::Connected) && s.contains(&Event::Connected));

    let (c, s, _) = handshake(encrypted(crypto(1)), allow(vec![identity(3).public()]));
    assert_eq!(
        closed_error(&s),
        Some(Some(ConnectionError::PeerNotAllowed(identity(1).public())))
    );
    assert!(
        !s.contains(&Event::Connected),
        "never offered to the application"
    );
    match closed_error(&c) {
        Some(Some(ConnectionError::Rejected { code, reason })) => {
            assert_eq!(code, close_code::KEY_NOT_ALLOWED);
            assert!(reason.contains("allow-list"), "{reason}");
        }
        other => panic!("client: {other:?}"),
    }
}

#[test]
fn pre_shared_key_must_match() {
    let psk = |k: u8| {
        encrypted(CryptoConfig {
            psk: Some([k; 32]),
            ..CryptoConfig::default()
        })
    };
    let (c, s, _) = handshake(psk(5), psk(5));
    assert!(c.contains(&Event::Connected) && s.contains(&Event::Connected));

    let (c, s, _) = handshake(psk(5), psk(6));
    assert!(matches!(
        closed_error(&s),
        Some(Some(ConnectionError::HandshakeFailed(_)))
    ));
    assert!(matches!(
        closed_error(&c),
        Some(Some(ConnectionError::Rejected {
            code: close_code::HANDSHAKE_FAILED,
            ..
        }))
    ));

    let (c, _, _) = handshake(Config::default(), psk(6));
    assert!(matches!(
        closed_error(&c),
        Some(Some(ConnectionError::Rejected {
            code: close_code::HANDSHAKE_FAILED,
            ..
        }))
    ));
}

#[test]
fn plaintext_and_encrypted_peers_refuse_each_other_clearly() {
    let plain = Config {
        security: Security::InsecurePlaintext,
        ..Config::default()
    };
    let (c, _, _) = handshake(plain.clone(), Config::default());
    assert!(matches!(
        closed_error(&c),
        Some(Some(ConnectionError::Rejected {
            code: close_code::ENCRYPTION_REQUIRED,
            ..
        }))
    ));
    let (c, _, _) = handshake(Config::default(), plain.clone());
    assert!(matches!(
        closed_error(&c),
        Some(Some(ConnectionError::Rejected {
            code: close_code::PLAINTEXT_ONLY,
            ..
        }))
    ));
    let (c, s, _) = handshake(plain.clone(), plain);
    assert!(c.contains(&Event::Connected) && s.contains(&Event::Connected));
}

const MARKER: &[u8] = b"SURELINK-SECRET-MARKER";

/// Transfers messages containing MARKER and returns every datagram sent.
fn capture_transfer(config: Config) -> Vec<Vec<u8>> {
    let mut sim = Sim::new(config, clean(), clean(), 3);
    sim.capture = Some((Vec::new(), Vec::new()));
    for i in 0..200u32 {
        let mut m = MARKER.to_vec();
        m.extend_from_slice(&i.to_be_bytes());
        sim.client.send(sim.now, 0, Bytes::from(m)).unwrap();
    }
    sim.client.close(sim.now);
    let deadline = sim.now + Duration::from_secs(60);
    while !sim.client.is_drained() && sim.step(deadline) {
        while sim.server.as_mut().and_then(|s| s.recv()).is_some() {}
    }
    assert!(sim.client.is_drained());
    let (c, s) = sim.capture.take().unwrap();
    c.into_iter().chain(s).collect()
}

#[test]
fn no_plaintext_on_the_wire() {
    let contains = |d: &Vec<u8>| d.windows(MARKER.len()).any(|w| w == MARKER);
    let encrypted = capture_transfer(Config::default());
    assert!(encrypted.len() > 5);
    assert!(!encrypted.iter().any(contains));
    // The check itself works: in plaintext mode the marker is visible.
    let plain = capture_transfer(Config {
        security: Security::InsecurePlaintext,
        ..Config::default()
    });
    assert!(plain.iter().any(contains));
}

#[test]
fn replayed_and_tampered_packets_change_nothing() {
    let w = Workload {
        messages: 300,
        max_size: 800,
        interval: Duration::from_millis(2),
    };
    let mut sim = Sim::new(Config::default(), clean(), clean(), 5);
    sim.capture = Some((Vec::new(), Vec::new()));
    // Run half the transfer, then replay everything the client sent so far.
    let mut delivered = Vec::new();
    let mut seq = 0;
    let half = sim.start + Duration::from_millis(300);
    while sim.now < half {
        while seq < w.messages && seq < (sim.now - sim.start).as_millis() as u64 / 2 {
            sim.client
                .send(sim.now, 0, harness::message(seq, w.max_size))
                .unwrap();
            seq += 1;
        }
        sim.step(sim.now + Duration::from_millis(1));
        while let Some(m) = sim.server.as_mut().and_then(|s| s.recv()) {
            delivered.push(m.seq);
        }
    }
    let (captured, _) = sim.capture.take().unwrap();
    // Let everything captured arrive before replaying it.
    let settle = sim.now + Duration::from_millis(30);
    while sim.step(settle) {}
    while let Some(m) = sim.server.as_mut().and_then(|s| s.recv()) {
        delivered.push(m.seq);
    }
    let data: Vec<_> = captured
        .iter()
        .filter(|d| d[1] & 0x0f == 2) // Data packets
        .cloned()
        .collect();
    assert!(data.len() > 50);
    let (now, addr) = (sim.now, sim.client_addr);
    let server = sim.server.as_mut().unwrap();
    let before = server.stats();
    for d in &data {
        server.handle_datagram(now, addr, d);
    }
    let after = server.stats();
    assert_eq!(
        after.packets_received, before.packets_received,
        "replays accepted"
    );
    assert_eq!(
        after.duplicate_packets,
        before.duplicate_packets + data.len() as u64
    );
    // A fresh packet the server has not seen: every single-bit change of it,
    // header or payload, is refused; the original is then accepted.
    sim.client
        .send(sim.now, 0, harness::message(seq, w.max_size))
        .unwrap();
    seq += 1;
    let mut buf = Vec::new();
    let t = sim.client.poll_transmit(now, &mut buf).unwrap();
    let fresh = buf[..t.size].to_vec();
    let server = sim.server.as_mut().unwrap();
    for bit in 0..fresh.len() * 8 {
        let mut t = fresh.clone();
        t[bit / 8] ^= 1 << (bit % 8);
        server.handle_datagram(now, addr, &t);
    }
    let tampered = server.stats();
    assert_eq!(
        tampered.packets_received, after.packets_received,
        "a tampered packet got in"
    );
    assert!(tampered.auth_failures >= after.auth_failures + (fresh.len() as u64 - 18) * 8);
    server.handle_datagram(now, addr, &fresh);
    assert_eq!(
        server.stats().packets_received,
        tampered.packets_received + 1
    );
    // The transfer then completes exactly once.
    sim.capture = None;
    while seq < w.messages {
        sim.client
            .send(sim.now, 0, harness::message(seq, w.max_size))
            .unwrap();
        seq += 1;
    }
    let rest = sim.run_transfer(
        &Workload {
            messages: 0,
            ..w.clone()
        },
        Duration::from_secs(60),
    );
    delivered.extend(rest.delivered);
    assert_eq!(delivered, (0..w.messages).collect::<Vec<_>>());
}

#[test]
fn keys_rotate_under_load_without_loss() {
    let config = encrypted(CryptoConfig {
        rekey_after_bytes: 50_000,
        ..CryptoConfig::default()
    });
    let w = Workload {
        messages: 400,
        max_size: 3000,
        interval: Duration::ZERO,
    };
    let link = LinkConfig::clean()
        .with_delay(Duration::from_millis(5))
        .with_loss(0.03)
        .with_reorder(0.05, Duration::from_millis(4));
    let mut sim = Sim::new(config, link.clone(), link, 8);
    let out = sim.run_transfer(&w, Duration::from_secs(120));
    assert_exactly_once(&out, w.messages, "rekey");
    let sender = out.client_stats.unwrap();
    let receiver = out.server_stats.unwrap();
    assert!(sender.key_updates >= 5, "{}", sender.key_updates);
    assert!(receiver.key_updates >= 5, "{}", receiver.key_updates);
}

/// A forged Initial: valid framing, random client id, padded.
fn forged_initial(rng: &mut rand_chacha::ChaCha8Rng) -> Vec<u8> {
    use rand::RngCore;
    let mut d = Vec::new();
    Header {
        kind: PacketKind::Initial,
        flags: 0,
        dcid: rng.next_u64(),
        pn: 0,
    }
    .encode(&mut d);
    let mut msg = [0u8; 48];
    rng.fill_bytes(&mut msg);
    Frame::Handshake(&msg).encode(&mut d);
    Frame::Padding(1200 - d.len()).encode(&mut d);
    d
}

#[test]
fn flood_of_forged_initials_and_garbage_leaves_room_for_a_real_client() {
    use rand::RngCore;
    let now0 = Instant::now();
    let config = Config::default();
    let mut server = Endpoint::new(config.clone(), 77, true).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let attacker =
        |i: u64| -> SocketAddr { format!("127.0.0.1:{}", 20000 + i % 4000).parse().unwrap() };
    let mut conns = Vec::new();
    let (mut received, mut sent) = (0u64, 0u64);
    // 100,000 forged Initials and random datagrams over 10 simulated seconds.
    for i in 0..100_000u64 {
        let now = now0 + Duration::from_micros(i * 100);
        let from = attacker(i);
        let d = if i % 2 == 0 {
            forged_initial(&mut rng)
        } else {
            let mut g = vec![0u8; (rng.next_u32() % 1400) as usize];
            rng.fill_bytes(&mut g);
            g
        };
        received += d.len() as u64;
        match server.handle(now, from, &d) {
            DatagramEvent::New(_, mut c) => {
                c.handle_datagram(now, from, &d);
                let mut buf = Vec::new();
                while let Some(t) = c.poll_transmit(now, &mut buf) {
                    sent += t.size as u64;
                }
                conns.push(c);
            }
            DatagramEvent::Respond(r) => sent += r.data.len() as u64,
            _ => {}
        }
        // Half-open connections time out (as the runtime would drive them).
        if i % 1000 == 0 {
            conns.retain_mut(|c| {
                c.handle_timeout(now);
                !c.is_drained()
            });
        }
        assert!(server.connection_count() <= config.max_connections);
    }
    assert!(
        sent <= 3 * received,
        "amplification: sent {sent}, received {received}"
    );
    assert!(server.stats().retries_sent > 0, "retry mode engaged");
    assert!(
        server.stats().accepted as usize <= config.retry_threshold * 3,
        "state was kept for {} forged handshakes",
        server.stats().accepted
    );

    // A legitimate client, during the flood, completes (via a retry token).
    let mut client_ep = Endpoint::new(Config::default(), 78, false).unwrap();
    let c_addr: SocketAddr = "127.0.0.1:9999".parse().unwrap();
    let s_addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
    let mut now = now0 + Duration::from_secs(10);
    // Keep the server "under load".
    for _ in 0..config.retry_threshold {
        let d = forged_initial(&mut rng);
        if let DatagramEvent::New(_, c) = server.handle(now, attacker(rng.next_u64()), &d) {
            conns.push(c);
        }
    }
    let (_, mut client) = client_ep.connect(now, s_addr);
    let mut legit = None;
    let mut buf = Vec::new();
    for _ in 0..20 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            let d = buf[..t.size].to_vec();
            match server.handle(now, c_addr, &d) {
                DatagramEvent::New(_, c) => legit = Some(c),
                DatagramEvent::Respond(r) => client.handle_datagram(now, s_addr, &r.data),
                DatagramEvent::Known(_) => {}
                DatagramEvent::Dropped(r) => panic!("legitimate datagram dropped: {r:?}"),
                _ => {}
            }
            if let Some(s) = legit.as_mut() {
                s.handle_datagram(now, c_addr, &d);
            }
        }
        if let Some(s) = legit.as_mut() {
            while let Some(t) = s.poll_transmit(now, &mut buf) {
                client.handle_datagram(now, s_addr, &buf[..t.size]);
            }
        }
        now += Duration::from_millis(1);
        client.handle_timeout(now);
    }
    assert!(client.is_established());
    assert!(legit.unwrap().is_established());
    assert!(client.stats().probe_timeouts == 0 || client.is_established());
}
