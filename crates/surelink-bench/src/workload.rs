//! The three basic workloads, generic over any [`Pair`]: bulk transfer,
//! small messages, and paced real-time messages through an impairer (whose
//! paced stream, [`paced`], the failover and deadline workloads reuse).
//!
//! Every loop here is bounded: by a byte or message count, and by a time
//! limit that ends the run with an error instead of hanging.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use surelink::impair::ImpairStats;

use crate::cpu;
use crate::transport::{Delivery, Diagnostics, Pair, Rx, Tx};

/// One bulk transfer.
#[derive(Debug, Clone, Serialize)]
pub struct BulkRun {
    /// Bytes offered by the sender.
    pub bytes: u64,
    /// Bytes that arrived.
    pub received: u64,
    /// From the first send to the last byte received.
    pub secs: f64,
    /// Received MiB per second.
    pub mib_per_s: f64,
    /// CPU seconds of both ends (user + system).
    pub cpu_s: f64,
    /// CPU seconds per MiB received.
    pub cpu_s_per_mib: f64,
    /// `received / bytes` (below 1 only for raw UDP).
    pub delivered_fraction: f64,
    /// The sender's own counters, where the system exposes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<Diagnostics>,
}

impl BulkRun {
    /// Derives the rates.
    pub fn new(bytes: u64, received: u64, elapsed: Duration, cpu_s: f64) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mib = received as f64 / (1u64 << 20) as f64;
        Self {
            bytes,
            received,
            secs,
            mib_per_s: mib / secs,
            cpu_s,
            cpu_s_per_mib: if mib > 0.0 { cpu_s / mib } else { f64::NAN },
            delivered_fraction: received as f64 / bytes.max(1) as f64,
            sender: None,
        }
    }
}

/// Size of each bulk message.
pub const BULK_MESSAGE: usize = 64 << 10;

/// Sends `bytes` in 64 KiB messages over clean loopback and measures until
/// the last byte arrived. CPU time is this process's (both ends run here).
pub async fn bulk<T: Tx, R: Rx>(
    pair: Pair<T, R>,
    bytes: u64,
    delivery: Delivery,
    limit: Duration,
) -> io::Result<BulkRun> {
    let Pair {
        mut tx,
        mut rx,
        impairer,
        keep,
    } = pair;
    let block: Vec<u8> = (0..BULK_MESSAGE as u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let block = Bytes::from(block);
    let sender_done = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu::seconds(cpu::Scope::Process);
    let start = Instant::now();
    let deadline = start + limit;

    let done = Arc::clone(&sender_done);
    let receiver = tokio::spawn(async move {
        let mut received = 0u64;
        let mut last = start;
        // A lossy transport never delivers everything: it is finished once
        // the sender is and nothing came for a while.
        let idle = Duration::from_millis(300);
        while received < bytes && Instant::now() < deadline {
            match tokio::time::timeout(idle, rx.recv()).await {
                Ok(Ok(Some(msg))) => {
                    received += msg.len() as u64;
                    last = Instant::now();
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    if delivery == Delivery::Unreliable && done.load(Ordering::Acquire) {
                        break;
                    }
                }
            }
        }
        Ok((received, last, rx))
    });

    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(BULK_MESSAGE as u64) as usize;
        let send = tx.send(block.slice(..n));
        match tokio::time::timeout_at(deadline.into(), send).await {
            Ok(result) => result?,
            Err(_) => break,
        }
        sent += n as u64;
    }
    if let Ok(result) = tokio::time::timeout_at(deadline.into(), tx.flush()).await {
        result?;
    }
    sender_done.store(true, Ordering::Release);
    let (received, last, rx) = receiver.await.map_err(io::Error::other)??;
    let cpu_s = cpu::seconds(cpu::Scope::Process) - cpu_before;
    let sender = tx.diagnostics();
    drop((tx, rx, impairer, keep));
    if delivery == Delivery::Reliable && received < bytes {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{received} of {bytes} bytes arrived within {limit:?}"),
        ));
    }
    Ok(BulkRun {
        sender,
        ..BulkRun::new(bytes, received, last - start, cpu_s)
    })
}

/// One small-message run.
#[derive(Debug, Clone, Serialize)]
pub struct SmallRun {
    /// Message size in bytes.
    pub size: usize,
    /// Messages received within the window.
    pub messages: u64,
    /// Length of the window.
    pub secs: f64,
    /// Messages received per second.
    pub msgs_per_s: f64,
    /// The sender's own counters, where the system exposes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<Diagnostics>,
}

/// Size of each small message.
pub const SMALL_MESSAGE: usize = 64;

/// The small-message loops read the clock once per this many messages (the
/// receiving one at the first batch past it), and
/// each side runs under one timer for the whole window: a clock read and a
/// timer per message cost about as much as a 64-byte message itself, for
/// every system alike. A loop whose calls never wait is cut off by the
/// clock read, at most this many messages late.
const CLOCK_EVERY: u64 = 256;

/// Sends 64-byte messages as fast as the transport takes them for `window`
/// and counts those that arrive within it.
pub async fn small<T: Tx, R: Rx>(pair: Pair<T, R>, window: Duration) -> io::Result<SmallRun> {
    let Pair {
        mut tx,
        mut rx,
        impairer,
        keep,
    } = pair;
    let msg = Bytes::from(vec![0x5a; SMALL_MESSAGE]);
    let start = Instant::now();
    let deadline = start + window;
    let receiver = tokio::spawn(async move {
        let mut messages = 0u64;
        let receiving = async {
            let mut clock_at = 0;
            loop {
                if messages >= clock_at {
                    if Instant::now() >= deadline {
                        return Ok::<_, io::Error>(());
                    }
                    clock_at = messages + CLOCK_EVERY;
                }
                // Every message is handed over as a slice: its length is
                // read, so each one is looked at, as an application would.
                let mut bytes = 0;
                let count = &mut messages;
                let more = rx
                    .recv_each(&mut |m: &[u8]| {
                        *count += 1;
                        bytes += m.len();
                    })
                    .await?;
                std::hint::black_box(bytes);
                if !more {
                    return Ok(());
                }
            }
        };
        // Bounded by the window: the timer cuts off a waiting receive.
        if let Ok(result) = tokio::time::timeout_at(deadline.into(), receiving).await {
            result?;
        }
        Ok::<_, io::Error>((messages, rx))
    });
    let sending = async {
        let mut sent = 0u64;
        loop {
            if sent % CLOCK_EVERY == 0 && Instant::now() >= deadline {
                return Ok::<_, io::Error>(());
            }
            tx.send_ref(&msg).await?;
            sent += 1;
        }
    };
    // Bounded by the window: the timer cuts off a waiting send.
    if let Ok(result) = tokio::time::timeout_at(deadline.into(), sending).await {
        result?;
    }
    let (messages, rx) = receiver.await.map_err(io::Error::other)??;
    let sender = tx.diagnostics();
    drop((tx, rx, impairer, keep));
    let secs = window.as_secs_f64();
    Ok(SmallRun {
        size: SMALL_MESSAGE,
        messages,
        secs,
        msgs_per_s: messages as f64 / secs,
        sender,
    })
}

/// Parameters of the real-time workload.
#[derive(Debug, Clone, Serialize)]
pub struct RtParams {
    /// Messages per second.
    pub rate: u32,
    /// Bytes per message (at least 16: sequence number and timestamp).
    pub size: usize,
    /// How long the sender runs.
    pub secs: f64,
}

/// One real-time run.
#[derive(Debug, Clone, Serialize)]
pub struct RtRun {
    /// Messages sent.
    pub sent: u64,
    /// Distinct messages received.
    pub delivered: u64,
    /// `sent - delivered`.
    pub lost: u64,
    /// Messages received more than once (extra copies).
    pub duplicated: u64,
    /// One-way latency percentiles and maximum, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// UDP payload bytes both ends offered to the impaired links (both
    /// directions, ACKs and retransmissions included).
    pub wire_bytes: u64,
    /// Message bytes sent by the application.
    pub payload_bytes: u64,
    /// `wire_bytes / payload_bytes`.
    pub wire_per_payload: f64,
    /// The sender's own counters, where the system exposes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<Diagnostics>,
    /// The receiver's own counters, where the system exposes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver: Option<Diagnostics>,
    /// The latencies (µs), for the plot.
    #[serde(skip)]
    pub histogram: Option<Histogram<u64>>,
}

/// UDP payload bytes both directions of an impairer were offered so far.
pub fn wire_bytes(stats: &ImpairStats) -> u64 {
    stats.upstream.link.bytes_in + stats.downstream.link.bytes_in
}

/// One message as the receiving application got it (first copy only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The message's sequence number.
    pub seq: u64,
    /// When it was sent, ns after the stream's base instant.
    pub sent_ns: u64,
    /// When it was received, ns after the stream's base instant.
    pub recv_ns: u64,
}

/// What one paced stream produced, before any figure is derived from it.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Messages sent.
    pub sent: u64,
    /// Distinct messages received, in the order they arrived.
    pub arrivals: Vec<Arrival>,
    /// Messages received more than once (extra copies).
    pub duplicated: u64,
    /// The sender's own counters, where the system exposes them.
    pub sender: Option<Diagnostics>,
    /// The receiver's own counters, where the system exposes them.
    pub receiver: Option<Diagnostics>,
}

/// The paced stream at the heart of the real-time workloads: sends `rate`
/// messages per second of `size` bytes for `secs` from `tx` to `rx`, each
/// carrying its sequence number and its send time (ns after `base`, one
/// clock for both ends), and records every arrival. After the sender stops,
/// the receiver waits for stragglers: until everything arrived, or nothing
/// arrived for 2 s (0.5 s for an unreliable system), or 10 s at most.
/// Returns the two halves, so the caller decides when to close them.
pub async fn paced<T: Tx, R: Rx>(
    mut tx: T,
    mut rx: R,
    params: &RtParams,
    delivery: Delivery,
    base: Instant,
) -> io::Result<(Trace, T, R)> {
    let total = (f64::from(params.rate) * params.secs).round() as u64;
    let size = params.size.max(16);
    let sender_done = Arc::new(AtomicBool::new(false));
    let idle = match delivery {
        Delivery::Reliable => Duration::from_secs(2),
        Delivery::Unreliable => Duration::from_millis(500),
    };
    // Hard bound on the whole run: sending time plus generous slack.
    let hard_deadline = base + Duration::from_secs_f64(params.secs) + Duration::from_secs(20);

    let done = Arc::clone(&sender_done);
    let receiver = tokio::spawn(async move {
        let mut seen = vec![false; total as usize];
        let mut arrivals = Vec::with_capacity(total as usize);
        let mut duplicated = 0u64;
        let mut last_arrival = Instant::now();
        let mut done_at: Option<Instant> = None;
        while (arrivals.len() as u64) < total && Instant::now() < hard_deadline {
            match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
                Ok(Ok(Some(msg))) => {
                    let now = Instant::now();
                    last_arrival = now;
                    if msg.len() < 16 {
                        continue; // a connection-setup probe
                    }
                    let seq = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
                    let sent_ns = u64::from_le_bytes(msg[8..16].try_into().expect("8 bytes"));
                    let Some(slot) = seen.get_mut(seq as usize) else {
                        continue;
                    };
                    if *slot {
                        duplicated += 1;
                        continue;
                    }
                    *slot = true;
                    arrivals.push(Arrival {
                        seq,
                        sent_ns,
                        recv_ns: now.duration_since(base).as_nanos() as u64,
                    });
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
            if done.load(Ordering::Acquire) {
                let now = Instant::now();
                let since = *done_at.get_or_insert(now);
                if now.duration_since(last_arrival) > idle
                    || now.duration_since(since) > Duration::from_secs(10)
                {
                    break;
                }
            }
        }
        Ok((arrivals, duplicated, rx))
    });

    let mut ticker = tokio::time::interval_at(
        base.into(),
        Duration::from_secs_f64(1.0 / f64::from(params.rate)),
    );
    let mut sent = 0u64;
    let mut buf = BytesMut::with_capacity(size * 64);
    while sent < total && Instant::now() < hard_deadline {
        ticker.tick().await;
        buf.reserve(size);
        buf.put_u64_le(sent);
        buf.put_u64_le(base.elapsed().as_nanos() as u64);
        buf.put_bytes(0xa5, size - 16);
        let msg = buf.split().freeze();
        match tokio::time::timeout_at(hard_deadline.into(), tx.send(msg)).await {
            Ok(result) => result?,
            Err(_) => break,
        }
        sent += 1;
    }
    tx.flush().await?;
    sender_done.store(true, Ordering::Release);
    let (arrivals, duplicated, rx) = receiver.await.map_err(io::Error::other)??;
    let trace = Trace {
        sent,
        arrivals,
        duplicated,
        sender: tx.diagnostics(),
        receiver: rx.diagnostics(),
    };
    Ok((trace, tx, rx))
}

impl RtRun {
    /// The figures of a trace: `wire_bytes` is what the impaired links
    /// were offered during the run, `size` the message size.
    pub fn from_trace(trace: Trace, size: usize, wire_bytes: u64) -> io::Result<Self> {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(io::Error::other)?;
        for a in &trace.arrivals {
            let micros = a.recv_ns.saturating_sub(a.sent_ns) / 1000;
            histogram.saturating_record(micros.max(1));
        }
        let delivered = trace.arrivals.len() as u64;
        let payload = trace.sent * size as u64;
        let ms = |v: u64| v as f64 / 1000.0;
        let pct = |q: f64| {
            if histogram.is_empty() {
                f64::NAN
            } else {
                ms(histogram.value_at_quantile(q))
            }
        };
        Ok(RtRun {
            sent: trace.sent,
            delivered,
            lost: trace.sent - delivered.min(trace.sent),
            duplicated: trace.duplicated,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            max_ms: if histogram.is_empty() {
                f64::NAN
            } else {
                ms(histogram.max())
            },
            wire_bytes,
            payload_bytes: payload,
            wire_per_payload: wire_bytes as f64 / payload.max(1) as f64,
            sender: trace.sender,
            receiver: trace.receiver,
            histogram: Some(histogram),
        })
    }
}

/// Sends `rate` messages per second of `size` bytes for `secs` through the
/// pair's impairer (see [`paced`]) and measures one-way latency (same
/// process, same clock), loss, duplicates and the bytes on the wire.
pub async fn realtime<T: Tx, R: Rx>(
    pair: Pair<T, R>,
    params: &RtParams,
    delivery: Delivery,
) -> io::Result<RtRun> {
    let Pair {
        tx,
        rx,
        impairer,
        keep,
    } = pair;
    let before = impairer.as_ref().map(|i| i.stats());
    let (trace, tx, rx) = paced(tx, rx, params, delivery, Instant::now()).await?;
    let after = impairer.as_ref().map(|i| i.stats());
    drop((tx, rx, impairer, keep));
    let wire = match (before, after) {
        (Some(b), Some(a)) => wire_bytes(&a).saturating_sub(wire_bytes(&b)),
        _ => 0,
    };
    RtRun::from_trace(trace, params.size.max(16), wire)
}
