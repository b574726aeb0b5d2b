//! Waiting for Ctrl-C (SIGINT) or SIGTERM.
//!
//! A command that stops cleanly on a signal calls [`install`] first, before it
//! binds or announces anything: from then on the process no longer dies by the
//! signal's default action, and every [`signal`] future completes once one has
//! arrived, even if it arrived before that future was first polled. Commands
//! that never call it (impair, demo, keygen) keep the default action. A
//! command that winds down after the first signal (a graceful close waiting
//! for acknowledgements) gives up at the second: [`second_signal`].

use std::sync::OnceLock;

use tokio::sync::watch;

/// How many stop signals have arrived.
static STOPPED: OnceLock<watch::Receiver<u32>> = OnceLock::new();

/// Takes over SIGINT and SIGTERM for the rest of the process. Idempotent; must
/// run inside the tokio runtime.
pub fn install() {
    STOPPED.get_or_init(|| {
        let (tx, rx) = watch::channel(0u32);
        // The handlers are registered here, synchronously; only the waiting
        // happens in the task.
        let mut arrivals = Arrivals::register();
        tokio::spawn(async move {
            while arrivals.next().await {
                tx.send_modify(|count| *count = count.saturating_add(1));
            }
        });
        rx
    });
}

/// True once a stop signal has arrived (after [`install`]).
pub fn signalled() -> bool {
    STOPPED.get().is_some_and(|stopped| *stopped.borrow() >= 1)
}

/// Completes when the process is asked to stop (installing the handlers if
/// [`install`] has not run yet).
pub async fn signal() {
    signals(1).await;
}

/// Completes when the process has been asked to stop a second time: the
/// user insists (installing the handlers if [`install`] has not run yet).
pub async fn second_signal() {
    signals(2).await;
}

/// Completes once `count` stop signals have arrived.
async fn signals(count: u32) {
    install();
    let mut stopped = STOPPED.get().expect("installed above").clone();
    if stopped.wait_for(|&arrived| arrived >= count).await.is_err() {
        // The waiting task is gone: the runtime is shutting down.
        std::future::pending::<()>().await;
    }
}

/// The stop signals, registered.
#[cfg(unix)]
struct Arrivals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Arrivals {
    /// Registers SIGINT and SIGTERM now (a failure is logged and that signal
    /// keeps its default action).
    fn register() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let register = |kind, name: &str| {
            signal(kind)
                .map_err(|e| tracing::warn!(error = %e, "cannot listen for {name}"))
                .ok()
        };
        Arrivals {
            interrupt: register(SignalKind::interrupt(), "SIGINT"),
            terminate: register(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Waits for the next signal; false once none can come any more.
    async fn next(&mut self) -> bool {
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
            match signal {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        }
        if self.interrupt.is_none() && self.terminate.is_none() {
            return false;
        }
        tokio::select! {
            arrived = recv(&mut self.interrupt) => arrived.is_some(),
            arrived = recv(&mut self.terminate) => arrived.is_some(),
        }
    }
}

/// Ctrl-C, the one stop signal elsewhere.
#[cfg(not(unix))]
struct Arrivals;

#[cfg(not(unix))]
impl Arrivals {
    fn register() -> Self {
        Arrivals
    }

    async fn next(&mut self) -> bool {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
