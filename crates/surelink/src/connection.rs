//! [`Connection`]: the application's handle to one surelink connection.
//!
//! Every method locks the endpoint's shared state briefly, calls into the
//! protocol core, and wakes the driver task, which does the I/O, when the call
//! gave it something to do (a message queued, a window update after messages
//! were taken, a close). [`Connection::send_many`] and
//! [`Connection::recv_many`] move many small messages under one lock. Methods that
//! must wait (a full send buffer, no message yet, a close in progress) sleep on
//! the connection's `Notify` until the driver reports a change. Handles are
//! cheap clones, so one task can send while another receives; dropping the last
//! one aborts the connection if it is still open.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use surelink_proto::conn::{PathAddr, PathStats};
use surelink_proto::ConnectionHandle;
use tokio::sync::Notify;

use crate::error::{CloseError, ConnectError, RecvError, SendError};
use crate::state::{ConnState, Shared};
use crate::{
    ClockEstimate, ConnectionError, ConnectionEvent, ConnectionStats, Delivery, Message, PublicKey,
};

/// A reliable, ordered, message-oriented connection to a peer.
///
/// Messages are delivered whole, in order per channel, exactly once. Channels
/// are independent ordered streams on one connection; [`send`](Connection::send)
/// and [`recv`](Connection::recv) use channel 0.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnectionInner>,
}

/// Owned by every clone of a [`Connection`]; dropping the last one aborts the connection.
struct ConnectionInner {
    shared: Arc<Shared>,
    handle: ConnectionHandle,
    notify: Arc<Notify>,
    remote: SocketAddr,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.inner.remote)
            .field("handle", &self.inner.handle.0)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(
        shared: Arc<Shared>,
        handle: ConnectionHandle,
        notify: Arc<Notify>,
        remote: SocketAddr,
    ) -> Self {
        Self {
            inner: Arc::new(ConnectionInner {
                shared,
                handle,
                notify,
                remote,
            }),
        }
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.remote
    }

    /// The local address of the endpoint this connection runs on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.shared.local_addr
    }

    /// Sends `data` as one message on channel 0; see [`send_on`](Connection::send_on).
    pub async fn send(&self, data: Bytes) -> Result<u64, SendError> {
        self.send_on(0, data).await
    }

    /// Queues `data` as one message on `channel` and returns its sequence number
    /// in that channel.
    ///
    /// Returns once the message is queued, not when it is delivered. While the
    /// send buffer ([`ProtocolConfig::send_buffer`](crate::ProtocolConfig::send_buffer))
    /// is full it waits for the peer to acknowledge data: this is the
    /// back-pressure of a slow network or a slow reader. A message larger than
    /// the buffer is accepted once the buffer is empty. Empty messages are allowed.
    pub async fn send_on(&self, channel: u64, data: Bytes) -> Result<u64, SendError> {
        // The message's source time is when the application handed it over, even
        // if it then waits for buffer space: latency and deadlines count from here.
        let source_time = crate::util::now();
        self.inner
            .wait_for(
                Err(SendError::EndpointClosed),
                DriverWake::Always,
                |cs| match cs.conn.send(source_time, channel, data.clone()) {
                    Ok(seq) => Some(Ok(seq)),
                    Err(surelink_proto::SendError::Blocked) => None,
                    Err(e) => Some(Err(send_error(cs, e))),
                },
            )
            .await
    }

    /// Queues every message of `messages`, in order, on `channel`: the batch
    /// form of [`send_on`](Connection::send_on), for many small messages.
    ///
    /// As many messages as the send buffer takes are handed to the protocol
    /// under one lock and with one wake-up of the driver, which then packs
    /// them into as few packets as it can; while the buffer is full it waits
    /// like `send_on`. All messages of a call share one source time (the
    /// call's start), from which their latency and deadlines count. Returns
    /// how many were queued, once all were. On an error the messages before
    /// the failing one stay queued (for [`SendError::TooLarge`], the
    /// connection is still usable).
    ///
    /// Messages may be [`Bytes`] or borrowed `&[u8]` ([`MessageBytes`]):
    /// messages of up to [`SMALL_MESSAGE`] bytes are copied into the
    /// connection's send queue either way, so many small messages are best staged in one
    /// buffer of the caller's, a [`MessageBatch`], and sent with
    /// `send_many(channel, batch.iter())`, which costs no `Bytes` per message.
    /// Larger borrowed messages are copied; larger `Bytes` are kept as they are.
    ///
    /// [`MessageBytes`]: crate::MessageBytes
    /// [`MessageBatch`]: crate::MessageBatch
    /// [`SMALL_MESSAGE`]: crate::SMALL_MESSAGE
    pub async fn send_many<M, I>(&self, channel: u64, messages: I) -> Result<usize, SendError>
    where
        M: surelink_proto::MessageBytes,
        I: IntoIterator<Item = M>,
    {
        let source_time = crate::util::now();
        let mut messages = messages.into_iter().peekable();
        let mut queued = 0;
        loop {
            let done = self
                .inner
                .wait_for(Err(SendError::EndpointClosed), DriverWake::Always, |cs| {
                    let (n, result) = cs.conn.send_many(source_time, channel, &mut messages);
                    queued += n;
                    match result {
                        Ok(()) => Some(Ok(true)),
                        // Hand over what was queued (the driver sends it,
                        // acknowledgements make room), then wait.
                        Err(surelink_proto::SendError::Blocked) => (n > 0).then_some(Ok(false)),
                        Err(e) => Some(Err(send_error(cs, e))),
                    }
                })
                .await?;
            if done {
                return Ok(queued);
            }
        }
    }

    /// Queues the messages of `batch`, in order, on `channel` as **one packed
    /// message**: one sequence number, one source time (the call's start),
    /// one fate (see [`MessageBatch`](crate::MessageBatch)). The batch's
    /// buffer moves into the send queue uncopied and the connection does no
    /// work per message; the batch is left empty, ready for the next one.
    /// The receiver gets the messages one by one from
    /// [`recv_message`](Connection::recv_message) and
    /// [`recv_many`](Connection::recv_many), or all at once from
    /// [`recv_batch`](Connection::recv_batch).
    ///
    /// Use it for many small messages that may travel as one unit: the
    /// receiver gets none of them before all have arrived. For messages
    /// that each need their own latency, deadline or sequence number, use
    /// [`send_many`](Connection::send_many). Waits while the send buffer is
    /// too full for it, like `send_on`. Returns the sequence number, or
    /// `None` for an empty batch (nothing is sent). A batch whose packed
    /// form exceeds the largest message is refused with
    /// [`SendError::TooLarge`] and left as it was.
    pub async fn send_batch(
        &self,
        channel: u64,
        batch: &mut crate::MessageBatch,
    ) -> Result<Option<u64>, SendError> {
        let source_time = crate::util::now();
        self.inner
            .wait_for(
                Err(SendError::EndpointClosed),
                DriverWake::Always,
                |cs| match cs.conn.send_batch(source_time, channel, batch) {
                    Ok(seq) => Some(Ok(seq)),
                    Err(surelink_proto::SendError::Blocked) => None,
                    Err(e) => Some(Err(send_error(cs, e))),
                },
            )
            .await
    }

    /// Receives the next message's bytes; see [`recv_message`](Connection::recv_message).
    pub async fn recv(&self) -> Result<Option<Bytes>, RecvError> {
        Ok(self.recv_message().await?.map(|m| m.data))
    }

    /// Receives the next message, with its channel and sequence number.
    ///
    /// Returns `Ok(None)` once the connection was closed gracefully (by either
    /// side) and every message was received. If the connection ended with an
    /// error, the messages that had arrived complete are returned first, then
    /// [`RecvError::ConnectionLost`].
    pub async fn recv_message(&self) -> Result<Option<Message>, RecvError> {
        self.recv_next(|conn| conn.recv()).await
    }

    /// Waits for what `take` takes from the core, or for the end of the
    /// messages: `Ok(None)` after a graceful close, the error after a lost
    /// connection.
    async fn recv_next<T>(
        &self,
        mut take: impl FnMut(&mut surelink_proto::Connection) -> Option<T>,
    ) -> Result<Option<T>, RecvError> {
        self.inner
            .wait_for(
                Err(RecvError::EndpointClosed),
                DriverWake::WindowUpdate,
                |cs| {
                    if let Some(taken) = take(&mut cs.conn) {
                        return Some(Ok(Some(taken)));
                    }
                    end_of_messages(cs).map(|end| end.map(|()| None))
                },
            )
            .await
    }

    /// Receives every message that is ready (at most `max`, at least one),
    /// appending them to `out`: the batch form of
    /// [`recv_message`](Connection::recv_message), which takes them under one
    /// lock. Waits while none is ready. Returns how many were appended; 0 once
    /// the connection was closed gracefully and every message was received.
    /// If it ended with an error, the messages that had arrived complete are
    /// returned first, then [`RecvError::ConnectionLost`].
    pub async fn recv_many(&self, out: &mut Vec<Message>, max: usize) -> Result<usize, RecvError> {
        let max = max.max(1);
        self.inner
            .wait_for(
                Err(RecvError::EndpointClosed),
                DriverWake::WindowUpdate,
                |cs| match cs.conn.recv_many(out, max) {
                    0 => end_of_messages(cs).map(|end| end.map(|()| 0)),
                    n => Some(Ok(n)),
                },
            )
            .await
    }

    /// Receives the next batch whole: a batch sent with
    /// [`send_batch`](Connection::send_batch) as one
    /// [`ReceivedBatch`](crate::ReceivedBatch), whose messages are slices of
    /// one buffer (no reference count or allocation per message), or a
    /// message sent on its own as a batch of one. Waits while none is
    /// ready; `Ok(None)` and errors as for
    /// [`recv_message`](Connection::recv_message).
    pub async fn recv_batch(&self) -> Result<Option<crate::ReceivedBatch>, RecvError> {
        self.recv_next(|conn| conn.recv_batch()).await
    }

    /// Lifts the playout hold ([`ProtocolConfig::playout_delay`](crate::ProtocolConfig::playout_delay))
    /// for the rest of the connection: every message waiting for its playout
    /// time is handed over now, in order, to the next
    /// [`recv_message`](Connection::recv_message) calls, and messages that
    /// complete later are handed over as soon as they are in order. For a
    /// receiver that stops and must not drop what the transport already
    /// acknowledged. Returns how many messages were released early (also
    /// counted in [`ConnectionStats::messages_released_early`]); 0 without a
    /// playout delay or once the connection is gone.
    pub fn release_held(&self) -> u64 {
        let released = self
            .inner
            .with(|cs| cs.conn.release_held(crate::util::now()))
            .unwrap_or(0);
        if released > 0 {
            // Readers waiting for a message, and the driver for its timers
            // (no playout time to wait for any more).
            self.inner.notify.notify_waiters();
            self.inner.shared.wake_driver.notify_one();
        }
        released
    }

    /// Closes the connection gracefully and waits until it is done.
    ///
    /// No more messages can be sent. Everything already queued is still
    /// delivered; once the peer has acknowledged every byte, the close handshake
    /// runs. Returns `Ok` only after both completed. Fails if the connection ended
    /// with an error first (for example the peer stopped answering for the idle
    /// timeout), or if the peer closed while messages of ours were unacknowledged.
    ///
    /// This waits as long as the peer keeps acknowledging slowly; wrap it in
    /// [`tokio::time::timeout`] to bound it.
    pub async fn close(&self) -> Result<(), CloseError> {
        {
            let mut st = self.inner.shared.lock();
            if let Some(cs) = st.conns.get_mut(&self.inner.handle) {
                cs.conn.close(crate::util::now());
                cs.sync();
            }
            st.touch(self.inner.handle);
        }
        self.inner.shared.wake_driver.notify_one();
        self.inner
            .wait_for(
                Err(CloseError::EndpointClosed),
                DriverWake::Never,
                |cs| match &cs.closed {
                    None => None,
                    Some(Some(e)) => Some(Err(CloseError::ConnectionLost(e.clone()))),
                    Some(None) => {
                        let s = cs.conn.stats();
                        // Messages given up on by their delivery mode (deadline
                        // passed, unreliable and lost) are settled, not missing.
                        let unacked = s
                            .messages_sent
                            .saturating_sub(s.messages_acked + s.messages_abandoned);
                        Some(if unacked == 0 {
                            Ok(())
                        } else {
                            Err(CloseError::Unacknowledged { unacked })
                        })
                    }
                },
            )
            .await
    }

    /// Ends the connection at once, dropping anything not yet delivered, and tells
    /// the peer (which sees a [`ConnectionError::PeerClosed`]) why.
    pub fn abort(&self, reason: &str) {
        {
            let mut st = self.inner.shared.lock();
            if let Some(cs) = st.conns.get_mut(&self.inner.handle) {
                cs.conn.abort(crate::util::now(), reason);
                cs.sync();
            }
            st.touch(self.inner.handle);
        }
        self.inner.shared.wake_driver.notify_one();
    }

    /// Waits until the connection has ended; `None` means it closed gracefully.
    pub async fn closed(&self) -> Option<ConnectionError> {
        self.inner
            .wait_for(
                Some(ConnectionError::LocallyAborted),
                DriverWake::Never,
                |cs| cs.closed.clone(),
            )
            .await
    }

    /// True once the connection has ended (gracefully or not).
    pub fn is_closed(&self) -> bool {
        self.inner
            .with(|cs| cs.closed.is_some() || cs.conn.is_closed())
            .unwrap_or(true)
    }

    /// The peer's authenticated static public key, once the handshake has
    /// completed (`None` in insecure plaintext mode).
    pub fn peer_key(&self) -> Option<PublicKey> {
        self.inner.with(|cs| cs.conn.peer_key()).flatten()
    }

    /// What is known about the peer's clock: offset from ours, error bound,
    /// drift (from the timestamps piggybacked on heartbeats). `None` until the
    /// first samples. Both clocks are wall clocks (µs since the Unix epoch).
    pub fn clock_estimate(&self) -> Option<ClockEstimate> {
        self.inner
            .with(|cs| cs.conn.clock_estimate(crate::util::now()))
            .flatten()
    }

    /// Adds a path to another address of the peer (for example the same
    /// server reached through a second network, or a second `--listen`
    /// address). It is validated with a challenge before use; the endpoint's
    /// `protocol.path_mode` says how paths share the traffic (backup by
    /// default: the first path carries the data, the others take over on
    /// failure). Returns the path's index.
    pub fn add_path(&self, remote: SocketAddr) -> Option<usize> {
        let id = self.inner.with(|cs| {
            cs.conn
                .add_path(crate::util::now(), PathAddr { local: 0, remote })
                .0
        });
        self.inner.shared.wake_driver.notify_one();
        id
    }

    /// Per-path figures: state, RTT, phi, bytes, losses.
    pub fn path_stats(&self) -> Vec<PathStats> {
        self.inner
            .with(|cs| cs.conn.path_stats(crate::util::now()))
            .unwrap_or_default()
    }

    /// Sets how messages sent on `channel` from now on are delivered: reliable
    /// (the default), with a deadline, or unreliable. The peer learns it with
    /// each message and skips what is late or lost instead of waiting for it.
    pub fn set_channel_delivery(&self, channel: u64, delivery: Delivery) {
        self.inner
            .with(|cs| cs.conn.set_channel_delivery(channel, delivery));
    }

    /// Waits for the connection's next event: the handshake completed
    /// (`Connected`), a path validated, suspected, failed or recovered
    /// (`PathUp`, `PathSuspect`, `PathDown`, `PathRecovered`), data moved to
    /// another path (`FailedOver`), every path down (`ConnectionLost`),
    /// messages skipped past their deadline (`Skipped`), a step of the peer's
    /// clock (`ClockStep`), and finally `Closed`. Returns `None` once the
    /// connection has ended and every event was taken.
    ///
    /// Events wait in a queue of [`EVENT_CAPACITY`](crate::EVENT_CAPACITY);
    /// if nobody takes them, the oldest are dropped and counted
    /// ([`events_dropped`](Connection::events_dropped)). One task should take
    /// them: each event goes to one caller.
    pub async fn next_event(&self) -> Option<ConnectionEvent> {
        self.inner
            .wait_for(None, DriverWake::Never, |cs| match cs.events.pop_front() {
                Some(e) => Some(Some(e)),
                None => cs.closed.is_some().then_some(None),
            })
            .await
    }

    /// Events dropped because the queue behind
    /// [`next_event`](Connection::next_event) was full.
    pub fn events_dropped(&self) -> u64 {
        self.inner.with(|cs| cs.events_dropped).unwrap_or(0)
    }

    /// Payload bytes queued and not yet acknowledged by the peer.
    pub fn unacked_bytes(&self) -> u64 {
        self.inner.with(|cs| cs.conn.unacked_bytes()).unwrap_or(0)
    }

    /// A snapshot of the connection's counters: round-trip time, congestion
    /// window, packets and bytes, losses and retransmissions, messages.
    pub fn stats(&self) -> ConnectionStats {
        self.inner.with(|cs| cs.conn.stats()).unwrap_or_default()
    }

    /// Waits for the handshake (used by `Endpoint::connect`).
    pub(crate) async fn wait_connected(&self) -> Result<(), ConnectError> {
        let remote = self.inner.remote;
        let idle = self.inner.shared.config.protocol.idle_timeout;
        self.inner
            .wait_for(Err(ConnectError::EndpointClosed), DriverWake::Never, |cs| {
                if cs.connected {
                    return Some(Ok(()));
                }
                match &cs.closed {
                    None => None,
                    Some(Some(ConnectionError::TimedOut)) => Some(Err(ConnectError::TimedOut {
                        remote,
                        after: idle,
                    })),
                    Some(Some(e)) => Some(Err(ConnectError::Failed {
                        remote,
                        error: e.clone(),
                    })),
                    Some(None) => Some(Err(ConnectError::Failed {
                        remote,
                        error: ConnectionError::PeerClosed {
                            code: 0,
                            reason: "closed during the handshake".to_owned(),
                        },
                    })),
                }
            })
            .await
    }
}

impl ConnectionInner {
    /// Runs `f` on the connection's state under the lock; `None` if it is gone.
    fn with<T>(&self, f: impl FnOnce(&mut ConnState) -> T) -> Option<T> {
        let mut st = self.shared.lock();
        let cs = st.conns.get_mut(&self.handle)?;
        let out = f(cs);
        cs.sync();
        st.touch(self.handle);
        Some(out)
    }

    /// Calls `check` under the lock until it returns `Some`, sleeping on the
    /// connection's `Notify` in between. Returns `gone` if the connection or the
    /// driver disappeared. After a successful check the driver is woken as
    /// `wake` says: the check may have changed what the core has to send.
    ///
    /// The first check runs without registering on the `Notify` (registering
    /// and unregistering take its internal lock), so a call that succeeds at
    /// once, the common case of a send with buffer space or a receive with a
    /// message ready, costs one lock of the shared state.
    async fn wait_for<T>(
        &self,
        gone: T,
        wake: DriverWake,
        mut check: impl FnMut(&mut ConnState) -> Option<T>,
    ) -> T {
        let mut gone = Some(gone);
        if let Some(out) = self.try_check(&mut gone, wake, &mut check) {
            return out;
        }
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check: a change after it still wakes us.
            notified.as_mut().enable();
            if let Some(out) = self.try_check(&mut gone, wake, &mut check) {
                return out;
            }
            notified.await;
        }
    }

    /// One check of [`wait_for`](Self::wait_for): `Some` when it is done
    /// (its result, or `gone` taken out of its option).
    fn try_check<T>(
        &self,
        gone: &mut Option<T>,
        wake: DriverWake,
        check: &mut impl FnMut(&mut ConnState) -> Option<T>,
    ) -> Option<T> {
        let mut st = self.shared.lock();
        let running = st.driver_running;
        let Some(cs) = st.conns.get_mut(&self.handle) else {
            return gone.take();
        };
        if let Some(out) = check(cs) {
            let wake_driver = match wake {
                DriverWake::Always => true,
                DriverWake::WindowUpdate => cs.conn.window_update_pending(),
                DriverWake::Never => false,
            };
            cs.sync();
            st.touch(self.handle);
            drop(st);
            if wake_driver {
                self.shared.wake_driver.notify_one();
            }
            return Some(out);
        }
        if running {
            None
        } else {
            gone.take()
        }
    }
}

/// Whether a successful check in [`ConnectionInner::wait_for`] gives the
/// driver work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DriverWake {
    /// Always (a message was queued: it must be sent).
    Always,
    /// When taking messages opened the receive window far enough that the
    /// core has a window update to send.
    WindowUpdate,
    /// Never (the check only looked).
    Never,
}

/// The runtime's error for a core refusal other than `Blocked`.
fn send_error(cs: &ConnState, e: surelink_proto::SendError) -> SendError {
    match e {
        surelink_proto::SendError::TooLarge { size, max } => SendError::TooLarge { size, max },
        surelink_proto::SendError::Closing => SendError::Closing,
        _ => match cs.conn.error() {
            Some(e) => SendError::ConnectionLost(e.clone()),
            None => SendError::Closed,
        },
    }
}

/// When no message is ready: `None` while more may come, `Some(Ok(()))` once
/// the connection closed gracefully, the error if it failed.
fn end_of_messages(cs: &ConnState) -> Option<Result<(), RecvError>> {
    match &cs.closed {
        None => None,
        Some(None) => Some(Ok(())),
        Some(Some(e)) => Some(Err(RecvError::ConnectionLost(e.clone()))),
    }
}

impl Drop for ConnectionInner {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            if let Some(cs) = st.conns.get_mut(&self.handle) {
                cs.has_handle = false;
                if !cs.conn.is_closed() {
                    tracing::debug!(remote = %self.remote, "last connection handle dropped: aborting");
                    cs.conn
                        .abort(crate::util::now(), "the connection handle was dropped");
                }
                cs.sync();
            }
            st.touch(self.handle);
        }
        self.shared.wake_driver.notify_one();
    }
}
