//! The two measuring points of the `mpegts` workload, both in the harness:
//!
//! * the **tap**, between ffmpeg and the system's entry (a gateway, SRT's
//!   sending tool, or the impairer): a UDP socket ffmpeg sends to, which
//!   stamps each datagram's arrival time and a hash of its bytes, then
//!   forwards it unchanged;
//! * the **capture**, the socket the system's exit delivers to, which stamps
//!   each arrival.
//!
//! [`match_datagrams`] pairs them by hash (see there for repeated
//! datagrams): one-way send-to-output latency per datagram, losses,
//! duplicates.
//! Both run as tasks on the current tokio runtime and report over channels;
//! the driver also sends readiness probes ([`PROBE`]) through the tap
//! socket, which are not TS and are told apart at the capture.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::transport::loopback;
use crate::transport::udp::bind;
use crate::workload::{Arrival, Trace};

/// The harness's own readiness datagram (its first byte is not the TS sync
/// byte, so the TS checker would not take it for a packet either).
pub const PROBE: &[u8] = b"surelink-bench probe";

/// A datagram as one of the measuring points saw it.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// When it arrived at the measuring point.
    pub at: Instant,
    /// Its bytes.
    pub bytes: Bytes,
}

/// Receives datagrams on `socket` until aborted: each is stamped, passed to
/// `forward` if set, and reported on the channel.
fn receive(
    socket: Arc<UdpSocket>,
    forward: Option<SocketAddr>,
) -> (JoinHandle<io::Result<()>>, mpsc::UnboundedReceiver<Stamped>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = socket.recv(&mut buf).await?;
            let at = Instant::now();
            if let Some(to) = forward {
                // A refused send (the entry not listening yet) is the
                // entry's loss, as it would be for ffmpeg sending directly.
                let _ = socket.send_to(&buf[..n], to).await;
            }
            let bytes = Bytes::copy_from_slice(&buf[..n]);
            if tx.send(Stamped { at, bytes }).is_err() {
                return Ok(());
            }
        }
    });
    (task, rx)
}

/// One measuring point: a socket on 127.0.0.1 and its receiving task.
pub struct Point {
    socket: Arc<UdpSocket>,
    task: JoinHandle<io::Result<()>>,
    seen: mpsc::UnboundedReceiver<Stamped>,
}

impl Point {
    /// The tap: receives ffmpeg's datagrams and forwards them to `entry`.
    pub fn tap(entry: SocketAddr) -> io::Result<Self> {
        Self::start(Some(entry))
    }

    /// The capture: receives what the system's exit delivers.
    pub fn capture() -> io::Result<Self> {
        Self::start(None)
    }

    fn start(forward: Option<SocketAddr>) -> io::Result<Self> {
        let socket = Arc::new(bind(loopback(0))?);
        let (task, seen) = receive(socket.clone(), forward);
        Ok(Self { socket, task, seen })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends a [`PROBE`] from this socket to `to`.
    pub async fn probe(&self, to: SocketAddr) -> io::Result<()> {
        self.socket.send_to(PROBE, to).await.map(drop)
    }

    /// The next datagram seen, waiting at most `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Stamped> {
        tokio::time::timeout(wait, self.seen.recv()).await.ok()?
    }

    /// Everything seen and not yet taken, then stops.
    pub fn finish(mut self) -> Vec<Stamped> {
        self.task.abort();
        let mut all = Vec::new();
        while let Ok(d) = self.seen.try_recv() {
            all.push(d);
        }
        all
    }
}

impl Drop for Point {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Pairs what the tap forwarded (`sent`, in order) with what the capture
/// got (`received`, in order), probes left out on both sides. A stream
/// repeats itself now and then (a datagram holding only tables, whose
/// counters wrap after 16 copies), so a received datagram is paired with the
/// *latest* unpaired sent copy of its bytes sent before it arrived: a lost
/// copy is not mistaken for an earlier one that took seconds. That is an
/// arrival (sequence number = its index at the tap, times in ns after the
/// first datagram sent); a received copy with nothing left to pair is a
/// duplicate, and datagrams the tap never saw are counted in the second
/// value (none are expected).
pub fn match_datagrams(sent: &[Stamped], received: &[Stamped]) -> (Trace, u64) {
    let sent: Vec<&Stamped> = sent.iter().filter(|d| d.bytes != PROBE).collect();
    let base = sent.first().map_or_else(Instant::now, |d| d.at);
    let ns = |at: Instant| {
        u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
    };
    // Per content, the unpaired copies in the order they were sent.
    let mut unpaired: HashMap<u64, Vec<usize>> = HashMap::new();
    for (seq, d) in sent.iter().enumerate() {
        unpaired.entry(hash(&d.bytes)).or_default().push(seq);
    }
    let (mut arrivals, mut duplicated, mut foreign) = (Vec::new(), 0, 0);
    for d in received.iter().filter(|d| d.bytes != PROBE) {
        let Some(copies) = unpaired.get_mut(&hash(&d.bytes)) else {
            foreign += 1;
            continue;
        };
        match copies.iter().rposition(|&seq| sent[seq].at <= d.at) {
            Some(i) => {
                let seq = copies.remove(i);
                arrivals.push(Arrival {
                    seq: seq as u64,
                    sent_ns: ns(sent[seq].at),
                    recv_ns: ns(d.at),
                });
            }
            None => duplicated += 1,
        }
    }
    let trace = Trace {
        sent: sent.len() as u64,
        arrivals,
        duplicated,
        sender: None,
        receiver: None,
    };
    (trace, foreign)
}

/// Arrivals that came after one sent later than them.
pub fn reordered(trace: &Trace) -> u64 {
    let mut latest = None;
    let mut late = 0;
    for a in &trace.arrivals {
        if latest.is_some_and(|l| a.seq < l) {
            late += 1;
        }
        latest = latest.max(Some(a.seq));
    }
    late
}

/// Datagrams that came out more than `limit` after they went in (first
/// copies only).
pub fn late(trace: &Trace, limit: Duration) -> u64 {
    let limit_ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
    trace
        .arrivals
        .iter()
        .filter(|a| a.recv_ns.saturating_sub(a.sent_ns) > limit_ns)
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64, bytes: &'static [u8]) -> Stamped {
        Stamped {
            at: base + Duration::from_millis(ms),
            bytes: Bytes::from_static(bytes),
        }
    }

    #[test]
    fn matching_finds_latency_loss_duplicates_and_strangers() {
        let t = Instant::now();
        let sent = vec![at(t, 0, b"a"), at(t, 1, b"b"), at(t, 2, b"c")];
        let received = vec![
            at(t, 5, PROBE),
            at(t, 10, b"a"),
            at(t, 12, b"a"),
            at(t, 14, b"c"),
            at(t, 15, b"zz"),
        ];
        let (trace, foreign) = match_datagrams(&sent, &received);
        assert_eq!(trace.sent, 3);
        assert_eq!(foreign, 1);
        assert_eq!(trace.duplicated, 1);
        let got: Vec<(u64, u64)> = trace
            .arrivals
            .iter()
            .map(|a| (a.seq, (a.recv_ns - a.sent_ns) / 1_000_000))
            .collect();
        // "b" was lost.
        assert_eq!(got, vec![(0, 10), (2, 12)]);
        assert_eq!(reordered(&trace), 0);
    }

    #[test]
    fn a_repeated_datagram_pairs_with_the_copy_sent_last_before_it_arrived() {
        let t = Instant::now();
        // The same bytes 1.6 s apart; the first copy is lost.
        let sent = vec![at(t, 0, b"tables"), at(t, 1, b"x"), at(t, 1600, b"tables")];
        let received = vec![at(t, 11, b"x"), at(t, 1610, b"tables")];
        let (trace, _) = match_datagrams(&sent, &received);
        let got: Vec<(u64, u64)> = trace
            .arrivals
            .iter()
            .map(|a| (a.seq, (a.recv_ns - a.sent_ns) / 1_000_000))
            .collect();
        assert_eq!(got, vec![(1, 10), (2, 10)]);
        assert_eq!(trace.duplicated, 0);
    }

    #[test]
    fn an_arrival_after_a_later_datagram_is_reordered() {
        let t = Instant::now();
        let sent = vec![
            at(t, 0, b"a"),
            at(t, 1, b"b"),
            at(t, 2, b"c"),
            at(t, 3, b"d"),
        ];
        let received = vec![
            at(t, 10, b"b"),
            at(t, 11, b"a"),
            at(t, 12, b"d"),
            at(t, 13, b"c"),
        ];
        let (trace, _) = match_datagrams(&sent, &received);
        assert_eq!(reordered(&trace), 2);
    }

    #[test]
    fn late_counts_what_came_out_after_the_limit() {
        let t = Instant::now();
        let sent = vec![at(t, 0, b"a"), at(t, 1, b"b"), at(t, 2, b"c")];
        // 30, 31 and 32 ms: the first exactly at the limit (not late).
        let received = vec![at(t, 30, b"a"), at(t, 32, b"b"), at(t, 34, b"c")];
        let (trace, _) = match_datagrams(&sent, &received);
        assert_eq!(late(&trace, Duration::from_millis(30)), 2);
        assert_eq!(late(&trace, Duration::from_millis(32)), 0);
    }
}
