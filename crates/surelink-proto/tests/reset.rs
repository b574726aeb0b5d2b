//! Stateless reset in the core: a restarted endpoint (same reset secret or
//! same static key, no connection state) answers a packet for a connection it
//! no longer knows with a Reset that closes the peer's connection with
//! `ConnectionError::Reset`; forged or stale Resets are ignored; a Reset is
//! never answered and never larger than what caused it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use surelink_proto::wire::{Frame, Header, PacketKind};
use surelink_proto::{
    Config, Connection, ConnectionError, ConnectionHandle, CryptoConfig, DatagramEvent, Endpoint,
    Event, Identity, Security, RESET_PACKET_LEN,
};

const CLIENT: &str = "127.0.0.1:5000";
const SERVER: &str = "127.0.0.1:6000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One side: a core endpoint, its connections, and what it was asked to send statelessly.
struct Side {
    addr: SocketAddr,
    ep: Endpoint,
    conns: HashMap<ConnectionHandle, Connection>,
    events: Vec<(ConnectionHandle, Event)>,
    responses: Vec<Vec<u8>>,
}

impl Side {
    fn new(addr: SocketAddr, config: Config, seed: u64, accept: bool) -> Self {
        Self {
            addr,
            ep: Endpoint::new(config, seed, accept).unwrap(),
            conns: HashMap::new(),
            events: Vec::new(),
            responses: Vec::new(),
        }
    }

    /// Routes one datagram as the runtime does; returns a stateless answer.
    fn receive(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        match self.ep.handle(now, from, data) {
            DatagramEvent::Known(h) => {
                if let Some(c) = self.conns.get_mut(&h) {
                    c.handle_datagram(now, from, data);
                }
                None
            }
            DatagramEvent::New(h, mut c) => {
                c.handle_datagram(now, from, data);
                self.conns.insert(h, *c);
                None
            }
            DatagramEvent::Respond(r) => {
                assert_eq!(r.destination, from);
                self.responses.push(r.data.clone());
                Some(r.data)
            }
            _ => None,
        }
    }

    /// Timers, events, and the datagrams the connections want to send.
    fn poll(&mut self, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for (h, c) in self.conns.iter_mut() {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
            while let Some(t) = c.poll_transmit(now, &mut buf) {
                out.push((t.destination, buf[..t.size].to_vec()));
            }
            while let Some(e) = c.poll_event() {
                if e == Event::Connected {
                    self.ep.set_peer_cid(*h, c.peer_cid());
                }
                self.events.push((*h, e));
            }
        }
        out
    }

    fn closed_with(&self) -> Vec<Option<ConnectionError>> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Closed { error } => Some(error.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Exchanges datagrams for `rounds` steps of 1 ms (stateless answers go back
/// to their source). Returns every datagram the server side received.
fn run(client: &mut Side, server: &mut Side, now: &mut Instant, rounds: usize) -> Vec<Vec<u8>> {
    let mut to_server = Vec::new();
    for _ in 0..rounds {
        *now += Duration::from_millis(1);
        for (dest, d) in client.poll(*now) {
            assert_eq!(dest, server.addr);
            to_server.push(d.clone());
            if let Some(answer) = server.receive(*now, client.addr, &d) {
                assert!(answer.len() < d.len(), "a stateless answer is smaller");
                client.receive(*now, server.addr, &answer);
            }
        }
        for (dest, d) in server.poll(*now) {
            assert_eq!(dest, client.addr);
            if let Some(answer) = client.receive(*now, server.addr, &d) {
                server.receive(*now, client.addr, &answer);
            }
        }
    }
    to_server
}

fn plaintext(secret: Option<[u8; 32]>) -> Config {
    Config {
        security: Security::InsecurePlaintext,
        reset_secret: secret,
        ..Config::default()
    }
}

fn encrypted(id: u8) -> Config {
    Config {
        security: Security::Encrypted(CryptoConfig {
            identity: Some(Identity::from_private([id; 32])),
            ..CryptoConfig::default()
        }),
        ..Config::default()
    }
}

/// Connects, moves some data, then replaces the server with a fresh endpoint
/// built from `restarted` (a process restart: same address, no connections);
/// `closing` makes the client close gracefully right before.
fn restart_server(client: Config, server: Config, restarted: Config, closing: bool) -> Side {
    let mut now = Instant::now();
    let mut c = Side::new(addr(CLIENT), client, 1, false);
    let mut s = Side::new(addr(SERVER), server, 2, true);
    let (h, conn) = c.ep.connect(now, s.addr);
    c.conns.insert(h, conn);
    run(&mut c, &mut s, &mut now, 50);
    assert!(c.conns[&h].is_established(), "{:?}", c.events);
    c.conns
        .get_mut(&h)
        .unwrap()
        .send(now, 0, Bytes::from_static(b"before the crash"))
        .unwrap();
    run(&mut c, &mut s, &mut now, 20);
    assert!(s.conns.values_mut().any(|sc| sc.recv().is_some()));

    let mut s = Side::new(addr(SERVER), restarted, 3, true);
    let conn = c.conns.get_mut(&h).unwrap();
    if closing {
        conn.close(now);
    } else {
        conn.send(now, 0, Bytes::from_static(b"after the crash"))
            .unwrap();
    }
    run(&mut c, &mut s, &mut now, 20);
    assert!(s.conns.is_empty(), "the restarted server keeps no state");
    c
}

#[test]
fn restarted_server_with_the_same_secret_resets_the_client() {
    let secret = Some([7; 32]);
    let c = restart_server(
        plaintext(secret),
        plaintext(secret),
        plaintext(secret),
        false,
    );
    assert_eq!(c.closed_with(), vec![Some(ConnectionError::Reset)]);
}

#[test]
fn a_reset_answering_a_graceful_close_ends_it_gracefully() {
    let c = restart_server(encrypted(1), encrypted(2), encrypted(2), true);
    assert_eq!(c.closed_with(), vec![None]);
    assert!(c.conns.values().all(Connection::is_closed));
}

#[test]
fn restarted_server_with_the_same_static_key_resets_the_client() {
    let c = restart_server(encrypted(1), encrypted(2), encrypted(2), false);
    assert_eq!(c.closed_with(), vec![Some(ConnectionError::Reset)]);
}

#[test]
fn a_reset_from_another_key_is_ignored() {
    // A different secret (e.g. a random one: no persistent state) cannot
    // produce the token: the client keeps its connection (and will time out).
    let c = restart_server(
        plaintext(Some([7; 32])),
        plaintext(Some([7; 32])),
        plaintext(Some([8; 32])),
        false,
    );
    assert!(c.closed_with().is_empty(), "{:?}", c.events);
    let conn = c.conns.values().next().unwrap();
    assert!(conn.stats().bad_resets > 0);
    assert!(!conn.is_closed());
}

#[test]
fn forged_resets_and_garbage_are_ignored() {
    let mut now = Instant::now();
    let mut c = Side::new(addr(CLIENT), encrypted(1), 1, false);
    let mut s = Side::new(addr(SERVER), encrypted(2), 2, true);
    let (h, conn) = c.ep.connect(now, s.addr);
    c.conns.insert(h, conn);
    run(&mut c, &mut s, &mut now, 50);
    let peer_cid = c.conns[&h].peer_cid();
    let reset = |cid: u64, body: &[u8]| {
        let mut d = Vec::new();
        Header {
            kind: PacketKind::Reset,
            flags: 0,
            dcid: cid,
            pn: 0,
        }
        .encode(&mut d);
        d.extend_from_slice(body);
        d
    };
    let mut forged = Vec::new();
    for guess in 0..64u8 {
        let mut body = Vec::new();
        Frame::Token(&[guess; 16]).encode(&mut body);
        forged.push(reset(peer_cid, &body));
    }
    forged.push(reset(peer_cid, &[]));
    forged.push(reset(peer_cid, &[0x11, 16, 1, 2]));
    forged.push(reset(peer_cid, &[0xff; 40]));
    let mut two_tokens = Vec::new();
    Frame::Token(&[0; 16]).encode(&mut two_tokens);
    Frame::Token(&[0; 16]).encode(&mut two_tokens);
    forged.push(reset(peer_cid, &two_tokens));
    for d in &forged {
        for n in 0..=d.len() {
            assert!(c.receive(now, s.addr, &d[..n]).is_none(), "never answered");
        }
    }
    // Also from an address that is not a path of the connection.
    let mut body = Vec::new();
    Frame::Token(&[0; 16]).encode(&mut body);
    c.receive(now, addr("127.0.0.1:6001"), &reset(peer_cid, &body));
    let conn = &c.conns[&h];
    assert!(!conn.is_closed(), "{:?}", c.events);
    assert!(conn.stats().bad_resets >= forged.len() as u64);
    // Still working.
    c.conns
        .get_mut(&h)
        .unwrap()
        .send(now, 0, Bytes::from_static(b"still here"))
        .unwrap();
    run(&mut c, &mut s, &mut now, 20);
    assert!(s.conns.values_mut().any(|sc| sc.recv().is_some()));
}

#[test]
fn resets_never_answer_resets_never_amplify_and_are_rate_limited() {
    let now = Instant::now();
    let mut ep = Endpoint::new(plaintext(Some([1; 32])), 1, true).unwrap();
    let from = addr(CLIENT);
    let packet = |kind: PacketKind, len: usize| {
        let mut d = Vec::new();
        Header {
            kind,
            flags: 2,
            dcid: 42,
            pn: 9,
        }
        .encode(&mut d);
        d.resize(len, 0);
        d
    };
    // A Reset for an unknown id is dropped, whatever its size.
    for len in [RESET_PACKET_LEN, 100, 1400] {
        assert!(matches!(
            ep.handle(now, from, &packet(PacketKind::Reset, len)),
            DatagramEvent::Dropped(_)
        ));
    }
    // A Data packet no larger than a Reset gets no answer.
    assert!(matches!(
        ep.handle(now, from, &packet(PacketKind::Data, RESET_PACKET_LEN)),
        DatagramEvent::Dropped(_)
    ));
    // Larger ones do, smaller than the trigger, until the budget runs out.
    let mut answered = 0;
    for _ in 0..1000 {
        match ep.handle(now, from, &packet(PacketKind::Data, RESET_PACKET_LEN + 1)) {
            DatagramEvent::Respond(r) => {
                assert_eq!(r.data.len(), RESET_PACKET_LEN);
                let (kind, cid) = Header::peek_route(&r.data).unwrap();
                assert_eq!((kind, cid), (PacketKind::Reset, 42));
                // Fed back to the endpoint that sent it: not answered.
                assert!(matches!(
                    ep.handle(now, from, &r.data),
                    DatagramEvent::Dropped(_)
                ));
                answered += 1;
            }
            DatagramEvent::Dropped(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        answered > 0 && answered <= 16,
        "{answered} answers in a burst"
    );
    assert_eq!(ep.stats().resets_sent, answered);
    // The budget refills with time.
    let later = now + Duration::from_secs(1);
    assert!(matches!(
        ep.handle(later, from, &packet(PacketKind::Data, 200)),
        DatagramEvent::Respond(_)
    ));
}

#[test]
fn two_endpoints_that_both_lost_the_connection_do_not_loop() {
    // Each answers the other's Data with a Reset; Resets are never answered.
    let now = Instant::now();
    let mut a = Endpoint::new(plaintext(Some([1; 32])), 1, true).unwrap();
    let mut b = Endpoint::new(plaintext(Some([2; 32])), 2, true).unwrap();
    let mut d = Vec::new();
    Header {
        kind: PacketKind::Data,
        flags: 2,
        dcid: 5,
        pn: 1,
    }
    .encode(&mut d);
    d.resize(200, 0);
    let mut datagram = d;
    let mut hops = 0;
    let mut at_a = true;
    while hops < 10 {
        let ep = if at_a { &mut a } else { &mut b };
        match ep.handle(now, addr(CLIENT), &datagram) {
            DatagramEvent::Respond(r) => datagram = r.data,
            _ => break,
        }
        at_a = !at_a;
        hops += 1;
    }
    assert_eq!(hops, 1, "one Reset, then silence");
}
