//! `surelink recv --out FILE --state DIR`: the receiving side of durable
//! sessions.
//!
//! The output file is opened without truncation and cut back to the length
//! recorded with the last checkpoint (bytes written after it come again from
//! the sender). A first session truncates it to zero when it starts. Senders
//! are accepted concurrently: a restarted sender's connection takes over the
//! session from the old one at once, without waiting for the old one to time
//! out. Every decision (new session, resumed, refused) is one line on stderr.
//!
//! With `--once` the command exits once the session is complete: the sender's
//! END was checkpointed (output synced) and the sender closed the connection,
//! or, if that connection was lost, the sender did not come back within the
//! linger time (10 s). A receiver restarted after its session completed waits
//! that long for the sender to collect the final confirmation, then exits 0.
//! Without `--once` it serves one session after another (a new session
//! appends to the output) until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use surelink::session::{DurableReceiver, DurableSink as _, FileSink, ReceiverEvent, SessionId};
use surelink::{Endpoint, EndpointConfig, Security};

use crate::cmd::recv::RecvArgs;
use crate::delivery::DATA_CHANNEL;

/// Runs `surelink recv --state DIR` (stream mode into a file).
pub async fn run(
    args: &RecvArgs,
    dir: &Path,
    listen: Vec<SocketAddr>,
    security: Security,
) -> anyhow::Result<()> {
    if args.to.is_some() {
        bail!("--state works with a file (--out FILE), not with --to");
    }
    let path = match args.output.as_deref() {
        Some(path) if path != "-" => PathBuf::from(path),
        _ => bail!("--state needs --out FILE: standard output cannot be rewound after a restart"),
    };
    let options = args.state.session_options()?;
    let sink = FileSink::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut rx = DurableReceiver::open_dir(dir, sink, options)
        .with_context(|| format!("cannot open the state in {}", dir.display()))?;
    match rx.session_id() {
        Some(id) => eprintln!(
            "surelink recv: session {id}: state in {}: {} messages checkpointed, {} at byte {}{}",
            dir.display(),
            rx.delivered(DATA_CHANNEL),
            path.display(),
            rx.sink().position(),
            if rx.is_complete() { " (complete)" } else { "" }
        ),
        None => eprintln!("surelink recv: no session yet (state in {})", dir.display()),
    }

    let mut config = EndpointConfig::default();
    args.playout.apply(&mut config.protocol);
    config.protocol.security = security;
    config.protocol.path_mode = args.mode.into();
    config.protocol.reset_secret = Some(super::reset_secret(dir)?);
    let idle_timeout = config.protocol.idle_timeout;
    let endpoint = Endpoint::bind_many(&listen, config)
        .with_context(|| format!("cannot listen on {listen:?}"))?;
    let _metrics = crate::metrics::watch(crate::metrics::Source::Endpoint(endpoint.clone()));
    for addr in endpoint.local_addrs() {
        eprintln!("surelink recv: listening on {addr}");
    }
    crate::security::announce_receiver(&endpoint);
    crate::security::spawn_handshake_log(&endpoint);

    let once = args.once;
    let serve = async {
        let mut reported: Option<SessionId> = None;
        loop {
            // T of C = T/N: from the first sender accepted in this run.
            let mut started = None;
            rx.run(&endpoint, |event| {
                if let ReceiverEvent::Accepted { .. } = event {
                    started.get_or_insert_with(Instant::now);
                }
                report(&event, &path);
            })
            .await?;
            let session = rx.session_id();
            if session != reported {
                reported = session;
                summary(&rx, started);
            }
            if once {
                return anyhow::Ok(());
            }
        }
    };
    tokio::select! {
        r = serve => r?,
        () = crate::shutdown::signal() => {
            if once {
                bail!("interrupted before the session completed");
            }
            tracing::info!("stopping");
            return Ok(());
        }
    };
    // Let the last connection finish its close handshake (we acknowledge the
    // sender's CLOSE while draining), so the sender's close completes too.
    if tokio::time::timeout(idle_timeout, endpoint.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("connections still draining at exit");
    }
    Ok(())
}

/// One stderr line per decision.
fn report(event: &ReceiverEvent, path: &Path) {
    match event {
        ReceiverEvent::Accepted { remote, accepted } => {
            let id = accepted.session_id;
            if accepted.new_session {
                eprintln!(
                    "surelink recv: session {id} from {remote}: new, writing {} from byte {}",
                    path.display(),
                    accepted.position
                );
            } else {
                let next = accepted.next.get(&DATA_CHANNEL).copied().unwrap_or(0);
                eprintln!(
                    "surelink recv: session {id} resumed by {remote} at message {next} \
                     ({} at byte {}){}",
                    path.display(),
                    accepted.position,
                    if accepted.complete {
                        ", already complete"
                    } else {
                        ""
                    }
                );
            }
        }
        ReceiverEvent::Refused { remote, error } => {
            eprintln!("surelink recv: refused a sender from {remote}: {error}");
        }
        ReceiverEvent::ConnectionEnded { remote, error } => {
            eprintln!(
                "surelink recv: the connection from {remote} ended ({error}); \
                 waiting for the sender to come back"
            );
        }
        _ => {}
    }
}

/// The line printed when a session is complete.
fn summary<K: surelink::session::DurableSink>(rx: &DurableReceiver<K>, started: Option<Instant>) {
    let Some(id) = rx.session_id() else { return };
    let s = rx.stats();
    let interval = match started {
        Some(started) if s.checkpoints > 0 => format!(
            "C = T/N = {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3 / s.checkpoints as f64
        ),
        _ => "no checkpoint".to_owned(),
    };
    eprintln!(
        "surelink recv: session {id} complete: {} messages ({} bytes) written in this run, \
         {} duplicates dropped, {} checkpoints ({interval}), {} output syncs; {}",
        s.messages_delivered,
        s.bytes_delivered,
        s.duplicates_dropped,
        s.checkpoints,
        s.sink_syncs,
        super::journal_summary(&rx.journal_metrics())
    );
}
