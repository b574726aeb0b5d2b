//! Seeded simulations of a connection over two paths: failure detection,
//! backup failover and fail-back, broadcast, balance, flapping, all paths down.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use surelink_netem::{Link, LinkConfig};
use surelink_proto::conn::{PathAddr, PathId, PathMode};
use surelink_proto::{Config, Connection, DatagramEvent, Endpoint, Event};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// One path's links: (client→server, server→client).
type LinkPair = (Link<Vec<u8>>, Link<Vec<u8>>);

/// Two paths between one client and one server, each a pair of seeded links.
struct Net {
    now: Instant,
    start: Instant,
    client_ep: Endpoint,
    server_ep: Endpoint,
    client: Connection,
    server: Option<Connection>,
    links: Vec<LinkPair>,
    client_addrs: Vec<SocketAddr>,
    server_addrs: Vec<SocketAddr>,
    buf: Vec<u8>,
    client_events: Vec<(Duration, Event)>,
    server_events: Vec<(Duration, Event)>,
}

impl Net {
    fn new(config: Config, links: [LinkConfig; 2], seed: u64) -> Self {
        let start = Instant::now();
        let client_addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:1001".parse().unwrap(),
            "127.0.0.1:1003".parse().unwrap(),
        ];
        let server_addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:2001".parse().unwrap(),
            "127.0.0.1:2002".parse().unwrap(),
        ];
        let mut client_ep = Endpoint::new(config.clone(), seed ^ 1, false).unwrap();
        let server_ep = Endpoint::new(config, seed ^ 2, true).unwrap();
        let (_, client) = client_ep.connect(start, server_addrs[0]);
        let links = links
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let s = seed.wrapping_mul(31).wrapping_add(i as u64 * 7);
                (
                    Link::new(l.clone(), s, start).unwrap(),
                    Link::new(l, s ^ 0xff, start).unwrap(),
                )
            })
            .collect();
        Self {
            now: start,
            start,
            client_ep,
            server_ep,
            client,
            server: None,
            links,
            client_addrs,
            server_addrs,
            buf: Vec::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn pump(&mut self) {
        let now = self.now;
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..self.links.len() {
                while let Some(d) = self.links[i].0.poll_deliver(now) {
                    moved = true;
                    let from = self.client_addrs[i];
                    let addr = PathAddr {
                        local: i as u16,
                        remote: from,
                    };
                    match self.server_ep.handle(now, from, &d) {
                        DatagramEvent::New(_, c) => self
                            .server
                            .get_or_insert(*c)
                            .handle_datagram_on(now, addr, &d),
                        DatagramEvent::Known(_) => {
                            if let Some(s) = self.server.as_mut() {
                                s.handle_datagram_on(now, addr, &d);
                            }
                        }
                        _ => {}
                    }
                }
                while let Some(d) = self.links[i].1.poll_deliver(now) {
                    moved = true;
                    let addr = PathAddr {
                        local: i as u16,
                        remote: self.server_addrs[i],
                    };
                    if let DatagramEvent::Known(_) = self.client_ep.handle(now, addr.remote, &d) {
                        self.client.handle_datagram_on(now, addr, &d);
                    }
                }
            }
            if self.client.poll_timeout().is_some_and(|t| t <= now) {
                self.client.handle_timeout(now);
            }
            if let Some(s) = self.server.as_mut() {
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
            }
            while let Some(t) = self.client.poll_transmit(now, &mut self.buf) {
                moved = true;
                let i = t.local as usize;
                assert_eq!(t.destination, self.server_addrs[i], "wrong path address");
                self.links[i]
                    .0
                    .send(now, t.size, self.buf[..t.size].to_vec());
            }
            if let Some(s) = self.server.as_mut() {
                while let Some(t) = s.poll_transmit(now, &mut self.buf) {
                    moved = true;
                    let i = t.local as usize;
                    assert_eq!(t.destination, self.client_addrs[i], "wrong path address");
                    self.links[i]
                        .1
                        .send(now, t.size, self.buf[..t.size].to_vec());
                }
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push((self.now - self.start, e));
            }
            while let Some(e) = self.server.as_mut().and_then(Connection::poll_event) {
                self.server_events.push((self.now - self.start, e));
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence at {:?}", self.elapsed());
    }

    fn next_wake(&self) -> Option<Instant> {
        let links = self
            .links
            .iter()
            .flat_map(|(a, b)| [a.next_delivery(), b.next_delivery()]);
        [
            self.client.poll_timeout(),
            self.server.as_ref().and_then(Connection::poll_timeout),
        ]
        .into_iter()
        .chain(links)
        .flatten()
        .min()
    }

    /// Advances to `until`, processing everything due on the way.
    fn run_until(&mut self, until: Instant) {
        let mut same = 0;
        loop {
            self.pump();
            match self.next_wake() {
                Some(t) if t <= until => {
                    if t <= self.now {
                        same += 1;
                        assert!(same < 100_000, "a timer is stuck at {:?}", self.elapsed());
                    } else {
                        same = 0;
                    }
                    self.now = self.now.max(t);
                }
                _ => {
                    self.now = until;
                    self.pump();
                    return;
                }
            }
        }
    }

    /// Handshake, then the second path, until both are validated.
    fn establish(&mut self) {
        self.run_until(self.start + ms(200));
        assert!(self.client.is_established());
        let addr = PathAddr {
            local: 1,
            remote: self.server_addrs[1],
        };
        let id = self.client.add_path(self.now, addr);
        assert_eq!(id, PathId(1));
        self.run_until(self.now + ms(300));
        assert!(
            self.client_events
                .iter()
                .any(|(_, e)| *e == Event::PathUp(PathId(1))),
            "second path validated: {:?}",
            self.client_events
        );
    }

    fn cut(&mut self, path: usize, cut: bool) {
        self.links[path].0.set_cut(cut);
        self.links[path].1.set_cut(cut);
    }
}

/// Messages carry (seq, send time µs); returns deliveries (seq, sent, delivered) µs.
fn stream(
    net: &mut Net,
    count: u64,
    every: Duration,
    mut at: impl FnMut(&mut Net, u64),
) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut next = net.now;
    for seq in 0..count {
        net.run_until(next);
        at(net, seq);
        let sent = net.elapsed().as_micros() as u64;
        let mut m = seq.to_be_bytes().to_vec();
        m.extend_from_slice(&sent.to_be_bytes());
        m.resize(200, 0);
        net.client.send(net.now, 0, Bytes::from(m)).unwrap();
        next += every;
        drain(net, &mut out);
    }
    net.client.close(net.now);
    let end = net.now + Duration::from_secs(30);
    while !net.client.is_drained() && net.now < end {
        let step = net.now + ms(1);
        net.run_until(step);
        drain(net, &mut out);
    }
    drain(net, &mut out);
    out
}

fn drain(net: &mut Net, out: &mut Vec<(u64, u64, u64)>) {
    let now = net.elapsed().as_micros() as u64;
    if let Some(s) = net.server.as_mut() {
        while let Some(m) = s.recv() {
            let seq = u64::from_be_bytes(m.data[..8].try_into().unwrap());
            let sent = u64::from_be_bytes(m.data[8..16].try_into().unwrap());
            out.push((seq, sent, now));
        }
    }
}

fn assert_exactly_once(d: &[(u64, u64, u64)], count: u64, ctx: &str) {
    let seqs: Vec<u64> = d.iter().map(|x| x.0).collect();
    let expected: Vec<u64> = (0..count).collect();
    if seqs != expected {
        panic!(
            "{ctx}: {} delivered of {count}, first mismatch at {:?}",
            seqs.len(),
            seqs.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
}

fn path_link(delay: u64) -> LinkConfig {
    LinkConfig::clean().with_delay(ms(delay)).with_jitter(ms(1))
}

#[test]
fn backup_fails_over_within_three_heartbeats_and_an_rtt() {
    let heartbeat = Config::default().heartbeat_interval;
    let mut worst = Duration::ZERO;
    for seed in 0..200u64 {
        let mut net = Net::new(Config::default(), [path_link(10), path_link(10)], seed);
        net.establish();
        // 1000 msg/s for 1.5 s; the primary is cut at a seed-chosen moment.
        let cut_at = 300 + (seed * 37) % 900;
        let mut cut_time = None;
        let d = stream(&mut net, 1500, ms(1), |net, seq| {
            if seq == cut_at {
                net.cut(0, true);
                cut_time = Some(net.elapsed().as_micros() as u64);
            }
        });
        assert_exactly_once(&d, 1500, &format!("seed {seed}"));
        let cut = cut_time.unwrap();
        // Packets already on the wire when the link died still arrive; the
        // first message sent after the cut can only come over the backup,
        // once the failure was detected.
        let first_after = d.iter().find(|x| x.1 >= cut).unwrap().2;
        let gap = Duration::from_micros(first_after - cut);
        worst = worst.max(gap);
        assert!(
            gap <= heartbeat * 3 + ms(20),
            "seed {seed}: {gap:?} from cut to first delivery over the backup"
        );
        assert!(net.client_events.iter().any(|(_, e)| *e
            == Event::FailedOver {
                from: PathId(0),
                to: PathId(1)
            }));
    }
    eprintln!("worst cut-to-delivery gap over 200 seeds: {worst:?}");
}

/// The failovers among `events`.
fn failovers(events: &[(Duration, Event)]) -> Vec<Event> {
    events
        .iter()
        .filter(|(_, e)| matches!(e, Event::FailedOver { .. }))
        .map(|(_, e)| e.clone())
        .collect()
}

/// One failover is one `FailedOver` on each side, even when the old path is
/// the slower one and what was in flight on it arrives after the first
/// packets on the new path (the receiver follows only the newest data).
#[test]
fn one_failover_is_one_failed_over_event_on_each_side() {
    let moved = || Event::FailedOver {
        from: PathId(0),
        to: PathId(1),
    };
    for seed in 0..60u64 {
        // The primary is 40 ms one way, the backup 5 ms: a packet sent on the
        // primary just before the switch lands well after the backup's first.
        let mut net = Net::new(Config::default(), [path_link(40), path_link(5)], seed);
        net.establish();
        let cut_at = 300 + (seed * 37) % 400;
        let d = stream(&mut net, 1000, ms(1), |net, seq| {
            if seq == cut_at {
                if seed % 2 == 0 {
                    net.cut(0, true);
                } else {
                    // Only the way back dies: the sender's packets keep
                    // reaching the receiver on the primary until it switches.
                    net.links[0].1.set_cut(true);
                }
            }
        });
        assert_exactly_once(&d, 1000, &format!("seed {seed}"));
        assert_eq!(
            failovers(&net.client_events),
            [moved()],
            "seed {seed}: sender"
        );
        assert_eq!(
            failovers(&net.server_events),
            [moved()],
            "seed {seed}: receiver"
        );
    }
}

/// Broadcast mode, the primary cut mid-stream: exactly-once delivery, no
/// latency above the backup path's own and no payload re-sent, for each seed.
fn broadcast_has_no_gap_when_a_path_dies(seeds: Range<u64>) {
    for seed in seeds {
        let config = Config {
            path_mode: PathMode::Broadcast,
            ..Config::default()
        };
        // The backup is slower: its own latency is the bound.
        let mut net = Net::new(config, [path_link(10), path_link(15)], seed);
        net.establish();
        let d = stream(&mut net, 1000, ms(1), |net, seq| {
            if seq == 500 {
                net.cut(0, true);
            }
        });
        assert_exactly_once(&d, 1000, &format!("seed {seed}"));
        // Every packet lost with the cut path has a copy on the live one:
        // failing over re-sends nothing.
        assert_eq!(
            net.client.stats().payload_bytes_retransmitted,
            0,
            "seed {seed}: payload re-sent on failover in broadcast mode"
        );
        for &(seq, sent, delivered) in &d[400..] {
            let latency = Duration::from_micros(delivered - sent);
            // The backup path's own one-way latency (15 ms + 1 ms jitter), nothing
            // more (deliveries are observed each millisecond).
            assert!(latency <= ms(17), "seed {seed}: seq {seq} took {latency:?}");
        }
    }
}

#[test]
fn broadcast_has_no_gap_when_a_path_dies_seeds_0_to_99() {
    broadcast_has_no_gap_when_a_path_dies(0..100);
}

#[test]
fn broadcast_has_no_gap_when_a_path_dies_seeds_100_to_199() {
    broadcast_has_no_gap_when_a_path_dies(100..200);
}

/// A primary that is cut and restored every 100–500 ms (seeded) for 60
/// simulated seconds at 200 msg/s: exactly-once delivery (no loss, no
/// duplicate, no stall: the stream drains) and no failover ping-pong.
fn flapping_primary_loses_and_duplicates_nothing(seeds: Range<u64>) {
    for seed in seeds {
        let mut net = Net::new(Config::default(), [path_link(10), path_link(12)], seed);
        net.establish();
        let mut x = seed | 1;
        let mut next_flip = 0u64;
        let mut cut = false;
        // 60 simulated seconds, 200 msg/s; the primary flips every 100-500 ms.
        let d = stream(&mut net, 12_000, ms(5), |net, seq| {
            let t = seq * 5;
            if t >= next_flip {
                cut = !cut;
                net.cut(0, cut);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                next_flip = t + 100 + x % 400;
            }
        });
        assert_exactly_once(&d, 12_000, &format!("seed {seed}"));
        let failovers = net
            .client_events
            .iter()
            .filter(|(_, e)| matches!(e, Event::FailedOver { .. }))
            .count();
        // Hysteresis: the primary never stays up for the fail-back delay, so the
        // data moves to the backup once and stays there (no ping-pong).
        assert!(
            (1..=2).contains(&failovers),
            "seed {seed}: {failovers} failovers"
        );
    }
}

#[test]
fn flapping_primary_loses_and_duplicates_nothing_seeds_0_to_49() {
    flapping_primary_loses_and_duplicates_nothing(0..50);
}

#[test]
fn flapping_primary_loses_and_duplicates_nothing_seeds_50_to_99() {
    flapping_primary_loses_and_duplicates_nothing(50..100);
}

#[test]
fn flapping_primary_loses_and_duplicates_nothing_seeds_100_to_149() {
    flapping_primary_loses_and_duplicates_nothing(100..150);
}

#[test]
fn flapping_primary_loses_and_duplicates_nothing_seeds_150_to_199() {
    flapping_primary_loses_and_duplicates_nothing(150..200);
}

#[test]
fn balance_uses_both_paths() {
    let config = Config {
        path_mode: PathMode::Balance,
        ..Config::default()
    };
    let mut net = Net::new(config, [path_link(10), path_link(10)], 5);
    net.establish();
    let d = stream(&mut net, 3000, Duration::from_micros(200), |_, _| {});
    assert_exactly_once(&d, 3000, "balance");
    let paths = net.client.path_stats(net.now);
    assert!(paths.iter().all(|p| p.bytes_sent > 100_000), "{paths:?}");
}

#[test]
fn all_paths_down_reports_connection_lost_then_recovers() {
    let mut net = Net::new(Config::default(), [path_link(10), path_link(10)], 9);
    net.establish();
    net.cut(0, true);
    net.cut(1, true);
    net.run_until(net.now + Duration::from_secs(2));
    assert!(net
        .client_events
        .iter()
        .any(|(_, e)| *e == Event::ConnectionLost));
    // The backup comes back: it is heard, re-validated and used.
    net.cut(1, false);
    let d = stream(&mut net, 100, ms(5), |_, _| {});
    assert_exactly_once(&d, 100, "after recovery");
    assert!(net
        .client_events
        .iter()
        .any(|(_, e)| *e == Event::PathRecovered(PathId(1))));
}
