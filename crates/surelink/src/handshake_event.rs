//! [`HandshakeEvent`]: what became of each connection attempt on an accepting
//! endpoint, for logs and audits.
//!
//! [`Endpoint::accept`](crate::Endpoint::accept) only ever returns connections
//! whose handshake completed. A server operator also wants to know about the
//! attempts that did not get that far: a client that is not on the allow-list,
//! a pre-shared key mismatch, a client that refused our key, a plaintext
//! client knocking on an encrypted server. The driver records one event per
//! attempt in a bounded queue (the oldest are dropped when nobody reads it, so
//! a flood of forged handshakes cannot grow memory), and
//! [`Endpoint::next_handshake_event`](crate::Endpoint::next_handshake_event)
//! takes them out in order.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;

use surelink_proto::wire::{Frame, FrameIter, Header, PacketKind, Reader};
use surelink_proto::Response;

use crate::{ConnectionError, PublicKey};

/// Most events kept for [`Endpoint::next_handshake_event`](crate::Endpoint::next_handshake_event);
/// beyond that the oldest are dropped (and counted in
/// [`EndpointStats::handshake_events_dropped`](crate::EndpointStats::handshake_events_dropped)).
pub const HANDSHAKE_EVENT_CAPACITY: usize = 256;

/// Incoming connections that ended before their handshake completed, by
/// why (each also a [`HandshakeEvent::Failed`] when it carried an error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeFailures {
    /// We refused the client: its key is not on the allow-list.
    pub not_allowed: u64,
    /// The handshake itself failed: a corrupt message, a pre-shared key
    /// mismatch.
    pub failed: u64,
    /// The client refused us (it expected another server key).
    pub refused_by_peer: u64,
    /// The client went silent, or gave up without a reason.
    pub timed_out: u64,
    /// Anything else (a protocol violation, a stateless reset).
    pub other: u64,
}

impl HandshakeFailures {
    /// Counts one attempt that ended with `error` (`None`: no reason given).
    pub(crate) fn record(&mut self, error: Option<&ConnectionError>) {
        let counter = match error {
            Some(ConnectionError::PeerNotAllowed(_)) => &mut self.not_allowed,
            Some(ConnectionError::HandshakeFailed(_)) => &mut self.failed,
            Some(ConnectionError::Rejected { .. } | ConnectionError::PeerKeyMismatch { .. }) => {
                &mut self.refused_by_peer
            }
            Some(ConnectionError::TimedOut) | None => &mut self.timed_out,
            Some(_) => &mut self.other,
        };
        *counter += 1;
    }

    /// Adds `more`'s counts to these (the attempts of several drivers).
    pub(crate) fn add(&mut self, more: &Self) {
        let Self {
            not_allowed,
            failed,
            refused_by_peer,
            timed_out,
            other,
        } = *more;
        self.not_allowed += not_allowed;
        self.failed += failed;
        self.refused_by_peer += refused_by_peer;
        self.timed_out += timed_out;
        self.other += other;
    }

    /// Every failed attempt, whatever the reason.
    pub fn total(&self) -> u64 {
        self.not_allowed + self.failed + self.refused_by_peer + self.timed_out + self.other
    }
}

/// The outcome of one incoming connection attempt.
///
/// `Display` gives a one-line, human-readable account, e.g.
/// `accepted connection from 127.0.0.1:40000, peer key fingerprint 1a2b:3c4d:5e6f:7a8b`
/// or `refused connection from 127.0.0.1:40000: client key 1a2b:… is not on the allow-list`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeEvent {
    /// The handshake completed; the connection waits for
    /// [`Endpoint::accept`](crate::Endpoint::accept).
    Accepted {
        /// The client's address.
        remote: SocketAddr,
        /// The client's authenticated static key (`None` in insecure plaintext mode).
        peer_key: Option<PublicKey>,
    },
    /// The connection ended during its handshake: we refused the client (not
    /// on the allow-list, pre-shared key mismatch, corrupt handshake), the
    /// client refused us (it expected another server key), or it went silent.
    Failed {
        /// The client's address.
        remote: SocketAddr,
        /// Why it ended.
        error: ConnectionError,
    },
    /// Refused statelessly, before any connection state existed (security mode
    /// mismatch, connection limit): the client was sent this code and reason.
    Refused {
        /// The client's address.
        remote: SocketAddr,
        /// The CLOSE code sent (see `surelink::proto::close_code`).
        code: u64,
        /// The reason sent.
        reason: String,
    },
}

impl HandshakeEvent {
    /// The address of the client that made the attempt.
    pub fn remote(&self) -> SocketAddr {
        match self {
            Self::Accepted { remote, .. }
            | Self::Failed { remote, .. }
            | Self::Refused { remote, .. } => *remote,
        }
    }

    /// The event for a stateless answer of the core endpoint, if it is a Reject.
    pub(crate) fn from_response(response: &Response) -> Option<Self> {
        let mut r = Reader::new(&response.data);
        let header = Header::decode(&mut r).ok()?;
        if header.kind != PacketKind::Reject {
            return None;
        }
        let frames = &response.data[response.data.len() - r.remaining()..];
        FrameIter::new(frames).find_map(|f| match f {
            Ok(Frame::Close { code, reason }) => Some(Self::Refused {
                remote: response.destination,
                code,
                reason: reason.to_owned(),
            }),
            _ => None,
        })
    }
}

impl fmt::Display for HandshakeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accepted {
                remote,
                peer_key: Some(key),
            } => write!(
                f,
                "accepted connection from {remote}, peer key fingerprint {}",
                key.fingerprint()
            ),
            Self::Accepted {
                remote,
                peer_key: None,
            } => write!(
                f,
                "accepted connection from {remote} (insecure plaintext: the peer is not authenticated)"
            ),
            Self::Failed {
                remote,
                error:
                    error @ (ConnectionError::PeerNotAllowed(_)
                    | ConnectionError::HandshakeFailed(_)),
            } => write!(f, "refused connection from {remote}: {error}"),
            Self::Failed {
                remote,
                error: ConnectionError::Rejected { code, reason },
            } => write!(
                f,
                "the client at {remote} refused the connection: {reason} (code {code})"
            ),
            Self::Failed { remote, error } => write!(
                f,
                "connection attempt from {remote} failed during the handshake: {error}"
            ),
            Self::Refused {
                remote,
                code,
                reason,
            } => write!(f, "refused connection from {remote}: {reason} (code {code})"),
        }
    }
}

/// The bounded queue of events behind the endpoint's lock.
#[derive(Debug, Default)]
pub(crate) struct HandshakeLog {
    events: VecDeque<HandshakeEvent>,
    /// Events dropped because the queue was full.
    pub(crate) dropped: u64,
}

impl HandshakeLog {
    /// Records `event`, dropping the oldest one if the queue is full.
    pub(crate) fn push(&mut self, event: HandshakeEvent) {
        tracing::debug!(%event, "handshake outcome");
        if self.events.len() >= HANDSHAKE_EVENT_CAPACITY {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Takes the oldest event.
    pub(crate) fn pop(&mut self) -> Option<HandshakeEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    #[test]
    fn failed_handshakes_are_counted_by_reason() {
        let key = crate::Identity::from_private([7; 32]).public();
        let mut failures = HandshakeFailures::default();
        for error in [
            Some(ConnectionError::PeerNotAllowed(key)),
            Some(ConnectionError::HandshakeFailed("psk".into())),
            Some(ConnectionError::HandshakeFailed("corrupt".into())),
            Some(ConnectionError::Rejected {
                code: 17,
                reason: "server key".into(),
            }),
            Some(ConnectionError::TimedOut),
            None,
            Some(ConnectionError::Reset),
        ] {
            failures.record(error.as_ref());
        }
        assert_eq!(
            failures,
            HandshakeFailures {
                not_allowed: 1,
                failed: 2,
                refused_by_peer: 1,
                timed_out: 2,
                other: 1,
            }
        );
        assert_eq!(failures.total(), 7);
    }

    #[test]
    fn the_queue_is_bounded_and_keeps_the_newest() {
        let mut log = HandshakeLog::default();
        for i in 0..HANDSHAKE_EVENT_CAPACITY + 10 {
            log.push(HandshakeEvent::Refused {
                remote: addr(),
                code: i as u64,
                reason: String::new(),
            });
        }
        assert_eq!(log.dropped, 10);
        match log.pop() {
            Some(HandshakeEvent::Refused { code, .. }) => assert_eq!(code, 10),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reject_response_becomes_a_refusal_and_a_retry_does_not() {
        let mut data = Vec::new();
        Header {
            kind: PacketKind::Reject,
            flags: 0,
            dcid: 7,
            pn: 0,
        }
        .encode(&mut data);
        Frame::Close {
            code: 19,
            reason: "encryption required",
        }
        .encode(&mut data);
        let event = HandshakeEvent::from_response(&Response {
            destination: addr(),
            data,
        });
        assert_eq!(
            event,
            Some(HandshakeEvent::Refused {
                remote: addr(),
                code: 19,
                reason: "encryption required".into()
            })
        );
        assert_eq!(
            event.unwrap().to_string(),
            "refused connection from 127.0.0.1:4000: encryption required (code 19)"
        );
        let mut data = Vec::new();
        Header {
            kind: PacketKind::Retry,
            flags: 0,
            dcid: 7,
            pn: 0,
        }
        .encode(&mut data);
        Frame::Token(&[1; 40]).encode(&mut data);
        let retry = Response {
            destination: addr(),
            data,
        };
        assert_eq!(HandshakeEvent::from_response(&retry), None);
    }
}
