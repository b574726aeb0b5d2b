//! The graceful stop of `surelink recv`: on Ctrl-C or SIGTERM nothing the
//! transport already acknowledged to a sender is lost.
//!
//! A sender is told a message is delivered once the receiver's transport
//! has it, which can be before the output read it from the connection. So a
//! stop does not drop the connections: it flips a [`StopSwitch`], and every
//! connection's reader ([`Stopping::next`]) goes on handing over the
//! messages its connection already holds, then reports [`Next::Stopped`]
//! instead of waiting for new data (and aborts the connection, telling the
//! sender the receiver stopped). Messages a playout delay (`--playout`)
//! still holds back were acknowledged too: the stop lifts the hold
//! ([`Connection::release_held`]) and they are written out at once, in
//! order, counted in the connection's `messages_released_early`. The
//! connections already established and waiting in the accept queue are
//! taken too ([`take_waiting`]). Reading
//! what the connections hold is bounded: [`DRAIN_LIMIT`] after the stop a
//! reader stops even if more keeps arriving. The output is then written out
//! as at any sender's end. A second signal ends the command at once
//! ([`unless_interrupted_again`]), without finishing the output.
//!
//! The output modes drive it: concurrent senders ([`serve_concurrently`]:
//! `--to udp://`, `--out-dir`), one sender after another (stream mode) and
//! the merge (which feeds its connections through [`ConnectionTasks`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use surelink::{Connection, Endpoint, Message};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::ending::recv_error;

/// How long a graceful stop may spend reading what the connections already
/// hold before it gives up on the rest (a sender still sending fast could
/// otherwise keep it reading).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The reason a connection still open at the stop is aborted with.
const STOP_REASON: &str = "receiver: stopping (Ctrl-C or SIGTERM)";

/// Starts the stop: flipped on the first Ctrl-C or SIGTERM, or by hand
/// ([`StopSwitch::stop`]). Dropping it ends the signal watch.
pub struct StopSwitch {
    /// When the stop began, once it has.
    since: Arc<watch::Sender<Option<Instant>>>,
    /// The task that flips the switch on a signal.
    on_signal: tokio::task::AbortHandle,
}

impl StopSwitch {
    /// A switch that flips on the first stop signal.
    pub fn on_signal() -> Self {
        let since = Arc::new(watch::Sender::new(None));
        let on_signal = {
            let since = since.clone();
            tokio::spawn(async move {
                crate::shutdown::signal().await;
                tracing::info!("stopping: reading what the connections already hold");
                start(&since);
            })
            .abort_handle()
        };
        StopSwitch { since, on_signal }
    }

    /// Starts the stop now (a no-op once it has started).
    pub fn stop(&self) {
        start(&self.since);
    }

    /// A watch on the switch, for one connection's reader.
    pub fn stopping(&self) -> Stopping {
        Stopping(self.since.subscribe())
    }
}

impl Drop for StopSwitch {
    fn drop(&mut self) {
        self.on_signal.abort();
    }
}

/// Records the stop's start unless it has started already.
fn start(since: &watch::Sender<Option<Instant>>) {
    since.send_if_modified(|since| {
        let first = since.is_none();
        since.get_or_insert_with(Instant::now);
        first
    });
}

/// A watch on a [`StopSwitch`]: tells a connection's reader when to stop
/// waiting for new data.
#[derive(Clone)]
pub struct Stopping(watch::Receiver<Option<Instant>>);

/// What [`Stopping::next`] found on a connection.
pub enum Next {
    /// A message the connection held or received.
    Message(Message),
    /// No more messages: the connection closed gracefully and every message
    /// was read ([`End::Finished`]), or the receiver is stopping and the
    /// connection holds no more received messages, or [`DRAIN_LIMIT`] has
    /// passed ([`End::Stopped`]: the connection was aborted).
    End(End),
}

impl Stopping {
    /// True once the stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Completes once the stop has begun (or the switch is gone).
    pub async fn begun(&mut self) {
        let _ = self.0.wait_for(Option::is_some).await;
    }

    /// The next message of `conn`, waiting for one only until the stop; a
    /// message already received always comes first. A connection that
    /// failed is an error (its complete messages come before it).
    pub async fn next(&mut self, conn: &Connection) -> anyhow::Result<Next> {
        let overdue = (*self.0.borrow()).is_some_and(|since| since.elapsed() >= DRAIN_LIMIT);
        if overdue {
            tracing::warn!(
                remote = %conn.remote_addr(),
                "still reading the connection {DRAIN_LIMIT:?} after the stop: what it holds \
                 beyond that is dropped"
            );
            conn.abort(STOP_REASON);
            return Ok(Next::End(End::Stopped));
        }
        // Once stopping, the playout hold is lifted before reading: what it
        // holds back was acknowledged to the sender too.
        let mut released = self.is_stopping();
        if released {
            release_held(conn);
        }
        loop {
            tokio::select! {
                biased;
                msg = conn.recv_message() => return Ok(match msg.map_err(|e| recv_error(conn, e))? {
                    Some(msg) => Next::Message(msg),
                    None => Next::End(End::Finished),
                }),
                () = self.begun() => {
                    // The stop began while waiting: read what the hold
                    // released before ending.
                    if !released {
                        release_held(conn);
                        released = true;
                        continue;
                    }
                    conn.abort(STOP_REASON);
                    return Ok(Next::End(End::Stopped));
                }
            }
        }
    }
}

/// Lifts `conn`'s playout hold (`recv --playout`) for the stop: the
/// messages it held back are handed over at once, in order, and the hold
/// stays lifted (once per connection is enough).
fn release_held(conn: &Connection) {
    let released = conn.release_held();
    if released > 0 {
        tracing::info!(
            remote = %conn.remote_addr(),
            released,
            "stopping: messages held for their playout time are written out early"
        );
    }
}

/// How a connection's reader ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The sender closed gracefully and all of its output was written.
    Finished,
    /// The receiver stopped while the sender was still connected; what the
    /// connection held was written.
    Stopped,
}

/// The next connection already waiting in `endpoint`'s accept queue, without
/// waiting for one (its messages may have been acknowledged already).
pub async fn take_waiting(endpoint: &Endpoint) -> Option<Connection> {
    tokio::select! {
        biased;
        conn = endpoint.accept() => conn,
        () = std::future::ready(()) => None,
    }
}

/// Runs `work` unless a second stop signal comes first: then the command
/// ends at once, with exit status 130, without what `work` would have
/// finished (`unfinished` says what).
pub async fn unless_interrupted_again<T>(
    work: impl Future<Output = anyhow::Result<T>>,
    unfinished: &str,
) -> anyhow::Result<T> {
    tokio::select! {
        biased;
        () = crate::shutdown::second_signal() => bail!(crate::exit::Interrupted(format!(
            "interrupted again while writing out what the connections held: {unfinished}"
        ))),
        result = work => result,
    }
}

/// The tasks reading the senders' connections, and the stop they watch.
pub struct ConnectionTasks<T> {
    tasks: JoinSet<T>,
    switch: StopSwitch,
}

impl<T: Send + 'static> ConnectionTasks<T> {
    /// No tasks yet; the stop begins on the first stop signal.
    pub fn new() -> Self {
        ConnectionTasks {
            tasks: JoinSet::new(),
            switch: StopSwitch::on_signal(),
        }
    }

    /// Runs `read` on a task of its own with a watch on the stop.
    pub fn spawn<F: Future<Output = T> + Send + 'static>(
        &mut self,
        read: impl FnOnce(Stopping) -> F,
    ) {
        self.tasks.spawn(read(self.switch.stopping()));
    }

    /// The result of the next task to end; None while there is none.
    pub async fn join_next(&mut self) -> Option<Result<T, tokio::task::JoinError>> {
        self.tasks.join_next().await
    }

    /// True while no task runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// A watch on the stop.
    pub fn stopping(&self) -> Stopping {
        self.switch.stopping()
    }

    /// Starts the stop now.
    pub fn stop(&self) {
        self.switch.stop();
    }
}

/// Serves senders concurrently, each connection by `read` on a task of its
/// own, until the stop (a signal or, with `once`, the first sender's end),
/// then lets every connection hand over what it holds (see the
/// [module docs](self)).
///
/// With `once` the result is the first sender's: Ok once it finished (even
/// during the stop), its error if it failed, [`Interrupted`](crate::exit::Interrupted)
/// if the stop came before any sender ended. Without it, senders' failures
/// are only logged (by `read`) and a stop is a success.
pub async fn serve_concurrently<F, Fut>(
    endpoint: &Endpoint,
    once: bool,
    mut read: F,
) -> anyhow::Result<()>
where
    F: FnMut(Connection, Stopping) -> Fut,
    Fut: Future<Output = anyhow::Result<End>> + Send + 'static,
{
    let mut tasks = ConnectionTasks::new();
    let mut stopping = tasks.stopping();
    let mut first: Option<anyhow::Result<End>> = None;
    let ended = |joined: Result<anyhow::Result<End>, tokio::task::JoinError>| {
        joined.unwrap_or_else(|e| Err(anyhow::anyhow!("a connection's task failed: {e}")))
    };
    loop {
        tokio::select! {
            biased;
            () = stopping.begun() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if once {
                    first = Some(ended(joined));
                    break;
                }
            }
            conn = endpoint.accept() => match conn {
                Some(conn) => tasks.spawn(|stopping| read(conn, stopping)),
                None => bail!("the endpoint stopped accepting connections"),
            },
        }
    }
    tasks.stop();
    while let Some(conn) = take_waiting(endpoint).await {
        tasks.spawn(|stopping| read(conn, stopping));
    }
    while let Some(joined) = tasks.join_next().await {
        let result = ended(joined);
        if first.is_none() && !matches!(result, Ok(End::Stopped)) {
            first = Some(result);
        }
    }
    match first {
        _ if !once => Ok(()),
        Some(result) => result.map(|_| ()),
        None => bail!(crate::exit::Interrupted(
            "interrupted before a sender finished".into()
        )),
    }
}
