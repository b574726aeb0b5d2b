//! Waiting for Ctrl-C (SIGINT) or SIGTERM.
//!
//! A command that stops cleanly on a signal calls [`install`] first, before it
//! binds or announces anything: from then on the process no longer dies by the
//! signal's default action, and every [`signal`] future completes once one has
//! arrived, even if it arrived before that future was first polled. Commands
//! that never call it (impair, demo, keygen) keep the default action.

use std::future::Future;
use std::sync::OnceLock;

use tokio::sync::watch;

/// Set to `true` once a stop signal has arrived.
static STOPPED: OnceLock<watch::Receiver<bool>> = OnceLock::new();

/// Takes over SIGINT and SIGTERM for the rest of the process. Idempotent; must
/// run inside the tokio runtime.
pub fn install() {
    STOPPED.get_or_init(|| {
        let (tx, rx) = watch::channel(false);
        // The handlers are registered here, synchronously; only the waiting
        // happens in the task.
        let arrived = listen();
        tokio::spawn(async move {
            arrived.await;
            let _ = tx.send(true);
        });
        rx
    });
}

/// Completes when the process is asked to stop (installing the handlers if
/// [`install`] has not run yet).
pub async fn signal() {
    install();
    let mut stopped = STOPPED.get().expect("installed above").clone();
    if stopped.wait_for(|&stopped| stopped).await.is_err() {
        // The waiting task is gone without a signal: the runtime is shutting down.
        std::future::pending::<()>().await;
    }
}

/// Registers the handlers now and returns a future that completes on the first signal.
#[cfg(unix)]
fn listen() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            (Ok(mut only), Err(e)) | (Err(e), Ok(mut only)) => {
                tracing::warn!(error = %e, "cannot listen for one of SIGINT and SIGTERM");
                only.recv().await;
            }
            (Err(e), Err(_)) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT or SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Returns a future that completes on Ctrl-C.
#[cfg(not(unix))]
fn listen() -> impl Future<Output = ()> + Send {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
