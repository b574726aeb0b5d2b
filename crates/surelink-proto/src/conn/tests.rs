//! Unit tests of the connection state machine over a perfect, instant network.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::endpoint::{DatagramEvent, Endpoint};

struct Pair {
    now: Instant,
    client: Connection,
    server: Option<Connection>,
    server_ep: Endpoint,
    c_addr: SocketAddr,
    s_addr: SocketAddr,
    /// Datagrams dropped on the way client→server while true.
    cut: bool,
    /// The next this many datagrams server→client are dropped.
    drop_from_server: usize,
}

impl Pair {
    fn new(config: Config) -> Self {
        let now = Instant::now();
        let c_addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let s_addr: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let mut client_ep = Endpoint::new(config.clone(), 1, false).unwrap();
        let server_ep = Endpoint::new(config, 2, true).unwrap();
        let (_, client) = client_ep.connect(now, s_addr);
        Self {
            now,
            client,
            server: None,
            server_ep,
            c_addr,
            s_addr,
            cut: false,
            drop_from_server: 0,
        }
    }

    /// Exchanges datagrams until both sides are quiet.
    fn flush(&mut self) {
        let mut buf = Vec::new();
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
                moved = true;
                if self.cut {
                    continue;
                }
                match self.server_ep.handle(self.now, self.c_addr, &buf[..t.size]) {
                    DatagramEvent::New(_, c) => self.server = Some(*c),
                    DatagramEvent::Known(_) => {}
                    DatagramEvent::Respond(r) => {
                        self.client.handle_datagram(self.now, self.s_addr, &r.data);
                        continue;
                    }
                    _ => continue,
                }
                let s = self.server.as_mut().unwrap();
                s.handle_datagram(self.now, self.c_addr, &buf[..t.size]);
            }
            if let Some(s) = self.server.as_mut() {
                while let Some(t) = s.poll_transmit(self.now, &mut buf) {
                    moved = true;
                    if self.drop_from_server > 0 {
                        self.drop_from_server -= 1;
                        continue;
                    }
                    if !self.cut {
                        self.client
                            .handle_datagram(self.now, self.s_addr, &buf[..t.size]);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// Advances to the next timer of either side and handles it.
    fn advance(&mut self) {
        let next = [
            self.client.poll_timeout(),
            self.server.as_ref().and_then(|s| s.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("a timer");
        self.now = self.now.max(next);
        self.client.handle_timeout(self.now);
        if let Some(s) = self.server.as_mut() {
            s.handle_timeout(self.now);
        }
        self.flush();
    }

    fn server(&mut self) -> &mut Connection {
        self.server.as_mut().unwrap()
    }
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn handshake_transfer_and_graceful_close() {
    let mut p = Pair::new(Config::default());
    p.flush();
    assert!(p.client.is_established());
    assert_eq!(events(&mut p.client), vec![Event::Connected]);
    assert_eq!(events(p.server()), vec![Event::Connected]);
    for i in 0..100u8 {
        p.client
            .send(p.now, 0, Bytes::from(vec![i; i as usize * 50]))
            .unwrap();
    }
    p.client.close(p.now);
    assert_eq!(
        p.client.send(p.now, 0, Bytes::new()),
        Err(SendError::Closing)
    );
    while !p.client.is_drained() {
        p.advance();
    }
    for i in 0..100u8 {
        let m = p.server().recv().unwrap();
        assert_eq!((m.seq, m.data.len()), (u64::from(i), i as usize * 50));
    }
    assert!(p.server().recv().is_none());
    assert_eq!(events(&mut p.client), vec![Event::Closed { error: None }]);
    assert!(p.client.is_drained());
    assert_eq!(events(p.server()), vec![Event::Closed { error: None }]);
    // The server lingers, then is drained.
    while !p.server().is_drained() {
        p.advance();
    }
    assert_eq!(p.server().stats().messages_delivered, 100);
}

#[test]
fn close_waits_for_acknowledgement() {
    let mut p = Pair::new(Config::default());
    p.flush();
    p.client
        .send(p.now, 0, Bytes::from_static(b"important"))
        .unwrap();
    p.cut = true;
    p.flush();
    p.client.close(p.now);
    p.flush();
    assert!(!p.client.is_closed(), "data unacknowledged: no close yet");
    p.cut = false;
    while !p.client.is_drained() {
        p.advance();
    }
    assert_eq!(p.client.error(), None);
    assert_eq!(p.server().recv().unwrap().data, &b"important"[..]);
}

#[test]
fn idle_timeout_closes_with_error() {
    let config = Config {
        idle_timeout: Duration::from_secs(3),
        ..Config::default()
    };
    let mut p = Pair::new(config);
    p.flush();
    p.cut = true;
    p.server = None; // the server vanished
    let start = p.now;
    let mut events = Vec::new();
    while !p.client.is_drained() {
        p.advance();
        events.extend(std::iter::from_fn(|| p.client.poll_event()));
    }
    // The failure detector declared the only path down long before the idle
    // timeout ended the connection.
    assert!(events.contains(&Event::PathDown(PathId(0))), "{events:?}");
    assert!(events.contains(&Event::ConnectionLost));
    assert_eq!(p.client.error(), Some(&ConnectionError::ConnectionLost));
    assert!(p.now - start >= Duration::from_secs(3));
    assert!(p.now - start < Duration::from_secs(5));
}

#[test]
fn unreachable_server_times_out_during_handshake() {
    let mut p = Pair::new(Config {
        idle_timeout: Duration::from_secs(2),
        ..Config::default()
    });
    p.cut = true;
    p.flush();
    while !p.client.is_drained() {
        p.advance();
    }
    assert_eq!(p.client.error(), Some(&ConnectionError::TimedOut));
    assert!(
        p.client.stats().probe_timeouts >= 2,
        "initial was retransmitted"
    );
}

#[test]
fn oversized_messages_are_refused() {
    let mut p = Pair::new(Config {
        max_message_size: 1000,
        receive_window: 1 << 20,
        ..Config::default()
    });
    assert_eq!(
        p.client.send(p.now, 0, Bytes::from(vec![0; 1001])),
        Err(SendError::TooLarge {
            size: 1001,
            max: 1000
        })
    );
    p.client.send(p.now, 0, Bytes::from(vec![0; 1000])).unwrap();
}

#[test]
fn send_many_stops_at_the_first_refused_message_and_leaves_it_first() {
    let mut p = Pair::new(Config {
        max_message_size: 1000,
        send_buffer: 3_000,
        receive_window: 1 << 20,
        ..Config::default()
    });
    let sizes = [10, 20, 1001, 30];
    let mut batch = sizes.iter().map(|&n| Bytes::from(vec![1; n])).peekable();
    let (queued, result) = p.client.send_many(p.now, 4, &mut batch);
    assert_eq!(queued, 2);
    assert_eq!(
        result,
        Err(SendError::TooLarge {
            size: 1001,
            max: 1000
        })
    );
    assert_eq!(batch.peek().map(Bytes::len), Some(1001));
    batch.next();
    // The rest goes on until the send buffer is full: the blocked one stays.
    let rest: Vec<Bytes> = std::iter::once(Bytes::from(vec![2; 30]))
        .chain((0..10).map(|_| Bytes::from(vec![3; 1000])))
        .collect();
    let mut batch = rest.into_iter().peekable();
    let (queued, result) = p.client.send_many(p.now, 4, &mut batch);
    assert_eq!((queued, result), (3, Err(SendError::Blocked)));
    assert_eq!(batch.len(), 8);
    p.flush();
    let (queued, result) = p.client.send_many(p.now, 4, &mut batch);
    assert_eq!((queued, result), (3, Err(SendError::Blocked)));
    assert_eq!(batch.len(), 5);
    assert_eq!(p.client.stats().messages_sent, 8);
    // Sequence numbers run on across calls, in order.
    let seqs: Vec<u64> = std::iter::from_fn(|| p.server().recv())
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, (0..5).collect::<Vec<_>>());
}

#[test]
fn recv_many_takes_at_most_max_in_order_and_records_every_latency() {
    let mut p = Pair::new(Config::default());
    let mut batch = (0..10u8).map(|i| Bytes::from(vec![i; 20])).peekable();
    let (queued, result) = p.client.send_many(p.now, 0, &mut batch);
    assert_eq!((queued, result), (10, Ok(())));
    p.flush();
    let mut out = Vec::new();
    assert_eq!(p.server().recv_many(&mut out, 4), 4);
    assert_eq!(p.server().recv_many(&mut out, 100), 6);
    assert_eq!(p.server().recv_many(&mut out, 100), 0);
    for (i, m) in out.iter().enumerate() {
        assert_eq!((m.seq, &m.data[..]), (i as u64, &[i as u8; 20][..]));
    }
    let stats = p.server().stats();
    assert_eq!(stats.latency_histogram.count(), 10);
    assert_eq!(stats.messages_delivered, 10);
}

#[test]
fn send_buffer_pushes_back() {
    let mut p = Pair::new(Config {
        send_buffer: 10_000,
        ..Config::default()
    });
    p.client
        .send(p.now, 0, Bytes::from(vec![0; 20_000]))
        .unwrap();
    assert_eq!(
        p.client.send(p.now, 0, Bytes::from(vec![0; 1])),
        Err(SendError::Blocked)
    );
    p.flush();
    p.client.send(p.now, 0, Bytes::from(vec![0; 1])).unwrap();
}

#[test]
fn garbage_and_forged_packets_change_nothing() {
    let mut p = Pair::new(Config::default());
    p.flush();
    p.client.send(p.now, 0, Bytes::from_static(b"a")).unwrap();
    p.flush();
    let before = p.server().stats();
    let cid = p.server().local_cid();
    let mut forged = Vec::new();
    Header {
        kind: PacketKind::Data,
        flags: 0,
        dcid: cid,
        pn: 999,
    }
    .encode(&mut forged);
    let mut garbage = vec![
        vec![],
        vec![1],
        vec![0xff; 40],
        forged.clone(),                                                // no frames
        [forged.clone(), vec![0x3f]].concat(),                         // unknown frame
        [forged.clone(), vec![0x04, 0, 0, 9, 8, 3, 1, 2, 3]].concat(), // beyond message end
    ];
    let mut x = 12345u64;
    for _ in 0..200 {
        let len = (x % 1500) as usize;
        let v: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        garbage.push([forged[..10].to_vec(), v].concat());
    }
    let (now, addr) = (p.now, p.c_addr);
    for g in &garbage {
        p.server().handle_datagram(now, addr, g);
    }
    let after = p.server().stats();
    // Datagrams with our connection id fail authentication; the rest fail to decode.
    assert!(after.malformed_packets > before.malformed_packets);
    assert!(after.auth_failures >= before.auth_failures + 5);
    assert_eq!(after.packets_received, before.packets_received);
    assert!(!p.server().is_closed());
    p.client.send(p.now, 0, Bytes::from_static(b"b")).unwrap();
    p.flush();
    assert_eq!(p.server().recv().unwrap().data, &b"a"[..]);
    assert_eq!(p.server().recv().unwrap().data, &b"b"[..]);
}

#[test]
fn flow_control_violation_closes_with_error() {
    // Plaintext mode, so the test can forge what a misbehaving peer would send.
    let config = Config {
        max_message_size: 1000,
        receive_window: 2000,
        security: crate::crypto::Security::InsecurePlaintext,
        ..Config::default()
    };
    let mut p = Pair::new(config);
    p.flush();
    // The client's packet 1 is lost; the misbehaving "client" packet below reuses
    // its number so the server's ACK of it is plausible to the real client.
    p.cut = true;
    p.client
        .send(p.now, 0, Bytes::from_static(b"lost"))
        .unwrap();
    p.flush();
    p.cut = false;
    // Forge MSG frames beyond the window (a misbehaving peer).
    let cid = p.server().local_cid();
    let data = [7u8; 100];
    let mut pkt = Vec::new();
    Header {
        kind: PacketKind::Data,
        flags: crate::wire::FLAG_PLAINTEXT,
        dcid: cid,
        pn: 1,
    }
    .encode(&mut pkt);
    for seq in 0..30 {
        Frame::Msg(MsgFrame {
            channel: 0,
            seq: seq + 5,
            msg_len: 900,
            offset: 0,
            timestamp_us: 0,
            delivery: crate::wire::Delivery::Reliable,
            packed: false,
            data: &data,
        })
        .encode(&mut pkt);
    }
    let (now, addr) = (p.now, p.c_addr);
    p.server().handle_datagram(now, addr, &pkt);
    assert!(matches!(
        p.server().error(),
        Some(ConnectionError::ProtocolViolation(_))
    ));
    p.flush();
    assert!(matches!(
        p.client.error(),
        Some(ConnectionError::PeerClosed {
            code: close_code::FLOW_CONTROL,
            ..
        })
    ));
}

#[test]
fn abort_tells_the_peer() {
    let mut p = Pair::new(Config::default());
    p.flush();
    p.client
        .send(p.now, 0, Bytes::from(vec![1; 100_000]))
        .unwrap();
    p.client.abort(p.now, "bye");
    p.flush();
    assert_eq!(p.client.error(), Some(&ConnectionError::LocallyAborted));
    assert_eq!(
        p.server().error(),
        Some(&ConnectionError::PeerClosed {
            code: close_code::APPLICATION_ABORT,
            reason: "bye".into()
        })
    );
}

#[test]
fn a_lost_error_close_is_sent_again_when_the_peer_sends_more() {
    let mut p = Pair::new(Config::default());
    p.flush();
    p.client
        .send(p.now, 0, Bytes::from(vec![1; 100_000]))
        .unwrap();
    let now = p.now;
    p.server().abort(now, "cannot write out.bin: no space left");
    // The server's only datagram with the CLOSE in it is lost.
    p.drop_from_server = 1;
    p.flush();
    assert_eq!(p.drop_from_server, 0, "the CLOSE was sent and dropped");
    for _ in 0..1000 {
        if p.client.is_closed() {
            break;
        }
        p.advance();
    }
    assert_eq!(
        p.client.error(),
        Some(&ConnectionError::PeerClosed {
            code: close_code::APPLICATION_ABORT,
            reason: "cannot write out.bin: no space left".into()
        })
    );
}

#[test]
fn a_peer_deaf_for_longer_than_the_drain_still_hears_the_error_close() {
    let mut p = Pair::new(Config::default());
    p.flush();
    p.client
        .send(p.now, 0, Bytes::from(vec![1; 100_000]))
        .unwrap();
    let now = p.now;
    p.server().abort(now, "receiver: disk full");
    // The client reads nothing for 200 ms, far beyond 3 PTOs on this
    // instant network: every CLOSE sent meanwhile is lost, while the client
    // keeps sending (probes, heartbeats).
    let deaf_until = p.now + Duration::from_millis(200);
    p.drop_from_server = usize::MAX;
    while p.now < deaf_until {
        p.advance();
    }
    assert!(!p.server().is_drained(), "a peer still sending keeps it");
    p.drop_from_server = 0;
    for _ in 0..10_000 {
        if p.client.is_closed() {
            break;
        }
        p.advance();
    }
    assert_eq!(
        p.client.error(),
        Some(&ConnectionError::PeerClosed {
            code: close_code::APPLICATION_ABORT,
            reason: "receiver: disk full".into()
        })
    );
}

#[test]
fn keepalive_keeps_an_idle_connection_open() {
    let mut p = Pair::new(Config {
        idle_timeout: Duration::from_secs(3),
        keepalive_interval: Duration::from_secs(1),
        ..Config::default()
    });
    p.flush();
    let start = p.now;
    while p.now - start < Duration::from_secs(30) {
        p.advance();
    }
    assert!(p.client.is_established());
    assert!(p.server().is_established());
}

#[test]
fn channels_are_ordered_independently() {
    let mut p = Pair::new(Config::default());
    p.flush();
    assert_eq!(
        p.client.send(p.now, 1, Bytes::from_static(b"x")).unwrap(),
        0
    );
    assert_eq!(
        p.client.send(p.now, 2, Bytes::from_static(b"y")).unwrap(),
        0
    );
    assert_eq!(
        p.client.send(p.now, 1, Bytes::from_static(b"z")).unwrap(),
        1
    );
    p.flush();
    let got: Vec<_> = std::iter::from_fn(|| p.server().recv())
        .map(|m| (m.channel, m.seq))
        .collect();
    assert_eq!(got, vec![(1, 0), (2, 0), (1, 1)]);
}

#[test]
fn closed_is_reported_exactly_once_on_the_receiving_side() {
    let mut p = Pair::new(Config::default());
    p.flush();
    p.client.send(p.now, 0, Bytes::from_static(b"x")).unwrap();
    p.client.close(p.now);
    let mut server_events = Vec::new();
    while !(p.client.is_drained() && p.server().is_drained()) {
        p.advance();
        server_events.extend(events(p.server()));
    }
    let closes = server_events
        .iter()
        .filter(|e| matches!(e, Event::Closed { .. }))
        .count();
    assert_eq!(closes, 1, "{server_events:?}");
}

#[test]
fn peer_closing_with_our_data_pending_is_an_error() {
    let mut p = Pair::new(Config::default());
    p.flush();
    // The server queues a large message; the client closes at once.
    let now = p.now;
    p.server()
        .send(now, 0, Bytes::from(vec![9; 1 << 20]))
        .unwrap();
    p.client.close(p.now);
    while !p.server().is_closed() {
        p.advance();
    }
    assert!(matches!(
        p.server().error(),
        Some(ConnectionError::PeerClosedEarly { .. })
    ));
}

#[test]
fn a_lost_reject_is_repeated_when_the_client_retransmits() {
    use crate::crypto::{CryptoConfig, Identity, Security};
    let with = |id: u8, allow: Option<Vec<crate::crypto::PublicKey>>| Config {
        security: Security::Encrypted(CryptoConfig {
            identity: Some(Identity::from_private([id; 32])),
            allow,
            ..CryptoConfig::default()
        }),
        ..Config::default()
    };
    let now = Instant::now();
    let c_addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let s_addr: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    let mut client_ep = Endpoint::new(with(1, None), 1, false).unwrap();
    let other = Identity::from_private([9; 32]).public();
    let mut server_ep = Endpoint::new(with(2, Some(vec![other])), 2, true).unwrap();
    let (_, mut client) = client_ep.connect(now, s_addr);
    let mut server: Option<Connection> = None;
    let mut buf = Vec::new();
    let mut dropped_reject = false;
    let mut t = now;
    for _ in 0..2000 {
        while let Some(x) = client.poll_transmit(t, &mut buf) {
            let d = buf[..x.size].to_vec();
            if let DatagramEvent::New(_, c) = server_ep.handle(t, c_addr, &d) {
                server = Some(*c);
            }
            if let Some(s) = server.as_mut() {
                s.handle_datagram(t, c_addr, &d);
            }
        }
        if let Some(s) = server.as_mut() {
            while let Some(x) = s.poll_transmit(t, &mut buf) {
                let d = buf[..x.size].to_vec();
                let is_reject = d[1] & 0x0f == 4;
                if is_reject && !dropped_reject {
                    dropped_reject = true; // the first Reject is lost
                    continue;
                }
                client.handle_datagram(t, s_addr, &d);
            }
        }
        if client.is_closed() {
            break;
        }
        t += Duration::from_millis(5);
        client.handle_timeout(t);
        if let Some(s) = server.as_mut() {
            s.handle_timeout(t);
        }
    }
    assert!(dropped_reject);
    assert!(
        matches!(
            client.error(),
            Some(ConnectionError::Rejected {
                code: close_code::KEY_NOT_ALLOWED,
                ..
            })
        ),
        "{:?}",
        client.error()
    );
    assert!(
        t - now < Duration::from_secs(2),
        "refused promptly: {:?}",
        t - now
    );
}

/// The datagrams `c` sends now.
fn transmit_all(c: &mut Connection, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    std::iter::from_fn(|| {
        c.poll_transmit(now, &mut buf)
            .map(|t| buf[..t.size].to_vec())
    })
    .collect()
}

#[test]
fn a_tampered_datagram_is_refused_and_its_reused_buffer_carries_nothing_into_the_next_message() {
    let mut p = Pair::new(Config::default());
    p.flush();
    let (now, addr) = (
        p.now,
        PathAddr {
            local: 0,
            remote: p.c_addr,
        },
    );
    let long = Bytes::from(vec![0xab; 900]);
    p.client.send(now, 1, long).unwrap();
    let long_datagrams = transmit_all(&mut p.client, now);
    let short = Bytes::from_static(b"short message");
    p.client.send(now, 0, short.clone()).unwrap();
    let short_datagrams = transmit_all(&mut p.client, now);
    assert_eq!((long_datagrams.len(), short_datagrams.len()), (1, 1));
    let (long_datagram, short_datagram) = (&long_datagrams[0], &short_datagrams[0]);
    assert!(long_datagram.len() > short_datagram.len() + 800);

    // One buffer, received into twice, as a socket's would be: first the
    // long datagram with one bit flipped in its payload.
    let mut storage = BytesMut::with_capacity(2048);
    storage.extend_from_slice(long_datagram);
    let last = storage.len() - 1;
    storage[last] ^= 0x01;
    let at = storage.as_ptr();
    let before = p.server().stats();
    p.server().handle_datagram_owned(now, addr, storage.split());
    let after = p.server().stats();
    assert_eq!(after.auth_failures, before.auth_failures + 1);
    assert_eq!(after.packets_received, before.packets_received);
    assert!(p.server().recv().is_none());

    // The core dropped the refused datagram's buffer: the same memory takes
    // the short datagram, and its message is exactly what was sent, a slice
    // of that memory (no copy).
    storage.reserve(2048);
    assert_eq!(storage.as_ptr(), at, "the buffer is used again");
    storage.extend_from_slice(short_datagram);
    let range = at as usize..at as usize + storage.len();
    p.server().handle_datagram_owned(now, addr, storage.split());
    let m = p.server().recv().expect("the short message");
    assert_eq!((m.channel, &m.data), (0, &short));
    assert!(
        range.contains(&(m.data.as_ptr() as usize)),
        "delivered in place"
    );
    assert!(
        p.server().recv().is_none(),
        "the refused message is not delivered"
    );
    assert_eq!(p.server().stats().auth_failures, after.auth_failures);
}

#[test]
fn buffers_kept_for_reuse_are_freed_once_the_connection_is_quiet() {
    let mut p = Pair::new(Config::default());
    p.flush();
    let mut batch = crate::batch::MessageBatch::new();
    for round in 0..8u8 {
        for i in 0..900u16 {
            batch.push(&[round; 100][..usize::from(i % 101)]);
        }
        p.client.send_batch(p.now, 0, &mut batch).unwrap();
        while p.client.unacked_bytes() > 0 {
            p.advance();
        }
        while let Some(b) = p.server().recv_batch() {
            assert_eq!(b.len(), 900);
        }
    }
    let kept = |c: &Connection| c.stats().recycled_buffer_bytes;
    assert!(kept(&p.client) > 0, "acknowledged batches' buffers kept");
    assert!(kept(p.server()) > 0, "rebuilt batches' buffers kept");
    let start = p.now;
    while p.now - start < Duration::from_secs(5) {
        p.advance();
    }
    assert_eq!(kept(&p.client), 0);
    assert_eq!(kept(p.server()), 0);
    assert!(p.client.is_established() && p.server().is_established());
}
