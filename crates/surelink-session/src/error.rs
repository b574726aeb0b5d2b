//! [`SessionError`] and [`ResumeMismatch`]: why a durable session could not
//! go on.

use std::io;
use std::time::Duration;

use surelink_journal::JournalError;

use super::replay::SourceIdentity;
use super::wire::{SessionId, WireError};
use surelink::ConnectionError;

/// The two sides' durable states do not fit together: resuming would lose
/// or repeat messages, so the session is refused instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeMismatch {
    /// The receiver has fewer messages checkpointed than the sender already
    /// released (its state directory was removed, or lost writes in a power
    /// failure with a durability other than `always`).
    #[error(
        "receiver lost its state: it expects message {expects} on channel {channel} \
         but the sender's oldest unconfirmed message is {oldest_unconfirmed}"
    )]
    ReceiverLostState {
        /// The channel.
        channel: u64,
        /// The next id the receiver expects.
        expects: u64,
        /// The lowest id the sender still holds.
        oldest_unconfirmed: u64,
    },
    /// The receiver has checkpointed messages the sender's journal does not
    /// know (the sender's state lost writes in a power failure).
    #[error(
        "sender lost its state: the receiver already checkpointed {delivered} messages \
         on channel {channel} but the sender's journal only knows messages below {sender_next}"
    )]
    SenderLostState {
        /// The channel.
        channel: u64,
        /// Messages the receiver checkpointed.
        delivered: u64,
        /// The sender's next id.
        sender_next: u64,
    },
    /// The receiver is in the middle of another session: a sender that lost
    /// its state directory comes back with a new session.
    #[error(
        "the receiver is in the middle of session {current} ({delivered} messages \
         checkpointed) and refuses the new session {offered}: if the sender lost its \
         state, restart it with its original state directory, or clear the receiver's \
         state to start over"
    )]
    OtherSessionInProgress {
        /// The receiver's unfinished session.
        current: SessionId,
        /// Messages it checkpointed.
        delivered: u64,
        /// The session the sender offered.
        offered: SessionId,
    },
    /// The sender knows the session id but not its resume token.
    #[error("wrong resume token for session {session}: this sender did not start it")]
    TokenMismatch {
        /// The session.
        session: SessionId,
    },
}

/// Why a durable session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The checkpoint journal failed (I/O, full disk, corruption).
    #[error("checkpoint journal: {0}")]
    Journal(#[from] JournalError),
    /// The receiver's sink (its output) failed.
    #[error("{what}: {source}")]
    Sink {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The state directory holds something this side cannot use.
    #[error("state: {0}")]
    State(String),
    /// The state belongs to a session sending other input.
    #[error(
        "the state belongs to {state} session sending {stored:?}, not {requested:?}: \
         {advice}",
        state = if *complete { "a completed" } else { "an unfinished" },
        advice = if *complete {
            "remove the state directory to send something else"
        } else {
            "finish it with the same input, or remove the state directory"
        }
    )]
    LabelMismatch {
        /// The label in the journal.
        stored: String,
        /// The label asked for.
        requested: String,
        /// Whether the stored session is complete.
        complete: bool,
    },
    /// The two sides' states do not fit together (detected on this side).
    #[error("{0}")]
    Mismatch(ResumeMismatch),
    /// The receiver refused the session; its reason.
    #[error("the receiver refused the session: {0}")]
    RefusedByPeer(String),
    /// The peer did not start a session: it runs without durable state.
    #[error("{0}")]
    NotASession(String),
    /// The peer broke the session protocol.
    #[error("session protocol violation: {0}")]
    Protocol(String),
    /// A control message did not decode.
    #[error("malformed session message: {0}")]
    Wire(#[from] WireError),
    /// No answer to HELLO in time.
    #[error("the receiver did not answer the session handshake within {0:?} (does it run with durable state?)")]
    HandshakeTimeout(Duration),
    /// Nothing was heard from the peer for this long; the connection was
    /// aborted.
    #[error("no packet from the peer for {0:?}: connection given up")]
    PeerUnresponsive(Duration),
    /// The connection ended with an error.
    #[error("{0}")]
    ConnectionLost(ConnectionError),
    /// The peer closed the connection before the session completed.
    #[error("the peer closed the connection before the session completed")]
    ConnectionClosed,
    /// The endpoint's driver is gone.
    #[error("the endpoint is closed")]
    EndpointClosed,
    /// No connection is attached.
    #[error("no connection is attached")]
    NotAttached,
    /// The session is complete: nothing more can be sent.
    #[error("the session is complete")]
    Complete,
    /// A message does not fit.
    #[error("message of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// This receiver no longer owns its shared checkpoint store (its lease
    /// expired, or another receiver of its group took over): it writes and
    /// confirms nothing more.
    #[error("deposed: {0}")]
    Deposed(String),
    /// The replayable input could not be read (again).
    #[error("cannot read the input: {0}")]
    SourceRead(#[source] io::Error),
    /// The replayable input is not what the session started with: nothing
    /// was sent from it.
    #[error(
        "the input changed since the session started (then {stored}; now {current}): \
         restore it to finish the session, or remove both sides' state directories to \
         start over"
    )]
    SourceChanged {
        /// Its identity when the session started.
        stored: SourceIdentity,
        /// Its identity now.
        current: SourceIdentity,
    },
    /// Bytes of the replayable input read again differ from the message
    /// once sent from there: nothing was sent from them.
    #[error(
        "the input's {len} bytes at offset {offset} differ from the message once sent \
         from there: the input changed since the session started; restore it to finish \
         the session, or remove both sides' state directories to start over"
    )]
    SourceBytesChanged {
        /// Where the message starts in the input.
        offset: u64,
        /// Its length.
        len: u32,
    },
    /// With a replayable input, a message must be the input's bytes ending
    /// at its cursor: this one is longer than the input before its cursor.
    #[error("a message of {len} bytes cannot end at input offset {cursor}")]
    BadCursor {
        /// The message's cursor.
        cursor: u64,
        /// Its length.
        len: usize,
    },
    /// A channel number that is reserved or out of range.
    #[error("channel {0} is reserved for the session protocol")]
    ReservedChannel(u64),
}

impl SessionError {
    /// True for failures of the connection (lost, closed, silent peer, no
    /// answer to the handshake): a new connection can resume the session.
    /// False for refusals, state mismatches, protocol violations and local
    /// storage failures.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            SessionError::ConnectionLost(_)
                | SessionError::ConnectionClosed
                | SessionError::PeerUnresponsive(_)
                | SessionError::HandshakeTimeout(_)
        )
    }

    pub(crate) fn sink(what: impl Into<String>, source: io::Error) -> Self {
        SessionError::Sink {
            what: what.into(),
            source,
        }
    }
}

impl From<surelink::SendError> for SessionError {
    fn from(e: surelink::SendError) -> Self {
        match e {
            surelink::SendError::TooLarge { size, max } => SessionError::TooLarge { size, max },
            surelink::SendError::ConnectionLost(e) => SessionError::ConnectionLost(e),
            surelink::SendError::Closing | surelink::SendError::Closed => {
                SessionError::ConnectionClosed
            }
            _ => SessionError::EndpointClosed,
        }
    }
}

impl From<surelink::RecvError> for SessionError {
    fn from(e: surelink::RecvError) -> Self {
        match e {
            surelink::RecvError::ConnectionLost(e) => SessionError::ConnectionLost(e),
            _ => SessionError::EndpointClosed,
        }
    }
}
