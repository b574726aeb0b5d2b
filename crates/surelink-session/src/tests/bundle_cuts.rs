//! Checkpoints and resume when a crash cuts MSG_BUNDLE frames, on the
//! simulated network and a paused clock.
//!
//! Small messages (up to 200 bytes, 208 with their id: small enough to be
//! bundled) are queued [`BATCH`] at a time with
//! [`DurableSender::send_batch`] (one `Connection::send_many` per batch), so
//! they travel in MSG_BUNDLE frames. At seeded cut points one side is killed
//! (its host taken down at once, its task ended) and restarted from its
//! journal:
//!
//! - the receiver, while it writes a message ([`CuttingSink`]): the messages
//!   behind it in its bundle are already taken in, and acknowledged, by its
//!   transport, but not written;
//! - the sender, right after queuing a batch: its bundles sent and not yet
//!   acknowledged.
//!
//! The output must be exactly the input (nothing lost, nothing twice), and
//! the cuts must really have cut bundles: the counts are checked.

use std::sync::atomic::{AtomicU64, Ordering};

use surelink::Connection;

use super::sim::network;
use super::*;

/// Messages per transfer (about 200 KiB).
const MESSAGES: u64 = 2_000;

/// Messages queued together by one `send_batch`.
const BATCH: u64 = 32;

/// Cuts per transfer, the victims taking turns.
const CUTS: u64 = 6;

/// Seeds per test by default; `SURELINK_SIM_SEEDS=N` runs N.
const DEFAULT_SEEDS: u64 = 16;

/// Message `i`: 1 to 200 bytes derived from `i`, so a duplicate or a gap
/// changes the output.
fn small_message(i: u64) -> Vec<u8> {
    let len = (i.wrapping_mul(7919) % 200 + 1) as usize;
    (0..len).map(|k| (i as usize * 131 + k * 7) as u8).collect()
}

/// The id of the message a side is to be killed at (its first message at
/// or past it), or [`DISARMED`].
type Armed = Arc<AtomicU64>;

/// No cut armed.
const DISARMED: u64 = u64::MAX;

/// The receiver's output: a [`MemSink`] whose process is killed, as by
/// `kill -9`, when it comes to write the armed message. Its host goes down
/// before anything else can leave it, and from then on nothing more is
/// written, flushed or checkpointed.
#[derive(Debug)]
struct CuttingSink {
    inner: MemSink,
    armed: Armed,
    net: Net,
    /// The id of the message whose write the kill interrupted.
    killed_at: Arc<Mutex<Option<u64>>>,
    dead: bool,
}

impl CuttingSink {
    fn alive(&self) -> std::io::Result<()> {
        match self.dead {
            true => Err(std::io::Error::other("the receiver was killed")),
            false => Ok(()),
        }
    }
}

impl DurableSink for CuttingSink {
    fn write(&mut self, channel: u64, data: &[u8]) -> std::io::Result<()> {
        self.alive()?;
        self.inner.write(channel, data)
    }

    fn write_delivery(&mut self, delivery: &Delivery, data: &[u8]) -> std::io::Result<()> {
        self.alive()?;
        if delivery.id >= self.armed.load(Ordering::SeqCst) {
            self.armed.store(DISARMED, Ordering::SeqCst);
            self.net.crash(self.net.server_addr());
            self.dead = true;
            *self.killed_at.lock().unwrap() = Some(delivery.id);
            return Err(std::io::Error::other("the receiver was killed"));
        }
        self.inner.write(delivery.channel, data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.alive()?;
        self.inner.flush()
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.alive()?;
        self.inner.sync()
    }

    fn position(&self) -> u64 {
        self.inner.position()
    }

    fn restore(&mut self, position: u64) -> std::io::Result<()> {
        self.alive()?;
        self.inner.restore(position)
    }

    fn committed(&mut self, position: u64) {
        self.inner.committed(position);
    }
}

/// One receiver incarnation: accepts senders itself (keeping each
/// connection in `conns`, for a look at its transport after a kill) and
/// serves the session until it is complete.
async fn receiver(
    endpoint: Endpoint,
    storage: MemStorage,
    sink: CuttingSink,
    options: SessionOptions,
    conns: Arc<Mutex<Vec<Connection>>>,
) -> Result<(), SessionError> {
    let timeout = options.handshake_timeout;
    let mut rx = DurableReceiver::open(storage, sink, options)?;
    let (hello_tx, mut hellos) = tokio::sync::mpsc::channel(16);
    let accept = async {
        while let Some(conn) = endpoint.accept().await {
            conns.lock().unwrap().push(conn.clone());
            let hello_tx = hello_tx.clone();
            tokio::spawn(async move {
                let hello = read_hello(&conn, timeout).await;
                let _ = hello_tx.send((conn, hello)).await;
            });
        }
    };
    tokio::select! {
        biased;
        served = rx.run_hellos(&mut hellos, |_| {}) => served,
        () = accept => Err(SessionError::EndpointClosed),
    }
}

/// How a sender incarnation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SenderEnd {
    /// The session is complete.
    Complete,
    /// Killed after queuing the armed message; `bundled_unacked`: its
    /// connection had sent MSG_BUNDLE frames and had messages not yet
    /// acknowledged.
    Killed { bundled_unacked: bool },
}

/// One sender incarnation: resumes, sends the rest in batches of
/// [`BATCH`] and finishes, unless killed after the batch holding the armed
/// message.
async fn sender(
    net: Net,
    seed: u64,
    incarnation: u64,
    storage: MemStorage,
    options: SessionOptions,
    armed: Armed,
) -> Result<SenderEnd, SessionError> {
    let client = net.client(seed, incarnation);
    let mut tx = DurableSender::open(storage, "small messages", options)?;
    if tx.is_complete() {
        return Ok(SenderEnd::Complete);
    }
    // The cursor after message i is i + 1: the next message to read.
    let mut next = tx.resume_cursor();
    loop {
        attach_connected(&mut tx, &client, net.server_addr()).await?;
        let result = async {
            while next < MESSAGES {
                let end = MESSAGES.min(next + BATCH);
                let batch = (next..end)
                    .map(|i| Outgoing {
                        channel: 0,
                        data: Bytes::from(small_message(i)),
                        cursor: i + 1,
                    })
                    .collect();
                let sent = tx.send_batch(batch).await;
                next = tx.resume_cursor();
                sent?;
                if end > armed.load(Ordering::SeqCst) {
                    armed.store(DISARMED, Ordering::SeqCst);
                    // Let the driver send what it can (no acknowledgement
                    // comes back while the clock stands still), then kill.
                    for _ in 0..16 {
                        tokio::task::yield_now().await;
                    }
                    let stats = tx.connection().expect("attached").stats();
                    net.crash(sim_client_addr(incarnation));
                    return Ok(SenderEnd::Killed {
                        bundled_unacked: stats.bundled_messages_sent > 0
                            && stats.messages_acked < stats.messages_sent,
                    });
                }
            }
            tx.finish().await.map(|()| SenderEnd::Complete)
        }
        .await;
        match result {
            Ok(end) => return Ok(end),
            Err(e) if e.is_connection() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What the cuts of a transfer hit.
#[derive(Debug, Default)]
struct Cuts {
    /// Receivers killed while writing a message.
    receiver: u64,
    /// Of those, kills with the next message of the channel already taken
    /// in by the transport (acknowledged, not written).
    receiver_ahead: u64,
    /// Of those, kills on a connection that had received MSG_BUNDLE frames.
    receiver_bundled: u64,
    /// Senders killed after queuing a batch.
    sender: u64,
    /// Of those, kills with bundled messages unacknowledged.
    sender_bundled_unacked: u64,
}

/// After the receiver was killed at message `killed`: whether its
/// connection's transport had already taken in the next message, and
/// whether it had received MSG_BUNDLE frames.
async fn transport_after_kill(conn: &Connection, killed: u64) -> (bool, bool) {
    let bundled = conn.stats().bundles_received > 0;
    let ahead = match tokio::time::timeout(Duration::ZERO, conn.recv_message()).await {
        Ok(Ok(Some(m))) if m.channel == 0 => {
            wire::split_data(&m.data).is_ok_and(|(id, _)| id == killed + 1)
        }
        _ => false,
    };
    (ahead, bundled)
}

/// One transfer of seed `seed` with [`CUTS`] kills, the victims taking
/// turns; checks that the output is exactly the input.
async fn cut_transfer(seed: u64) -> Cuts {
    let net = Net::Sim(network(seed));
    let options = options(durability(seed)).with_seed(seed);
    let mut rng = SmallRng::seed_from_u64(seed);
    let (tx_storage, rx_storage) = (MemStorage::new(), MemStorage::new());
    let file = MemFile::default();
    let (rx_armed, tx_armed): (Armed, Armed) = (
        Arc::new(AtomicU64::new(DISARMED)),
        Arc::new(AtomicU64::new(DISARMED)),
    );
    let killed_at = Arc::new(Mutex::new(None));
    let conns = Arc::new(Mutex::new(Vec::new()));
    let spawn_rx = |incarnation: u64| {
        let sink = CuttingSink {
            inner: MemSink::new(&file),
            armed: rx_armed.clone(),
            net: net.clone(),
            killed_at: killed_at.clone(),
            dead: false,
        };
        tokio::spawn(receiver(
            net.server(seed, incarnation),
            rx_storage.clone(),
            sink,
            options.clone(),
            conns.clone(),
        ))
    };
    let spawn_tx = |incarnation: u64| {
        tokio::spawn(sender(
            net.clone(),
            seed,
            incarnation,
            tx_storage.clone(),
            options.clone(),
            tx_armed.clone(),
        ))
    };
    let (mut rx_incarnation, mut tx_incarnation) = (0, 0);
    let mut rx_task = spawn_rx(rx_incarnation);
    let mut tx_task = spawn_tx(tx_incarnation);
    let mut cuts = Cuts::default();
    let span = MESSAGES / (CUTS + 1);
    for k in 0..CUTS {
        let target = (k + 1) * span + rng.gen_range(0..span / 2);
        if (seed + k) % 2 == 0 {
            rx_armed.store(target, Ordering::SeqCst);
            let deadline = tokio::time::Instant::now() + SCENARIO_LIMIT;
            let killed = loop {
                if let Some(id) = killed_at.lock().unwrap().take() {
                    break Some(id);
                }
                if tx_task.is_finished() {
                    break None;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no progress (seed {seed})"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            rx_armed.store(DISARMED, Ordering::SeqCst);
            let Some(killed) = killed else {
                break;
            };
            rx_task.abort();
            let _ = (&mut rx_task).await;
            let conn = conns
                .lock()
                .unwrap()
                .last()
                .cloned()
                .expect("a sender came");
            let (ahead, bundled) = transport_after_kill(&conn, killed).await;
            conns.lock().unwrap().clear();
            cuts.receiver += 1;
            cuts.receiver_ahead += u64::from(ahead);
            cuts.receiver_bundled += u64::from(bundled);
            rx_incarnation += 1;
            rx_task = spawn_rx(rx_incarnation);
        } else {
            tx_armed.store(target, Ordering::SeqCst);
            let end = tokio::time::timeout(SCENARIO_LIMIT, &mut tx_task)
                .await
                .unwrap_or_else(|_| panic!("the sender reaches its cut (seed {seed})"))
                .expect("sender task")
                .unwrap_or_else(|e| panic!("the sender runs (seed {seed}): {e}"));
            tx_armed.store(DISARMED, Ordering::SeqCst);
            let SenderEnd::Killed { bundled_unacked } = end else {
                // Everything was queued before the cut: the session is
                // complete on the sender's side.
                tx_task = tokio::spawn(async { Ok(SenderEnd::Complete) });
                break;
            };
            cuts.sender += 1;
            cuts.sender_bundled_unacked += u64::from(bundled_unacked);
            tx_incarnation += 1;
            tx_task = spawn_tx(tx_incarnation);
        }
    }
    let sent = tokio::time::timeout(SCENARIO_LIMIT, &mut tx_task)
        .await
        .unwrap_or_else(|_| panic!("the sender finishes in time (seed {seed})"))
        .expect("sender task");
    match sent {
        Ok(SenderEnd::Complete) => {}
        other => panic!("the sender completes the session (seed {seed}): {other:?}"),
    }
    let received = tokio::time::timeout(SCENARIO_LIMIT, &mut rx_task)
        .await
        .unwrap_or_else(|_| panic!("the receiver finishes in time (seed {seed})"))
        .expect("receiver task");
    if let Err(e) = received {
        panic!("the receiver completes the session (seed {seed}): {e}");
    }
    let want: Vec<u8> = (0..MESSAGES).flat_map(small_message).collect();
    let got = file.contents();
    assert_eq!(got.len(), want.len(), "output length (seed {seed})");
    assert!(got == want, "output differs from input (seed {seed})");
    assert_eq!(
        file.0.lock().unwrap().committed,
        want.len(),
        "the final checkpoint was reported committed to the sink (seed {seed})"
    );
    cuts
}

#[tokio::test(start_paused = true)]
async fn kills_that_cut_bundles_lose_and_repeat_nothing() {
    let seeds = std::env::var("SURELINK_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    let mut total = Cuts::default();
    for seed in 50_000..50_000 + seeds {
        let cuts = cut_transfer(seed).await;
        total.receiver += cuts.receiver;
        total.receiver_ahead += cuts.receiver_ahead;
        total.receiver_bundled += cuts.receiver_bundled;
        total.sender += cuts.sender;
        total.sender_bundled_unacked += cuts.sender_bundled_unacked;
    }
    eprintln!("{seeds} seeds: {total:?}");
    assert!(total.receiver >= seeds * CUTS / 3, "{total:?}");
    assert!(total.sender >= seeds * CUTS / 3, "{total:?}");
    assert_eq!(total.receiver_bundled, total.receiver, "{total:?}");
    assert_eq!(total.sender_bundled_unacked, total.sender, "{total:?}");
    assert!(total.receiver_ahead * 2 >= total.receiver, "{total:?}");
}
