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
//! linger time (10 s); it then removes its state directory (`--keep-state`
//! keeps it). A receiver restarted on a kept, complete state says so and waits
//! that long for the sender to collect the final confirmation, then exits 0.
//! If the output or the journal fails, the sender's connection is closed with
//! that error as the reason, so the sender reports it too.
//! Without `--once` it serves one session after another (a new session
//! appends to the output) until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use surelink::{Endpoint, EndpointConfig};
use surelink_session::{
    DurableReceiver, DurableSink as _, FileSink, ReceiverEvent, SessionId, SessionOptions,
};

use crate::cmd::send::CLOSE_LINGER;
use crate::delivery::DATA_CHANNEL;

/// What `recv --state` needs, checked and resolved from the command line.
pub struct DurableRecv {
    /// The output file.
    pub output: PathBuf,
    /// The state directory.
    pub dir: PathBuf,
    /// Session options (durability, checkpoint interval).
    pub options: SessionOptions,
    /// The addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// The endpoint's configuration (security, paths, playout, timeouts).
    pub config: EndpointConfig,
    /// Exit once the first session is complete.
    pub once: bool,
    /// Keep the state directory once the session is complete.
    pub keep_state: bool,
}

/// Runs `surelink recv --out FILE --state DIR`.
pub async fn run(plan: DurableRecv) -> anyhow::Result<()> {
    let DurableRecv {
        output: path,
        dir,
        options,
        listen,
        mut config,
        once,
        keep_state,
    } = plan;
    let linger = options.linger;
    let sink = FileSink::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut rx = DurableReceiver::open_dir(&dir, sink, options)
        .map_err(|e| super::state_error(e, &dir, super::Role::Receiver))?;
    match rx.session_id() {
        Some(id) => eprintln!(
            "surelink recv: session {id}: state in {}: {} messages checkpointed, {} at byte {}{}",
            dir.display(),
            rx.delivered(DATA_CHANNEL),
            path.display(),
            rx.sink().position(),
            match (rx.is_complete(), once) {
                (false, _) => String::new(),
                (true, true) => format!(
                    " (complete: waiting {linger:?} for its sender to collect the last \
                     confirmation, then exiting)"
                ),
                (true, false) => " (complete: the next session appends to it)".to_owned(),
            }
        ),
        None => eprintln!("surelink recv: no session yet (state in {})", dir.display()),
    }

    config.protocol.reset_secret = Some(super::reset_secret(&dir)?);
    let idle_timeout = config.protocol.idle_timeout;
    let endpoint = Endpoint::bind_many(&listen, config)
        .with_context(|| format!("cannot listen on {listen:?}"))?;
    let _metrics = crate::metrics::watch(crate::metrics::Source::Endpoint(endpoint.clone()));
    let _session_metrics =
        crate::metrics::watch(crate::metrics::Source::DurableReceiver(rx.stats_reader()));
    for addr in endpoint.local_addrs() {
        eprintln!("surelink recv: listening on {addr}");
    }
    crate::security::announce_receiver(&endpoint);
    crate::security::spawn_handshake_log(&endpoint);

    let serve = async {
        let mut reported: Option<SessionId> = None;
        loop {
            // T of C = T/N: from the first sender accepted in this run.
            let mut started = None;
            rx.run(&endpoint, |event| {
                if let ReceiverEvent::Accepted { .. } = event {
                    started.get_or_insert_with(Instant::now);
                }
                report(&event, &path.display());
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
    let outcome = tokio::select! {
        r = serve => r,
        () = crate::shutdown::signal() => {
            if once {
                bail!(crate::exit::Interrupted(
                    "interrupted before the session completed".into()
                ));
            }
            tracing::info!("stopping");
            return Ok(());
        }
    };
    // Let the last connection finish its close handshake (we acknowledge the
    // sender's CLOSE while draining), so the sender's close completes too; after
    // a failure, let our CLOSE with the reason leave.
    let drain = if outcome.is_ok() {
        idle_timeout
    } else {
        CLOSE_LINGER
    };
    if tokio::time::timeout(drain, endpoint.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("connections still draining at exit");
    }
    outcome?;
    drop(rx);
    if keep_state {
        eprintln!(
            "surelink recv: state kept in {} (--keep-state)",
            dir.display()
        );
        return Ok(());
    }
    super::remove_state(&dir, "recv")
}

/// One stderr line per decision; `output` names where messages go.
pub fn report(event: &ReceiverEvent, output: &dyn std::fmt::Display) {
    match event {
        ReceiverEvent::Accepted { remote, accepted } => {
            let id = accepted.session_id;
            if accepted.new_session {
                eprintln!(
                    "surelink recv: session {id} from {remote}: new, writing {} from byte {}",
                    output, accepted.position
                );
            } else {
                let next = accepted.next.get(&DATA_CHANNEL).copied().unwrap_or(0);
                eprintln!(
                    "surelink recv: session {id} resumed by {remote} at message {next} \
                     ({} at byte {}){}",
                    output,
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
pub fn summary<K: surelink_session::DurableSink, St: surelink_session::ReceiverStore>(
    rx: &DurableReceiver<K, St>,
    started: Option<Instant>,
) {
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
