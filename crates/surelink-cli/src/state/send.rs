//! `surelink send --in FILE --state DIR`: a durable session that survives
//! restarts of either side.
//!
//! The input is read in `--chunk` messages, in batches of up to
//! [`BATCH_BYTES`]; each batch is pushed to the journal (with the input
//! offset after each message) and committed before it is sent. Where to read
//! next always comes from the session ([`DurableSender::resume_cursor`]): after
//! a restart it is the offset after the last message ever queued, so bytes the
//! receiver confirmed are never read again.
//!
//! The file is replayable, so the outbox does not copy the messages: the
//! journal keeps where each unconfirmed message lies in the file, with its
//! checksum ([`FileSource`], `surelink_session::replay`), and the messages
//! re-sent after a reconnection or a restart are read from the file again.
//! The session records the file's identity (length, modification time,
//! checksums of its first and last blocks); a file that changed is refused
//! with the reason, before anything is sent from it.
//!
//! When the connection fails (the receiver was killed: its restarted process
//! answers with a stateless reset, or, if it does not come back, no packet
//! for a second; or the connection was lost), the sender connects again and resumes
//! the session. By default it gives up when a connection cannot be made within
//! `--connect-timeout`, or after [`MAX_FAILED_ATTEMPTS`] connections in a row
//! that failed before the session could resume; with `--reconnect-for D` it
//! keeps trying for D from the first failure since the session last resumed, pausing
//! between attempts (from [`RETRY_BACKOFF`], doubling up to
//! [`MAX_RETRY_BACKOFF`]). A receiver that closed the connection with a
//! reason of its own (its disk is full) is not retried: its reason is the
//! error. Either way a restart with the same arguments picks the session up.
//!
//! Once the session is complete the state directory is removed (and the
//! command says so) unless `--keep-state`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::{BufMut as _, BytesMut};
use surelink::{Endpoint, EndpointConfig};
use surelink_session::{DurableSender, FileSource, Outgoing, SessionError, SessionOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::args::HostPort;
use crate::cmd::send::CLOSE_LINGER;
use crate::delivery::DATA_CHANNEL;
use crate::ending::{abort_with_reason, explain_end, Side};
use crate::exit::PeerClosed;
use crate::progress::Progress;
use crate::report::{spawn_reporter, stats_line};

/// Input bytes read and committed to the journal as one batch (one commit,
/// one fsync under `--durability always`).
const BATCH_BYTES: usize = 1 << 20;

/// Connections in a row that may fail before the session resumes (without
/// `--reconnect-for`).
const MAX_FAILED_ATTEMPTS: u32 = 3;
/// First pause before connecting again after a failure; it doubles with
/// every failure in a row, up to [`MAX_RETRY_BACKOFF`]. (A connection that
/// resumed and then failed — e.g. reset by a restarted receiver — is
/// replaced at once.)
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two connection attempts.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// What `send --state` needs, checked and resolved from the command line.
pub struct DurableSend {
    /// The input file.
    pub input: PathBuf,
    /// The state directory.
    pub dir: PathBuf,
    /// Largest message.
    pub chunk: usize,
    /// Session options (durability, outbox size).
    pub options: SessionOptions,
    /// The endpoint's configuration (security, paths, timeouts).
    pub config: EndpointConfig,
    /// Local address to bind.
    pub bind: SocketAddr,
    /// The receiver.
    pub target: Target,
    /// More paths to the receiver.
    pub extra_paths: Vec<SocketAddr>,
    /// Whether `--peer-key` pinned the receiver's key.
    pub peer_key_pinned: bool,
    /// `--stats-interval`.
    pub stats_interval: Option<Duration>,
    /// How long to keep connecting again after a failure (`--reconnect-for`).
    pub reconnect_for: Duration,
    /// Keep the state directory once the session is complete.
    pub keep_state: bool,
}

/// Where the receiver is.
pub enum Target {
    /// At a fixed address: as given (for messages) and resolved.
    Fixed(HostPort, SocketAddr),
    /// Whichever member of a receiver group leads (`--group`).
    #[cfg(feature = "etcd")]
    Group {
        /// The group's leaders, read from etcd.
        leaders: Box<crate::group::Leaders>,
        /// How long to wait for a new leader after a failure.
        patience: Duration,
    },
}

impl Target {
    /// The address to connect to now.
    async fn next(&mut self) -> anyhow::Result<SocketAddr> {
        match self {
            Target::Fixed(_, addr) => Ok(*addr),
            #[cfg(feature = "etcd")]
            Target::Group { leaders, patience } => leaders.next(*patience).await,
        }
    }

    /// True for a group: the leader may change, so a connection its
    /// receiver closed on purpose (a deposed leader) is retried too.
    fn follows_group(&self) -> bool {
        !matches!(self, Target::Fixed(..))
    }

    /// The failure detector gave up on the receiver last returned by
    /// [`next`](Self::next): a group's leader is reported to etcd as
    /// suspected by this sender (`session`).
    async fn lost(&self, session: &str) {
        match self {
            Target::Fixed(..) => {}
            #[cfg(feature = "etcd")]
            Target::Group { leaders, .. } => leaders.suspect_last(session).await,
        }
        let _ = session;
    }

    /// Resolves once the receiver of `conn` (last returned by
    /// [`next`](Self::next)) has every path down, having reported it as a
    /// group's leader suspected by this sender (`session`); never for a
    /// fixed address.
    fn suspect_when_unreachable(
        &self,
        conn: &surelink::Connection,
        session: &str,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        #[cfg(feature = "etcd")]
        let group = match self {
            Target::Group { leaders, .. } => {
                Some(leaders.suspect_when_unreachable(conn.clone(), session.to_owned()))
            }
            Target::Fixed(..) => None,
        };
        #[cfg(not(feature = "etcd"))]
        let _ = (conn, session);
        async move {
            #[cfg(feature = "etcd")]
            if let Some(suspect) = group {
                return suspect.await;
            }
            std::future::pending().await
        }
    }

    /// The pause before the next attempt after a failure; following a
    /// group, a new leader ends it at once.
    async fn pause(&self, pause: Duration) {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = self.superseded() => {}
        }
    }

    /// Resolves once the receiver last returned by [`next`](Self::next)
    /// is no longer the one to use (a group has a leader of a new term);
    /// never for a fixed address.
    fn superseded(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        #[cfg(feature = "etcd")]
        let group = match self {
            Target::Group { leaders, .. } => Some(leaders.superseded()),
            Target::Fixed(..) => None,
        };
        async move {
            #[cfg(feature = "etcd")]
            if let Some(superseded) = group {
                return superseded.await;
            }
            std::future::pending().await
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// True if the failure detector gave up on the receiver (no packet for
/// the peer timeout, every path down, or nothing at all for the idle
/// timeout), as opposed to a connection its receiver closed.
fn gave_up(e: &SessionError) -> bool {
    use surelink::ConnectionError;
    matches!(
        e,
        SessionError::PeerUnresponsive(_)
            | SessionError::ConnectionLost(
                ConnectionError::ConnectionLost | ConnectionError::TimedOut
            )
    )
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Fixed(name, _) => write!(f, "{name}"),
            #[cfg(feature = "etcd")]
            Target::Group { leaders, .. } => write!(f, "the leader of group {}", leaders.name()),
        }
    }
}

/// When to connect again after a failed connection.
struct Retry {
    /// `--reconnect-for`.
    window: Duration,
    /// Failures in a row since the session last resumed.
    failed: u32,
    /// Since when no connection has resumed the session.
    outage_since: Option<Instant>,
}

impl Retry {
    fn new(window: Duration) -> Self {
        Self {
            window,
            failed: 0,
            outage_since: None,
        }
    }

    /// The session resumed: the next failure starts a new outage.
    fn resumed(&mut self) {
        self.failed = 0;
        self.outage_since = None;
    }

    /// A connection failed at `now`: the pause before the next attempt, or
    /// `None` to give up. Without a window, up to [`MAX_FAILED_ATTEMPTS`]
    /// attempts in a row; with one, as many as start within it.
    fn failed(&mut self, now: Instant) -> Option<Duration> {
        let since = *self.outage_since.get_or_insert(now);
        self.failed += 1;
        let backoff = RETRY_BACKOFF
            .saturating_mul(1 << (self.failed - 1).min(16))
            .min(MAX_RETRY_BACKOFF);
        let within_window = now.duration_since(since) + backoff < self.window;
        (within_window || self.failed < MAX_FAILED_ATTEMPTS).then_some(backoff)
    }
}

/// Runs `surelink send --in FILE --state DIR`.
pub async fn run(mut plan: DurableSend) -> anyhow::Result<()> {
    let path = plan.input.clone();
    let dir = plan.dir.clone();
    // The session is labelled with the input's path; resuming with another
    // file is refused, and with a modified one too (by the source's identity).
    let meta =
        std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let label = canonical.display().to_string();
    let mut file = crate::cmd::send::open_input(&path).await?;
    let source =
        FileSource::open(&path).with_context(|| format!("cannot read {}", path.display()))?;

    let mut tx = DurableSender::open_dir_with_source(&dir, &label, source, plan.options.clone())
        .map_err(|e| super::state_error(e, &dir, super::Role::Sender))?;
    let session = tx.session_id();
    if tx.is_complete() {
        eprintln!(
            "surelink send: session {session} is already complete (state in {}): nothing to send",
            dir.display()
        );
        drop(tx);
        return finish_state(&dir, plan.keep_state);
    }
    if tx.resume_cursor() > meta.len() {
        bail!(
            "{} is shorter than what session {session} already sent ({} bytes)",
            path.display(),
            tx.resume_cursor()
        );
    }
    if tx.resume_cursor() > 0 || tx.unconfirmed() > 0 {
        eprintln!(
            "surelink send: session {session}: state in {}: {} messages unconfirmed, input read up to byte {}",
            dir.display(),
            tx.unconfirmed(),
            tx.resume_cursor()
        );
    } else {
        eprintln!(
            "surelink send: session {session}: new (state in {})",
            dir.display()
        );
    }

    plan.config.protocol.reset_secret = Some(super::reset_secret(&dir)?);
    let bind = plan.bind;
    let endpoint = Endpoint::client_with_config(bind, plan.config)
        .with_context(|| format!("cannot bind {bind}"))?;
    let started = Instant::now();
    let mut retry = Retry::new(plan.reconnect_for);
    let mut last_conn = None;
    let mut progress = None;
    let follows_group = plan.target.follows_group();
    let session_name = session.to_string();
    loop {
        let remote = match plan.target.next().await {
            Ok(remote) => remote,
            Err(e) => {
                let Some(pause) = retry.failed(Instant::now()) else {
                    return Err(e.context(format!(
                        "gave up after --reconnect-for {:?}",
                        plan.reconnect_for
                    )));
                };
                eprintln!("surelink send: {e:#}; trying again in {pause:?}");
                plan.target.pause(pause).await;
                continue;
            }
        };
        let target_name = if follows_group {
            format!("{} ({remote})", plan.target)
        } else {
            plan.target.to_string()
        };
        let connected = tokio::select! {
            connected = endpoint.connect(remote) => connected,
            // A new leader: drop the handshake with the old one.
            () = plan.target.superseded() => continue,
        };
        let conn =
            match connected {
                Ok(conn) => conn,
                Err(e) if !plan.reconnect_for.is_zero() => {
                    let Some(pause) = retry.failed(Instant::now()) else {
                        return Err(crate::security::connect_error(&target_name, e).context(
                            format!("gave up after --reconnect-for {:?}", plan.reconnect_for),
                        ));
                    };
                    if matches!(e, surelink::ConnectError::TimedOut { .. }) {
                        plan.target.lost(&session_name).await;
                    }
                    eprintln!("surelink send: {e}; connecting again in {pause:?}");
                    plan.target.pause(pause).await;
                    continue;
                }
                Err(e) => return Err(crate::security::connect_error(&target_name, e)),
            };
        // Following a group: a leader of a new term ends this connection
        // at once (the old leader may be alive but cut off).
        let _superseded = AbortOnDrop(tokio::spawn({
            let conn = conn.clone();
            let superseded = plan.target.superseded();
            async move {
                superseded.await;
                conn.abort("the group has a new leader");
            }
        }));
        // Following a group: every path down tells etcd at once, so a
        // standby can end a dead leader's term early.
        let _suspicion = AbortOnDrop(tokio::spawn(
            plan.target.suspect_when_unreachable(&conn, &session_name),
        ));
        for addr in &plan.extra_paths {
            conn.add_path(*addr);
        }
        tracing::info!(%remote, local = %endpoint.local_addr(), "connected");
        if last_conn.is_none() {
            crate::security::announce_server(&conn, plan.peer_key_pinned);
        }
        last_conn = Some(conn.clone());
        let _reporter = spawn_reporter(plan.stats_interval, "send", &conn);
        let resumed = match tx.attach(conn.clone()).await {
            Ok(resumed) => resumed,
            // A receiver that closes the connection during the handshake
            // refuses it (e.g. it runs without --state): no point retrying.
            Err(e) if e.is_connection() && (follows_group || !refused(&e)) => {
                let Some(pause) = retry.failed(Instant::now()) else {
                    let e =
                        anyhow::Error::new(e).context(format!("cannot resume session {session}"));
                    return explain_end(&conn, Err(e)).await;
                };
                if gave_up(&e) {
                    plan.target.lost(&session_name).await;
                }
                eprintln!("surelink send: {e}; connecting again in {pause:?}");
                plan.target.pause(pause).await;
                continue;
            }
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("cannot resume session {session}"));
                return explain_end(&conn, Err(e)).await;
            }
        };
        retry.resumed();
        let next = resumed
            .receiver_next
            .get(&DATA_CHANNEL)
            .copied()
            .unwrap_or(0);
        if resumed.complete {
            eprintln!("surelink send: session {session}: the receiver has it complete");
        } else if next > 0 || resumed.resent > 0 || tx.resume_cursor() > 0 {
            eprintln!(
                "surelink send: session {session} resumed: the receiver has {next} messages; \
                 re-sent {} read again from the input; continuing the input at byte {}",
                resumed.resent,
                tx.resume_cursor()
            );
        } else {
            eprintln!("surelink send: session {session}: the receiver accepted it; sending");
        }
        let bar = progress.get_or_insert_with(|| {
            Progress::start("send", meta.len(), &path.display().to_string())
        });
        bar.watch(&conn);
        // A batch never exceeds the outbox, which would admit it whole.
        let batch_bytes = BATCH_BYTES.min(plan.options.max_unconfirmed_bytes);
        match stream(&mut tx, &mut file, plan.chunk, batch_bytes, bar).await {
            Ok(()) => break,
            // The receiver closed the connection with a reason (its disk is
            // full): reconnecting would not help.
            Err(Failure::Session(e)) if e.is_connection() && (follows_group || !refused(&e)) => {
                if gave_up(&e) {
                    plan.target.lost(&session_name).await;
                }
                eprintln!("surelink send: {e}; connecting again");
            }
            // The receiver stopped mid-session (its output or journal failed)
            // and said why.
            Err(Failure::Session(SessionError::RefusedByPeer(reason))) => {
                return Err(PeerClosed(reason).into());
            }
            Err(Failure::Session(e)) => {
                let e = anyhow::Error::new(e).context(format!("session {session} failed"));
                return explain_end(&conn, Err(e)).await;
            }
            Err(Failure::Input(e)) => {
                // The receiver keeps the session for a restart; it learns why we stopped.
                abort_with_reason(&conn, Side::Sender, &e);
                let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
                return Err(e);
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish();
    }
    if let (Some(conn), Some(_)) = (&last_conn, plan.stats_interval) {
        eprintln!("{}", stats_line("send", conn, started));
    }
    let stats = tx.stats();
    eprintln!(
        "surelink send: session {session} complete: {} messages sent, {} re-sent after a resume, \
         {} connections in {:.1?}; {}",
        stats.messages_sent,
        stats.messages_resent,
        stats.attaches,
        started.elapsed(),
        super::journal_summary(&tx.journal_metrics())
    );
    drop(tx);
    finish_state(&dir, plan.keep_state)
}

/// Removes the state directory of a complete session (unless `keep`) and says so.
fn finish_state(dir: &Path, keep: bool) -> anyhow::Result<()> {
    if keep {
        eprintln!(
            "surelink send: state kept in {} (--keep-state); remove it before sending other input",
            dir.display()
        );
        return Ok(());
    }
    super::remove_state(dir, "send")
}

/// True if the receiver closed the connection on purpose (with a reason).
fn refused(e: &SessionError) -> bool {
    matches!(
        e,
        SessionError::ConnectionLost(surelink::ConnectionError::PeerClosed { .. })
    )
}

/// Why streaming stopped.
enum Failure {
    Session(SessionError),
    Input(anyhow::Error),
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        Failure::Session(e)
    }
}

/// Sends the rest of the input from the session's resume cursor, then ends
/// the session.
async fn stream(
    tx: &mut DurableSender,
    file: &mut tokio::fs::File,
    chunk: usize,
    batch_bytes: usize,
    progress: &Progress,
) -> Result<(), Failure> {
    if tx.is_complete() {
        return Ok(tx.finish().await?);
    }
    let input = |e: std::io::Error| {
        Failure::Input(anyhow::Error::new(e).context(format!("cannot read {}", progress.name())))
    };
    let mut position = tx.resume_cursor();
    file.seek(std::io::SeekFrom::Start(position))
        .await
        .map_err(input)?;
    loop {
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut at_end = false;
        while bytes < batch_bytes && !at_end {
            let mut buf = BytesMut::with_capacity(chunk);
            while buf.len() < chunk {
                let room = chunk - buf.len();
                let mut limited = (&mut buf).limit(room);
                if file.read_buf(&mut limited).await.map_err(input)? == 0 {
                    at_end = true;
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            position += buf.len() as u64;
            bytes += buf.len();
            batch.push(Outgoing {
                channel: DATA_CHANNEL,
                data: buf.freeze(),
                cursor: position,
            });
        }
        if batch.is_empty() {
            return Ok(tx.finish().await?);
        }
        // On failure the batch may not be queued: the next call starts
        // again from the session's resume cursor.
        tx.send_batch(batch).await?;
        progress.set_position(position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_window_three_attempts_in_a_row_then_give_up() {
        let now = Instant::now();
        let mut retry = Retry::new(Duration::ZERO);
        assert_eq!(retry.failed(now), Some(RETRY_BACKOFF));
        assert_eq!(retry.failed(now), Some(RETRY_BACKOFF * 2));
        assert_eq!(retry.failed(now), None);
        retry.resumed();
        assert_eq!(retry.failed(now), Some(RETRY_BACKOFF));
    }

    #[test]
    fn within_the_window_the_backoff_doubles_up_to_its_cap_then_gives_up() {
        let start = Instant::now();
        let mut retry = Retry::new(Duration::from_secs(60));
        let mut pauses = Vec::new();
        let mut now = start;
        while let Some(pause) = retry.failed(now) {
            pauses.push(pause);
            now += pause;
            assert!(pauses.len() < 100, "never gave up");
        }
        assert_eq!(&pauses[..3], [100, 200, 400].map(Duration::from_millis));
        assert!(pauses.iter().all(|p| *p <= MAX_RETRY_BACKOFF));
        assert_eq!(pauses.last(), Some(&MAX_RETRY_BACKOFF));
        let waited: Duration = pauses.iter().sum();
        assert!(waited < Duration::from_secs(60), "{waited:?}");
        assert!(
            waited + MAX_RETRY_BACKOFF >= Duration::from_secs(60),
            "{waited:?}"
        );
    }
}
