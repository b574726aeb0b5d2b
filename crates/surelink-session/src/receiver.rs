//! [`DurableReceiver`]: the receiving side of a durable session.
//!
//! Driven like this: [`open`](DurableReceiver::open) the journal with the
//! application's [`DurableSink`] (the sink is restored to the checkpointed
//! position: bytes written after the last checkpoint are cut off); for each
//! accepted connection, [`read_hello`] then [`accept`](DurableReceiver::accept)
//! (WATERMARK, or REFUSE with the reason), then
//! [`serve`](DurableReceiver::serve) until the session completes or the
//! connection fails. A new connection for the same session can take over at
//! any time: drop the `serve` future (it is cancel-safe), `accept` the new
//! one and `serve` it.
//!
//! Each checkpoint flushes the sink (and syncs it under
//! [`Durability::Always`]), then writes *one* journal record with the
//! watermarks and the sink's position, commits it, and tells the sender
//! with a CHECKPOINT message. Under [`Durability::Interval`] the sink is
//! synced right before each interval fsync of the journal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use surelink::stats_schema::{Metric, StatsVisitor, Unit, VisitStats};
use surelink_journal::{
    CheckpointStore, Durability, FsStorage, JournalMetrics, SessionRecord, Storage,
};

use super::record::{Meta, ReceiverMeta};
use super::sink::{Delivery, DurableSink};
use super::store::{JournalStore, ReceiverStore};
use super::wire::{self, Control, Hello, Progress, SessionId, CONTROL_CHANNEL};
use super::{blocking, send_control, ResumeMismatch, SessionError, SessionOptions};
use surelink::{Connection, Endpoint, Message};

/// Reason given to a sender that does not speak the session protocol.
const NOT_A_SESSION: &str =
    "this receiver keeps durable state: the sender must use it too (surelink send --state DIR)";

/// Reads the first message of a connection, which must be a HELLO, within
/// `timeout`. A connection whose first message is anything else is aborted
/// with a reason the sender sees.
pub async fn read_hello(conn: &Connection, timeout: Duration) -> Result<Hello, SessionError> {
    let received = match tokio::time::timeout(timeout, conn.recv_message()).await {
        Ok(received) => received,
        Err(_) => {
            conn.abort("no session HELLO");
            return Err(SessionError::NotASession(format!(
                "the sender sent no session HELLO within {timeout:?}"
            )));
        }
    };
    let m = match received {
        Ok(Some(m)) => m,
        Ok(None) => return Err(SessionError::ConnectionClosed),
        Err(e) => return Err(e.into()),
    };
    if m.channel != CONTROL_CHANNEL {
        conn.abort(NOT_A_SESSION);
        return Err(SessionError::NotASession(format!(
            "the sender did not start a session (its first message came on channel {}): \
             it must run with durable state too (surelink send --state DIR)",
            m.channel
        )));
    }
    match Control::decode(&m.data) {
        Ok(Control::Hello(hello)) => Ok(hello),
        Ok(other) => {
            conn.abort("expected HELLO");
            Err(SessionError::Protocol(format!(
                "expected HELLO, got {}",
                other.name()
            )))
        }
        Err(e) => {
            conn.abort("malformed HELLO");
            Err(e.into())
        }
    }
}

/// What [`DurableReceiver::accept`] decided.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Accepted {
    /// The session.
    pub session_id: SessionId,
    /// A session this receiver had not seen (else a resumption).
    pub new_session: bool,
    /// The watermark sent back: per channel, the next id expected.
    pub next: BTreeMap<u64, u64>,
    /// The sink's position.
    pub position: u64,
    /// The session was already complete.
    pub complete: bool,
}

/// Counters of a [`DurableReceiver`] since it was opened.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReceiverStats {
    /// Messages written to the sink.
    pub messages_delivered: u64,
    /// Bytes written to the sink.
    pub bytes_delivered: u64,
    /// Messages dropped because the watermark covered them (re-sent after a
    /// crash).
    pub duplicates_dropped: u64,
    /// Checkpoints written (journal records of watermarks + sink position).
    pub checkpoints: u64,
    /// Sink fsyncs.
    pub sink_syncs: u64,
    /// Sessions started.
    pub sessions_started: u64,
    /// Connections that resumed a known session.
    pub resumes: u64,
    /// Senders refused.
    pub refused: u64,
}

/// Reads a [`DurableReceiver`]'s counters from another task
/// ([`DurableReceiver::stats_reader`]).
#[derive(Debug, Clone, Default)]
pub struct ReceiverStatsReader(Arc<Mutex<ReceiverStats>>);

impl ReceiverStatsReader {
    /// The counters as of the receiver's last checkpoint, acceptance or refusal.
    pub fn stats(&self) -> ReceiverStats {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, ReceiverStats> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl VisitStats for ReceiverStats {
    fn visit<V: StatsVisitor + ?Sized>(&self, v: &mut V) {
        use Unit::{Bytes, Count};
        for (key, family, unit, help, value) in [
            (
                "session_messages_delivered",
                "session_messages_delivered",
                Count,
                "Messages the durable receiver wrote to its output.",
                self.messages_delivered,
            ),
            (
                "session_bytes_delivered",
                "session_delivered",
                Bytes,
                "Bytes the durable receiver wrote to its output.",
                self.bytes_delivered,
            ),
            (
                "session_duplicates_dropped",
                "session_duplicates_dropped",
                Count,
                "Messages re-sent after a crash and dropped under the watermark.",
                self.duplicates_dropped,
            ),
            (
                "session_checkpoints",
                "session_checkpoints",
                Count,
                "Checkpoints committed (watermarks and output position).",
                self.checkpoints,
            ),
            (
                "session_sink_syncs",
                "session_output_syncs",
                Count,
                "fsyncs of the output.",
                self.sink_syncs,
            ),
            (
                "sessions_started",
                "sessions_started",
                Count,
                "Sessions this receiver had not seen before.",
                self.sessions_started,
            ),
            (
                "session_resumes",
                "session_resumes",
                Count,
                "Connections that resumed a known session from its checkpoint.",
                self.resumes,
            ),
            (
                "sessions_refused",
                "sessions_refused",
                Count,
                "Senders refused (a different session, a bad resume token, ...).",
                self.refused,
            ),
        ] {
            v.counter(&Metric::counter(key, family, unit, help), value);
        }
    }
}

/// What happened while [`DurableReceiver::run`] served an endpoint.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// A sender's HELLO was accepted; its connection now serves the session
    /// (replacing the previous one, if any).
    Accepted {
        /// The sender's address.
        remote: SocketAddr,
        /// What was decided.
        accepted: Accepted,
    },
    /// A sender was refused, or did not start a session.
    Refused {
        /// The sender's address.
        remote: SocketAddr,
        /// Why.
        error: SessionError,
    },
    /// The connection serving the session ended before the session was
    /// settled; the receiver waits for the sender to come back.
    ConnectionEnded {
        /// The sender's address.
        remote: SocketAddr,
        /// How it ended.
        error: SessionError,
    },
}

/// Errors after which [`DurableReceiver::run`] cannot go on: the local
/// state or output failed.
fn is_fatal(e: &SessionError) -> bool {
    matches!(
        e,
        SessionError::Journal(_)
            | SessionError::Sink { .. }
            | SessionError::State(_)
            | SessionError::EndpointClosed
            | SessionError::Deposed(_)
    )
}

/// The reason a receiver sends (REFUSE, then CLOSE) when a fatal error stops
/// it, so the sender reports the real cause (`receiver: cannot write the output: No
/// space left on device`) instead of a silent peer.
fn fatal_reason(e: &SessionError) -> String {
    format!("receiver: {e}")
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One step of [`DurableReceiver::run`].
enum Step {
    Hello(Option<(Connection, Result<Hello, SessionError>)>),
    Served(Result<(), SessionError>),
    Lingered,
}

#[derive(Debug)]
struct RxSession {
    id: [u8; 16],
    token: [u8; 32],
    meta: ReceiverMeta,
}

/// The receiving side of a durable session. See the [crate]
/// docs and `docs/CHECKPOINTS.md`: open, then `run` (or `read_hello`,
/// `accept`, `serve`). Its checkpoints go to a [`ReceiverStore`]: the local
/// journal by default, or a store shared by a receiver group.
#[derive(Debug)]
pub struct DurableReceiver<K: DurableSink, St: ReceiverStore = JournalStore<FsStorage>> {
    store: St,
    sink: K,
    options: SessionOptions,
    session: Option<RxSession>,
    /// END received, waiting for the messages it announces.
    pending_end: Option<BTreeMap<u64, u64>>,
    /// When the oldest message not yet checkpointed was delivered.
    dirty_since: Option<Instant>,
    /// The sink has data that was not synced.
    sink_unsynced: bool,
    /// The last checkpoint was told to the sender.
    announced: bool,
    stats: ReceiverStats,
    /// A copy of `stats` as of the last checkpoint or decision, for readers
    /// while [`DurableReceiver::run`] holds the receiver.
    published: ReceiverStatsReader,
}

impl<K: DurableSink> DurableReceiver<K, JournalStore<FsStorage>> {
    /// [`open`](Self::open) with the journal in directory `dir` (created if
    /// missing).
    pub fn open_dir(
        dir: impl AsRef<Path>,
        sink: K,
        options: SessionOptions,
    ) -> Result<Self, SessionError> {
        let storage = super::open_state_dir(dir.as_ref())?;
        Self::open(storage, sink, options)
    }
}

impl<K: DurableSink, S: Storage + Send> DurableReceiver<K, JournalStore<S>> {
    /// Opens the journal on `storage`, recovers the session (if any) and
    /// restores `sink` to its checkpointed position. A sink with no session
    /// in the journal is left alone until a first session starts (then it is
    /// restored to position 0).
    pub fn open(storage: S, sink: K, options: SessionOptions) -> Result<Self, SessionError> {
        let journal_options = options.journal_options();
        let store = blocking(|| CheckpointStore::open(storage, journal_options))?;
        Self::with_store(JournalStore::new(store), sink, options)
    }
}

impl<K: DurableSink, St: ReceiverStore> DurableReceiver<K, St> {
    /// A receiver on an opened checkpoint `store`: recovers the session in
    /// its checkpoint (if any) and restores `sink` to the checkpointed
    /// position. A sink with no session in the store is left alone until a
    /// first session starts (then it is restored to position 0).
    pub fn with_store(
        store: St,
        mut sink: K,
        options: SessionOptions,
    ) -> Result<Self, SessionError> {
        let session = match store.checkpoint() {
            None => None,
            Some(record) => match Meta::decode(&record.peer) {
                Ok(Meta::Receiver(meta)) => Some(RxSession {
                    id: record.session_id,
                    token: record.resume_token,
                    meta,
                }),
                Ok(Meta::Sender(_)) => {
                    return Err(SessionError::State(
                        "this state belongs to a sender, not a receiver".into(),
                    ))
                }
                Err(e) => return Err(SessionError::State(format!("bad session record: {e}"))),
            },
        };
        if let Some(s) = &session {
            let position = s.meta.position;
            blocking(|| sink.restore(position)).map_err(|e| {
                SessionError::sink(
                    format!("cannot restore {} to its checkpoint", sink.describe()),
                    e,
                )
            })?;
        }
        Ok(DurableReceiver {
            store,
            sink,
            options,
            session,
            pending_end: None,
            dirty_since: None,
            sink_unsynced: false,
            announced: true,
            stats: ReceiverStats::default(),
            published: ReceiverStatsReader::default(),
        })
    }

    /// The current (or last) session.
    pub fn session_id(&self) -> Option<SessionId> {
        self.session.as_ref().map(|s| SessionId(s.id))
    }

    /// True if the current session is complete.
    pub fn is_complete(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.meta.ended)
    }

    /// Messages of `channel` delivered in this session (the next id expected).
    pub fn delivered(&self, channel: u64) -> u64 {
        self.session
            .as_ref()
            .and_then(|s| s.meta.next.get(&channel).copied())
            .unwrap_or(0)
    }

    /// Messages delivered in this session, all channels.
    pub fn delivered_total(&self) -> u64 {
        self.session
            .as_ref()
            .map_or(0, |s| s.meta.next.values().sum())
    }

    /// The sink.
    pub fn sink(&self) -> &K {
        &self.sink
    }

    /// Gives the sink back.
    pub fn into_sink(self) -> K {
        self.sink
    }

    /// Gives the sink and the checkpoint store back.
    pub fn into_parts(self) -> (K, St) {
        (self.sink, self.store)
    }

    /// Counters since [`open`](Self::open).
    pub fn stats(&self) -> ReceiverStats {
        self.stats.clone()
    }

    /// A handle that reads the counters while [`run`](Self::run) holds the
    /// receiver: as of its last checkpoint, acceptance or refusal.
    pub fn stats_reader(&self) -> ReceiverStatsReader {
        self.published.clone()
    }

    /// Makes the counters visible to [`stats_reader`](Self::stats_reader)s.
    fn publish_stats(&self) {
        *self.published.lock() = self.stats.clone();
    }

    /// The journal's counters (commits, fsyncs, bytes, compactions).
    pub fn journal_metrics(&self) -> JournalMetrics {
        self.store.metrics()
    }

    /// The checkpoint store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// Decides on a sender's HELLO: resume a known session (the token must
    /// match and the outbox must fit the watermark), start a new one (when
    /// none is in progress, and the sender starts from message 0), or refuse
    /// — then the sender gets a REFUSE with the reason, and this returns
    /// [`SessionError::Mismatch`]. On success the state is checkpointed and
    /// the watermark sent back.
    pub async fn accept(
        &mut self,
        conn: &Connection,
        hello: Hello,
    ) -> Result<Accepted, SessionError> {
        let new_session = match self.decide(&hello) {
            Ok(new) => new,
            Err(mismatch) => {
                self.stats.refused += 1;
                self.publish_stats();
                refuse(conn, &mismatch.to_string()).await;
                return Err(SessionError::Mismatch(mismatch));
            }
        };
        if new_session {
            let position = match &self.session {
                Some(previous) => previous.meta.position,
                None => {
                    let sink = &mut self.sink;
                    blocking(|| sink.restore(0)).map_err(|e| {
                        SessionError::sink(format!("cannot truncate {}", sink.describe()), e)
                    })?;
                    0
                }
            };
            self.session = Some(RxSession {
                id: hello.session_id.0,
                token: hello.resume_token,
                meta: ReceiverMeta {
                    ended: false,
                    position,
                    next: BTreeMap::new(),
                },
            });
            self.stats.sessions_started += 1;
            self.dirty_since.get_or_insert_with(crate::now);
        } else {
            self.stats.resumes += 1;
        }
        self.publish_stats();
        self.pending_end = None;
        self.checkpoint(false).await?;
        let session = self.session.as_ref().expect("accepted a session");
        let progress = Progress {
            ended: session.meta.ended,
            next: session.meta.next.clone(),
        };
        let accepted = Accepted {
            session_id: hello.session_id,
            new_session,
            next: progress.next.clone(),
            position: self.sink.position(),
            complete: progress.ended,
        };
        send_control(conn, &Control::Watermark(progress)).await?;
        self.announced = true;
        Ok(accepted)
    }

    fn decide(&self, hello: &Hello) -> Result<bool, ResumeMismatch> {
        match &self.session {
            Some(s) if s.id == hello.session_id.0 => {
                if s.token != hello.resume_token {
                    return Err(ResumeMismatch::TokenMismatch {
                        session: hello.session_id,
                    });
                }
                let channels: std::collections::BTreeSet<u64> = s
                    .meta
                    .next
                    .keys()
                    .copied()
                    .chain(hello.channels.iter().map(|c| c.channel))
                    .collect();
                for channel in channels {
                    let expects = s.meta.next.get(&channel).copied().unwrap_or(0);
                    let theirs = hello.channel(channel);
                    if expects < theirs.first_pending {
                        return Err(ResumeMismatch::ReceiverLostState {
                            channel,
                            expects,
                            oldest_unconfirmed: theirs.first_pending,
                        });
                    }
                    if expects > theirs.next {
                        return Err(ResumeMismatch::SenderLostState {
                            channel,
                            delivered: expects,
                            sender_next: theirs.next,
                        });
                    }
                }
                Ok(false)
            }
            Some(s) if !s.meta.ended => Err(ResumeMismatch::OtherSessionInProgress {
                current: SessionId(s.id),
                delivered: s.meta.next.values().sum(),
                offered: hello.session_id,
            }),
            _ => {
                if let Some(c) = hello.channels.iter().find(|c| c.first_pending > 0) {
                    return Err(ResumeMismatch::ReceiverLostState {
                        channel: c.channel,
                        expects: 0,
                        oldest_unconfirmed: c.first_pending,
                    });
                }
                Ok(true)
            }
        }
    }

    /// Delivers the connection's messages to the sink, checkpointing as it
    /// goes, until the session is complete and the sender closed the
    /// connection (`Ok`), or the connection fails. Cancel-safe: the state is
    /// consistent at every await point, so a new connection may take over
    /// by dropping this future.
    pub async fn serve(&mut self, conn: &Connection) -> Result<(), SessionError> {
        if self.session.is_none() {
            return Err(SessionError::NotAttached);
        }
        loop {
            if !self.announced {
                self.announce(conn).await?;
            }
            let deadline = self.next_deadline();
            let received = tokio::select! {
                biased;
                deposed = self.store.deposed() => return Err(deposed),
                m = conn.recv_message() => m,
                () = tokio::time::sleep_until(
                    deadline.unwrap_or_else(|| crate::now() + Duration::from_secs(3600)).into()
                ), if deadline.is_some() => {
                    self.on_timer().await?;
                    continue;
                }
            };
            match received {
                Ok(Some(m)) => self.on_message(conn, m).await?,
                Ok(None) => {
                    self.checkpoint(false).await?;
                    return if self.is_complete() {
                        Ok(())
                    } else {
                        Err(SessionError::ConnectionClosed)
                    };
                }
                Err(e) => {
                    self.checkpoint(false).await?;
                    return Err(e.into());
                }
            }
        }
    }

    /// Serves sessions on `endpoint` until the current one is complete and
    /// settled: the sender closed the connection after the final
    /// CHECKPOINT, or (if that connection was lost, or the session was
    /// complete already) no sender came back within
    /// [`SessionOptions::linger`]. Senders are accepted concurrently: a
    /// HELLO for the current session takes over from the connection serving
    /// it (a restarted sender), and every decision is reported to
    /// `on_event`. Returns `Err` only when the journal, the sink or the
    /// endpoint fails, after telling the sender that error as the reason
    /// (REFUSE, retransmitted until acknowledged, then the close); a
    /// misbehaving or refused sender is reported and disconnected.
    pub async fn run(
        &mut self,
        endpoint: &Endpoint,
        on_event: impl FnMut(ReceiverEvent),
    ) -> Result<(), SessionError> {
        let (tx, mut hellos) = tokio::sync::mpsc::channel(16);
        let acceptor = {
            let endpoint = endpoint.clone();
            let timeout = self.options.handshake_timeout;
            tokio::spawn(async move {
                while let Some(conn) = endpoint.accept().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let hello = read_hello(&conn, timeout).await;
                        let _ = tx.send((conn, hello)).await;
                    });
                }
            })
        };
        let _acceptor = AbortOnDrop(acceptor);
        self.run_hellos(&mut hellos, on_event).await
    }

    /// [`run`](Self::run), with the connections and their HELLOs (as
    /// [`read_hello`] returned them) coming from `hellos` instead of an
    /// endpoint: for an application that accepts connections itself and
    /// routes each HELLO to the receiver of its session (one
    /// `DurableReceiver` per sender). A closed channel counts as a closed
    /// endpoint.
    pub async fn run_hellos(
        &mut self,
        hellos: &mut tokio::sync::mpsc::Receiver<(Connection, Result<Hello, SessionError>)>,
        mut on_event: impl FnMut(ReceiverEvent),
    ) -> Result<(), SessionError> {
        let mut current: Option<Connection> = None;
        loop {
            let linger = self.options.linger;
            let step = match &current {
                // Biased (here and below): a fixed polling order keeps
                // simulated runs reproducible; a new HELLO goes first.
                Some(conn) => tokio::select! {
                    biased;
                    h = hellos.recv() => Step::Hello(h),
                    r = self.serve(conn) => Step::Served(r),
                },
                None if self.is_complete() => tokio::select! {
                    biased;
                    h = hellos.recv() => Step::Hello(h),
                    () = tokio::time::sleep(linger) => Step::Lingered,
                },
                // Between connections too, a receiver whose store is no
                // longer owned stops at once (a group leader woken from a
                // pause after its sender left), instead of on the next HELLO.
                None => tokio::select! {
                    biased;
                    deposed = self.store.deposed() => Step::Served(Err(deposed)),
                    h = hellos.recv() => Step::Hello(h),
                },
            };
            match step {
                Step::Lingered => return Ok(()),
                Step::Hello(None) => return Err(SessionError::EndpointClosed),
                Step::Hello(Some((conn, Err(error)))) => on_event(ReceiverEvent::Refused {
                    remote: conn.remote_addr(),
                    error,
                }),
                Step::Hello(Some((conn, Ok(hello)))) => match self.accept(&conn, hello).await {
                    Ok(accepted) => {
                        if let Some(old) = current.replace(conn.clone()) {
                            old.abort("replaced by a newer connection of the session");
                        }
                        on_event(ReceiverEvent::Accepted {
                            remote: conn.remote_addr(),
                            accepted,
                        });
                    }
                    Err(e) if is_fatal(&e) => {
                        refuse_fatally(&conn, &fatal_reason(&e)).await;
                        if let Some(current) = &current {
                            refuse_fatally(current, &fatal_reason(&e)).await;
                        }
                        return Err(e);
                    }
                    Err(error) => on_event(ReceiverEvent::Refused {
                        remote: conn.remote_addr(),
                        error,
                    }),
                },
                Step::Served(Ok(())) => return Ok(()),
                // Deposed: confirm nothing more; the sender finds the new owner.
                Step::Served(Err(e @ SessionError::Deposed(_))) => {
                    if let Some(conn) = &current {
                        conn.abort(&fatal_reason(&e));
                    }
                    return Err(e);
                }
                Step::Served(Err(e)) if is_fatal(&e) => {
                    // The sender must not wait for us in vain: it learns why.
                    if let Some(conn) = &current {
                        refuse_fatally(conn, &fatal_reason(&e)).await;
                    }
                    return Err(e);
                }
                Step::Served(Err(error)) => {
                    let conn = current.take().expect("served a connection");
                    if !error.is_connection() {
                        conn.abort(&error.to_string());
                    }
                    on_event(ReceiverEvent::ConnectionEnded {
                        remote: conn.remote_addr(),
                        error,
                    });
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let checkpoint = self
            .dirty_since
            .map(|since| since + self.options.checkpoint_interval);
        let sync = self.store.next_sync_at(crate::now());
        match (checkpoint, sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn on_timer(&mut self) -> Result<(), SessionError> {
        let now = crate::now();
        if self
            .dirty_since
            .is_some_and(|since| since + self.options.checkpoint_interval <= now)
        {
            self.checkpoint(false).await?;
        }
        self.interval_sync(now)
    }

    /// [`SessionError::Deposed`] unless this receiver owns its store now.
    fn check_owned(&self) -> Result<(), SessionError> {
        if self.store.owned(crate::now()) {
            Ok(())
        } else {
            Err(SessionError::Deposed(
                "the ownership of the checkpoint store expired".into(),
            ))
        }
    }

    async fn on_message(&mut self, conn: &Connection, m: Message) -> Result<(), SessionError> {
        if m.channel == CONTROL_CHANNEL {
            return match Control::decode(&m.data)? {
                Control::End(counts) => {
                    self.pending_end = Some(counts);
                    self.check_end().await
                }
                other => Err(SessionError::Protocol(format!(
                    "unexpected {} from the sender",
                    other.name()
                ))),
            };
        }
        // A receiver that lost its store's ownership writes nothing more.
        self.check_owned()?;
        let session = self.session.as_mut().expect("serving a session");
        let (id, data) = wire::split_data(&m.data)?;
        let next = session.meta.next.entry(m.channel).or_insert(0);
        if id < *next {
            self.stats.duplicates_dropped += 1;
            return Ok(());
        }
        if session.meta.ended {
            return Err(SessionError::Protocol(format!(
                "message {id} of channel {} after the end of the session",
                m.channel
            )));
        }
        if id > *next {
            return Err(SessionError::Protocol(format!(
                "message {id} of channel {} arrived, but {} was expected",
                m.channel, *next
            )));
        }
        let delivery = Delivery {
            channel: m.channel,
            id,
            source_time_us: m.source_time_us,
            arrived_us: m.source_time_us.saturating_add(m.latency_us),
            error_bound_us: conn
                .clock_estimate()
                .map(|e| e.error_bound_us.ceil() as u64),
        };
        let sink = &mut self.sink;
        sink.write_delivery(&delivery, &data)
            .map_err(|e| SessionError::sink(format!("cannot write {}", sink.describe()), e))?;
        *next += 1;
        self.stats.messages_delivered += 1;
        self.stats.bytes_delivered += data.len() as u64;
        let now = crate::now();
        let since = *self.dirty_since.get_or_insert(now);
        if self.pending_end.is_some() {
            self.check_end().await?;
        }
        if since + self.options.checkpoint_interval <= now {
            self.checkpoint(false).await?;
        }
        Ok(())
    }

    /// Completes the session once everything END announced was delivered.
    async fn check_end(&mut self) -> Result<(), SessionError> {
        let (Some(end), Some(session)) = (&self.pending_end, &mut self.session) else {
            return Ok(());
        };
        for (&channel, &next) in &session.meta.next {
            let announced = end.get(&channel).copied().unwrap_or(0);
            if next > announced {
                return Err(SessionError::Protocol(format!(
                    "END announces {announced} messages on channel {channel}, but {next} arrived"
                )));
            }
        }
        let done = end
            .iter()
            .all(|(c, &n)| session.meta.next.get(c).copied().unwrap_or(0) >= n);
        if done {
            session.meta.ended = true;
            self.pending_end = None;
            self.checkpoint(true).await?;
        }
        Ok(())
    }

    /// Writes a checkpoint if anything changed since the last one (always
    /// when `sync`): sink flushed (and synced under `Always` or `sync`), one
    /// journal record with the watermarks and the sink position, committed
    /// (fsynced when `sync`).
    async fn checkpoint(&mut self, sync: bool) -> Result<(), SessionError> {
        if self.dirty_since.is_none() && !sync {
            return Ok(());
        }
        if self.session.is_none() {
            return Ok(());
        }
        // The sink's buffered writes reach the output only while owned.
        self.check_owned()?;
        let session = self.session.as_mut().expect("checked above");
        let sync_sink = sync || self.options.durability == Durability::Always;
        let sink = &mut self.sink;
        let stats = &mut self.stats;
        let sink_unsynced = &mut self.sink_unsynced;
        let record = blocking(|| -> Result<SessionRecord, SessionError> {
            sink.flush()
                .map_err(|e| SessionError::sink(format!("cannot write {}", sink.describe()), e))?;
            if sync_sink {
                sink.sync().map_err(|e| {
                    SessionError::sink(format!("cannot sync {}", sink.describe()), e)
                })?;
                stats.sink_syncs += 1;
                *sink_unsynced = false;
            } else {
                *sink_unsynced = true;
            }
            session.meta.position = sink.position();
            Ok(SessionRecord {
                session_id: session.id,
                resume_token: session.token,
                peer: Meta::Receiver(session.meta.clone()).encode(),
            })
        })?;
        let position = session.meta.position;
        self.store.commit(record, sync).await?;
        self.sink.committed(position);
        self.stats.checkpoints += 1;
        self.publish_stats();
        self.dirty_since = None;
        self.announced = false;
        self.interval_sync(crate::now())
    }

    /// Under [`Durability::Interval`]: when the journal's fsync is due, sync
    /// the sink first, then the journal.
    fn interval_sync(&mut self, now: Instant) -> Result<(), SessionError> {
        if self.store.next_sync_at(now).is_none_or(|t| t > now) {
            return Ok(());
        }
        if self.sink_unsynced {
            let sink = &mut self.sink;
            blocking(|| sink.sync())
                .map_err(|e| SessionError::sink(format!("cannot sync {}", sink.describe()), e))?;
            self.stats.sink_syncs += 1;
            self.sink_unsynced = false;
        }
        self.store.tick(now)
    }

    /// Tells the sender about the last checkpoint.
    async fn announce(&mut self, conn: &Connection) -> Result<(), SessionError> {
        let Some(session) = &self.session else {
            return Ok(());
        };
        let progress = Progress {
            ended: session.meta.ended,
            next: session.meta.next.clone(),
        };
        send_control(conn, &Control::Checkpoint(progress)).await?;
        self.announced = true;
        Ok(())
    }
}

/// Longest wait for a sender to acknowledge the REFUSE of a receiver that
/// cannot go on ([`refuse_fatally`]).
const FATAL_REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Ends a connection when this receiver cannot go on (its output or journal
/// failed): REFUSE with the reason, which is retransmitted until the sender
/// acknowledges it (an abort's CLOSE is sent once and can be lost), then a
/// graceful close; if that takes longer than [`FATAL_REFUSE_TIMEOUT`], an
/// abort with the same reason.
async fn refuse_fatally(conn: &Connection, reason: &str) {
    let told = async {
        send_control(conn, &Control::Refuse(reason.to_owned())).await?;
        conn.close()
            .await
            .map_err(|_| SessionError::ConnectionClosed)
    };
    let _ = tokio::time::timeout(FATAL_REFUSE_TIMEOUT, told).await;
    conn.abort(reason);
}

/// Sends REFUSE and closes the connection in the background (bounded), so
/// the sender gets the reason.
async fn refuse(conn: &Connection, reason: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        send_control(conn, &Control::Refuse(reason.to_owned())),
    )
    .await;
    let conn = conn.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
    });
}
