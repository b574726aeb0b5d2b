//! Exit statuses and the one-line error report of the `surelink` binary.
//!
//! Every command returns an `anyhow::Error` on failure; [`classify`] walks its
//! chain of causes and picks the exit status of the first cause it knows
//! (a bad argument, a local file or socket, the peer, the state directory),
//! and [`render`] prints the chain once, skipping a cause whose text its
//! parent already ends with (`cannot bind …: Address already in use` instead
//! of the same OS error twice). Errors raised by the commands themselves for
//! bad arguments are [`UsageError`]s, so they exit like clap's own.

use std::process::ExitCode;

use surelink::{BindError, CloseError, ConnectError, ConnectionError, RecvError, SendError};
use surelink_session::{JournalError, SessionError};

/// The exit statuses, as documented in `surelink --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The command did what it was asked.
    Success = 0,
    /// Any failure not covered below.
    Other = 1,
    /// A bad command line: unknown option, bad value, options that conflict.
    Usage = 2,
    /// A local file or socket failed: input or output file, journal, bind.
    LocalIo = 3,
    /// No connection: no answer, refused, key mismatch.
    Connect = 4,
    /// The connection failed after it was made: lost, timed out, or closed by the peer with a reason.
    Connection = 5,
    /// The state directory (`--state`) is damaged or belongs to another session.
    State = 6,
    /// Interrupted (Ctrl-C, SIGTERM) before the work was done.
    Interrupted = 130,
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> Self {
        ExitCode::from(status as u8)
    }
}

/// The exit status table printed at the end of `--help` pages (a macro, so
/// that `concat!` can put it after each page's examples).
macro_rules! exit_status_help {
    () => {
        "\
Exit status:
  0    success
  1    any other failure
  2    usage error: unknown option, bad value, options that conflict
  3    a local file or socket failed (input, output, journal, bind)
  4    no connection: no answer within --connect-timeout, refused, key mismatch
  5    the connection failed after it was made (lost, idle timeout, closed by the peer: its reason is printed)
  6    the state directory (--state) is damaged or belongs to another session
  130  interrupted (Ctrl-C, SIGTERM) before the work was done"
    };
}
pub(crate) use exit_status_help;

/// A bad command line detected by a command (not by clap).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The command was interrupted before its work was done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// The peer refused the connection (its reason, already explained).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The peer closed the connection with a reason of its own (the reason
/// names the side: `receiver: cannot write …`).
#[derive(Debug, thiserror::Error)]
#[error("the {role} ended the connection: {0}", role = peer_role(.0))]
pub struct PeerClosed(pub String);

/// "receiver" or "sender" from a reason's prefix ("peer" if it has none).
fn peer_role(reason: &str) -> &'static str {
    if reason.starts_with("receiver:") {
        "receiver"
    } else if reason.starts_with("sender:") {
        "sender"
    } else {
        "peer"
    }
}

/// The exit status for `error`: that of the first cause in its chain whose
/// kind is known.
pub fn classify(error: &anyhow::Error) -> Status {
    error
        .chain()
        .find_map(classify_one)
        .unwrap_or(Status::Other)
}

fn classify_one(cause: &(dyn std::error::Error + 'static)) -> Option<Status> {
    if cause.is::<UsageError>() {
        return Some(Status::Usage);
    }
    if cause.is::<Interrupted>() {
        return Some(Status::Interrupted);
    }
    if cause.is::<PeerClosed>() {
        return Some(Status::Connection);
    }
    if cause.is::<Refused>() || cause.is::<ConnectError>() {
        return Some(Status::Connect);
    }
    if cause.is::<BindError>() || cause.is::<std::io::Error>() {
        return Some(Status::LocalIo);
    }
    if cause.is::<crate::state::DamagedState>() {
        return Some(Status::State);
    }
    if let Some(e) = cause.downcast_ref::<SessionError>() {
        return session_status(e);
    }
    if let Some(e) = cause.downcast_ref::<ConnectionError>() {
        return Some(connection_status(e));
    }
    if let Some(SendError::ConnectionLost(e)) = cause.downcast_ref::<SendError>() {
        return Some(connection_status(e));
    }
    if let Some(RecvError::ConnectionLost(e)) = cause.downcast_ref::<RecvError>() {
        return Some(connection_status(e));
    }
    if let Some(CloseError::ConnectionLost(e)) = cause.downcast_ref::<CloseError>() {
        return Some(connection_status(e));
    }
    if cause.is::<SendError>() || cause.is::<RecvError>() || cause.is::<CloseError>() {
        return Some(Status::Connection);
    }
    None
}

fn session_status(error: &SessionError) -> Option<Status> {
    Some(match error {
        SessionError::Journal(JournalError::Io { .. })
        | SessionError::Sink { .. }
        | SessionError::SourceRead(_) => Status::LocalIo,
        SessionError::Journal(_)
        | SessionError::State(_)
        | SessionError::LabelMismatch { .. }
        | SessionError::SourceChanged { .. }
        | SessionError::SourceBytesChanged { .. } => Status::State,
        SessionError::Mismatch(_)
        | SessionError::RefusedByPeer(_)
        | SessionError::NotASession(_)
        | SessionError::HandshakeTimeout(_) => Status::Connect,
        SessionError::ConnectionLost(e) => connection_status(e),
        e if e.is_connection() => Status::Connection,
        _ => return None,
    })
}

fn connection_status(error: &ConnectionError) -> Status {
    match error {
        ConnectionError::HandshakeFailed(_)
        | ConnectionError::PeerKeyMismatch { .. }
        | ConnectionError::PeerNotAllowed(_)
        | ConnectionError::Rejected { .. } => Status::Connect,
        _ => Status::Connection,
    }
}

/// The error as one line: each cause once, outermost first, joined by `: `.
pub fn render(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|last| last.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// [`render`], followed by what to do about it where the cause has a usual
/// fix: the line `main` prints.
pub fn report(error: &anyhow::Error) -> String {
    let text = render(error);
    match error.chain().find_map(fix) {
        Some(fix) => format!("{text} ({fix})"),
        None => text,
    }
}

/// The usual fix for a cause, if there is one.
fn fix(cause: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let idle = "the peer was silent for --idle-timeout (10s by default): raise it on both \
                sides to ride out longer outages, or use --state with send --reconnect-for";
    if let Some(ConnectError::TimedOut { .. }) = cause.downcast_ref::<ConnectError>() {
        return Some(
            "is `surelink recv` listening there, and does UDP get through? \
             --connect-timeout waits longer",
        );
    }
    if let Some(BindError::Io { source, .. }) = cause.downcast_ref::<BindError>() {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            return Some(
                "another program uses that address: choose another port, or port 0 for any",
            );
        }
    }
    let connection = cause.downcast_ref::<ConnectionError>().or_else(|| {
        match cause.downcast_ref::<SendError>() {
            Some(SendError::ConnectionLost(e)) => Some(e),
            _ => match cause.downcast_ref::<RecvError>() {
                Some(RecvError::ConnectionLost(e)) => Some(e),
                _ => match cause.downcast_ref::<CloseError>() {
                    Some(CloseError::ConnectionLost(e)) => Some(e),
                    _ => match cause.downcast_ref::<SessionError>() {
                        Some(SessionError::ConnectionLost(e)) => Some(e),
                        _ => None,
                    },
                },
            },
        }
    });
    match connection {
        Some(ConnectionError::TimedOut | ConnectionError::ConnectionLost) => Some(idle),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn a_cause_repeated_by_its_parent_is_printed_once() {
        let os = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let bind = BindError::Io {
            addr: "127.0.0.1:9".parse().expect("address"),
            source: os,
        };
        let error = anyhow::Error::new(bind).context("cannot listen");
        let text = render(&error);
        let os_text = std::io::Error::from(std::io::ErrorKind::AddrInUse).to_string();
        assert_eq!(text.matches(&os_text).count(), 1, "{text}");
        assert!(text.starts_with("cannot listen: cannot bind UDP socket to 127.0.0.1:9"));
        assert_eq!(classify(&error), Status::LocalIo);
    }

    #[test]
    fn a_full_journal_names_its_cause_once() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let journal = JournalError::Io {
            op: "append",
            file: "00000000000000000001.log".into(),
            source: full,
        };
        let error = anyhow::Error::new(SessionError::Journal(journal)).context("session 1 failed");
        let text = render(&error);
        let cause = std::io::Error::from(std::io::ErrorKind::StorageFull).to_string();
        assert_eq!(text.matches(&cause).count(), 1, "{text}");
        assert!(text.starts_with("session 1 failed: checkpoint journal: journal I/O error"));
        assert_eq!(classify(&error), Status::LocalIo);
    }

    #[test]
    fn causes_map_to_their_documented_status() {
        let usage = anyhow::Error::new(UsageError("--chunk".into())).context("send");
        assert_eq!(classify(&usage), Status::Usage);
        let lost: anyhow::Result<()> =
            Err(SendError::ConnectionLost(ConnectionError::ConnectionLost)).context("cannot send");
        assert_eq!(classify(&lost.unwrap_err()), Status::Connection);
        let refused = anyhow::Error::new(SendError::ConnectionLost(ConnectionError::Rejected {
            code: 17,
            reason: "not allowed".into(),
        }));
        assert_eq!(classify(&refused), Status::Connect);
        let journal = anyhow::Error::new(SessionError::State("bad".into()));
        assert_eq!(classify(&journal), Status::State);
        assert_eq!(classify(&anyhow::anyhow!("something")), Status::Other);
    }

    #[test]
    fn usual_causes_come_with_their_fix() {
        let silent: anyhow::Result<()> =
            Err(SendError::ConnectionLost(ConnectionError::TimedOut)).context("cannot send");
        let line = report(&silent.unwrap_err());
        assert!(line.starts_with("cannot send: timed out"), "{line}");
        assert!(line.contains("raise it on both sides"), "{line}");
        let no_answer = anyhow::Error::new(ConnectError::TimedOut {
            remote: "127.0.0.1:9".parse().expect("address"),
            after: std::time::Duration::from_secs(10),
        });
        assert!(report(&no_answer).contains("--connect-timeout waits longer"));
        let plain = anyhow::anyhow!("something");
        assert_eq!(report(&plain), "something");
    }
}
