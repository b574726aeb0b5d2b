//! How a connection's end crosses the wire: a side that fails for a local
//! reason (a full disk, an unreadable input) closes the connection with that
//! reason ([`abort_with_reason`]) instead of going silent, and the other side
//! reports the peer's reason as its error ([`explain_end`]) instead of a
//! generic "connection lost".
//!
//! The reason travels in the CLOSE frame (code 4, application abort) and is
//! prefixed with the side that failed, so it reads the same on both machines:
//! `receiver: cannot write out.bin: No space left on device (os error 28)`.

use surelink::proto::close_code;
use surelink::{Connection, ConnectionError};

use crate::exit::{PeerClosed, Refused};

/// The longest reason sent in a CLOSE (the wire allows 1024 bytes).
const MAX_REASON_BYTES: usize = 400;

/// Which side a reason comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `surelink send`.
    Sender,
    /// `surelink recv`.
    Receiver,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Sender => "sender",
            Side::Receiver => "receiver",
        }
    }
}

/// Ends `conn` at once and tells the peer why: `side: error`, each cause once,
/// cut to [`MAX_REASON_BYTES`] on a character boundary. Does nothing to a
/// connection that has already ended.
pub fn abort_with_reason(conn: &Connection, side: Side, error: &anyhow::Error) {
    if conn.is_closed() {
        return;
    }
    conn.abort(&reason_text(side, &crate::exit::render(error)));
}

/// `side: text`, cut to at most [`MAX_REASON_BYTES`].
fn reason_text(side: Side, text: &str) -> String {
    let mut reason = format!("{}: {text}", side.name());
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Replaces a transfer error by what the peer said if the connection ended
/// because the peer refused the handshake (which it can only do after our
/// side considered it complete: allow-list, pre-shared key) or closed it with
/// a reason of its own (its disk is full, its input failed).
pub async fn explain_end(conn: &Connection, result: anyhow::Result<()>) -> anyhow::Result<()> {
    let Err(error) = result else {
        return Ok(());
    };
    if !conn.is_closed() {
        return Err(error);
    }
    match conn.closed().await.as_ref().and_then(peer_error) {
        Some(explained) => Err(explained),
        None => Err(error),
    }
}

/// The error for a failed receive on `conn`: the peer's own reason if it
/// gave one, else the connection's error.
pub fn recv_error(conn: &Connection, error: surelink::RecvError) -> anyhow::Error {
    if let surelink::RecvError::ConnectionLost(e) = &error {
        if let Some(explained) = peer_error(e) {
            return explained;
        }
    }
    anyhow::Error::new(error).context(format!("the connection from {} failed", conn.remote_addr()))
}

/// The error to report for a connection that ended with `error`, if the
/// peer said why: a refused handshake or a CLOSE with the peer's reason.
pub fn peer_error(error: &ConnectionError) -> Option<anyhow::Error> {
    match error {
        ConnectionError::PeerClosed { code, reason } if *code == close_code::APPLICATION_ABORT => {
            Some(PeerClosed(reason.clone()).into())
        }
        _ => crate::security::handshake_error(error).map(|message| Refused(message).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_REASON_BYTES);
        let reason = reason_text(Side::Receiver, &text);
        assert!(reason.len() <= MAX_REASON_BYTES);
        assert!(reason.starts_with("receiver: é"));
        assert_eq!(reason_text(Side::Sender, "x"), "sender: x");
    }

    #[test]
    fn the_peers_reason_becomes_the_error() {
        let error = ConnectionError::PeerClosed {
            code: close_code::APPLICATION_ABORT,
            reason: "receiver: cannot write out.bin: disk full".into(),
        };
        let explained = peer_error(&error).expect("explained");
        assert_eq!(
            explained.to_string(),
            "the receiver ended the connection: receiver: cannot write out.bin: disk full"
        );
        assert!(peer_error(&ConnectionError::TimedOut).is_none());
    }
}
