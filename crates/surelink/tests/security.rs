//! Security over real sockets on loopback: what each side of a refused
//! handshake sees (a distinct error, promptly, never a timeout), the
//! server's handshake events, and a flood of forged handshakes and garbage
//! during a real transfer. Every wait is bounded; nothing asserts on timing.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use surelink::proto::close_code;
use surelink::proto::wire::{Frame, FrameIter, Header, PacketKind, Reader};
use surelink::{
    Bytes, ConnectError, ConnectionError, CryptoConfig, Endpoint, EndpointConfig, HandshakeEvent,
    Identity, ProtocolConfig, Security,
};

/// Upper bound on any single test's run time (debug builds on a small machine).
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Upper bound on any single wait for an outcome that should be prompt.
const PROMPT: Duration = Duration::from_secs(5);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test did not finish in time")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Protocol settings changed by `change` (the lint-friendly way to set a
/// field or two of a struct with many).
fn protocol(change: impl FnOnce(&mut ProtocolConfig)) -> ProtocolConfig {
    let mut protocol = ProtocolConfig::default();
    change(&mut protocol);
    protocol
}

fn config(security: Security) -> EndpointConfig {
    let protocol = protocol(|p| p.security = security);
    // Generous: a refusal must arrive long before it, and the test checks
    // that it is not a timeout.
    EndpointConfig::default()
        .with_protocol(protocol)
        .with_connect_timeout(Duration::from_secs(30))
}

fn encrypted(change: impl FnOnce(&mut CryptoConfig)) -> Security {
    let mut c = CryptoConfig::default();
    change(&mut c);
    Security::Encrypted(c)
}

fn identity() -> Identity {
    Identity::generate(&mut rand::rngs::OsRng)
}

/// How the client's attempt ended.
#[derive(Debug)]
enum ClientOutcome {
    /// Connected, sent a message, closed gracefully.
    Transferred,
    /// The connection ended with this error, during `connect` or right after
    /// (a refusal by the server can come after the client's side completed).
    Failed(ConnectionError),
}

/// Connects, sends one message and closes; what came of it.
async fn attempt(client: &Endpoint, server: SocketAddr) -> ClientOutcome {
    let conn = match client.connect(server).await {
        Ok(conn) => conn,
        Err(ConnectError::Failed { error, .. }) => return ClientOutcome::Failed(error),
        Err(e) => panic!("connect failed other than by a handshake error: {e}"),
    };
    let transfer = async {
        conn.send(Bytes::from_static(b"hello")).await.ok()?;
        conn.close().await.ok()
    };
    match tokio::time::timeout(PROMPT, transfer).await {
        Ok(Some(())) => ClientOutcome::Transferred,
        _ => match tokio::time::timeout(PROMPT, conn.closed()).await {
            Ok(Some(error)) => ClientOutcome::Failed(error),
            other => panic!("neither a transfer nor a handshake error: {other:?}"),
        },
    }
}

/// Runs one client against one server and returns the client's outcome and
/// the server's first handshake event.
async fn handshake_case(server: Security, client: Security) -> (ClientOutcome, HandshakeEvent) {
    let server = Endpoint::bind(loopback(), config(server)).unwrap();
    let client = Endpoint::client_with_config(loopback(), config(client)).unwrap();
    let addr = server.local_addr();
    let accepting = server.clone();
    // Accepted connections are read to the end so the client's close completes.
    let acceptor = tokio::spawn(async move {
        while let Some(conn) = accepting.accept().await {
            while let Ok(Some(_)) = conn.recv().await {}
        }
    });
    let outcome = attempt(&client, addr).await;
    let event = tokio::time::timeout(PROMPT, server.next_handshake_event())
        .await
        .expect("the server reported no handshake event")
        .expect("the server's event stream ended");
    acceptor.abort();
    (outcome, event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_outcomes_are_distinct_and_prompt_on_both_sides() {
    bounded(async {
        let server_id = identity();
        let client_id = identity();
        let stranger = identity().public();
        let started = Instant::now();

        // Right keys both ways: connected, and the server saw the client's key.
        let (outcome, event) = handshake_case(
            encrypted(|c| {
                c.identity = Some(server_id.clone());
                c.allow = Some(vec![client_id.public()]);
            }),
            encrypted(|c| {
                c.identity = Some(client_id.clone());
                c.peer_key = Some(server_id.public());
            }),
        )
        .await;
        assert!(matches!(outcome, ClientOutcome::Transferred), "{outcome:?}");
        assert_eq!(
            event,
            HandshakeEvent::Accepted {
                remote: event.remote(),
                peer_key: Some(client_id.public()),
            }
        );
        assert!(
            event.to_string().contains(&format!(
                "peer key fingerprint {}",
                client_id.public().fingerprint()
            )),
            "{event}"
        );

        // The client expects another server key.
        let (outcome, event) = handshake_case(
            encrypted(|c| c.identity = Some(server_id.clone())),
            encrypted(|c| c.peer_key = Some(stranger)),
        )
        .await;
        match outcome {
            ClientOutcome::Failed(ConnectionError::PeerKeyMismatch { expected, got }) => {
                assert_eq!((expected, got), (stranger, server_id.public()));
            }
            other => panic!("{other:?}"),
        }
        assert_failed_with_code(&event, close_code::SERVER_KEY_MISMATCH);
        assert!(
            event.to_string().contains("refused the connection"),
            "{event}"
        );

        // The client is not on the allow-list.
        let (outcome, event) = handshake_case(
            encrypted(|c| c.allow = Some(vec![stranger])),
            encrypted(|c| c.identity = Some(client_id.clone())),
        )
        .await;
        assert_rejected(&outcome, close_code::KEY_NOT_ALLOWED, "allow-list");
        match &event {
            HandshakeEvent::Failed {
                error: ConnectionError::PeerNotAllowed(key),
                ..
            } => assert_eq!(*key, client_id.public()),
            other => panic!("{other:?}"),
        }

        // Pre-shared keys differ; one side has none; the other side has none.
        for (server_psk, client_psk) in [
            (Some([1; 32]), Some([2; 32])),
            (Some([1; 32]), None),
            (None, Some([2; 32])),
        ] {
            let (outcome, event) = handshake_case(
                encrypted(|c| c.psk = server_psk),
                encrypted(|c| c.psk = client_psk),
            )
            .await;
            assert_rejected(&outcome, close_code::HANDSHAKE_FAILED, "");
            assert!(
                matches!(
                    event,
                    HandshakeEvent::Failed {
                        error: ConnectionError::HandshakeFailed(_),
                        ..
                    }
                ),
                "{event:?}"
            );
        }

        // Plaintext client, encrypted server; and the other way round.
        let (outcome, event) =
            handshake_case(Security::default(), Security::InsecurePlaintext).await;
        assert_rejected(
            &outcome,
            close_code::ENCRYPTION_REQUIRED,
            "requires encryption",
        );
        assert_refused_with_code(&event, close_code::ENCRYPTION_REQUIRED);
        let (outcome, event) =
            handshake_case(Security::InsecurePlaintext, Security::default()).await;
        assert_rejected(&outcome, close_code::PLAINTEXT_ONLY, "plaintext");
        assert_refused_with_code(&event, close_code::PLAINTEXT_ONLY);

        // Both plaintext: connected, no keys.
        let (outcome, event) =
            handshake_case(Security::InsecurePlaintext, Security::InsecurePlaintext).await;
        assert!(matches!(outcome, ClientOutcome::Transferred), "{outcome:?}");
        assert!(
            matches!(event, HandshakeEvent::Accepted { peer_key: None, .. }),
            "{event:?}"
        );

        // Nine handshakes, none of which may have waited for the 30 s connect
        // timeout (a refusal showing up as a timeout). Not a timing assert:
        // a bound far above any plausible duration.
        assert!(started.elapsed() < Duration::from_secs(30));
    })
    .await;
}

fn assert_rejected(outcome: &ClientOutcome, code: u64, reason_part: &str) {
    match outcome {
        ClientOutcome::Failed(ConnectionError::Rejected { code: c, reason }) => {
            assert_eq!(*c, code, "{reason}");
            assert!(reason.contains(reason_part), "{reason}");
        }
        other => panic!("expected a refusal with code {code}, got {other:?}"),
    }
}

fn assert_failed_with_code(event: &HandshakeEvent, code: u64) {
    match event {
        HandshakeEvent::Failed {
            error: ConnectionError::Rejected { code: c, .. },
            ..
        } => assert_eq!(*c, code),
        other => panic!("{other:?}"),
    }
}

fn assert_refused_with_code(event: &HandshakeEvent, code: u64) {
    match event {
        HandshakeEvent::Refused { code: c, .. } => assert_eq!(*c, code),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_endpoint_has_no_handshake_events() {
    bounded(async {
        let client = Endpoint::client(loopback()).unwrap();
        assert_eq!(client.next_handshake_event().await, None);
    })
    .await;
}

// ----- flood ---------------------------------------------------------------------

/// Forged Initials the flood sends (plus one random datagram for every two).
const FLOOD_INITIALS: usize = 100_000;
/// The flood's pace, in Initials per second over all threads: about what the
/// server's core can take in on a small machine, so that the flood lasts
/// through the real transfer and reaches the core rather than overflowing the
/// kernel's socket buffer (an unpaced flood on loopback only measures the
/// kernel, and starves everyone alike).
const FLOOD_RATE: f64 = 40_000.0;
/// Sockets (source addresses) the flood comes from.
const FLOOD_SOCKETS: usize = 16;
/// Threads sending it.
const FLOOD_THREADS: usize = 4;
/// Bound on the flood's duration, whatever happens to the transfer.
const FLOOD_LIMIT: Duration = Duration::from_secs(60);
/// The legitimate transfer.
const TRANSFER_BYTES: usize = 5 << 20;

/// An Initial with valid framing, padded to 1200 bytes, a random client id
/// and `handshake` as its handshake message.
fn initial(rng: &mut SmallRng, handshake: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(1200);
    Header {
        kind: PacketKind::Initial,
        flags: 0,
        dcid: rng.gen::<u64>() | 1,
        pn: 0,
    }
    .encode(&mut d);
    Frame::Handshake(handshake).encode(&mut d);
    Frame::Padding(1200 - d.len()).encode(&mut d);
    d
}

/// The handshake message of a genuine client's first Initial: replayed under
/// fresh connection ids, it makes the server do real work (a Diffie-Hellman,
/// an answer it retransmits) for a client that never finishes, which is what
/// the amplification limit is about.
fn genuine_first_message(server: SocketAddr) -> Vec<u8> {
    let mut core = surelink::proto::Endpoint::new(ProtocolConfig::default(), 9u64, false).unwrap();
    let (_, mut conn) = core.connect(Instant::now(), server);
    let mut buf = Vec::new();
    let t = conn
        .poll_transmit(Instant::now(), &mut buf)
        .expect("a client sends its Initial");
    let mut r = Reader::new(&buf[..t.size]);
    Header::decode(&mut r).unwrap();
    let frames = &buf[t.size - r.remaining()..t.size];
    FrameIter::new(frames)
        .find_map(|f| match f {
            Ok(Frame::Handshake(m)) => Some(m.to_vec()),
            _ => None,
        })
        .expect("the Initial carries a handshake message")
}

/// What the flood's sockets sent and got back.
#[derive(Debug, Default, Clone, Copy)]
struct FloodCounts {
    initials_sent: u64,
    datagrams_sent: u64,
    bytes_sent: u64,
    datagrams_back: u64,
    bytes_back: u64,
}

impl FloodCounts {
    fn add(&mut self, o: FloodCounts) {
        self.initials_sent += o.initials_sent;
        self.datagrams_sent += o.datagrams_sent;
        self.bytes_sent += o.bytes_sent;
        self.datagrams_back += o.datagrams_back;
        self.bytes_back += o.bytes_back;
    }
}

/// Shared between the test and the flood threads.
#[derive(Debug, Default)]
struct FloodControl {
    /// Flood threads done sending.
    finished_sending: AtomicUsize,
    /// Stop draining answers.
    stop: AtomicBool,
}

/// Reads every datagram waiting on `socket`, counting it.
fn drain(socket: &UdpSocket, buf: &mut [u8], counts: &mut FloodCounts) {
    // Bounded: at most this many per call.
    for _ in 0..10_000 {
        match socket.recv(buf) {
            Ok(n) => {
                counts.datagrams_back += 1;
                counts.bytes_back += n as u64;
            }
            Err(_) => return,
        }
    }
}

/// One flood thread: `initials` forged Initials from its `sockets` (one in
/// ten replays a genuine first message, the rest carry random bytes), with a
/// random datagram after every second one, at `rate` Initials per second;
/// then it keeps counting answers until told to stop.
fn flood(
    seed: u64,
    sockets: Vec<UdpSocket>,
    initials: usize,
    rate: f64,
    genuine: Vec<u8>,
    control: &FloodControl,
) -> FloodCounts {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut counts = FloodCounts::default();
    let mut buf = vec![0u8; 65_536];
    let started = Instant::now();
    for i in 0..initials {
        if started.elapsed() > FLOOD_LIMIT {
            break;
        }
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if let Some(ahead) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(ahead);
        }
        let socket = &sockets[i % sockets.len()];
        let forged = if i % 10 == 0 {
            initial(&mut rng, &genuine)
        } else {
            let mut message = [0u8; 48];
            rng.fill_bytes(&mut message);
            initial(&mut rng, &message)
        };
        let garbage = (i % 2 == 0).then(|| {
            let mut g = vec![0u8; rng.gen_range(1..1400)];
            rng.fill_bytes(&mut g);
            g
        });
        for (datagram, is_initial) in [(Some(forged), true), (garbage, false)] {
            let Some(datagram) = datagram else { continue };
            // A full socket buffer drops the datagram: it is not counted as sent.
            if socket.send(&datagram).is_ok() {
                counts.datagrams_sent += 1;
                counts.bytes_sent += datagram.len() as u64;
                counts.initials_sent += u64::from(is_initial);
            }
        }
        if i % 64 == 0 {
            for s in &sockets {
                drain(s, &mut buf, &mut counts);
            }
        }
    }
    control.finished_sending.fetch_add(1, Ordering::Relaxed);
    // Answers keep coming while half-open connections retransmit.
    let deadline = Instant::now() + FLOOD_LIMIT;
    while !control.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        for s in &sockets {
            drain(s, &mut buf, &mut counts);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for s in &sockets {
        drain(s, &mut buf, &mut counts);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_handshakes_and_garbage_does_not_stop_a_real_transfer() {
    bounded(async {
        // Half-open connections give up sooner, so the test can wait for all
        // of them to end (and count every answer they send) in bounded time.
        let protocol = protocol(|p| p.handshake_timeout = Duration::from_secs(2));
        let max_connections = protocol.max_connections;
        let retry_threshold = protocol.retry_threshold;
        let server_config = EndpointConfig::default().with_protocol(protocol);
        let server = Endpoint::bind(loopback(), server_config).unwrap();
        let addr = server.local_addr();

        // The flood starts first and goes on during the transfer.
        let genuine = genuine_first_message(addr);
        let control = Arc::new(FloodControl::default());
        let mut floods = Vec::new();
        for t in 0..FLOOD_THREADS {
            let sockets: Vec<UdpSocket> = (0..FLOOD_SOCKETS / FLOOD_THREADS)
                .map(|_| {
                    let s = UdpSocket::bind(loopback()).unwrap();
                    s.connect(addr).unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect();
            let (genuine, control) = (genuine.clone(), control.clone());
            floods.push(std::thread::spawn(move || {
                let initials = FLOOD_INITIALS / FLOOD_THREADS;
                let rate = FLOOD_RATE / FLOOD_THREADS as f64;
                flood(t as u64, sockets, initials, rate, genuine, &control)
            }));
        }
        // Reflection: sources that each send one genuine first message and
        // nothing more (a spoofed victim's address). Whatever the server sends
        // them, retransmissions included, must stay within 3x of it.
        let reflectors: Vec<UdpSocket> = (0..8)
            .map(|i| {
                let s = UdpSocket::bind(loopback()).unwrap();
                s.connect(addr).unwrap();
                s.set_nonblocking(true).unwrap();
                let mut rng = SmallRng::seed_from_u64(1000 + i);
                s.send(&initial(&mut rng, &genuine)).unwrap();
                s
            })
            .collect();
        let underway = Instant::now() + Duration::from_secs(30);
        while server.stats().datagrams_received < 1_000 {
            assert!(Instant::now() < underway, "the flood does not arrive");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        // Meanwhile, a genuine client sends 5 MiB.
        let mut data = vec![0u8; TRANSFER_BYTES];
        SmallRng::seed_from_u64(99).fill_bytes(&mut data);
        let data = Bytes::from(data);
        let accepting = server.clone();
        let receiver = tokio::spawn(async move {
            let conn = accepting
                .accept()
                .await
                .expect("the real client is accepted");
            let mut got = Vec::with_capacity(TRANSFER_BYTES);
            while let Some(m) = conn.recv().await.expect("the transfer failed") {
                got.extend_from_slice(&m);
            }
            got
        });
        let client = Endpoint::client(loopback()).unwrap();
        let conn = client
            .connect(addr)
            .await
            .expect("the real client connects despite the flood");
        for chunk in data.chunks(64 << 10) {
            conn.send(data.slice_ref(chunk)).await.unwrap();
        }
        conn.close().await.expect("every byte acknowledged");
        let got = receiver.await.unwrap();
        let flood_running = control.finished_sending.load(Ordering::Relaxed) < FLOOD_THREADS;
        eprintln!("transfer done; flood still running: {flood_running}");
        assert!(got == data[..], "the transfer arrived altered");

        // Let the flood finish, then every half-open connection end (their
        // retransmitted answers count as what the flood gets back), then
        // collect the last answers.
        let wait_until = Instant::now() + FLOOD_LIMIT;
        loop {
            let stats = server.stats();
            if control.finished_sending.load(Ordering::Relaxed) == FLOOD_THREADS
                && stats.connections == 0
            {
                break;
            }
            assert!(
                Instant::now() < wait_until,
                "the flood or its connections never ended: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        control.stop.store(true, Ordering::Relaxed);
        let mut counts = FloodCounts::default();
        for f in floods {
            counts.add(f.join().unwrap());
        }
        let stats = server.stats();
        eprintln!("flood: {counts:?}\nserver: {stats:?}");
        let mut buf = vec![0u8; 65_536];
        for (i, r) in reflectors.iter().enumerate() {
            let mut back = FloodCounts::default();
            drain(r, &mut buf, &mut back);
            eprintln!(
                "reflector {i}: {} datagrams, {} bytes back",
                back.datagrams_back, back.bytes_back
            );
            assert!(
                back.bytes_back <= 3 * 1200,
                "amplification to a single Initial: {back:?}"
            );
        }

        assert!(counts.initials_sent >= FLOOD_INITIALS as u64, "{counts:?}");
        // No amplification: the flood got back at most 3x what it sent.
        assert!(
            counts.bytes_back <= 3 * counts.bytes_sent,
            "amplification: {counts:?}"
        );
        // Bounded state: never more connections than the cap, and in fact
        // few (handshakes are budgeted per source and retried statelessly
        // under load), and a bounded queue of handshake events.
        assert!(stats.peak_connections <= max_connections, "{stats:?}");
        assert!(
            stats.peak_connections <= 4 * retry_threshold,
            "state kept for many forged handshakes: {stats:?}"
        );
        // The defences were exercised, not bypassed.
        assert!(stats.protocol.rate_limited > 0, "{stats:?}");
        assert!(stats.protocol.retries_sent > 0, "{stats:?}");
        assert!(stats.protocol.malformed > 0, "{stats:?}");
    })
    .await;
}
