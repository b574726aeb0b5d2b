//! surelink-session: durable sessions, checkpoints and crash recovery on
//! top of a [`Connection`](surelink::Connection) of the `surelink` runtime.
//!
//! A session outlives connections and processes. The sender keeps every
//! message in a journal (its *outbox*, a
//! [`CheckpointStore`](surelink_journal::CheckpointStore)) until the receiver
//! confirms it has *checkpointed* it; the receiver keeps, in its own journal,
//! the next message id it expects on each channel (its *watermark*) together
//! with the position of its output ([`DurableSink`]). After `kill -9` of
//! either side, or both, reopening the journals and connecting again resumes
//! the session: nothing lost, nothing delivered twice.
//!
//! The outbox copies each message into the journal, for input that cannot
//! be read twice (stdin, a socket). A sender whose input can be read again
//! (a file) opens it with a [`ReplaySource`] instead
//! ([`DurableSender::open_with_source`]): the journal then keeps only where
//! each unconfirmed message lies in the input, and re-sent messages are
//! read from it again, after checking it did not change ([`replay`]).
//!
//! The protocol runs over an established connection, on the reserved
//! channel [`CONTROL_CHANNEL`] (message formats in [`mod@wire`] and
//! `docs/CHECKPOINTS.md`):
//!
//! 1. the sender sends HELLO {session id, resume token, per channel: oldest
//!    unconfirmed id and next id};
//! 2. the receiver checks it against its journal and answers WATERMARK
//!    {per channel: next expected id} or REFUSE {reason} (a wrong token, a
//!    state lost on either side, another session in progress);
//! 3. the sender releases what the watermark covers and re-sends the rest of
//!    its outbox, then new messages. Each data message starts with its id
//!    (8 bytes); the receiver drops ids below its watermark;
//! 4. the receiver checkpoints (sink flushed / synced, then one journal
//!    record with watermarks and sink position) at most every
//!    [`SessionOptions::checkpoint_interval`] and answers CHECKPOINT
//!    {per channel: next expected id}; the sender then drops those messages
//!    from its outbox;
//! 5. after its last message the sender sends END {messages per channel};
//!    the receiver checkpoints the end and confirms with a final CHECKPOINT,
//!    and the session is complete on both sides.
//!
//! ```no_run
//! use surelink_session::{DurableReceiver, DurableSender, FileSink, SessionOptions};
//! use surelink::{Bytes, Endpoint, EndpointConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Receiver: one session into out.bin, state in ./rx-state; `run` accepts
//! // senders (a restarted one takes over) until the session is complete.
//! let server = Endpoint::bind("127.0.0.1:7000".parse()?, EndpointConfig::default())?;
//! let mut rx = DurableReceiver::open_dir("rx-state", FileSink::open("out.bin")?, SessionOptions::default())?;
//! tokio::spawn(async move { rx.run(&server, |event| eprintln!("{event:?}")).await });
//!
//! // Sender: state in ./tx-state. The cursor says where the input stands
//! // after each message; after a restart, continue from `resume_cursor()`.
//! let mut tx = DurableSender::open_dir("tx-state", "my input", SessionOptions::default())?;
//! if !tx.is_complete() {
//!     let client = Endpoint::client("0.0.0.0:0".parse()?)?;
//!     tx.attach(client.connect("127.0.0.1:7000".parse()?).await?).await?;
//!     if tx.resume_cursor() < 5 {
//!         tx.send(0, Bytes::from_static(b"hello"), 5).await?;
//!     }
//!     tx.finish().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! Every policy of [`Durability`] survives a process crash: a record is
//! handed to the OS before anything depends on it. The policy decides what
//! survives a power loss.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod receiver;
mod record;
pub mod replay;
mod secret;
mod sender;
mod sink;
mod store;
pub mod wire;

use std::time::Duration;

pub use error::{ResumeMismatch, SessionError};
pub use receiver::{
    read_hello, Accepted, DurableReceiver, ReceiverEvent, ReceiverStats, ReceiverStatsReader,
};
pub use replay::{FileSource, ReplaySource, SourceIdentity};
pub use secret::{reset_secret, RESET_SECRET_FILE};
pub use sender::{DurableSender, Outgoing, Resumed, SenderStats};
pub use sink::{AppendFile, Delivery, DurableSink, FileSink};
pub use store::{JournalStore, ReceiverStore};
pub use surelink_journal::{
    Durability, FsStorage, JournalError, JournalMetrics, JournalOptions, MemStorage, SessionRecord,
    Storage,
};
pub use wire::{
    ChannelResume, Hello, Progress, SessionId, CONTROL_CHANNEL, DATA_HEADER_LEN,
    SESSION_PROTOCOL_VERSION,
};

/// Settings of a durable session (both sides; each uses what concerns it).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionOptions {
    /// When journal records (and, on the receiver, the sink) are fsynced.
    /// Every policy survives a process crash; this decides what a power loss
    /// may take back. Default: [`Durability::Interval`] of 50 ms.
    pub durability: Durability,
    /// Receiver: the longest a delivered message waits before it is
    /// checkpointed and confirmed (the checkpoint interval C). Default 20 ms.
    pub checkpoint_interval: Duration,
    /// Sender: most payload bytes held in the outbox unconfirmed; `send`
    /// waits for CHECKPOINTs beyond it. Default 32 MiB.
    pub max_unconfirmed_bytes: usize,
    /// Sender: give the connection up when no packet at all arrived for this
    /// long (heartbeats arrive every 20 ms from a live peer). Default 1 s.
    pub peer_timeout: Duration,
    /// Longest wait for HELLO's answer (sender) or for HELLO itself
    /// ([`read_hello`]). Default 10 s.
    pub handshake_timeout: Duration,
    /// Sender: longest wait for the graceful close after the session
    /// completed. Default 5 s.
    pub close_timeout: Duration,
    /// Receiver, [`DurableReceiver::run`]: how long to wait for the sender
    /// to come back when the session is complete but the sender may not
    /// know it yet (the connection was lost after the final CHECKPOINT, or
    /// the receiver restarted after completing). Default 10 s.
    ///
    /// Keep it well above the sender's [`peer_timeout`](Self::peer_timeout)
    /// plus a connection handshake: a sender still attached to a receiver
    /// that crashed needs that long to notice and reach the restarted one,
    /// and a receiver that gives up first leaves it retrying for ever.
    pub linger: Duration,
    /// Journal settings other than the durability (segment size, compaction
    /// threshold); `durability` above overrides the one in here.
    pub journal: JournalOptions,
    /// Sender: where a new session's id and resume token come from: `None`
    /// (the default) for the operating system's randomness, `Some(seed)` for
    /// a seeded generator — for reproducible simulations
    /// ([`sim`](surelink::sim)) only, since the token is what keeps another
    /// sender from taking the session over.
    pub seed: Option<u64>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            durability: Durability::Interval(Duration::from_millis(50)),
            checkpoint_interval: Duration::from_millis(20),
            max_unconfirmed_bytes: 32 << 20,
            peer_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(10),
            journal: JournalOptions {
                // A record holds one whole message plus its headers.
                max_record_len: (16 << 20) + 64,
                ..JournalOptions::default()
            },
            seed: None,
        }
    }
}

impl SessionOptions {
    /// These options with another durability policy.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// These options with another checkpoint interval.
    pub fn with_checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// These options with another peer timeout.
    pub fn with_peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = timeout;
        self
    }

    /// These options with another outbox limit.
    pub fn with_max_unconfirmed_bytes(mut self, bytes: usize) -> Self {
        self.max_unconfirmed_bytes = bytes;
        self
    }

    /// These options with another linger time.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// These options with a seeded session id and token (see
    /// [`seed`](Self::seed)).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    pub(crate) fn journal_options(&self) -> JournalOptions {
        JournalOptions {
            durability: self.durability,
            ..self.journal.clone()
        }
    }
}

/// How often a waiting sender checks the peer's liveness and the journal's
/// interval fsync.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(25);

/// The session's clock: the runtime's (tokio's), as a std instant, so that
/// a session on a paused tokio clock (tests, the [`sim`](surelink::sim)
/// network) runs on virtual time like the connections under it. Outside a
/// runtime it is the system's monotonic clock.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs blocking storage work (writes, fsyncs, compaction) without stalling
/// the other tasks of a multi-threaded runtime; inline elsewhere.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Sends a control message.
async fn send_control(
    conn: &surelink::Connection,
    msg: &wire::Control,
) -> Result<(), SessionError> {
    conn.send_on(CONTROL_CHANNEL, msg.encode()).await?;
    Ok(())
}

#[cfg(test)]
mod tests;

/// What [`remove_state_dir`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemovedState {
    /// Files removed (journal segments, compaction temporaries, the reset secret).
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Whether the directory itself was removed (nothing else was in it).
    pub dir_removed: bool,
}

/// Removes a finished session's state from `dir`: the journal's segment
/// files and compaction temporaries, the [reset secret](RESET_SECRET_FILE),
/// then `dir` itself if nothing else is left in it. Files it does not know
/// are left alone. Close the [`DurableSender`] or [`DurableReceiver`] using
/// `dir` first.
pub fn remove_state_dir(dir: &std::path::Path) -> std::io::Result<RemovedState> {
    use surelink_journal::format::parse_segment_name;
    let mut removed = RemovedState::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name == RESET_SECRET_FILE
            || parse_segment_name(name).is_some()
            || name
                .strip_suffix(".tmp")
                .and_then(parse_segment_name)
                .is_some();
        if !ours {
            continue;
        }
        let len = entry.metadata()?.len();
        std::fs::remove_file(entry.path())?;
        removed.files += 1;
        removed.bytes += len;
    }
    removed.dir_removed = std::fs::remove_dir(dir).is_ok();
    Ok(removed)
}

/// The journal storage in directory `dir` (created if missing), or a clear
/// error naming it.
fn open_state_dir(dir: &std::path::Path) -> Result<FsStorage, SessionError> {
    FsStorage::open(dir).map_err(|e| {
        SessionError::State(format!(
            "cannot open state directory {}: {e}",
            dir.display()
        ))
    })
}
