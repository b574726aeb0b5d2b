//! `--state DIR`: durable sessions for `send --in FILE` and `recv --out FILE`.
//!
//! With `--state`, both commands keep a checkpoint journal in DIR
//! ([`surelink_session`]): the sender its outbox of messages the receiver has
//! not confirmed as checkpointed (with the input offset after each), the
//! receiver its watermark together with the output file's length. Killed
//! (even `kill -9`) and restarted with the same arguments, the sender
//! continues from where the receiver is and the receiver continues the same
//! output file: it ends byte-identical to the input, nothing lost or
//! repeated. Without `--state` nothing changes.
//!
//! Once a session is complete, the sender (on exit 0) and `recv --once` (on
//! exit 0) remove their state directory and say so; `--keep-state` keeps it.
//! A state directory that cannot be used (a corrupt journal) is reported with
//! what to delete on which side to start over.
//!
//! The protocol and the on-disk state are described in `docs/CHECKPOINTS.md`.

pub mod recv;
pub mod send;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use surelink_session::{read_hello, Durability, Hello, JournalError, SessionError, SessionOptions};

use crate::args::parse_duration;
use crate::exit::UsageError;

/// When checkpoints are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DurabilityArg {
    /// Never fsync: the OS writes back when it likes (survives kill -9, not a power loss).
    None,
    /// fsync every --durability-interval (a power loss loses at most about that much).
    #[default]
    Interval,
    /// fsync every checkpoint before confirming it (survives a power loss).
    Always,
}

/// The options `send` and `recv` share.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// Keep a durable session in this directory: killed and restarted with the same
    /// arguments, the transfer resumes where it stopped, nothing lost or repeated.
    /// The other side must use --state too. Needs `--in FILE` (send), or `--out FILE`,
    /// `--out-dir DIR` or `--merge --out FILE` (recv).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// With --state: when checkpoints are fsynced. Every policy survives kill -9; the
    /// policy decides what survives a power loss.
    #[arg(
        long,
        value_enum,
        value_name = "POLICY",
        default_value = "interval",
        requires = "state"
    )]
    pub durability: DurabilityArg,
    /// With --state --durability interval: how often to fsync.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration, requires = "state")]
    pub durability_interval: Duration,
    /// With --state: keep the state directory once the session is complete (by default the
    /// sender removes it when it exits 0, and `recv --once` when it exits 0).
    #[arg(long, requires = "state")]
    pub keep_state: bool,
}

/// `send`'s state options.
#[derive(Debug, Clone, Args)]
pub struct SendStateArgs {
    #[command(flatten)]
    pub common: StateArgs,
    /// With --state: most input bytes sent and not yet confirmed as checkpointed by the
    /// receiver (the outbox, kept in memory and in the journal); reading waits beyond it.
    #[arg(long, value_name = "BYTES", default_value = "32MiB", value_parser = crate::args::parse_size, requires = "state")]
    pub max_unconfirmed: usize,
    /// With --state: when the connection fails or cannot be made, keep connecting again for
    /// this long (backoff from 100ms, doubling up to 5s) before giving up. Default 0: give up
    /// after --connect-timeout, or after 3 connections in a row that failed before resuming.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, requires = "state")]
    pub reconnect_for: Duration,
}

/// `recv`'s state options.
#[derive(Debug, Clone, Args)]
pub struct RecvStateArgs {
    #[command(flatten)]
    pub common: StateArgs,
    /// With --state: the longest a received message waits before it is checkpointed and
    /// confirmed to the sender (the checkpoint interval C).
    #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = parse_duration, requires = "state")]
    pub checkpoint_interval: Duration,
}

impl StateArgs {
    /// The session options these flags ask for.
    pub fn session_options(&self) -> anyhow::Result<SessionOptions> {
        let durability = match self.durability {
            DurabilityArg::None => Durability::None,
            DurabilityArg::Always => Durability::Always,
            DurabilityArg::Interval => {
                if self.durability_interval.is_zero() {
                    bail!(UsageError(
                        "--durability-interval must be positive (or use --durability always)"
                            .into()
                    ));
                }
                Durability::Interval(self.durability_interval)
            }
        };
        Ok(SessionOptions::default().with_durability(durability))
    }
}

impl SendStateArgs {
    /// The session options these flags ask for.
    pub fn session_options(&self) -> anyhow::Result<SessionOptions> {
        if self.max_unconfirmed == 0 {
            bail!(UsageError("--max-unconfirmed must be positive".into()));
        }
        Ok(self
            .common
            .session_options()?
            .with_max_unconfirmed_bytes(self.max_unconfirmed))
    }
}

impl RecvStateArgs {
    /// The session options these flags ask for.
    pub fn session_options(&self) -> anyhow::Result<SessionOptions> {
        if self.checkpoint_interval.is_zero() {
            bail!(UsageError("--checkpoint-interval must be positive".into()));
        }
        Ok(self
            .common
            .session_options()?
            .with_checkpoint_interval(self.checkpoint_interval))
    }
}

/// A connection with its HELLO (or why it has none).
pub type Greeting = (surelink::Connection, Result<Hello, SessionError>);

/// Reads the HELLO of every connection `endpoint` accepts, each on a task of
/// its own (within `timeout`), and hands them over as they come. The
/// acceptor runs until the returned task set is dropped.
pub fn greet_senders(
    endpoint: &surelink::Endpoint,
    timeout: Duration,
) -> (
    tokio::task::JoinSet<()>,
    tokio::sync::mpsc::Receiver<Greeting>,
) {
    let (greeting_tx, greetings) = tokio::sync::mpsc::channel::<Greeting>(16);
    let mut acceptor = tokio::task::JoinSet::new();
    let endpoint = endpoint.clone();
    acceptor.spawn(async move {
        while let Some(conn) = endpoint.accept().await {
            let tx = greeting_tx.clone();
            tokio::spawn(async move {
                let hello = read_hello(&conn, timeout).await;
                let _ = tx.send((conn, hello)).await;
            });
        }
    });
    (acceptor, greetings)
}

/// The sender of a greeting from [`greet_senders`] with its HELLO; None,
/// said on stderr, if its HELLO was refused; an error once the endpoint
/// stopped accepting connections (`greeting` is None).
pub fn greeted(
    greeting: Option<Greeting>,
) -> anyhow::Result<Option<(surelink::Connection, Hello)>> {
    let Some((conn, hello)) = greeting else {
        bail!("the endpoint stopped accepting connections");
    };
    match hello {
        Ok(hello) => Ok(Some((conn, hello))),
        Err(e) => {
            eprintln!(
                "surelink recv: refused a sender from {}: {e}",
                conn.remote_addr()
            );
            Ok(None)
        }
    }
}

/// The stateless reset secret kept in the state directory `dir` (created on
/// first use), so that after a restart this side can reset the connections of
/// its previous life and the peer reconnects at once.
pub fn reset_secret(dir: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    surelink_session::reset_secret(dir).with_context(|| {
        format!(
            "cannot read or create the reset secret in {}",
            dir.display()
        )
    })
}

/// For a receiver *without* `--state`: a sender that runs with `--state`
/// opens with a session message on the control channel. Writing it (or the
/// data messages' id headers) to the output would corrupt it, so the
/// connection is refused with a reason both sides print.
pub fn refuse_session(conn: &surelink::Connection, msg: &surelink::Message) -> anyhow::Result<()> {
    if msg.channel == surelink_session::CONTROL_CHANNEL {
        conn.abort("this receiver runs without --state: start it with --state DIR too");
        bail!(crate::exit::Refused(format!(
            "the sender from {} runs with --state: this receiver must use --state DIR too",
            conn.remote_addr()
        )));
    }
    Ok(())
}

/// Which side a state directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `send --state`.
    Sender,
    /// `recv --state`.
    Receiver,
}

/// A state directory this side cannot use, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("the state in {dir} cannot be used: {cause}; {advice}", dir = .dir.display(), advice = advice(*.role, .dir))]
pub struct DamagedState {
    /// The state directory.
    pub dir: PathBuf,
    /// Whose it is.
    pub role: Role,
    /// What is wrong with it.
    pub cause: String,
}

/// What to delete, on which side, to start the transfer over.
fn advice(role: Role, dir: &std::path::Path) -> String {
    match role {
        Role::Sender => format!(
            "to start the transfer over, delete {} here and the receiver's --state directory \
             (the receiver then writes its output again from the start)",
            dir.display()
        ),
        Role::Receiver => format!(
            "to start the transfer over, delete {} and the output file here, and the sender's \
             --state directory, then run both again",
            dir.display()
        ),
    }
}

/// The error for a state directory that failed to open: a [`DamagedState`]
/// with advice when the journal is corrupt or unusable, else the error as it is.
pub fn state_error(error: SessionError, dir: &std::path::Path, role: Role) -> anyhow::Error {
    let damaged = matches!(
        error,
        SessionError::Journal(JournalError::Corrupt { .. })
            | SessionError::State(_)
            | SessionError::Wire(_)
    );
    if damaged {
        return DamagedState {
            dir: dir.to_path_buf(),
            role,
            cause: crate::exit::render(&anyhow::Error::new(error)),
        }
        .into();
    }
    anyhow::Error::new(error).context(format!("cannot open the state in {}", dir.display()))
}

/// Removes a complete session's state directory and says so on stderr; a
/// failure to remove it is reported, not fatal (the session is complete).
pub fn remove_state(dir: &std::path::Path, command: &str) -> anyhow::Result<()> {
    match surelink_session::remove_state_dir(dir) {
        Ok(removed) => eprintln!(
            "surelink {command}: removed the state of the complete session ({} files, {} bytes{}); \
             --keep-state keeps it",
            removed.files,
            removed.bytes,
            if removed.dir_removed {
                format!(", and {}", dir.display())
            } else {
                format!(" from {}: other files are left there", dir.display())
            }
        ),
        Err(e) => eprintln!(
            "surelink {command}: warning: cannot remove the state in {}: {e}",
            dir.display()
        ),
    }
    Ok(())
}

/// A summary of journal counters for the final lines.
fn journal_summary(m: &surelink_session::JournalMetrics) -> String {
    format!(
        "{} commits, {} fsyncs, {} compactions, {} journal bytes written",
        m.commits, m.fsyncs, m.compactions, m.bytes_written
    )
}
