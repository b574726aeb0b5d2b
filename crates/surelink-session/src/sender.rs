//! [`DurableSender`]: the sending side of a durable session.
//!
//! Driven like this: [`open`](DurableSender::open) the journal (which
//! creates the session on first use, or recovers it), look at
//! [`resume_cursor`](DurableSender::resume_cursor) to know where the
//! application's input stands, [`attach`](DurableSender::attach) a
//! connection (HELLO, WATERMARK, re-sending what the receiver lacks), then
//! [`send`](DurableSender::send) / [`send_batch`](DurableSender::send_batch)
//! new messages and [`finish`](DurableSender::finish). When the connection
//! fails ([`SessionError::is_connection`]), attach a new one and carry on:
//! the outbox is re-sent from the receiver's watermark.
//!
//! Every message is pushed to the journal and committed (at least handed to
//! the OS) before it is sent, with its *cursor*: an application value,
//! non-decreasing in send order, that says where the input stands after
//! this message (for a file, the byte offset after its bytes). The cursor
//! is how a restarted application knows where to continue reading.
//!
//! The outbox holds a copy of each message by default. A sender opened
//! with a [`ReplaySource`] ([`open_with_source`](DurableSender::open_with_source))
//! journals only where each message lies in its input and reads the bytes
//! again to re-send them (see [`crate::replay`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use rand::{RngCore as _, SeedableRng as _};
use surelink_journal::{
    CheckpointStore, FsStorage, JournalMetrics, OutboxEntry, SessionRecord, Storage,
};

use super::record::{Meta, SenderMeta};
use super::replay::{ReplayRef, ReplaySource};
use super::wire::{self, ChannelResume, Control, Hello, Progress, SessionId, CONTROL_CHANNEL};
use super::{
    blocking, send_control, ResumeMismatch, SessionError, SessionOptions, MAINTENANCE_INTERVAL,
};
use surelink::{Connection, Message, RecvError};

/// Journal bytes of a pushed message besides the application's data
/// (record tag, channel, seq, cursor).
const PUSH_OVERHEAD: usize = 1 + 8 + 8 + 8;

/// One message for [`DurableSender::send_batch`].
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its channel (any but [`CONTROL_CHANNEL`]).
    pub channel: u64,
    /// Its bytes.
    pub data: Bytes,
    /// Where the application's input stands after this message.
    pub cursor: u64,
}

/// What [`DurableSender::attach`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Resumed {
    /// The receiver's watermark: per channel, the next id it expects.
    pub receiver_next: BTreeMap<u64, u64>,
    /// Messages released from the outbox because the watermark covers them.
    pub released: u64,
    /// Messages re-sent from the outbox.
    pub resent: u64,
    /// The receiver says the session is complete.
    pub complete: bool,
}

/// Counters of a [`DurableSender`] since it was opened.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SenderStats {
    /// New messages pushed and sent.
    pub messages_sent: u64,
    /// Messages re-sent from the outbox after an attach.
    pub messages_resent: u64,
    /// Messages released by the receiver's checkpoints or watermark.
    pub messages_confirmed: u64,
    /// CHECKPOINT messages received.
    pub checkpoints_received: u64,
    /// Connections attached.
    pub attaches: u64,
}

/// What the outbox journals, and so where re-sent messages come from.
#[derive(Debug)]
enum OutboxKind {
    /// A copy of each message: its cursor, then its bytes.
    Copies,
    /// A [`ReplayRef`] per message; the bytes are read again from `source`.
    Replay {
        source: Box<dyn ReplaySource>,
        /// The outbox's size as [`OutboxKind::Copies`] would count it: each
        /// message's length plus 8.
        bytes: usize,
    },
}

/// The size a message counts for in the outbox, whatever it holds.
fn counted_len(message_len: usize) -> usize {
    message_len + 8
}

/// The journal payload of a message in a replayable outbox; `Err` for a
/// message that cannot end at `cursor`.
fn replay_payload(cursor: u64, data: &[u8]) -> Result<Vec<u8>, SessionError> {
    let r = ReplayRef::of(cursor, data);
    if r.offset().is_none() {
        return Err(SessionError::BadCursor {
            cursor,
            len: data.len(),
        });
    }
    Ok(r.encode())
}

/// The size `e` of a replayable outbox counts for.
fn replay_counted_len(e: &OutboxEntry) -> usize {
    // Validated when opened or pushed.
    ReplayRef::decode(&e.payload).map_or(0, |r| counted_len(r.len as usize))
}

/// Peer liveness: the connection's received-packet count and when it last
/// changed.
#[derive(Debug)]
struct Liveness {
    packets: u64,
    since: Instant,
}

/// The sending side of a durable session. See the [crate]
/// docs and `docs/CHECKPOINTS.md`: open, `attach`, `send_batch`, `finish`.
#[derive(Debug)]
pub struct DurableSender<S: Storage + Send = FsStorage> {
    store: CheckpointStore<S>,
    options: SessionOptions,
    session_id: [u8; 16],
    resume_token: [u8; 32],
    meta: SenderMeta,
    outbox: OutboxKind,
    /// Channel → id of the next new message.
    next_id: BTreeMap<u64, u64>,
    conn: Option<Connection>,
    live: Liveness,
    /// A CHECKPOINT with `ended` arrived on the current connection.
    end_confirmed: bool,
    stats: SenderStats,
}

impl DurableSender<FsStorage> {
    /// [`open`](Self::open) with the journal in directory `dir` (created if
    /// missing).
    pub fn open_dir(
        dir: impl AsRef<Path>,
        label: &str,
        options: SessionOptions,
    ) -> Result<Self, SessionError> {
        let storage = super::open_state_dir(dir.as_ref())?;
        Self::open(storage, label, options)
    }

    /// [`open_with_source`](Self::open_with_source) with the journal in
    /// directory `dir` (created if missing).
    pub fn open_dir_with_source(
        dir: impl AsRef<Path>,
        label: &str,
        source: impl ReplaySource + 'static,
        options: SessionOptions,
    ) -> Result<Self, SessionError> {
        let storage = super::open_state_dir(dir.as_ref())?;
        Self::open_with_source(storage, label, source, options)
    }
}

impl<S: Storage + Send> DurableSender<S> {
    /// Opens the journal on `storage` and recovers the session, or starts a
    /// new one (random id and resume token, made durable at once).
    ///
    /// `label` describes what this session sends (e.g. the input file's
    /// path, size and modification time); resuming with another label is
    /// [`SessionError::LabelMismatch`].
    ///
    /// The outbox holds a copy of every unconfirmed message: for input
    /// that cannot be read twice. See
    /// [`open_with_source`](Self::open_with_source) for input that can.
    pub fn open(storage: S, label: &str, options: SessionOptions) -> Result<Self, SessionError> {
        Self::open_outbox(storage, label, None, options)
    }

    /// [`open`](Self::open) with a replayable outbox: the journal keeps
    /// where each unconfirmed message lies in `source` (each message's
    /// bytes are the source's bytes ending at its cursor), and re-sent
    /// messages are read again from it.
    ///
    /// The session records the source's identity when it starts; resuming
    /// it with a source whose identity differs is
    /// [`SessionError::SourceChanged`]. A session started without a source
    /// cannot be resumed with one, nor the reverse
    /// ([`SessionError::State`]).
    pub fn open_with_source(
        storage: S,
        label: &str,
        source: impl ReplaySource + 'static,
        options: SessionOptions,
    ) -> Result<Self, SessionError> {
        Self::open_outbox(storage, label, Some(Box::new(source)), options)
    }

    fn open_outbox(
        storage: S,
        label: &str,
        mut source: Option<Box<dyn ReplaySource>>,
        options: SessionOptions,
    ) -> Result<Self, SessionError> {
        let identity = match &mut source {
            Some(source) => Some(blocking(|| source.identity()).map_err(SessionError::SourceRead)?),
            None => None,
        };
        let journal_options = options.journal_options();
        let mut store = blocking(|| CheckpointStore::open(storage, journal_options))?;
        let (session_id, resume_token, meta) = match store.session() {
            Some(record) => match Meta::decode(&record.peer) {
                Ok(Meta::Sender(meta)) => (record.session_id, record.resume_token, meta),
                Ok(Meta::Receiver(_)) => {
                    return Err(SessionError::State(
                        "this state belongs to a receiver, not a sender".into(),
                    ))
                }
                Err(e) => return Err(SessionError::State(format!("bad session record: {e}"))),
            },
            None => {
                if store.outbox().channels().next().is_some() {
                    return Err(SessionError::State(
                        "the journal holds messages but no session".into(),
                    ));
                }
                let mut session_id = [0u8; 16];
                let mut resume_token = [0u8; 32];
                match options.seed {
                    Some(seed) => {
                        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
                        rng.fill_bytes(&mut session_id);
                        rng.fill_bytes(&mut resume_token);
                    }
                    None => {
                        rand::rngs::OsRng.fill_bytes(&mut session_id);
                        rand::rngs::OsRng.fill_bytes(&mut resume_token);
                    }
                }
                let meta = SenderMeta {
                    complete: false,
                    confirmed_cursor: 0,
                    label: label.as_bytes().to_vec(),
                    source: identity,
                };
                store.set_session(SessionRecord {
                    session_id,
                    resume_token,
                    peer: Meta::Sender(meta.clone()).encode(),
                })?;
                blocking(|| store.sync())?;
                tracing::debug!(session = %SessionId(session_id), "new session");
                (session_id, resume_token, meta)
            }
        };
        if meta.label != label.as_bytes() {
            return Err(SessionError::LabelMismatch {
                stored: String::from_utf8_lossy(&meta.label).into_owned(),
                requested: label.to_owned(),
                complete: meta.complete,
            });
        }
        let outbox = match (source.zip(identity), meta.source) {
            (None, None) => OutboxKind::Copies,
            (Some((source, current)), Some(stored)) => {
                if stored != current {
                    return Err(SessionError::SourceChanged { stored, current });
                }
                let mut bytes = 0;
                for e in store.outbox().pending() {
                    let r = ReplayRef::decode(&e.payload).map_err(SessionError::State)?;
                    bytes += counted_len(r.len as usize);
                }
                OutboxKind::Replay { source, bytes }
            }
            (None, Some(_)) => {
                return Err(SessionError::State(
                    "this session's outbox refers to its input: open it with the input to \
                     read again"
                        .into(),
                ))
            }
            (Some(_), None) => {
                return Err(SessionError::State(
                    "this session's outbox holds copies of its messages (it was started \
                     without a replayable input): open it without one"
                        .into(),
                ))
            }
        };
        let next_id = store
            .outbox()
            .channels()
            .filter_map(|c| Some((c, store.outbox().high_seq(c)? + 1)))
            .collect();
        Ok(DurableSender {
            store,
            options,
            session_id,
            resume_token,
            meta,
            outbox,
            next_id,
            conn: None,
            live: Liveness {
                packets: 0,
                since: crate::now(),
            },
            end_confirmed: false,
            stats: SenderStats::default(),
        })
    }

    /// The session's id.
    pub fn session_id(&self) -> SessionId {
        SessionId(self.session_id)
    }

    /// True once the receiver confirmed the END: nothing more to do.
    pub fn is_complete(&self) -> bool {
        self.meta.complete
    }

    /// Where the application's input stands: the highest cursor of any
    /// message ever queued in this session (0 if none). Continue reading
    /// the input from here after a restart.
    pub fn resume_cursor(&self) -> u64 {
        self.store
            .outbox()
            .pending()
            .map(|e| payload_cursor(&e.payload))
            .fold(self.meta.confirmed_cursor, u64::max)
    }

    /// The id the next new message on `channel` gets.
    pub fn next_id(&self, channel: u64) -> u64 {
        self.next_id.get(&channel).copied().unwrap_or(0)
    }

    /// Messages in the outbox (sent or not, not yet confirmed).
    pub fn unconfirmed(&self) -> usize {
        self.store.outbox().len()
    }

    /// Bytes of the messages in the outbox (each counted with 8 more for
    /// its cursor), whether it holds copies or references.
    pub fn unconfirmed_bytes(&self) -> usize {
        match &self.outbox {
            OutboxKind::Copies => self.store.outbox().bytes(),
            OutboxKind::Replay { bytes, .. } => *bytes,
        }
    }

    /// True if the outbox refers to a [`ReplaySource`] rather than holding
    /// copies of the messages.
    pub fn replays_from_source(&self) -> bool {
        matches!(self.outbox, OutboxKind::Replay { .. })
    }

    /// The attached connection.
    pub fn connection(&self) -> Option<&Connection> {
        self.conn.as_ref()
    }

    /// Counters since [`open`](Self::open).
    pub fn stats(&self) -> SenderStats {
        self.stats.clone()
    }

    /// The journal's counters (commits, fsyncs, bytes, compactions).
    pub fn journal_metrics(&self) -> JournalMetrics {
        self.store.metrics()
    }

    /// Attaches a connection: sends HELLO, waits for the receiver's
    /// WATERMARK (or REFUSE), releases what the watermark covers and re-sends
    /// the rest of the outbox. A previously attached connection is aborted.
    pub async fn attach(&mut self, conn: Connection) -> Result<Resumed, SessionError> {
        if let Some(old) = self.conn.take() {
            if !old.is_closed() {
                old.abort("replaced by a new connection");
            }
        }
        self.conn = Some(conn.clone());
        self.live = Liveness {
            packets: conn.stats().packets_received,
            since: crate::now(),
        };
        self.end_confirmed = false;
        self.stats.attaches += 1;
        let result = self.handshake(&conn).await;
        if let Err(e) = &result {
            if !e.is_connection() {
                conn.abort(&e.to_string());
            }
            self.conn = None;
        }
        result
    }

    fn hello(&self) -> Hello {
        let channels = self
            .next_id
            .iter()
            .map(|(&channel, &next)| ChannelResume {
                channel,
                first_pending: self.first_pending(channel),
                next,
            })
            .collect();
        Hello {
            session_id: SessionId(self.session_id),
            resume_token: self.resume_token,
            channels,
        }
    }

    /// The lowest id of `channel` not confirmed by the receiver.
    fn first_pending(&self, channel: u64) -> u64 {
        self.store
            .outbox()
            .pending_on(channel)
            .next()
            .map_or(self.next_id(channel), |e| e.seq)
    }

    async fn handshake(&mut self, conn: &Connection) -> Result<Resumed, SessionError> {
        send_control(conn, &Control::Hello(self.hello())).await?;
        let deadline = crate::now() + self.options.handshake_timeout;
        let progress = loop {
            let received = tokio::select! {
                biased;
                m = conn.recv_message() => m,
                () = tokio::time::sleep(MAINTENANCE_INTERVAL) => {
                    self.maintain(conn)?;
                    if crate::now() >= deadline {
                        conn.abort("no answer to HELLO");
                        return Err(SessionError::HandshakeTimeout(self.options.handshake_timeout));
                    }
                    continue;
                }
            };
            let m = control_message(received)?;
            match Control::decode(&m.data)? {
                Control::Watermark(p) => break p,
                Control::Refuse(reason) => return Err(SessionError::RefusedByPeer(reason)),
                other => {
                    return Err(SessionError::Protocol(format!(
                        "expected WATERMARK in answer to HELLO, got {}",
                        other.name()
                    )))
                }
            }
        };
        self.check_watermark(&progress)?;
        let before = self.stats.messages_confirmed;
        // No compaction here: it would hold up the re-sending below; the
        // next CHECKPOINT compacts.
        self.apply_progress(&progress, false)?;
        let released = self.stats.messages_confirmed - before;
        if progress.ended {
            self.mark_complete()?;
            return Ok(Resumed {
                receiver_next: progress.next,
                released,
                resent: 0,
                complete: true,
            });
        }
        // Everything still in the outbox is at or above the watermark:
        // re-send it in the order it was first queued.
        let resend = self.outbox_messages()?;
        let resent = resend.len() as u64;
        for (channel, msgs) in channel_runs(resend) {
            let count = msgs.len() as u64;
            self.send_wire(conn, channel, msgs).await?;
            self.stats.messages_resent += count;
        }
        Ok(Resumed {
            receiver_next: progress.next,
            released,
            resent,
            complete: false,
        })
    }

    /// The outbox's messages as data messages, in the order they were
    /// first queued: copied from the journal, or read again from the
    /// source after checking it is still the session's.
    fn outbox_messages(&mut self) -> Result<Vec<(u64, Bytes)>, SessionError> {
        let pending = self.store.outbox().pending();
        let OutboxKind::Replay { source, .. } = &mut self.outbox else {
            return Ok(pending
                .map(|e| {
                    let data = e.payload.get(8..).unwrap_or_default();
                    (e.channel, wire::data_message(e.seq, data))
                })
                .collect());
        };
        let stored = self.meta.source;
        blocking(|| {
            let mut pending = pending.peekable();
            if pending.peek().is_none() {
                return Ok(Vec::new());
            }
            let current = source.identity().map_err(SessionError::SourceRead)?;
            if let Some(stored) = stored.filter(|s| *s != current) {
                return Err(SessionError::SourceChanged { stored, current });
            }
            pending
                .map(|e| {
                    let r = ReplayRef::decode(&e.payload).map_err(SessionError::State)?;
                    let offset = r.offset().expect("checked by decode");
                    let data = source
                        .read_at(offset, r.len as usize)
                        .map_err(SessionError::SourceRead)?;
                    if crc32c::crc32c(&data) != r.crc {
                        return Err(SessionError::SourceBytesChanged { offset, len: r.len });
                    }
                    Ok((e.channel, wire::data_message(e.seq, &data)))
                })
                .collect()
        })
    }

    /// Checks the receiver's watermark against the outbox.
    fn check_watermark(&self, progress: &Progress) -> Result<(), SessionError> {
        let channels: std::collections::BTreeSet<u64> = self
            .next_id
            .keys()
            .chain(progress.next.keys())
            .copied()
            .collect();
        for channel in channels {
            let expects = progress.next.get(&channel).copied().unwrap_or(0);
            let oldest = self.first_pending(channel);
            let next = self.next_id(channel);
            if expects < oldest {
                return Err(SessionError::Mismatch(ResumeMismatch::ReceiverLostState {
                    channel,
                    expects,
                    oldest_unconfirmed: oldest,
                }));
            }
            if expects > next {
                return Err(SessionError::Mismatch(ResumeMismatch::SenderLostState {
                    channel,
                    delivered: expects,
                    sender_next: next,
                }));
            }
            if progress.ended && expects != next {
                return Err(SessionError::Protocol(format!(
                    "the receiver ended the session at message {expects} of channel {channel}, \
                     but the sender has messages up to {next}"
                )));
            }
        }
        Ok(())
    }

    /// Releases every message below the receiver's `progress`: first the
    /// session record with the new confirmed cursor, then the confirmations
    /// (so a log that kept a confirmation also kept the cursor). Compacts
    /// the journal afterwards if `compact` and it is worth it.
    fn apply_progress(&mut self, progress: &Progress, compact: bool) -> Result<(), SessionError> {
        let mut cursor = self.meta.confirmed_cursor;
        for (&channel, &next) in &progress.next {
            if next > self.next_id(channel) {
                return Err(SessionError::Protocol(format!(
                    "the receiver confirmed message {} of channel {channel}, which was never sent",
                    next - 1
                )));
            }
            for e in self
                .store
                .outbox()
                .pending_on(channel)
                .take_while(|e| e.seq < next)
            {
                cursor = cursor.max(payload_cursor(&e.payload));
                if let OutboxKind::Replay { bytes, .. } = &mut self.outbox {
                    *bytes = bytes.saturating_sub(replay_counted_len(e));
                }
            }
        }
        if cursor > self.meta.confirmed_cursor {
            self.meta.confirmed_cursor = cursor;
            self.write_record()?;
        }
        for (&channel, &next) in &progress.next {
            if next > 0 {
                let released = self.store.confirm(channel, next - 1)?;
                self.stats.messages_confirmed += released as u64;
            }
        }
        if compact && self.store.journal().should_compact() {
            let store = &mut self.store;
            blocking(|| store.compact())?;
        }
        Ok(())
    }

    fn write_record(&mut self) -> Result<(), SessionError> {
        self.store.set_session(SessionRecord {
            session_id: self.session_id,
            resume_token: self.resume_token,
            peer: Meta::Sender(self.meta.clone()).encode(),
        })?;
        Ok(())
    }

    fn mark_complete(&mut self) -> Result<(), SessionError> {
        if !self.meta.complete {
            self.meta.complete = true;
            self.write_record()?;
        }
        let store = &mut self.store;
        blocking(|| store.sync())?;
        Ok(())
    }

    /// Sends one message: see [`send_batch`](Self::send_batch). Returns its id.
    pub async fn send(
        &mut self,
        channel: u64,
        data: Bytes,
        cursor: u64,
    ) -> Result<u64, SessionError> {
        let id = self.next_id(channel);
        self.send_batch(vec![Outgoing {
            channel,
            data,
            cursor,
        }])
        .await?;
        Ok(id)
    }

    /// Queues messages: waits while the outbox is over
    /// [`SessionOptions::max_unconfirmed_bytes`], gives each message the
    /// next id of its channel, pushes them all to the journal and commits
    /// once (group commit), then sends them. Returns once they are handed to
    /// the connection.
    ///
    /// The batch is queued all at once or not at all: an error while
    /// waiting for the outbox to drain queues nothing; once queued, the
    /// messages belong to the outbox, and if the connection fails while they
    /// are sent, attaching a new connection re-sends them. After any error,
    /// [`resume_cursor`](Self::resume_cursor) says where the input stands:
    /// continue reading from there, never from a position of your own.
    pub async fn send_batch(&mut self, batch: Vec<Outgoing>) -> Result<(), SessionError> {
        if self.meta.complete {
            return Err(SessionError::Complete);
        }
        let conn = self.conn.clone().ok_or(SessionError::NotAttached)?;
        let max = self.options.journal.max_record_len as usize - PUSH_OVERHEAD;
        let mut bytes = 0;
        for item in &batch {
            if item.channel >= CONTROL_CHANNEL {
                return Err(SessionError::ReservedChannel(item.channel));
            }
            if item.data.len() > max {
                return Err(SessionError::TooLarge {
                    size: item.data.len(),
                    max,
                });
            }
            bytes += counted_len(item.data.len());
        }
        while !self.store.outbox().is_empty()
            && self.unconfirmed_bytes() + bytes > self.options.max_unconfirmed_bytes
        {
            self.next_control(&conn).await?;
        }
        let store = &mut self.store;
        let next_id = &mut self.next_id;
        let outbox = &mut self.outbox;
        let wire = blocking(|| -> Result<Vec<(u64, Bytes)>, SessionError> {
            let mut wire = Vec::with_capacity(batch.len());
            for item in &batch {
                let id = next_id.entry(item.channel).or_insert(0);
                let payload = match outbox {
                    // Moved into the outbox: one copy of the bytes there,
                    // one into the journal's buffer, one for the wire.
                    OutboxKind::Copies => {
                        let mut payload = Vec::with_capacity(8 + item.data.len());
                        payload.extend_from_slice(&item.cursor.to_le_bytes());
                        payload.extend_from_slice(&item.data);
                        payload
                    }
                    OutboxKind::Replay { bytes, .. } => {
                        let payload = replay_payload(item.cursor, &item.data)?;
                        *bytes += counted_len(item.data.len());
                        payload
                    }
                };
                store.push(item.channel, *id, payload)?;
                wire.push((item.channel, wire::data_message(*id, &item.data)));
                *id += 1;
            }
            store.commit()?;
            let now = crate::now();
            if store.journal().next_sync_at(now).is_some_and(|t| t <= now) {
                store.tick(now)?;
            }
            Ok(wire)
        })?;
        for (channel, msgs) in channel_runs(wire) {
            let count = msgs.len() as u64;
            self.send_wire(&conn, channel, msgs).await?;
            self.stats.messages_sent += count;
        }
        Ok(())
    }

    /// Ends the session: sends END, waits for the receiver's final
    /// CHECKPOINT, marks the session complete in the journal (fsynced), and
    /// closes the connection gracefully (bounded by
    /// [`SessionOptions::close_timeout`]).
    pub async fn finish(&mut self) -> Result<(), SessionError> {
        let conn = self.conn.clone().ok_or(SessionError::NotAttached)?;
        if !self.meta.complete {
            let end = Control::End(self.next_id.clone()).encode();
            self.send_wire(&conn, CONTROL_CHANNEL, vec![end]).await?;
            while !self.end_confirmed {
                self.next_control(&conn).await?;
            }
            self.mark_complete()?;
        }
        match tokio::time::timeout(self.options.close_timeout, conn.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "close after the session completed"),
            Err(_) => tracing::debug!("close after the session completed timed out"),
        }
        self.conn = None;
        Ok(())
    }

    /// Sends messages of one channel on the connection in one batch
    /// ([`Connection::send_many`]: queued together, small ones travel in
    /// MSG_BUNDLE frames), handling the receiver's control messages and
    /// checking liveness while the send buffer is full.
    async fn send_wire(
        &mut self,
        conn: &Connection,
        channel: u64,
        msgs: Vec<Bytes>,
    ) -> Result<(), SessionError> {
        // Queuing messages rarely waits, so a burst (batches, a re-sent
        // outbox) would otherwise keep this worker thread from the tasks that
        // move the data (the driver, a receiver in the same process).
        tokio::task::yield_now().await;
        // Polled to its end across control messages: dropping it half-way
        // would leave unknown how much of the batch was queued.
        let send = conn.send_many(channel, msgs);
        tokio::pin!(send);
        loop {
            tokio::select! {
                biased;
                m = conn.recv_message() => self.on_message(m)?,
                sent = &mut send => {
                    sent?;
                    return Ok(());
                }
                () = tokio::time::sleep(MAINTENANCE_INTERVAL) => self.maintain(conn)?,
            }
        }
    }

    /// Waits for the next control message (or a liveness failure).
    async fn next_control(&mut self, conn: &Connection) -> Result<(), SessionError> {
        loop {
            tokio::select! {
                biased;
                m = conn.recv_message() => return self.on_message(m),
                () = tokio::time::sleep(MAINTENANCE_INTERVAL) => self.maintain(conn)?,
            }
        }
    }

    fn on_message(
        &mut self,
        received: Result<Option<Message>, RecvError>,
    ) -> Result<(), SessionError> {
        let m = control_message(received)?;
        match Control::decode(&m.data)? {
            Control::Checkpoint(p) => {
                self.stats.checkpoints_received += 1;
                self.apply_progress(&p, true)?;
                if p.ended {
                    self.end_confirmed = true;
                }
                Ok(())
            }
            Control::Refuse(reason) => Err(SessionError::RefusedByPeer(reason)),
            other => Err(SessionError::Protocol(format!(
                "unexpected {} from the receiver",
                other.name()
            ))),
        }
    }

    /// Liveness and the journal's interval fsync.
    fn maintain(&mut self, conn: &Connection) -> Result<(), SessionError> {
        let now = crate::now();
        if self
            .store
            .journal()
            .next_sync_at(now)
            .is_some_and(|t| t <= now)
        {
            let store = &mut self.store;
            blocking(|| store.tick(now))?;
        }
        let packets = conn.stats().packets_received;
        if packets != self.live.packets {
            self.live = Liveness {
                packets,
                since: now,
            };
        } else if now.saturating_duration_since(self.live.since) >= self.options.peer_timeout {
            conn.abort("no packet from the peer");
            return Err(SessionError::PeerUnresponsive(self.options.peer_timeout));
        }
        Ok(())
    }
}

/// `messages` cut into runs of consecutive messages of one channel, in
/// order: each run is queued with one [`Connection::send_many`].
fn channel_runs(messages: Vec<(u64, Bytes)>) -> Vec<(u64, Vec<Bytes>)> {
    let mut runs: Vec<(u64, Vec<Bytes>)> = Vec::new();
    for (channel, msg) in messages {
        match runs.last_mut() {
            Some((c, run)) if *c == channel => run.push(msg),
            _ => runs.push((channel, vec![msg])),
        }
    }
    runs
}

/// A received message that must be a control message.
fn control_message(received: Result<Option<Message>, RecvError>) -> Result<Message, SessionError> {
    match received {
        Ok(Some(m)) if m.channel == CONTROL_CHANNEL => Ok(m),
        Ok(Some(m)) => Err(SessionError::Protocol(format!(
            "the receiver sent data on channel {}",
            m.channel
        ))),
        Ok(None) => Err(SessionError::ConnectionClosed),
        Err(e) => Err(e.into()),
    }
}

/// The cursor in front of an outbox payload.
fn payload_cursor(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .map_or(0, |c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
}
