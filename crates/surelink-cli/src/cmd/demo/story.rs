//! The demo's steps that need more than one stream through one link: a cut
//! of the primary path (failover to a backup path) and a receiver crash
//! with a restart from its checkpoint (a durable session).
//!
//! [`super::run`] drives them one after the other; each returns what it saw
//! (counts, event times on the demo clock) for the step line, the JSON and
//! the plot.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use surelink::impair::{ImpairConfig, Impairer, LinkConfig};
use surelink::{ConnectionEvent, Endpoint, EndpointConfig, PathId};
use surelink_session::{
    DurableReceiver, DurableSender, FileSink, Outgoing, ReceiverEvent, SessionError, SessionOptions,
};

use super::{
    close_sender, connect_pair, join_receiver, receive, send, DemoClock, Pace, Probe, Shared,
    Tally, HEADER_LEN,
};

/// The link of steps 2 and 3: delay and a little jitter, no loss, so that
/// every loss counted is the mechanism's, not the link's.
const QUIET_LINK: &str = "delay=10ms,jitter=1ms";
/// How long the crashed receiver stays down before it restarts.
const DOWNTIME: Duration = Duration::from_millis(300);
/// How many times the restarted receiver tries to bind its old address.
const REBIND_ATTEMPTS: u32 = 40;
/// Most messages the durable sender queues in one group commit (after an
/// outage it has a backlog to catch up on).
const MAX_BATCH: u64 = 256;
/// How many connections the durable sender makes at most.
const MAX_ATTACHES: u32 = 20;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// What step 2 (failover) saw.
pub(super) struct FailoverRun {
    /// Messages sent.
    pub sent: u64,
    /// What the receiving application saw.
    pub tally: Tally,
    /// When the primary path was cut (demo clock, µs).
    pub cut_us: u64,
    /// The sender's path events after the cut, with their time (demo clock, µs).
    pub events: Vec<(u64, ConnectionEvent)>,
    /// What went wrong, if anything.
    pub problems: Vec<String>,
}

impl FailoverRun {
    /// When the first event matching `pick` came, µs after the cut.
    pub fn after_cut(&self, pick: impl Fn(&ConnectionEvent) -> bool) -> Option<u64> {
        self.events
            .iter()
            .find(|(at, e)| *at >= self.cut_us && pick(e))
            .map(|(at, _)| at - self.cut_us)
    }

    /// The path the data moved to, if it failed over.
    pub fn failed_over_to(&self) -> Option<usize> {
        self.events.iter().find_map(|(at, e)| match e {
            ConnectionEvent::FailedOver { to, .. } if *at >= self.cut_us => Some(to.0),
            _ => None,
        })
    }
}

/// Step 2: a stream over two paths (each through its own impairer, the
/// second a backup); the primary is cut for good at `cut_after`.
pub(super) async fn failover(
    pace: Pace,
    total: u64,
    cut_after: Duration,
    seed: u64,
    clock: DemoClock,
) -> anyhow::Result<FailoverRun> {
    let link: LinkConfig = QUIET_LINK
        .parse()
        .map_err(|e| anyhow!("invalid link: {e}"))?;
    let config = EndpointConfig::default();
    let receiver =
        Endpoint::bind(loopback(), config.clone()).context("cannot bind the receiver")?;
    let impairer = |seed| {
        Impairer::start(
            ImpairConfig::new(loopback(), receiver.local_addr())
                .with_both(link.clone())
                .with_seed(seed),
        )
        .context("cannot start an impaired link")
    };
    let primary = impairer(seed)?;
    let backup = impairer(seed.wrapping_add(1))?;
    let sender =
        Endpoint::client_with_config(loopback(), config).context("cannot bind the sender")?;
    let (conn, rconn) = connect_pair(&sender, &receiver, primary.local_addr()).await?;
    conn.add_path(backup.local_addr())
        .ok_or_else(|| anyhow!("the connection refused a second path"))?;

    let events = Arc::new(Mutex::new(Vec::new()));
    let watching = {
        let conn = conn.clone();
        let events = Arc::clone(&events);
        tokio::spawn(async move {
            while let Some(event) = conn.next_event().await {
                let at = clock.now_us();
                events
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((at, event));
            }
        })
    };
    let shared = Arc::new(Shared::new());
    let receiving = tokio::spawn(receive(rconn.clone(), Arc::clone(&shared), clock, None));
    let cutting = async {
        tokio::time::sleep(cut_after).await;
        primary.set_cut(true);
        clock.now_us()
    };
    let (sent, cut_us) = tokio::join!(send(&conn, pace, total, clock, &shared), cutting);
    let mut problems = Vec::new();
    for outcome in [
        close_sender(&conn, sent).await,
        join_receiver(receiving).await,
    ] {
        if let Err(e) = outcome {
            problems.push(format!("{e:#}"));
        }
    }
    watching.abort();
    drop((conn, rconn));
    for handle in [primary, backup] {
        handle.shutdown().await;
    }
    for endpoint in [&sender, &receiver] {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
    let events = std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(FailoverRun {
        sent: shared.sent.load(Ordering::Relaxed),
        tally: shared.take_tally(),
        cut_us,
        events,
        problems,
    })
}

/// Whether `event` says path 0 (the primary) went down.
pub(super) fn primary_down(event: &ConnectionEvent) -> bool {
    matches!(event, ConnectionEvent::PathDown(PathId(0)))
}

/// What step 3 (crash and restart) saw.
pub(super) struct DurableRun {
    /// Messages the sender's session queued.
    pub sent: u64,
    /// What the receiver's output holds, message by message.
    pub tally: Tally,
    /// When the receiver was killed (demo clock, µs).
    pub crash_us: u64,
    /// When the restarted receiver was listening again (demo clock, µs).
    pub restart_us: u64,
    /// The message the restarted receiver resumed at (from its checkpoint).
    pub resumed_at: Option<u64>,
    /// Messages the sender sent again after the restart.
    pub resent: u64,
}

/// Step 3: a durable session (state directories in a temporary directory);
/// when the sender has queued half the messages, the receiver is killed —
/// its endpoint and session dropped without closing — and after
/// [`DOWNTIME`] reopened from the same state directory on the same address.
pub(super) async fn crash_and_restart(
    pace: Pace,
    total: u64,
    seed: u64,
    clock: DemoClock,
) -> anyhow::Result<DurableRun> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let out = dir.path().join("received.bin");
    let rx_state = dir.path().join("receiver-state");
    let options = SessionOptions::default().with_seed(seed);
    let resumed_at = Arc::new(Mutex::new(None));
    let first = Endpoint::bind(loopback(), EndpointConfig::default())
        .context("cannot bind the receiver")?;
    let addr = first.local_addr();
    let link: LinkConfig = QUIET_LINK
        .parse()
        .map_err(|e| anyhow!("invalid link: {e}"))?;
    let impairer = Impairer::start(
        ImpairConfig::new(loopback(), addr)
            .with_both(link)
            .with_seed(seed),
    )
    .context("cannot start the impaired link")?;
    let receiving = start_receiver(first, &rx_state, &out, &options, &resumed_at)?;

    let queued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sending = tokio::spawn(durable_sender(
        dir.path().join("sender-state"),
        impairer.local_addr(),
        pace,
        total,
        clock,
        Arc::clone(&queued),
        options.clone(),
    ));
    // Kill the receiver half way through (bounded: the sender may fail).
    for _ in 0..10_000 {
        if queued.load(Ordering::Relaxed) >= total / 2 || sending.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    receiving.abort();
    let _ = receiving.await;
    let crash_us = clock.now_us();
    tokio::time::sleep(DOWNTIME).await;
    let mut rebound = None;
    for _ in 0..REBIND_ATTEMPTS {
        match Endpoint::bind(addr, EndpointConfig::default()) {
            Ok(endpoint) => {
                rebound = Some(endpoint);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let second = rebound.ok_or_else(|| anyhow!("the receiver cannot bind {addr} again"))?;
    let restart_us = clock.now_us();
    let receiving = start_receiver(second, &rx_state, &out, &options, &resumed_at)?;
    let resent = match tokio::time::timeout(Duration::from_secs(60), sending).await {
        Ok(Ok(result)) => result?,
        Ok(Err(e)) => bail!("the durable sender failed: {e}"),
        Err(_) => bail!("the durable session did not complete within 60 s"),
    };
    // The sender's finish returned: the receiver checkpointed the end.
    receiving.abort();
    let _ = receiving.await;
    impairer.shutdown().await;
    let data = std::fs::read(&out).context("cannot read the receiver's output")?;
    let mut tally = Tally::new();
    for message in data.chunks(HEADER_LEN) {
        tally.record(message, clock.now_us(), None);
    }
    let resumed_at = *resumed_at.lock().unwrap_or_else(|e| e.into_inner());
    Ok(DurableRun {
        sent: queued.load(Ordering::Relaxed),
        tally,
        crash_us,
        restart_us,
        resumed_at,
        resent,
    })
}

/// Opens the durable receiver from `state` and runs it on `endpoint` in a
/// task; a resumed session's position (in messages) goes to `resumed_at`.
fn start_receiver(
    endpoint: Endpoint,
    state: &Path,
    out: &Path,
    options: &SessionOptions,
    resumed_at: &Arc<Mutex<Option<u64>>>,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), SessionError>>> {
    let sink = FileSink::open(out).context("cannot open the receiver's output")?;
    let mut rx = DurableReceiver::open_dir(state, sink, options.clone())
        .context("cannot open the receiver's state")?;
    let resumed_at = Arc::clone(resumed_at);
    Ok(tokio::spawn(async move {
        rx.run(&endpoint, |event| {
            if let ReceiverEvent::Accepted { accepted, .. } = event {
                if !accepted.new_session {
                    *resumed_at.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(accepted.position / HEADER_LEN as u64);
                }
            }
        })
        .await
    }))
}

/// The durable sender: probes of [`HEADER_LEN`] bytes at `pace.rate`, the
/// cursor of each is its sequence number + 1; reconnects when the
/// connection fails and continues from the session's cursor. Returns how
/// many messages were sent again on resumption.
async fn durable_sender(
    state: std::path::PathBuf,
    to: SocketAddr,
    pace: Pace,
    total: u64,
    clock: DemoClock,
    queued: Arc<std::sync::atomic::AtomicU64>,
    options: SessionOptions,
) -> anyhow::Result<u64> {
    let mut tx = DurableSender::open_dir(&state, "surelink demo", options)
        .context("cannot open the sender's state")?;
    let endpoint = Endpoint::client(loopback()).context("cannot bind the sender")?;
    let start = tokio::time::Instant::now();
    let mut resent = 0;
    for _ in 0..MAX_ATTACHES {
        let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), endpoint.connect(to)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match tx.attach(conn).await {
            Ok(resumed) => resent += resumed.resent,
            Err(e) if e.is_connection() => continue,
            Err(e) => return Err(e).context("the durable session failed"),
        }
        let pumped = async {
            loop {
                let seq = tx.resume_cursor();
                queued.store(seq, Ordering::Relaxed);
                if seq >= total {
                    return tx.finish().await;
                }
                let due = ((start.elapsed().as_secs_f64() * pace.rate) as u64 + 1).min(total);
                if seq >= due {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let batch = (seq..due.min(seq + MAX_BATCH))
                    .map(|seq| Outgoing {
                        channel: 0,
                        data: Probe {
                            seq,
                            sent_us: clock.now_us(),
                        }
                        .encode(HEADER_LEN),
                        cursor: seq + 1,
                    })
                    .collect();
                tx.send_batch(batch).await?;
            }
        };
        match pumped.await {
            Ok(()) => return Ok(resent),
            Err(e) if e.is_connection() => continue,
            Err(e) => return Err(e).context("the durable session failed"),
        }
    }
    bail!("the durable sender gave up after {MAX_ATTACHES} connections")
}
