//! The state an endpoint's driver task shares with the application's handles.
//!
//! One [`Shared`] per driver: an endpoint with several drivers (shards,
//! `crate::shard`) has one per shard, and a connection belongs to exactly
//! one of them; only the endpoint-wide `Notify` is common to all shards.
//! Everything lives behind one mutex ([`Shared::lock`]) that is held only for
//! short, non-blocking calls into the protocol core — never across an `.await`
//! or a system call. Wake-ups go two ways:
//!
//! * handles → driver: after changing a connection (a message queued or taken,
//!   a close), a handle calls `wake_driver.notify_one()`; the permit is stored if
//!   the driver is busy, so no wake-up is lost.
//! * driver → handles: each connection has a [`Notify`]. Whoever touches a
//!   connection calls [`ConnState::sync`], which takes the core's events and, if
//!   anything a waiter could be waiting for became possible (a message ready, more send
//!   capacity, connected, closed, drained), calls `notify_waiters`. Send capacity
//!   wakes a waiting sender only once a sizeable part of the buffer is free
//!   ([`SEND_WAKE_FRACTION`]), as TCP wakes a writer, so that a saturating
//!   sender refills the buffer in batches rather than a message per ACK. A waiter
//!   registers (`Notified::enable`) *before* it checks its condition under the
//!   lock, so a change between the check and the `.await` still wakes it.
//!   Endpoint-wide waiters (accept, wait-idle) use `endpoint_changed` the same way.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use surelink_proto::{ConnectionError, ConnectionHandle, Event};
use tokio::sync::Notify;

use crate::handshake_event::HandshakeLog;
use crate::EndpointConfig;

/// Most events a connection keeps for [`crate::Connection::next_event`]; when
/// nobody takes them, the oldest are dropped beyond this (and counted).
pub const EVENT_CAPACITY: usize = 1024;

/// State shared by an endpoint's driver and its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the driver after a handle changed something (or another
    /// shard's driver handed it datagrams).
    pub(crate) wake_driver: Arc<Notify>,
    /// Wakes endpoint-wide waiters: accept queue, drained connections,
    /// driver exit (shared by every shard of the endpoint).
    pub(crate) endpoint_changed: Arc<Notify>,
    /// The socket's local address.
    pub(crate) local_addr: SocketAddr,
    /// Every socket's address, by the index the core's paths use.
    pub(crate) local_addrs: Vec<SocketAddr>,
    /// The endpoint's settings.
    pub(crate) config: EndpointConfig,
    /// Socket counters, updated by the driver without the lock.
    pub(crate) io: IoCounters,
}

impl Shared {
    /// The shared state of one driver, woken through `wake_driver`, its
    /// endpoint's waiters through `endpoint_changed`.
    pub(crate) fn new(
        state: State,
        local_addrs: Vec<SocketAddr>,
        config: EndpointConfig,
        wake_driver: Arc<Notify>,
        endpoint_changed: Arc<Notify>,
    ) -> Self {
        let local_addr = local_addrs[0];
        Self {
            state: Mutex::new(state),
            wake_driver,
            endpoint_changed,
            local_addr,
            local_addrs,
            config,
            io: IoCounters::default(),
        }
    }

    /// Locks the state. A panic while it was held (a bug) does not make the
    /// remaining handles panic too: the state is still used.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Socket-level counters.
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    pub(crate) datagrams_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) datagrams_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) send_calls: AtomicU64,
    pub(crate) recv_calls: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) recv_errors: AtomicU64,
    /// Datagrams this driver read for another shard and handed over.
    pub(crate) handed_over: AtomicU64,
}

impl IoCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The mutable state behind the lock.
#[derive(Debug)]
pub(crate) struct State {
    /// The core's demultiplexer.
    pub(crate) endpoint: surelink_proto::Endpoint,
    /// Every connection not yet removed, by handle.
    pub(crate) conns: BTreeMap<ConnectionHandle, ConnState>,
    /// Accepted connections waiting for `Endpoint::accept`.
    pub(crate) incoming: VecDeque<ConnectionHandle>,
    /// True while an `Endpoint` handle exists.
    pub(crate) open: bool,
    /// True while new connections are handed to the application.
    pub(crate) accepting: bool,
    /// False once the driver task has stopped.
    pub(crate) driver_running: bool,
    /// Outcomes of incoming connection attempts, for `Endpoint::next_handshake_event`.
    pub(crate) handshakes: HandshakeLog,
    /// Incoming connections that ended before their handshake completed.
    pub(crate) handshakes_failed: crate::HandshakeFailures,
    /// Most connections held at once (live or draining).
    pub(crate) peak_connections: usize,
    /// Every connection's next timer, earliest first. An entry is current
    /// only while it equals its connection's `scheduled`; others are stale
    /// and skipped when they come up (no search to remove them).
    pub(crate) timers: BinaryHeap<Reverse<(Instant, ConnectionHandle)>>,
    /// Connections a handle or the driver changed since the driver last
    /// looked at them: the driver's next round polls, syncs and reschedules
    /// exactly these (and those due or with input), not every connection.
    pub(crate) touched: Vec<ConnectionHandle>,
    /// Connections that may still have datagrams to send, in the order the
    /// transmit budget serves them (each at most once; those still
    /// handshaking first).
    pub(crate) sending: VecDeque<ConnectionHandle>,
}

impl State {
    pub(crate) fn new(endpoint: surelink_proto::Endpoint, accepting: bool) -> Self {
        Self {
            endpoint,
            conns: BTreeMap::new(),
            incoming: VecDeque::new(),
            open: true,
            accepting,
            driver_running: true,
            handshakes: HandshakeLog::default(),
            handshakes_failed: crate::HandshakeFailures::default(),
            peak_connections: 0,
            timers: BinaryHeap::new(),
            touched: Vec::new(),
            sending: VecDeque::new(),
        }
    }

    /// Marks connection `h` as changed: the driver's next round polls it for
    /// datagrams, takes its events and reschedules its timer. Every code path
    /// that calls into a connection's core must touch it before releasing
    /// the lock (and wake the driver if the driver has to act soon).
    pub(crate) fn touch(&mut self, h: ConnectionHandle) {
        if let Some(cs) = self.conns.get_mut(&h) {
            if !cs.touched {
                cs.touched = true;
                self.touched.push(h);
            }
            if !cs.sending {
                cs.sending = true;
                // Handshakes first: a connection still handshaking goes to
                // the head of the transmit queue, so that under load a new
                // peer's answer does not wait behind the data and
                // heartbeats of every established connection.
                if cs.connected {
                    self.sending.push_back(h);
                } else {
                    self.sending.push_front(h);
                }
            }
        }
    }
}

/// A sender waiting for send-buffer space is woken once at least this
/// fraction of the buffer (free plus unacknowledged bytes) is free.
///
/// Waking on every acknowledgement made a saturating sender queue one 64 KiB
/// message per wake-up: the driver then sent each message in a round of its
/// own, cut into two GSO calls (a full run and the message's tail), and each
/// ACK cost a wake-up of the sending task. With the sender woken once a
/// quarter of the buffer is free, it queues many messages at once while
/// three quarters are still in flight, so the path never runs dry.
const SEND_WAKE_FRACTION: u64 = 4;

/// What a waiter on a connection can be waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Snapshot {
    has_message: bool,
    events_total: u64,
    send_capacity: usize,
    /// Payload bytes queued and not yet acknowledged.
    unacked: u64,
    connected: bool,
    closed: bool,
    drained: bool,
}

impl Snapshot {
    /// True if a waiter may now get what it could not get at `before`: a
    /// message became ready, an event came, send capacity grew to a
    /// [`SEND_WAKE_FRACTION`] of the buffer or beyond (or the buffer
    /// emptied), or the connection was established, closed or drained.
    /// Queuing a message or taking one (capacity shrinking, the last message
    /// gone) wakes nobody.
    fn opens_for_waiters(&self, before: &Snapshot) -> bool {
        (self.has_message && !before.has_message)
            || self.events_total != before.events_total
            || self.send_space_opened(before)
            || self.connected != before.connected
            || self.closed != before.closed
            || self.drained != before.drained
    }

    /// Send capacity grew and is now worth a sender's wake-up: at least a
    /// [`SEND_WAKE_FRACTION`] of the buffer is free (an empty buffer always
    /// is, which a message larger than the buffer waits for). Above the mark
    /// every growth wakes, so a waiting message larger than the mark is taken
    /// as soon as it fits.
    fn send_space_opened(&self, before: &Snapshot) -> bool {
        let free = self.send_capacity as u64;
        free > before.send_capacity as u64 && free >= (free + self.unacked) / SEND_WAKE_FRACTION
    }
}

/// One connection and the runtime's bookkeeping about it.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// The core's state machine.
    pub(crate) conn: surelink_proto::Connection,
    /// Wakes the application's waiters on this connection.
    pub(crate) notify: Arc<Notify>,
    /// True while a `Connection` handle exists.
    pub(crate) has_handle: bool,
    /// True while it sits in the accept queue.
    pub(crate) queued: bool,
    /// The handshake completed (`Event::Connected` was seen).
    pub(crate) connected: bool,
    /// The core's events, oldest first, for [`crate::Connection::next_event`].
    pub(crate) events: VecDeque<Event>,
    /// Events dropped (the oldest first) because nobody took them.
    pub(crate) events_dropped: u64,
    /// Events queued since the connection began.
    events_total: u64,
    /// `Some` once `Event::Closed` was seen: `Some(None)` means gracefully.
    pub(crate) closed: Option<Option<ConnectionError>>,
    /// The core endpoint has forgotten it (it was drained).
    pub(crate) forgotten: bool,
    /// (Server side) its handshake outcome was recorded in the handshake log.
    pub(crate) outcome_recorded: bool,
    /// The deadline of its current entry in [`State::timers`], if any.
    pub(crate) scheduled: Option<Instant>,
    /// It is in [`State::touched`].
    pub(crate) touched: bool,
    /// It is in [`State::sending`].
    pub(crate) sending: bool,
    snapshot: Snapshot,
}

impl ConnState {
    pub(crate) fn new(conn: surelink_proto::Connection, has_handle: bool) -> Self {
        Self {
            conn,
            notify: Arc::new(Notify::new()),
            has_handle,
            queued: false,
            connected: false,
            events: VecDeque::new(),
            events_dropped: 0,
            events_total: 0,
            closed: None,
            forgotten: false,
            outcome_recorded: false,
            scheduled: None,
            touched: false,
            sending: false,
            snapshot: Snapshot::default(),
        }
    }

    /// Takes the core's events and wakes this connection's waiters if anything
    /// they could wait for changed. Returns true if the handshake completed now.
    /// Must be called after every call into the core, before the lock is released.
    pub(crate) fn sync(&mut self) -> bool {
        let mut connected_now = false;
        while let Some(event) = self.conn.poll_event() {
            match &event {
                Event::Connected => {
                    connected_now = !self.connected;
                    self.connected = true;
                }
                Event::Closed { error } => {
                    // The first Closed event is the one that counts.
                    if self.closed.is_some() {
                        continue;
                    }
                    tracing::debug!(
                        cid = self.conn.local_cid(),
                        remote = %self.conn.remote(),
                        error = ?error,
                        "connection closed"
                    );
                    self.closed = Some(error.clone());
                }
                other => tracing::trace!(?other, "connection event"),
            }
            if self.events.len() == EVENT_CAPACITY {
                self.events.pop_front();
                self.events_dropped += 1;
            }
            self.events.push_back(event);
            self.events_total += 1;
        }
        let snapshot = Snapshot {
            has_message: self.conn.has_message(),
            events_total: self.events_total,
            send_capacity: self.conn.send_capacity(),
            unacked: self.conn.unacked_bytes(),
            connected: self.connected,
            closed: self.closed.is_some(),
            drained: self.conn.is_drained(),
        };
        let wakes = snapshot.opens_for_waiters(&self.snapshot);
        self.snapshot = snapshot;
        if wakes {
            self.notify.notify_waiters();
        }
        connected_now
    }

    /// True when nothing refers to it any more: no handle, not queued, drained.
    pub(crate) fn is_removable(&self) -> bool {
        self.forgotten && !self.has_handle && !self.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of a 16-byte send buffer with `free` bytes free and
    /// `unacked` bytes unacknowledged.
    fn send_side(free: usize, unacked: u64) -> Snapshot {
        Snapshot {
            send_capacity: free,
            unacked,
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_waiting_sender_is_woken_once_a_quarter_of_the_buffer_is_free() {
        let full = send_side(0, 16);
        assert!(
            !send_side(1, 15).opens_for_waiters(&full),
            "one byte acknowledged"
        );
        assert!(!send_side(3, 13).opens_for_waiters(&send_side(1, 15)));
        assert!(
            send_side(4, 12).opens_for_waiters(&send_side(3, 13)),
            "a quarter free"
        );
        assert!(
            send_side(5, 11).opens_for_waiters(&send_side(4, 12)),
            "above the mark every growth wakes"
        );
        assert!(
            !send_side(1, 15).opens_for_waiters(&send_side(5, 11)),
            "queuing wakes nobody"
        );
    }

    #[test]
    fn an_emptied_buffer_wakes_a_sender_of_a_message_larger_than_the_buffer() {
        // A 40-byte message was taken whole into the 16-byte buffer.
        let before = send_side(0, 40);
        assert!(!send_side(0, 30).opens_for_waiters(&before));
        assert!(send_side(16, 0).opens_for_waiters(&send_side(0, 30)));
    }
}
