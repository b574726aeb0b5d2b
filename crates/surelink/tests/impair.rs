//! `surelink::impair` over real loopback sockets: an echo server behind an
//! impairer, measuring the emulated impairments (with generous bounds and
//! fixed seeds), cuts, odd datagrams, several clients and flow bookkeeping.
//!
//! Every test is bounded in time (a 60 s guard, typically well under 3 s)
//! and in datagram count. The lower bounds on delay are exact (a datagram is
//! never released early); upper bounds are loose, for loaded machines.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use surelink::impair::{ImpairConfig, ImpairHandle, ImpairStats, Impairer, LinkConfig};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const MS: Duration = Duration::from_millis(1);
const GUARD: Duration = Duration::from_secs(60);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn spec(text: &str) -> LinkConfig {
    text.parse().expect("valid spec")
}

/// Runs a test body under a time guard.
async fn guarded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(GUARD, body)
        .await
        .expect("test took too long");
}

/// A UDP echo server; returns its address and task (abort it when done).
async fn echo_server_on(addr: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind(addr).await.expect("bind echo");
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((len, from)) => {
                    let _ = socket.send_to(&buf[..len], from).await;
                }
                Err(_) => continue,
            }
        }
    });
    (addr, task)
}

async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    echo_server_on(any_port()).await
}

/// A datagram as received: arrival time and payload.
type Arrival = (Instant, Vec<u8>);

/// Everything a client socket receives, with arrival times.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<Arrival>>>);

impl Inbox {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn payloads(&self) -> Vec<Vec<u8>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }
    fn seqs(&self) -> Vec<u32> {
        self.payloads().iter().map(|p| seq_of(p)).collect()
    }
}

/// A client socket with a task collecting what comes back.
struct Client {
    socket: Arc<UdpSocket>,
    inbox: Inbox,
    task: JoinHandle<()>,
}

impl Client {
    async fn new() -> Self {
        let socket = Arc::new(UdpSocket::bind(any_port()).await.unwrap());
        let inbox = Inbox::default();
        let (reader, sink) = (Arc::clone(&socket), inbox.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(len) = reader.recv(&mut buf).await {
                sink.0
                    .lock()
                    .unwrap()
                    .push((Instant::now(), buf[..len].to_vec()));
            }
        });
        Self {
            socket,
            inbox,
            task,
        }
    }

    async fn send(&self, to: SocketAddr, payload: &[u8]) {
        self.socket.send_to(payload, to).await.unwrap();
    }

    /// Sends datagrams carrying `seqs`, a few at a time, at a bounded rate.
    async fn send_seqs(&self, to: SocketAddr, seqs: impl IntoIterator<Item = u32>) {
        for (i, seq) in seqs.into_iter().enumerate() {
            self.send(to, &payload(seq)).await;
            if i % 10 == 9 {
                tokio::time::sleep(MS).await;
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn payload(seq: u32) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.extend_from_slice(b"surelink-impair-test");
    p
}

fn seq_of(p: &[u8]) -> u32 {
    u32::from_be_bytes(p[..4].try_into().unwrap())
}

/// Waits until nothing is in flight in the impairer and its counters have
/// stopped moving (everything sent so far has been decided and released).
async fn settle(impairer: &ImpairHandle) -> ImpairStats {
    let mut previous = impairer.stats();
    loop {
        tokio::time::sleep(100 * MS).await;
        let now = impairer.stats();
        let idle = now.upstream.link.in_flight() == 0 && now.downstream.link.in_flight() == 0;
        if idle && now == previous {
            return now;
        }
        previous = now;
    }
}

/// Sends `count` numbered datagrams through a fresh impairer with `upstream`
/// impairments and returns the sequence numbers lost and the final stats.
async fn lossy_run(upstream: &str, seed: u64, count: u32) -> (BTreeSet<u32>, ImpairStats) {
    let (echo, echo_task) = echo_server().await;
    let config = ImpairConfig::new(any_port(), echo)
        .with_upstream(spec(upstream))
        .with_seed(seed);
    let impairer = Impairer::start(config).unwrap();
    let client = Client::new().await;
    client.send_seqs(impairer.local_addr(), 0..count).await;
    let stats = settle(&impairer).await;
    // Replies released by the impairer may still be in the client's socket.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (client.inbox.len() as u64) < stats.downstream.forwarded && Instant::now() < deadline {
        tokio::time::sleep(10 * MS).await;
    }
    let received: HashSet<u32> = client.inbox.seqs().into_iter().collect();
    let lost = (0..count).filter(|s| !received.contains(s)).collect();
    let final_stats = impairer.shutdown().await;
    assert_eq!(final_stats.upstream.link.sent, stats.upstream.link.sent);
    echo_task.abort();
    (lost, stats)
}

#[tokio::test]
async fn loss_matches_the_model_and_the_counters() {
    guarded(async {
        const COUNT: u32 = 2000;
        let (lost, stats) = lossy_run("loss=10%", 1, COUNT).await;
        let lost_count = lost.len() as u64;
        // Binomial(2000, 0.1): mean 200, sd 13.4; bounds at ±6 sd.
        assert!(
            (120..=280).contains(&lost_count),
            "lost {lost_count} of {COUNT}"
        );
        // What the client saw is exactly what the impairer says it did.
        assert_eq!(stats.upstream.link.sent, u64::from(COUNT));
        assert_eq!(stats.upstream.link.dropped_loss, lost_count);
        assert_eq!(stats.upstream.link.dropped(), lost_count);
        assert_eq!(stats.upstream.forwarded, u64::from(COUNT) - lost_count);
        assert_eq!(stats.downstream.link.sent, stats.upstream.forwarded);
        assert_eq!(stats.downstream.forwarded, u64::from(COUNT) - lost_count);
        assert_eq!(stats.downstream.link.dropped(), 0);
        assert_eq!((stats.flows_opened, stats.flows_active), (1, 1));
        assert_eq!(stats.upstream.send_errors + stats.downstream.send_errors, 0);

        // The same seed drops the same datagrams; another seed does not.
        let (again, _) = lossy_run("loss=10%", 1, COUNT).await;
        assert_eq!(lost, again, "same seed, same losses");
        let (other, _) = lossy_run("loss=10%", 2, COUNT).await;
        assert_ne!(lost, other, "another seed, other losses");
    })
    .await;
}

#[tokio::test]
async fn burst_loss_is_counted_as_burst() {
    guarded(async {
        let (lost, stats) = lossy_run("burst=0.05:0.5", 3, 1000).await;
        // Stationary bad-state probability p/(p+r) = 0.05/0.55 ≈ 9%.
        let lost_count = lost.len() as u64;
        assert!((20..=250).contains(&lost_count), "lost {lost_count}");
        assert_eq!(stats.upstream.link.dropped_burst, lost_count);
        // Bursts: some losses are consecutive.
        let consecutive = lost.iter().filter(|s| lost.contains(&(*s + 1))).count();
        assert!(consecutive > 0, "no burst in {lost:?}");
    })
    .await;
}

#[tokio::test]
async fn upstream_delay_bounds_every_round_trip() {
    guarded(async {
        const DELAY: Duration = Duration::from_millis(30);
        let (echo, echo_task) = echo_server().await;
        let config = ImpairConfig::new(any_port(), echo).with_upstream(spec("delay=30ms"));
        let impairer = Impairer::start(config).unwrap();
        let socket = UdpSocket::bind(any_port()).await.unwrap();
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        for seq in 0..40u32 {
            let sent = Instant::now();
            socket
                .send_to(&payload(seq), impairer.local_addr())
                .await
                .unwrap();
            loop {
                let len = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
                    .await
                    .expect("echo within 5 s")
                    .unwrap();
                if seq_of(&buf[..len]) == seq {
                    break;
                }
            }
            rtts.push(sent.elapsed());
        }
        rtts.sort();
        // Never early...
        assert!(rtts[0] >= DELAY, "fastest round trip {:?}", rtts[0]);
        // ...and not absurdly late (very loose: loaded machines).
        let median = rtts[rtts.len() / 2];
        assert!(median < DELAY + 50 * MS, "median round trip {median:?}");
        let stats = impairer.shutdown().await;
        assert_eq!(stats.upstream.forwarded, 40);
        echo_task.abort();
    })
    .await;
}

#[tokio::test]
async fn rate_limit_spaces_datagrams() {
    guarded(async {
        // 50 datagrams of 1250 bytes at 2 Mbit/s: 5 ms of serialisation
        // each, so the last leaves at least 49 × 5 ms after the first.
        let (echo, echo_task) = echo_server().await;
        let config = ImpairConfig::new(any_port(), echo).with_upstream(spec("rate=2mbit"));
        let impairer = Impairer::start(config).unwrap();
        let client = Client::new().await;
        let start = Instant::now();
        for seq in 0..50u32 {
            let mut p = payload(seq);
            p.resize(1250, 0xAB);
            client.send(impairer.local_addr(), &p).await;
        }
        settle(&impairer).await;
        let arrivals: Vec<Instant> = client
            .inbox
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(arrivals.len(), 50);
        let last = arrivals.iter().max().unwrap();
        assert!(
            last.duration_since(start) >= 245 * MS,
            "50 × 1250 B at 2 Mbit/s took only {:?}",
            last.duration_since(start)
        );
        assert_eq!(client.inbox.seqs(), (0..50).collect::<Vec<_>>(), "FIFO");
        impairer.shutdown().await;
        echo_task.abort();
    })
    .await;
}

#[tokio::test]
async fn duplicates_and_reordering_are_delivered_and_counted() {
    guarded(async {
        let (echo, echo_task) = echo_server().await;
        let config = ImpairConfig::new(any_port(), echo)
            .with_upstream(spec("dup=20%,reorder=20%,reorder-delay=5ms,delay=1ms"))
            .with_seed(5);
        let impairer = Impairer::start(config).unwrap();
        let client = Client::new().await;
        client.send_seqs(impairer.local_addr(), 0..500).await;
        let stats = settle(&impairer).await;
        tokio::time::sleep(50 * MS).await;
        let seqs = client.inbox.seqs();
        let up = stats.upstream.link;
        assert!(up.duplicated > 40 && up.reordered > 40, "{up}");
        assert_eq!(up.delivered, 500 + up.duplicated);
        assert_eq!(seqs.len() as u64, 500 + up.duplicated);
        let distinct: HashSet<u32> = seqs.iter().copied().collect();
        assert_eq!(distinct.len(), 500, "nothing lost");
        let inversions = seqs.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(inversions > 0, "reordering observed");
        impairer.shutdown().await;
        echo_task.abort();
    })
    .await;
}

#[tokio::test]
async fn on_demand_cut_drops_everything_and_restore_resumes() {
    guarded(async {
        let (echo, echo_task) = echo_server().await;
        let impairer = Impairer::start(ImpairConfig::new(any_port(), echo)).unwrap();
        let client = Client::new().await;
        client.send_seqs(impairer.local_addr(), 0..20).await;
        settle(&impairer).await;
        assert_eq!(client.inbox.len(), 20);

        impairer.set_cut(true);
        assert!(impairer.is_cut() && impairer.stats().cut);
        client.send_seqs(impairer.local_addr(), 100..150).await;
        let stats = settle(&impairer).await;
        assert_eq!(client.inbox.len(), 20, "nothing gets through a cut");
        assert_eq!(stats.upstream.link.dropped_cut, 50);

        impairer.set_cut(false);
        client.send_seqs(impairer.local_addr(), 200..250).await;
        let stats = settle(&impairer).await;
        tokio::time::sleep(20 * MS).await;
        let seqs: Vec<u32> = client.inbox.seqs();
        assert_eq!(seqs.len(), 70);
        assert!(seqs.iter().all(|s| !(100..150).contains(s)));
        assert_eq!(stats.upstream.link.dropped_cut, 50);
        assert!(!stats.cut);
        impairer.shutdown().await;
        echo_task.abort();
    })
    .await;
}

#[tokio::test]
async fn scheduled_cut_drops_what_is_sent_inside_the_window() {
    guarded(async {
        // Down during [500 ms, 1500 ms) after start, both directions.
        const CUT_START: Duration = Duration::from_millis(500);
        const CUT_END: Duration = Duration::from_millis(1500);
        // How late a datagram may reach the impairer (generous).
        const SLACK: Duration = Duration::from_millis(300);
        let (echo, echo_task) = echo_server().await;
        let config = ImpairConfig::new(any_port(), echo).with_both(spec("cut-at=500ms,cut-for=1s"));
        let impairer = Impairer::start(config).unwrap();
        let started = impairer.started_at();
        let client = Client::new().await;
        let mut sent_at = Vec::new();
        let mut seq = 0u32;
        while started.elapsed() < CUT_END + 300 * MS {
            sent_at.push(started.elapsed());
            client.send(impairer.local_addr(), &payload(seq)).await;
            seq += 1;
            tokio::time::sleep(10 * MS).await;
        }
        let stats = settle(&impairer).await;
        tokio::time::sleep(20 * MS).await;
        let received: HashSet<u32> = client.inbox.seqs().into_iter().collect();
        let mut surely_cut = 0;
        for (seq, offset) in sent_at.iter().enumerate() {
            let got = received.contains(&(seq as u32));
            if *offset >= CUT_START && *offset + SLACK < CUT_END {
                assert!(!got, "datagram sent at {offset:?} went through the cut");
                surely_cut += 1;
            }
            if *offset + SLACK < CUT_START || *offset >= CUT_END {
                assert!(got, "datagram sent at {offset:?} was lost outside the cut");
            }
        }
        assert!(
            surely_cut > 20,
            "only {surely_cut} datagrams inside the window"
        );
        let missing = sent_at.len() as u64 - received.len() as u64;
        assert_eq!(
            missing,
            stats.upstream.link.dropped_cut + stats.downstream.link.dropped_cut
        );
        impairer.shutdown().await;
        echo_task.abort();
    })
    .await;
}

#[tokio::test]
async fn odd_datagrams_pass_unharmed() {
    guarded(async {
        let (echo, echo_task) = echo_server().await;
        let config = ImpairConfig::new(any_port(), echo).with_both(spec("delay=1ms"));
        let impairer = Impairer::start(config).unwrap();
        let client = Client::new().await;
        let garbage: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let datagrams: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0],
            vec![0xFF; 3],
            garbage,
            vec![0x5A; 65_507], // the largest UDP payload over IPv4
            Vec::new(),
        ];
        for d in &datagrams {
            client.send(impairer.local_addr(), d).await;
            tokio::time::sleep(MS).await;
        }
        let stats = settle(&impairer).await;
        tokio::time::sleep(20 * MS).await;
        assert_eq!(client.inbox.payloads(), datagrams);
        assert_eq!(
            stats.upstream.link.bytes_in,
            datagrams.iter().map(|d| d.len() as u64).sum::<u64>()
        );
        assert_eq!(stats.downstream.forwarded, datagrams.len() as u64);
        impairer.shutdown().await;
        echo_task.abort();
    })
    .await;
}

#[tokio::test]
async fn a_dead_target_is_survived() {
    guarded(async {
        // A port with nothing behind it (yet): sends are refused by ICMP.
        let placeholder = std::net::UdpSocket::bind(any_port()).unwrap();
        let target = placeholder.local_addr().unwrap();
        drop(placeholder);
        let impairer = Impairer::start(ImpairConfig::new(any_port(), target)).unwrap();
        let client = Client::new().await;
        client.send_seqs(impairer.local_addr(), 0..20).await;
        let stats = settle(&impairer).await;
        assert_eq!(stats.upstream.forwarded + stats.upstream.send_errors, 20);
        assert_eq!(client.inbox.len(), 0);

        // The same flow carries on once the target comes up.
        let (_, echo_task) = echo_server_on(target).await;
        client.send_seqs(impairer.local_addr(), 100..120).await;
        let stats = settle(&impairer).await;
        tokio::time::sleep(20 * MS).await;
        assert_eq!(client.inbox.seqs(), (100..120).collect::<Vec<_>>());
        assert_eq!((stats.flows_opened, stats.flows_active), (1, 1));
        impairer.shutdown().await;
        echo_task.abort();
    })
    .await;
}

#[tokio::test]
async fn each_client_gets_its_own_flow_and_its_own_replies() {
    guarded(async {
        let (echo, echo_task) = echo_server().await;
        let config = ImpairConfig::new(any_port(), echo).with_both(spec("delay=2ms,jitter=2ms"));
        let impairer = Impairer::start(config).unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(Client::new().await);
        }
        for round in 0..50u32 {
            for (c, client) in clients.iter().enumerate() {
                client
                    .send(impairer.local_addr(), &payload(c as u32 * 1000 + round))
                    .await;
            }
            if round % 5 == 4 {
                tokio::time::sleep(MS).await;
            }
        }
        let stats = settle(&impairer).await;
        tokio::time::sleep(20 * MS).await;
        for (c, client) in clients.iter().enumerate() {
            let expected: Vec<u32> = (0..50).map(|r| c as u32 * 1000 + r).collect();
            assert_eq!(client.inbox.seqs(), expected, "client {c}");
        }
        assert_eq!((stats.flows_opened, stats.flows_active), (4, 4));
        assert_eq!(stats.downstream.forwarded, 200);
        impairer.shutdown().await;
        echo_task.abort();
    })
    .await;
}

#[tokio::test]
async fn flow_table_is_bounded_and_idle_flows_expire() {
    guarded(async {
        let (echo, echo_task) = echo_server().await;
        let config = ImpairConfig::new(any_port(), echo)
            .with_max_flows(2)
            .with_idle_timeout(300 * MS);
        let impairer = Impairer::start(config).unwrap();
        let (a, b, c) = (
            Client::new().await,
            Client::new().await,
            Client::new().await,
        );
        a.send_seqs(impairer.local_addr(), 0..5).await;
        b.send_seqs(impairer.local_addr(), 0..5).await;
        c.send_seqs(impairer.local_addr(), 0..5).await;
        let stats = settle(&impairer).await;
        tokio::time::sleep(20 * MS).await;
        assert_eq!((a.inbox.len(), b.inbox.len(), c.inbox.len()), (5, 5, 0));
        assert_eq!(
            (stats.flows_opened, stats.flows_active, stats.flows_refused),
            (2, 2, 5)
        );

        // Both flows idle out; the third client now gets in.
        let deadline = Instant::now() + Duration::from_secs(10);
        while impairer.stats().flows_active > 0 && Instant::now() < deadline {
            tokio::time::sleep(50 * MS).await;
        }
        let stats = impairer.stats();
        assert_eq!((stats.flows_active, stats.flows_expired), (0, 2));
        assert_eq!(stats.upstream.forwarded, 10, "counters survive expiry");
        c.send_seqs(impairer.local_addr(), 10..15).await;
        let stats = settle(&impairer).await;
        tokio::time::sleep(20 * MS).await;
        assert_eq!(c.inbox.seqs(), (10..15).collect::<Vec<_>>());
        assert_eq!((stats.flows_opened, stats.flows_active), (3, 1));
        impairer.shutdown().await;
        echo_task.abort();
    })
    .await;
}

#[tokio::test]
async fn shutdown_releases_the_port() {
    guarded(async {
        let (echo, echo_task) = echo_server().await;
        let impairer =
            Impairer::start(ImpairConfig::new(any_port(), echo).with_upstream(spec("delay=50ms")))
                .unwrap();
        let addr = impairer.local_addr();
        let client = Client::new().await;
        client.send_seqs(addr, 0..10).await;
        let stats = impairer.shutdown().await;
        assert_eq!(stats.upstream.link.sent, 10, "counted before shutdown");
        // In-flight datagrams were discarded, and the port is free again.
        let again = Impairer::start(ImpairConfig::new(addr, echo)).expect("port released");
        assert_eq!(again.local_addr(), addr);
        drop(again); // dropping the handle stops it too
        echo_task.abort();
    })
    .await;
}

#[tokio::test]
async fn invalid_configurations_are_errors() {
    let target = SocketAddr::from(([127, 0, 0, 1], 9));
    let bad =
        ImpairConfig::new(any_port(), target).with_upstream(LinkConfig::clean().with_loss(2.0));
    let err = Impairer::start(bad).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("upstream"), "{err}");
    let err = Impairer::start(ImpairConfig::new(any_port(), target).with_max_flows(0)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    let target = SocketAddr::from(([127, 0, 0, 1], 9));
    let err = Impairer::start(ImpairConfig::new(any_port(), target)).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}
