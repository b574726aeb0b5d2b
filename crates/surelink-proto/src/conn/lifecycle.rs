//! The connection's lifecycle: one enum whose variants carry what each
//! phase needs, and the transitions between them.
//!
//! ```text
//! Handshaking ──handshake done──► Established ──close(), all acked──► CloseSent
//!      │                              │                                  │
//!      │ refused (Reject)             │ error, peer CLOSE                │ CLOSE acked ──► Closed
//!      ▼                              ▼                                  ▼
//!   Draining { refusal } ◄──────── Draining ◄──── peer CLOSE ────────────┘
//!      └──────── drain period over, playout empty ──────────► Closed
//!   (idle timeout, stateless reset: any phase ──► Closed)
//! ```
//!
//! A connection that closed with an error sent its CLOSE once, unacknowledged:
//! while draining it answers the peer's packets with that CLOSE again, at
//! most once per doubling of the packets heard since ([`ErrorClose`]), and a
//! peer still sending keeps it draining (up to the idle timeout), so a lost
//! CLOSE, or a peer too busy to read it in time, still brings the peer the
//! reason rather than a silence or a stateless reset.
//!
//! [`Event::Closed`] is emitted exactly once: on entering `Closed`, or on
//! entering `Draining` unless messages still wait for their playout time
//! (then when the last of them is out, see [`ClosedReport`]).
//!
//! Driven by the conductor and the other mechanisms through the transition
//! methods here (`enter_draining`, `enter_closed`, `close_with_error`,
//! `maybe_send_close`, `confirm_handshake`, …); nothing else assigns the
//! lifecycle except the handshake input when the handshake completes.

use std::time::{Duration, Instant};

use super::{close_code, Connection, ConnectionError, Event, Pending};
use crate::crypto::token_matches;
use crate::wire::{Frame, FrameIter};

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// Client waiting for the server's answer; server waiting for the
    /// client's last message.
    Handshaking {
        /// `close` was called: close as soon as established and idle.
        close_requested: bool,
    },
    /// Data flows.
    Established {
        /// The peer is known to have completed the handshake too (client:
        /// an authenticated packet came from the server).
        confirmed: bool,
        /// `close` was called: CLOSE goes once everything is acknowledged.
        close_requested: bool,
    },
    /// Our graceful CLOSE is out, waiting for its acknowledgement.
    CloseSent {
        /// As in `Established`.
        confirmed: bool,
    },
    /// Closed; lingering to acknowledge the peer's retransmissions (or to
    /// repeat our refusal).
    Draining {
        /// As in `Established`.
        confirmed: bool,
        /// When draining ends (`None` until a refusal's Reject has left).
        until: Option<Instant>,
        /// Whether `Event::Closed` was emitted yet.
        report: ClosedReport,
        /// We refused the handshake: the Reject's code and reason, repeated
        /// to the peer whenever it sends more.
        refusal: Option<(u64, String)>,
        /// We closed with an error: our CLOSE, repeated to the peer while
        /// it keeps sending.
        error_close: Option<ErrorClose>,
    },
    /// Nothing more will happen.
    Closed,
}

/// The CLOSE of a connection that ended with an error, kept while draining
/// to answer the peer's packets with it again (its first copy may have been
/// lost, and an error CLOSE is not acknowledged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ErrorClose {
    /// The CLOSE's code.
    code: u64,
    /// The CLOSE's reason.
    reason: String,
    /// Ack-eliciting packets heard from the peer since the first CLOSE.
    packets_heard: u64,
    /// The latest a peer that keeps sending can keep us draining: the idle
    /// timeout after the close.
    linger_limit: Instant,
}

impl ErrorClose {
    /// Counts one more packet from the peer; true if it is to be answered
    /// with the CLOSE: the 1st, 2nd, 4th, 8th… since the first CLOSE, so
    /// the answers stay few however fast the peer sends.
    fn answer_packet(&mut self) -> bool {
        self.packets_heard += 1;
        self.packets_heard.is_power_of_two()
    }
}

/// Whether a draining connection has reported its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClosedReport {
    /// `Event::Closed` was emitted.
    Reported,
    /// The graceful end is reported once the playout queue is empty.
    AfterPlayout,
}

impl Lifecycle {
    /// The state of a new connection.
    pub(super) fn new() -> Self {
        Self::Handshaking {
            close_requested: false,
        }
    }

    /// True while the handshake runs.
    pub(super) fn is_handshaking(&self) -> bool {
        matches!(self, Self::Handshaking { .. })
    }

    /// True in `Established` (not closing).
    pub(super) fn is_open(&self) -> bool {
        matches!(self, Self::Established { .. })
    }

    /// True once our graceful CLOSE is out.
    pub(super) fn is_close_sent(&self) -> bool {
        matches!(self, Self::CloseSent { .. })
    }

    /// True while draining.
    pub(super) fn is_draining(&self) -> bool {
        matches!(self, Self::Draining { .. })
    }

    /// True once nothing more will happen.
    pub(super) fn is_closed(&self) -> bool {
        matches!(self, Self::Closed)
    }

    /// True once `close` was called (or our CLOSE is out).
    pub(super) fn close_requested(&self) -> bool {
        match self {
            Self::Handshaking { close_requested }
            | Self::Established {
                close_requested, ..
            } => *close_requested,
            Self::CloseSent { .. } => true,
            Self::Draining { .. } | Self::Closed => false,
        }
    }

    /// True once the peer is known to have completed the handshake.
    pub(super) fn handshake_confirmed(&self) -> bool {
        match self {
            Self::Handshaking { .. } => false,
            Self::Established { confirmed, .. }
            | Self::CloseSent { confirmed }
            | Self::Draining { confirmed, .. } => *confirmed,
            Self::Closed => true,
        }
    }

    /// True once `Event::Closed` was emitted.
    fn reported(&self) -> bool {
        matches!(
            self,
            Self::Closed
                | Self::Draining {
                    report: ClosedReport::Reported,
                    ..
                }
        )
    }
}

impl Connection {
    /// True once the handshake completed and until the connection ends.
    pub fn is_established(&self) -> bool {
        self.lifecycle.is_open() || self.lifecycle.is_close_sent()
    }

    /// True once the connection can no longer carry data (closed or draining).
    pub fn is_closed(&self) -> bool {
        self.lifecycle.is_draining() || self.lifecycle.is_closed()
    }

    /// True once nothing more will happen: the caller may drop the connection.
    pub fn is_drained(&self) -> bool {
        self.lifecycle.is_closed()
    }

    /// The error the connection ended with, if any.
    pub fn error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }

    /// Starts a graceful close: queued messages are still delivered and
    /// acknowledged, then CLOSE is exchanged and `Event::Closed { error: None }` follows.
    pub fn close(&mut self, _now: Instant) {
        match &mut self.lifecycle {
            Lifecycle::Handshaking { close_requested }
            | Lifecycle::Established {
                close_requested, ..
            } => *close_requested = true,
            Lifecycle::CloseSent { .. } => {}
            Lifecycle::Draining { .. } | Lifecycle::Closed => return,
        }
        self.maybe_send_close();
    }

    /// Ends the connection at once, dropping anything unsent, and tells the peer.
    pub fn abort(&mut self, now: Instant, reason: &str) {
        if self.is_closed() {
            return;
        }
        self.close_with_error(
            now,
            close_code::APPLICATION_ABORT,
            reason,
            ConnectionError::LocallyAborted,
        );
    }

    /// The handshake completed on our side: data may flow. `confirmed`
    /// says the peer is known to have completed it too.
    pub(super) fn enter_established(&mut self, confirmed: bool) {
        self.lifecycle = Lifecycle::Established {
            confirmed,
            close_requested: self.lifecycle.close_requested(),
        };
        self.events.push_back(Event::Connected);
    }

    /// The peer has our last handshake message: stop repeating it.
    pub(super) fn confirm_handshake(&mut self) {
        match &mut self.lifecycle {
            Lifecycle::Established { confirmed, .. }
            | Lifecycle::CloseSent { confirmed }
            | Lifecycle::Draining { confirmed, .. } => *confirmed = true,
            Lifecycle::Handshaking { .. } | Lifecycle::Closed => return,
        }
        self.handshake_out = None;
        self.pending.handshake = false;
    }

    /// Sends our graceful CLOSE once it was requested and everything queued
    /// was acknowledged.
    pub(super) fn maybe_send_close(&mut self) {
        if let Lifecycle::Established {
            confirmed,
            close_requested: true,
        } = self.lifecycle
        {
            if self.send_queue.is_empty() {
                self.lifecycle = Lifecycle::CloseSent { confirmed };
                self.pending.close = Some((close_code::NO_ERROR, String::new()));
            }
        }
    }

    /// How long a closed connection lingers.
    pub(super) fn drain_period(&self) -> Duration {
        (self.ap().rtt.pto_base() * 3).min(self.config.idle_timeout)
    }

    /// Drops everything unsent, tells the peer `code` and `reason`, and drains.
    pub(super) fn close_with_error(
        &mut self,
        now: Instant,
        code: u64,
        reason: &str,
        err: ConnectionError,
    ) {
        tracing::debug!(cid = self.local_cid, %err, "closing with error");
        self.send_queue.clear();
        self.pending = Pending {
            close: Some((code, reason.to_owned())),
            ..Pending::default()
        };
        self.enter_draining(now, Some(err));
        let linger_limit = now + self.config.idle_timeout;
        if let Lifecycle::Draining { error_close, .. } = &mut self.lifecycle {
            *error_close = Some(ErrorClose {
                code,
                reason: reason.to_owned(),
                packets_heard: 0,
                linger_limit,
            });
        }
    }

    /// An authenticated, ack-eliciting packet from the peer arrived: if we
    /// drain after an error close, the peer has not heard our CLOSE (or it
    /// would send nothing but ACKs), so send it again (rate-limited by
    /// [`ErrorClose`]), and drain on for the longest the peer can stay
    /// quiet between two packets (its probe timeout backs off up to
    /// `max_pto`) plus a drain period, up to the idle timeout after the
    /// close: its next packets are answered rather than left to a stateless
    /// reset, and once it stops sending, the drain ends soon after.
    pub(super) fn repeat_error_close(&mut self, now: Instant) {
        let drain_end = now + self.config.max_pto + self.drain_period();
        if let Lifecycle::Draining {
            until: Some(until),
            error_close: Some(close),
            ..
        } = &mut self.lifecycle
        {
            *until = (*until).max(drain_end.min(close.linger_limit));
            if close.answer_packet() {
                self.pending.close = Some((close.code, close.reason.clone()));
            }
        }
    }

    /// The peer broke the protocol: close with `code`.
    pub(super) fn protocol_violation(&mut self, now: Instant, code: u64, what: String) {
        self.close_with_error(
            now,
            code,
            &what,
            ConnectionError::ProtocolViolation(what.clone()),
        );
    }

    /// Enters `Draining`; the end is reported now, or once the playout queue
    /// is empty if the close is graceful and messages still wait.
    pub(super) fn enter_draining(&mut self, now: Instant, error: Option<ConnectionError>) {
        let until = Some(now + self.drain_period());
        let report = if self.lifecycle.reported()
            || error.is_some()
            || self.reassembly.next_wake().is_none()
        {
            self.report_closed(error);
            ClosedReport::Reported
        } else {
            ClosedReport::AfterPlayout
        };
        let refusal = match &mut self.lifecycle {
            Lifecycle::Draining { refusal, .. } => refusal.take(),
            _ => None,
        };
        self.lifecycle = Lifecycle::Draining {
            confirmed: self.lifecycle.handshake_confirmed(),
            until,
            report,
            refusal,
            error_close: None,
        };
    }

    /// Refuses the handshake with `code` and `reason` (reported as `error`):
    /// drains, repeating the Reject to the peer.
    pub(super) fn enter_refused(&mut self, code: u64, reason: String, error: ConnectionError) {
        self.send_queue.clear();
        self.pending = Pending {
            reject: Some((code, reason.clone())),
            ..Pending::default()
        };
        self.report_closed(Some(error));
        self.lifecycle = Lifecycle::Draining {
            confirmed: self.lifecycle.handshake_confirmed(),
            until: None,
            report: ClosedReport::Reported,
            refusal: Some((code, reason)),
            error_close: None,
        };
    }

    /// Enters `Closed`, reporting the end if it was not yet.
    pub(super) fn enter_closed(&mut self, error: Option<ConnectionError>) {
        self.report_closed(error);
        self.lifecycle = Lifecycle::Closed;
    }

    /// A draining connection whose graceful end waited for playout reports
    /// it once the playout queue is empty.
    pub(super) fn report_closed_after_playout(&mut self) {
        if let Lifecycle::Draining {
            report: report @ ClosedReport::AfterPlayout,
            ..
        } = &mut self.lifecycle
        {
            if self.reassembly.next_wake().is_none() {
                *report = ClosedReport::Reported;
                self.error = None;
                self.events.push_back(Event::Closed { error: None });
            }
        }
    }

    /// Emits `Event::Closed` unless it was emitted already.
    fn report_closed(&mut self, error: Option<ConnectionError>) {
        if !self.lifecycle.reported() {
            self.error.clone_from(&error);
            self.events.push_back(Event::Closed { error });
        }
    }

    /// A draining connection's timer: ends it once the drain period is over
    /// and the end was reported.
    pub(super) fn drain_timeout(&mut self, now: Instant) {
        if let Lifecycle::Draining {
            until: Some(until),
            report: ClosedReport::Reported,
            ..
        } = self.lifecycle
        {
            if until <= now {
                self.enter_closed(None);
            }
        }
    }

    /// When a draining connection's drain period ends.
    pub(super) fn drain_deadline(&self) -> Option<Instant> {
        match self.lifecycle {
            Lifecycle::Draining { until, .. } => until,
            _ => None,
        }
    }

    /// A stateless Reset: closes the connection at once if it carries the
    /// peer's reset token and came from one of our paths; anything else is
    /// counted and ignored. A connection already ending is not made an error
    /// by it: after our graceful CLOSE (sent only once everything was
    /// acknowledged) it ends gracefully, as at an unanswered CLOSE's idle
    /// timeout; a draining one drains on.
    pub(super) fn on_reset(&mut self, known_path: bool, payload: &[u8]) {
        let mut frames = FrameIter::new(payload);
        let valid = match (frames.next(), frames.next(), &self.peer_reset_token) {
            (Some(Ok(Frame::Token(t))), None, Some(expected)) => {
                known_path && token_matches(expected, t)
            }
            _ => false,
        };
        if !valid {
            self.stats.bad_resets += 1;
            return;
        }
        tracing::debug!(cid = self.local_cid, "stateless reset by the peer");
        let error = match self.lifecycle {
            Lifecycle::Draining { .. } => return,
            Lifecycle::CloseSent { .. } => None,
            _ => Some(ConnectionError::Reset),
        };
        self.send_queue.clear();
        self.pending = Pending::default();
        self.enter_closed(error);
    }

    /// The peer's CLOSE frame.
    pub(super) fn on_close_frame(&mut self, now: Instant, code: u64, reason: &str) {
        match self.lifecycle {
            Lifecycle::Draining { .. } | Lifecycle::Closed => {}
            Lifecycle::CloseSent { .. } if code == close_code::NO_ERROR => {
                // Both sides closed gracefully at once.
                self.enter_draining(now, None);
            }
            _ => {
                let pending = self.send_queue.buffered();
                let error = if code != close_code::NO_ERROR {
                    Some(ConnectionError::PeerClosed {
                        code,
                        reason: reason.to_owned(),
                    })
                } else if !self.send_queue.is_empty() {
                    // The peer is done, but what we queued was not all delivered.
                    Some(ConnectionError::PeerClosedEarly {
                        unacknowledged_bytes: pending,
                    })
                } else {
                    None
                };
                self.send_queue.clear();
                self.enter_draining(now, error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorClose;

    #[test]
    fn an_error_close_answers_ever_fewer_of_the_peers_packets() {
        let mut close = ErrorClose {
            code: 1,
            reason: String::new(),
            packets_heard: 0,
            linger_limit: std::time::Instant::now(),
        };
        let answered: Vec<u64> = (1..=100).filter(|_| close.answer_packet()).collect();
        assert_eq!(answered, [1, 2, 4, 8, 16, 32, 64]);
    }
}
