//! The errors of the runtime's operations, one enum per operation.
//!
//! Each names what went wrong in terms of the operation; when the cause is the
//! connection ending, the core's [`ConnectionError`] is carried along.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::{ConfigError, ConnectionError};

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The UDP socket could not be created or bound.
    #[error("cannot bind UDP socket to {addr}: {source}")]
    Io {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The endpoint was created outside a tokio runtime.
    #[error("surelink endpoints must be created inside a tokio runtime")]
    NoRuntime,
}

/// Why [`Endpoint::connect`](crate::Endpoint::connect) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The peer did not complete the handshake within the connect timeout.
    #[error("no answer from {remote} within {}", crate::util::display_duration(*.after))]
    TimedOut {
        /// The address that was dialled.
        remote: SocketAddr,
        /// The connect timeout that expired.
        after: Duration,
    },
    /// The connection ended during the handshake.
    #[error("connection to {remote} failed during the handshake: {error}")]
    Failed {
        /// The address that was dialled.
        remote: SocketAddr,
        /// Why it ended.
        error: ConnectionError,
    },
    /// The endpoint's driver is gone (its runtime shut down).
    #[error("the endpoint is closed")]
    EndpointClosed,
}

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message exceeds the largest message size both sides accept.
    #[error("message of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// [`Connection::close`](crate::Connection::close) was called; no more messages are accepted.
    #[error("the connection is closing")]
    Closing,
    /// The connection was closed gracefully (by either side).
    #[error("the connection is closed")]
    Closed,
    /// The connection ended with an error (its text is the error's own: the
    /// cause is not repeated).
    #[error("{0}")]
    ConnectionLost(ConnectionError),
    /// The endpoint's driver is gone (its runtime shut down).
    #[error("the endpoint is closed")]
    EndpointClosed,
}

/// Why a message could not be received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The connection ended with an error; every message that had arrived complete
    /// was delivered before this is returned. Its text is the error's own.
    #[error("{0}")]
    ConnectionLost(ConnectionError),
    /// The endpoint's driver is gone (its runtime shut down).
    #[error("the endpoint is closed")]
    EndpointClosed,
}

/// Why [`Connection::close`](crate::Connection::close) did not complete gracefully.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// The connection ended with an error before everything was acknowledged.
    #[error("the close did not complete: {0}")]
    ConnectionLost(ConnectionError),
    /// The peer closed the connection while messages of ours were still unacknowledged.
    #[error("the peer closed the connection with {unacked} of our messages unacknowledged")]
    Unacknowledged {
        /// Messages sent but never acknowledged.
        unacked: u64,
    },
    /// The endpoint's driver is gone (its runtime shut down).
    #[error("the endpoint is closed")]
    EndpointClosed,
}
