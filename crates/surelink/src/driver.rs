//! The driver task: the one place where an endpoint's socket, clock and timers
//! meet the protocol core.
//!
//! One task per endpoint (per shard of an endpoint with several drivers)
//! owns its sockets (one, or one per listening address for several paths)
//! and runs rounds. The sockets are a
//! [`DatagramIo`]: real UDP sockets, or a simulated network's (`crate::sim`);
//! the driver is generic over it, so the UDP path pays nothing for the
//! abstraction.
//!
//! 1. receive: drain the sockets with `try_recv` (several datagrams per call
//!    when the backend batches) until they would block, stopping once a round
//!    has [`RECV_BATCH`] datagrams or calls, so sending is not starved. A
//!    receive that drained them has read everything that arrived before it
//!    started; one stopped by the limit leaves a backlog. Every connection
//!    the round works on is told the instant of the latest complete drain
//!    (`Connection::set_received_through`), so its failure detector and idle
//!    timeout do not take the driver's own backlog for its peer's silence;
//! 2. under the lock: route each datagram through the core endpoint and feed it
//!    to its connection, run the timers that are due (a heap of every
//!    connection's next deadline), collect datagrams from `poll_transmit` into
//!    the outgoing queue (at most [`TRANSMIT_BUDGET`] per round, in the order
//!    connections asked to send), then, for exactly the connections visited
//!    (input, due timer, touched by a handle, sent), take events, wake
//!    waiting handles, queue accepted connections, forget drained ones and
//!    reschedule their timers. An idle connection costs nothing between its
//!    timers, so thousands of them do not slow a round down;
//! 3. without the lock: send the outgoing queue with `try_send`, each run of
//!    consecutive datagrams with the same socket, destination and size (the
//!    last may be shorter) in one call, up to the backend's
//!    [`max_segments`](DatagramIo::max_segments). A run that would block stays queued and the driver waits for writability; no new
//!    datagrams are taken from the core meanwhile, so the core's congestion
//!    control sees the back-pressure. Datagrams are never dropped silently: only
//!    a hard send error drops one, and it is logged and counted (the protocol
//!    recovers it like a loss);
//! 4. sleep until the earliest `poll_timeout` (on the driver's
//!    [`PreciseTimer`], which fires within tens of microseconds of it on
//!    Linux), socket readability (or writability when blocked), or a wake-up
//!    from a handle. A round that hit a batch limit goes on at once instead,
//!    yielding to the scheduler after [`BUSY_ROUNDS`] such rounds in a row.
//!
//! The task ends when no `Endpoint` handle is left and every connection has
//! drained and lost its handles.
//!
//! An endpoint with several drivers runs one per shard (`crate::shard`):
//! each has its own sockets, lock and connections; in step 1 a datagram
//! that belongs to another shard is handed to that shard's driver, and
//! what other drivers handed to this one joins the round's batch.

use std::cmp::Reverse;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use surelink_proto::conn::PathAddr;
use surelink_proto::{ConnectionHandle, DatagramEvent, Side};

use crate::handshake_event::HandshakeEvent;
use crate::precise_timer::PreciseTimer;
use crate::shard::Router;
use crate::socket::{DatagramIo, MAX_SEND_BYTES};
use crate::state::{ConnState, IoCounters, Shared, State};

/// A round stops receiving once it has this many datagrams or made this many
/// receive calls (one call may bring more than one datagram: with GRO and
/// `recvmmsg`, up to 16 buffers of 64 KiB).
pub(crate) const RECV_BATCH: usize = 64;
/// Most datagrams taken from the core in one round: three full GSO calls
/// of datagrams of the default size (45 of 1,452 bytes fit in
/// [`MAX_SEND_BYTES`]), so a saturating sender's rounds do not end in a
/// short run (128 went out as 45 + 45 + 38).
pub(crate) const TRANSMIT_BUDGET: usize = 135;
/// Consecutive rounds that hit a batch limit before the driver yields to
/// the scheduler. Yielding after each one put the driver behind every
/// application task woken meanwhile (thousands of senders on a busy client),
/// so its sockets' queues grew by seconds while the application kept queueing.
const BUSY_ROUNDS: u32 = 8;
/// Consecutive rounds with an already-expired timer and nothing else happening
/// after which the driver sleeps a little instead of spinning.
const STALL_ROUNDS: u32 = 3;
/// How long it then sleeps.
const STALL_SLEEP: Duration = Duration::from_millis(1);
/// Sleep used when no connection has a timer.
const IDLE_SLEEP: Duration = Duration::from_secs(3600);

/// Datagrams to send, stored back to back in one buffer, each with the
/// index of the local socket it goes out of.
#[derive(Debug, Default)]
pub(crate) struct Datagrams {
    bytes: Vec<u8>,
    items: Vec<(u16, SocketAddr, Range<usize>)>,
    /// Index of the first item not yet sent (for the outgoing queue).
    head: usize,
}

impl Datagrams {
    pub(crate) fn push(&mut self, local: u16, addr: SocketAddr, data: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.items.push((local, addr, start..self.bytes.len()));
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
        self.head = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len() - self.head
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many queued datagrams from `head` on can go out in one call of at
    /// most `max` datagrams: the same socket and destination, the size of the
    /// first, except that the last may be shorter, [`MAX_SEND_BYTES`] in all.
    /// At least one whenever the queue is not empty.
    fn run(&self, max: usize) -> usize {
        let Some((local, dest, first)) = self.items.get(self.head) else {
            return 0;
        };
        let size = first.len();
        let mut count = 1;
        let mut total = size;
        for (l, d, r) in &self.items[self.head + 1..] {
            if count >= max
                || size == 0
                || l != local
                || d != dest
                || r.len() > size
                || total + r.len() > MAX_SEND_BYTES
            {
                break;
            }
            count += 1;
            total += r.len();
            if r.len() < size {
                break;
            }
        }
        count
    }
}

/// Received datagrams, each in a buffer of its own that the core takes over
/// (it decrypts in place there, and delivers whole messages as slices of
/// it), with the local socket it came in on and its sender.
#[derive(Debug, Default)]
pub(crate) struct Received {
    items: Vec<(PathAddr, BytesMut)>,
}

impl Received {
    pub(crate) fn push(&mut self, local: u16, remote: SocketAddr, data: BytesMut) {
        self.items.push((PathAddr { local, remote }, data));
    }

    /// Moves every datagram of `other` to the end of this queue, leaving
    /// `other` empty.
    pub(crate) fn append(&mut self, other: &mut Received) {
        self.items.append(&mut other.items);
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes every datagram, in the order received.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (PathAddr, BytesMut)> + '_ {
        self.items.drain(..)
    }
}

/// What a round under the lock decided.
#[derive(Debug)]
struct Round {
    /// The earliest timer of any connection.
    deadline: Option<Instant>,
    /// The transmit budget ran out: more may be waiting.
    more_to_send: bool,
    /// Nothing is left to drive.
    exit: bool,
    /// The accept queue or the set of live connections changed.
    endpoint_changed: bool,
}

/// Marks the driver as stopped however the task ends (return, panic, runtime
/// shutdown), and wakes everyone waiting so they see it.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.driver_running = false;
        for cs in st.conns.values() {
            cs.notify.notify_waiters();
        }
        drop(st);
        self.0.endpoint_changed.notify_waiters();
        tracing::debug!(local = %self.0.local_addr, "endpoint driver stopped");
    }
}

/// Waits until any socket of `io` is readable (or, with `write`, writable).
async fn any_ready<T: DatagramIo>(io: &T, write: bool) -> io::Result<()> {
    poll_fn(|cx| {
        if write {
            io.poll_send_ready(cx)
        } else {
            io.poll_recv_ready(cx)
        }
    })
    .await
}

/// Runs an endpoint (or one shard of it, `router` telling which) until
/// nothing is left to drive.
pub(crate) async fn run<T: DatagramIo>(shared: Arc<Shared>, mut sockets: T, mut router: Router) {
    let _stop = StopGuard(shared.clone());
    let mut received = Received::default();
    let mut outgoing = Datagrams::default();
    let mut scratch = Vec::with_capacity(MAX_SEND_BYTES);
    let mut stalled = 0u32;
    let mut stall_logged = false;
    let mut busy_rounds = 0u32;
    let mut timer = PreciseTimer::new();
    let mut received_through = crate::util::now();
    loop {
        // 1. Receive a batch. A receive that drained the sockets has read
        // everything that arrived before it started; one stopped by the batch
        // limit leaves a backlog, and the instant of the last complete drain
        // stands.
        let receive_started = crate::util::now();
        let socket_busy = receive(&mut sockets, &mut received, &mut router, &shared.io);
        if !socket_busy {
            received_through = receive_started;
        }
        router.take_handed(&mut received);
        let nothing_received = received.is_empty();

        // 2. Drive the core (it takes the received datagrams).
        let now = crate::util::now();
        let before = outgoing.len();
        let round = {
            let mut st = shared.lock();
            let input = Input {
                now,
                received_through,
            };
            drive(&mut st, input, &mut received, &mut outgoing, &mut scratch)
        };
        let produced = outgoing.len() > before;
        if round.endpoint_changed {
            shared.endpoint_changed.notify_waiters();
        }

        // 3. Send.
        let blocked = flush(&sockets, &mut outgoing, &shared.io);
        if round.exit && outgoing.is_empty() {
            return;
        }
        if !blocked && (socket_busy || round.more_to_send) {
            busy_rounds += 1;
            if busy_rounds >= BUSY_ROUNDS {
                busy_rounds = 0;
                tokio::task::yield_now().await;
            }
            continue;
        }
        busy_rounds = 0;

        // 4. Sleep.
        let mut deadline = round.deadline.unwrap_or(now + IDLE_SLEEP);
        if deadline <= now && nothing_received && !produced {
            stalled += 1;
            if stalled >= STALL_ROUNDS {
                if !stall_logged {
                    tracing::debug!("a connection timer stays expired; throttling the driver");
                    stall_logged = true;
                }
                deadline = now + STALL_SLEEP;
            }
        } else {
            stalled = 0;
        }
        timer.set(Some(deadline));
        // Biased: a fixed polling order keeps simulated runs deterministic.
        tokio::select! {
            biased;
            r = any_ready(&sockets, false) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "socket readiness error");
                    tokio::time::sleep(STALL_SLEEP).await;
                }
            }
            r = any_ready(&sockets, true), if blocked => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "socket readiness error");
                    tokio::time::sleep(STALL_SLEEP).await;
                }
            }
            () = shared.wake_driver.notified() => {}
            () = timer.wait() => {}
        }
    }
}

/// The instants a round works with.
#[derive(Debug, Clone, Copy)]
struct Input {
    /// The round's time.
    now: Instant,
    /// Every datagram that arrived on the driver's sockets before this
    /// instant has been read: the connections judge silence as of then
    /// (`Connection::set_received_through`), so the driver's own backlog is
    /// not taken for their peers' silence.
    received_through: Instant,
}

/// One round of protocol work under the lock.
///
/// Only the connections that need it are visited: those with a datagram
/// this round, those whose timer is due (popped from [`State::timers`]),
/// those a handle touched, and those still waiting for transmit budget. An
/// idle connection costs nothing until its timer comes up.
fn drive(
    st: &mut State,
    input: Input,
    received: &mut Received,
    outgoing: &mut Datagrams,
    scratch: &mut Vec<u8>,
) -> Round {
    let Input {
        now,
        received_through,
    } = input;
    let mut endpoint_changed = false;

    // Datagrams still queued from last round mean the socket would block:
    // take no new ones from the core until they are out.
    let socket_blocked = !outgoing.is_empty();

    // Route and feed datagrams.
    for (path, data) in received.drain() {
        let from = path.remote;
        match st.endpoint.handle(now, from, &data) {
            DatagramEvent::Known(h) => {
                if let Some(cs) = st.conns.get_mut(&h) {
                    cs.conn.set_received_through(now, received_through);
                    cs.conn.handle_datagram_owned(now, path, data);
                    st.touch(h);
                }
            }
            DatagramEvent::New(h, conn) => {
                let mut cs = ConnState::new(*conn, false);
                cs.conn.set_received_through(now, received_through);
                cs.conn.handle_datagram_owned(now, path, data);
                if !st.accepting {
                    cs.conn
                        .abort(now, "the endpoint is not accepting connections");
                }
                tracing::debug!(remote = %from, "incoming connection");
                st.conns.insert(h, cs);
                st.touch(h);
            }
            DatagramEvent::Respond(response) => {
                // A stateless answer (Retry, Reject, Reset): small, sent as is.
                if let Some(event) = HandshakeEvent::from_response(&response) {
                    st.handshakes.push(event);
                    endpoint_changed = true;
                }
                outgoing.push(path.local, response.destination, &response.data);
            }
            DatagramEvent::Dropped(reason) => {
                tracing::trace!(remote = %from, ?reason, len = data.len(), "datagram dropped");
            }
            other => tracing::trace!(?other, "unhandled datagram event"),
        }
    }

    st.peak_connections = st.peak_connections.max(st.conns.len());

    // Due timers.
    while let Some(&Reverse((at, h))) = st.timers.peek() {
        if at > now {
            break;
        }
        st.timers.pop();
        let Some(cs) = st.conns.get_mut(&h) else {
            continue;
        };
        if cs.scheduled != Some(at) {
            continue; // stale: the connection was rescheduled since
        }
        cs.scheduled = None;
        cs.conn.set_received_through(now, received_through);
        cs.conn.handle_timeout(now);
        st.touch(h);
    }

    // Transmit, in the order connections asked; one that runs out of budget
    // stays first in line for the next round.
    let mut more_to_send = false;
    if !socket_blocked {
        let mut budget = TRANSMIT_BUDGET;
        'conns: while let Some(&h) = st.sending.front() {
            // Settled below like every connection visited this round.
            st.touch(h);
            let Some(cs) = st.conns.get_mut(&h) else {
                st.sending.pop_front();
                continue;
            };
            while let Some(t) = cs.conn.poll_transmit(now, scratch) {
                outgoing.push(t.local, t.destination, &scratch[..t.size]);
                budget -= 1;
                if budget == 0 {
                    more_to_send = true;
                    break 'conns;
                }
            }
            cs.sending = false;
            st.sending.pop_front();
        }
    }

    // Events, the accept queue, drained connections, timers: for every
    // connection visited this round.
    let touched = std::mem::take(&mut st.touched);
    for &h in &touched {
        endpoint_changed |= settle(st, h, now);
    }
    st.touched = touched;
    st.touched.clear();

    let deadline = next_deadline(st);
    Round {
        deadline,
        more_to_send,
        exit: !st.open && st.conns.is_empty(),
        endpoint_changed,
    }
}

/// After a round worked on connection `h`: takes its events, records its
/// handshake outcome, queues it for `accept`, forgets it once drained,
/// removes it once nothing refers to it, and reschedules its timer.
/// Returns true if the endpoint's waiters must look (accept queue, handshake
/// log, set of live connections).
fn settle(st: &mut State, h: ConnectionHandle, now: Instant) -> bool {
    let State {
        endpoint,
        conns,
        incoming,
        accepting,
        handshakes,
        handshakes_failed,
        timers,
        ..
    } = st;
    let Some(cs) = conns.get_mut(&h) else {
        return false;
    };
    cs.touched = false;
    let mut endpoint_changed = false;
    let connected_now = cs.sync();
    if connected_now {
        // The peer's stateless Resets are addressed to the id it issued.
        endpoint.set_peer_cid(h, cs.conn.peer_cid());
    }
    if cs.conn.side() == Side::Server && !cs.outcome_recorded {
        let remote = cs.conn.remote();
        if cs.connected && *accepting {
            cs.outcome_recorded = true;
            handshakes.push(HandshakeEvent::Accepted {
                remote,
                peer_key: cs.conn.peer_key(),
            });
            endpoint_changed = true;
        } else if !cs.connected {
            if let Some(closed) = &cs.closed {
                cs.outcome_recorded = true;
                handshakes_failed.record(closed.as_ref());
                if let Some(error) = closed {
                    handshakes.push(HandshakeEvent::Failed {
                        remote,
                        error: error.clone(),
                    });
                    endpoint_changed = true;
                }
            }
        }
    }
    if connected_now && cs.conn.side() == Side::Server && !cs.has_handle {
        if *accepting {
            cs.queued = true;
            incoming.push_back(h);
            endpoint_changed = true;
        } else if !cs.conn.is_closed() {
            cs.conn
                .abort(now, "the endpoint is not accepting connections");
            cs.sync();
        }
    }
    if cs.conn.is_drained() && !cs.forgotten {
        endpoint.forget(h);
        cs.forgotten = true;
        endpoint_changed = true;
    }
    if cs.is_removable() {
        conns.remove(&h);
        return endpoint_changed;
    }
    let next = cs.conn.poll_timeout();
    if next != cs.scheduled {
        cs.scheduled = next;
        if let Some(at) = next {
            timers.push(Reverse((at, h)));
        }
    }
    endpoint_changed
}

/// The earliest current timer of any connection; drops stale entries from
/// the top of the heap on the way.
fn next_deadline(st: &mut State) -> Option<Instant> {
    while let Some(&Reverse((at, h))) = st.timers.peek() {
        if st.conns.get(&h).is_some_and(|cs| cs.scheduled == Some(at)) {
            return Some(at);
        }
        st.timers.pop();
    }
    None
}

/// Reads a round's batch from every socket into `received` (emptied by the
/// last round), handing datagrams that belong to other shards to them; returns
/// true if it stopped at the round's limit rather than because the sockets
/// would block.
fn receive<T: DatagramIo>(
    sockets: &mut T,
    received: &mut Received,
    router: &mut Router,
    io: &IoCounters,
) -> bool {
    let mut calls = 0;
    let mut reads = 0u64;
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    for local in 0..sockets.sockets() {
        while calls < RECV_BATCH && received.len() < RECV_BATCH {
            calls += 1;
            let tag = local as u16;
            let sink = |from, data: BytesMut| {
                datagrams += 1;
                bytes += data.len() as u64;
                router.sort(received, tag, from, data);
            };
            match sockets.try_recv(local, sink) {
                Ok(_) => reads += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    IoCounters::add(&io.recv_errors, 1);
                    tracing::debug!(error = %e, "receive error");
                }
            }
        }
    }
    IoCounters::add(&io.recv_calls, reads);
    IoCounters::add(&io.datagrams_received, datagrams);
    IoCounters::add(&io.bytes_received, bytes);
    IoCounters::add(&io.handed_over, router.hand_over() as u64);
    calls == RECV_BATCH || received.len() >= RECV_BATCH
}

/// Sends the outgoing queue, a run of datagrams per call; returns true if the
/// socket would block.
///
/// Bounded: every pass either takes a run off the queue, stops, or retries
/// after the backend lowered `max_segments` below the run's length (which
/// can only happen a few times, as it never rises).
fn flush<T: DatagramIo>(sockets: &T, outgoing: &mut Datagrams, io: &IoCounters) -> bool {
    let mut sent = 0u64;
    let mut bytes = 0u64;
    let mut calls = 0u64;
    let mut blocked = false;
    while outgoing.head < outgoing.items.len() {
        let (local, dest, first) = outgoing.items[outgoing.head].clone();
        let local = usize::from(local);
        let count = outgoing.run(sockets.max_segments(local));
        let end = outgoing.items[outgoing.head + count - 1].2.end;
        let data = &outgoing.bytes[first.start..end];
        match sockets.try_send(local, dest, data, first.len()) {
            Ok(()) => {
                sent += count as u64;
                bytes += data.len() as u64;
                calls += 1;
                outgoing.head += count;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                blocked = true;
                break;
            }
            Err(e) if count > 1 && sockets.max_segments(local) < count => {
                // The kernel refused segmentation offload (EIO on some
                // devices); send the run again in smaller pieces.
                tracing::debug!(%dest, error = %e, count, "batched send refused; sending smaller batches");
            }
            Err(e) => {
                IoCounters::add(&io.send_errors, count as u64);
                tracing::debug!(%dest, error = %e, count, "send failed; the datagrams are lost and will be recovered like a loss");
                outgoing.head += count;
            }
        }
    }
    if outgoing.is_empty() {
        outgoing.clear();
    }
    IoCounters::add(&io.datagrams_sent, sent);
    IoCounters::add(&io.bytes_sent, bytes);
    IoCounters::add(&io.send_calls, calls);
    blocked
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A queue of datagrams of the given sizes (filled with their index), to
    /// the given ports, all from socket 0.
    fn queue(datagrams: &[(u16, usize)]) -> Datagrams {
        let mut q = Datagrams::default();
        for (i, &(port, len)) in datagrams.iter().enumerate() {
            q.push(0, addr(port), &vec![i as u8; len]);
        }
        q
    }

    #[test]
    fn runs_group_equal_sizes_to_one_destination_and_may_end_shorter() {
        let q = queue(&[(1, 100), (1, 100), (1, 100), (1, 40), (1, 100)]);
        assert_eq!(q.run(64), 4, "the shorter datagram ends the run");
        assert_eq!(q.run(2), 2, "at most max_segments");
        assert_eq!(q.run(1), 1);
        assert_eq!(
            queue(&[(1, 100), (2, 100)]).run(64),
            1,
            "another destination"
        );
        assert_eq!(queue(&[(1, 100), (1, 200)]).run(64), 1, "a larger one");
        assert_eq!(queue(&[(1, 0), (1, 0)]).run(64), 1, "empty datagrams");
        let mut other_socket = queue(&[(1, 100)]);
        other_socket.push(1, addr(1), &[0; 100]);
        assert_eq!(other_socket.run(64), 1, "another local socket");
        let big = queue(&[(1, 30_000), (1, 30_000), (1, 30_000)]);
        assert_eq!(big.run(64), 2, "at most MAX_SEND_BYTES in all");
        assert_eq!(Datagrams::default().run(64), 0);
    }

    /// A backend that records every send and refuses segmentation offload
    /// once (like `EIO` from a device without it), then sends one at a time.
    #[derive(Default)]
    struct RefusesGso {
        max: Mutex<usize>,
        sent: Mutex<Vec<(SocketAddr, Vec<u8>, usize)>>,
    }

    impl DatagramIo for RefusesGso {
        fn sockets(&self) -> usize {
            1
        }

        fn max_segments(&self, _local: usize) -> usize {
            *self.max.lock().unwrap()
        }

        fn try_send(
            &self,
            _local: usize,
            dest: SocketAddr,
            data: &[u8],
            segment: usize,
        ) -> io::Result<()> {
            if data.len() > segment {
                *self.max.lock().unwrap() = 1;
                return Err(io::Error::other("segmentation offload refused"));
            }
            self.sent
                .lock()
                .unwrap()
                .push((dest, data.to_vec(), segment));
            Ok(())
        }

        fn try_recv(
            &mut self,
            _local: usize,
            _sink: impl FnMut(SocketAddr, BytesMut),
        ) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }

        fn poll_recv_ready(
            &self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Pending
        }

        fn poll_send_ready(
            &self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Pending
        }
    }

    #[test]
    fn a_refused_batch_is_sent_again_one_datagram_at_a_time() {
        let io = RefusesGso {
            max: Mutex::new(64),
            ..RefusesGso::default()
        };
        let counters = IoCounters::default();
        let mut q = queue(&[(1, 100), (1, 100), (1, 60), (2, 100)]);
        assert!(!flush(&io, &mut q, &counters));
        assert!(q.is_empty());
        let sent = io.sent.into_inner().unwrap();
        let expected: Vec<_> = [(1, 100), (1, 100), (1, 60), (2, 100)]
            .iter()
            .enumerate()
            .map(|(i, &(port, len))| (addr(port), vec![i as u8; len], len))
            .collect();
        assert_eq!(sent, expected, "every datagram, in order, one per call");
        assert_eq!(IoCounters::get(&counters.datagrams_sent), 4);
        assert_eq!(IoCounters::get(&counters.send_calls), 4);
        assert_eq!(IoCounters::get(&counters.send_errors), 0);
    }
}
