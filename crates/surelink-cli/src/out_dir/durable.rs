//! `surelink recv --out-dir DIR --state STATE`: a durable session per sender.
//!
//! Every sender runs its own durable session (`send --state`); each is
//! checkpointed, resumed and completed independently of the others, with its
//! journal in `STATE/SESSION/` and its output in `DIR/SOURCE-SESSION.bin`
//! (SESSION: the session's id, 32 hex digits; SOURCE: the key of the sender
//! that started the session — a restarted sender with a new key continues
//! the same file). Killed and restarted with the
//! same arguments, the receiver reopens a session's journal when its sender
//! comes back, cuts the file back to its last checkpoint, and the sender
//! re-sends from there: every file ends byte-identical to its input.
//!
//! Connections are accepted concurrently; the first message of each (the
//! session HELLO) says which session it belongs to, and the connection is
//! handed to that session's receiver (a restarted sender's connection takes
//! over from its old one). A session's index entry becomes complete once the
//! sender's END is checkpointed and the session settled; its state directory
//! is then removed (`--keep-state` keeps it). With `--once` the command exits
//! after the first session completes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use surelink::{Endpoint, EndpointConfig};
use surelink_session::{
    DurableReceiver, DurableSink as _, FileSink, ReceiverEvent, SessionId, SessionOptions,
};
use tokio::sync::mpsc;

use super::{file_name, OutDir};
use crate::source::Source;
use crate::state::{greet_senders, greeted, Greeting};

/// What `recv --out-dir DIR --state STATE` needs.
pub struct DurableOutDir {
    /// The output directory.
    pub out: Arc<OutDir>,
    /// The state directory: one subdirectory per session.
    pub state: PathBuf,
    /// Session options (durability, checkpoint interval).
    pub options: SessionOptions,
    /// The addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// The endpoint's configuration.
    pub config: EndpointConfig,
    /// Exit once the first session is complete.
    pub once: bool,
    /// Keep a session's state directory once it is complete.
    pub keep_state: bool,
}

/// Runs `recv --out-dir DIR --state STATE`.
pub async fn run(plan: DurableOutDir) -> anyhow::Result<()> {
    let mut config = plan.config.clone();
    std::fs::create_dir_all(&plan.state)
        .with_context(|| format!("cannot create {}", plan.state.display()))?;
    config.protocol.reset_secret = Some(crate::state::reset_secret(&plan.state)?);
    let endpoint = Endpoint::bind_many(&plan.listen, config)
        .with_context(|| format!("cannot listen on {:?}", plan.listen))?;
    let _metrics = crate::metrics::watch(crate::metrics::Source::Endpoint(endpoint.clone()));
    for addr in endpoint.local_addrs() {
        eprintln!("surelink recv: listening on {addr}");
    }
    crate::security::announce_receiver(&endpoint);
    crate::security::spawn_handshake_log(&endpoint);
    let outcome = tokio::select! {
        r = serve(&endpoint, &plan) => r,
        () = crate::shutdown::signal() => {
            if plan.once {
                bail!(crate::exit::Interrupted(
                    "interrupted before a session completed".into()
                ));
            }
            tracing::info!("stopping");
            return Ok(());
        }
    };
    let drain = plan.config.protocol.idle_timeout;
    if tokio::time::timeout(drain, endpoint.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("connections still draining at exit");
    }
    outcome
}

/// Routes every connection's HELLO to its session's receiver until the
/// endpoint stops (or, with `once`, the first session completes).
async fn serve(endpoint: &Endpoint, plan: &DurableOutDir) -> anyhow::Result<()> {
    // Dropped (so the acceptor aborted) when this returns.
    let (_acceptor, mut greetings) = greet_senders(endpoint, plan.options.handshake_timeout);
    let mut sessions: HashMap<SessionId, mpsc::Sender<Greeting>> = HashMap::new();
    let (done_tx, mut done) = mpsc::channel::<(SessionId, anyhow::Result<()>)>(16);
    loop {
        tokio::select! {
            biased;
            Some((id, result)) = done.recv() => {
                sessions.remove(&id);
                match result {
                    Ok(()) if plan.once => return Ok(()),
                    Ok(()) => {}
                    Err(e) if plan.once => return Err(e),
                    Err(e) => eprintln!("surelink recv: session {id} failed: {e:#}"),
                }
            }
            greeting = greetings.recv() => {
                let Some((conn, hello)) = greeted(greeting)? else { continue };
                let id = hello.session_id;
                let session = match sessions.get(&id) {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    _ => match open_session(plan, id, Source::of(&conn), done_tx.clone()) {
                        Ok(tx) => {
                            sessions.insert(id, tx.clone());
                            tx
                        }
                        Err(e) => {
                            conn.abort(&format!("receiver: {e:#}"));
                            if plan.once {
                                return Err(e);
                            }
                            eprintln!("surelink recv: session {id}: {e:#}");
                            continue;
                        }
                    },
                };
                if let Err(mpsc::error::SendError((conn, _))) = session.send((conn, Ok(hello))).await {
                    // The session settled just now: the sender tries again.
                    conn.abort("the session has just ended here; try again");
                }
            }
        }
    }
}

/// Opens session `id`'s journal and file and starts its receiver; returns
/// where to hand it connections. When the session is settled (or fails), its
/// index entry is updated and the outcome sent on `done`.
fn open_session(
    plan: &DurableOutDir,
    id: SessionId,
    source: Source,
    done: mpsc::Sender<(SessionId, anyhow::Result<()>)>,
) -> anyhow::Result<mpsc::Sender<Greeting>> {
    let session = id.to_string();
    // A restarted sender may have a new key: a known session keeps its file.
    let file = plan
        .out
        .file_of_session(&session)
        .unwrap_or_else(|| file_name(source, &session));
    let path = plan.out.path(&file);
    let dir = plan.state.join(&session);
    let sink = FileSink::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut rx = DurableReceiver::open_dir(&dir, sink, plan.options.clone())
        .map_err(|e| crate::state::state_error(e, &dir, crate::state::Role::Receiver))?;
    plan.out.record_start(source, &session, &file)?;
    let (tx, mut greetings) = mpsc::channel::<Greeting>(4);
    let out = plan.out.clone();
    let keep_state = plan.keep_state;
    tokio::spawn(async move {
        let served = rx
            .run_hellos(&mut greetings, |event| report(&event, &file))
            .await
            .map_err(anyhow::Error::new);
        let complete = rx.is_complete();
        let bytes = rx.sink().position();
        drop(rx);
        let recorded = out.finish(&file, bytes, served.is_ok() && complete);
        let result = served.and(recorded);
        if result.is_ok() && complete {
            eprintln!("surelink recv: session {id}: {file} ({bytes} bytes) complete");
            if !keep_state {
                crate::state::remove_state(&dir, "recv")?;
            }
        }
        let _ = done.send((id, result)).await;
        anyhow::Ok(())
    });
    Ok(tx)
}

/// One stderr line per decision of a session's receiver.
fn report(event: &ReceiverEvent, file: &str) {
    match event {
        ReceiverEvent::Accepted { remote, accepted } => eprintln!(
            "surelink recv: session {} {} by {remote}: {file} at byte {}",
            accepted.session_id,
            if accepted.new_session {
                "started"
            } else {
                "resumed"
            },
            accepted.position
        ),
        ReceiverEvent::Refused { remote, error } => {
            eprintln!("surelink recv: refused a sender from {remote}: {error}");
        }
        ReceiverEvent::ConnectionEnded { remote, error } => eprintln!(
            "surelink recv: the connection from {remote} ended ({error}); \
             waiting for the sender to come back"
        ),
        _ => {}
    }
}
