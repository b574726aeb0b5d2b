//! `surelink send --in FILE --state DIR`: a durable session that survives
//! restarts of either side.
//!
//! The input is read in `--chunk` messages, in batches of up to
//! [`BATCH_BYTES`]; each batch is pushed to the journal (with the input
//! offset after each message) and committed before it is sent. Where to read
//! next always comes from the session ([`DurableSender::resume_cursor`]): after
//! a restart it is the offset after the last message ever queued, so bytes the
//! receiver confirmed are never read again and bytes still in the outbox are
//! re-sent from the journal, not from the file.
//!
//! When the connection fails (the receiver was killed: its restarted process
//! answers with a stateless reset, or, if it does not come back, no packet
//! for a second; or the connection was lost), the sender connects again and resumes
//! the session. It gives up when a connection cannot be made within
//! `--connect-timeout`, or after [`MAX_FAILED_ATTEMPTS`] connections in a row
//! that failed before the session could resume; then a restart with the same
//! arguments picks the session up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::{BufMut as _, BytesMut};
use surelink::session::{DurableSender, Outgoing, SessionError, DATA_HEADER_LEN};
use surelink::{Endpoint, EndpointConfig};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::args::wildcard_for;
use crate::cmd::send::SendArgs;
use crate::delivery::DATA_CHANNEL;
use crate::report::{spawn_reporter, stats_line};

/// Input bytes read and committed to the journal as one batch (one commit,
/// one fsync under `--durability always`).
const BATCH_BYTES: usize = 1 << 20;

/// Connections in a row that may fail before the session resumes.
const MAX_FAILED_ATTEMPTS: u32 = 3;
/// Pause before connecting again after the n-th failed attempt in a row: n × this.
/// (A connection that resumed and then failed — e.g. reset by a restarted
/// receiver — is replaced at once.)
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Runs `surelink send --state DIR` (stream mode from a file).
pub async fn run(
    args: &SendArgs,
    dir: &Path,
    mut config: EndpointConfig,
    remote: SocketAddr,
    extra_paths: Vec<SocketAddr>,
) -> anyhow::Result<()> {
    if args.from.is_some() {
        bail!("--state works with a file (--in FILE), not with --from");
    }
    let path = match args.input.as_deref() {
        Some(path) if path != "-" => PathBuf::from(path),
        _ => bail!("--state needs --in FILE: standard input cannot be read again after a restart"),
    };
    if args.delivery.delivery().is_some() {
        bail!("--state needs reliable delivery: drop --deadline / --unreliable");
    }
    let max_chunk = config.protocol.max_message_size - DATA_HEADER_LEN;
    if args.chunk > max_chunk {
        bail!("with --state, --chunk must be at most {max_chunk} bytes");
    }
    let options = args.state.session_options()?;

    // The input's identity: resuming with another file (or a modified one) is refused.
    let meta =
        std::fs::metadata(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let label = format!(
        "{} ({} bytes, modified {modified})",
        canonical.display(),
        meta.len()
    );
    let mut file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;

    let mut tx = DurableSender::open_dir(dir, &label, options)
        .with_context(|| format!("cannot open the state in {}", dir.display()))?;
    let session = tx.session_id();
    if tx.is_complete() {
        eprintln!(
            "surelink send: session {session} is already complete (state in {}): nothing to send",
            dir.display()
        );
        return Ok(());
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

    config.protocol.reset_secret = Some(super::reset_secret(dir)?);
    let bind = args.bind.unwrap_or_else(|| wildcard_for(remote));
    let endpoint = Endpoint::client_with_config(bind, config)
        .with_context(|| format!("cannot bind {bind}"))?;
    let started = Instant::now();
    let mut failed = 0;
    let mut last_conn = None;
    loop {
        let conn = endpoint
            .connect(remote)
            .await
            .map_err(|e| crate::security::connect_error(&args.to[0], e))?;
        for addr in &extra_paths {
            conn.add_path(*addr);
        }
        tracing::info!(%remote, local = %endpoint.local_addr(), "connected");
        if failed == 0 && last_conn.is_none() {
            crate::security::announce_server(&conn, args.security.peer_key.is_some());
        }
        last_conn = Some(conn.clone());
        let _reporter = spawn_reporter(args.stats.stats_interval, "send", &conn);
        let resumed = match tx.attach(conn.clone()).await {
            Ok(resumed) => resumed,
            // A receiver that closes the connection during the handshake
            // refuses it (e.g. it runs without --state): no point retrying.
            Err(e) if e.is_connection() && !refused(&e) && failed + 1 < MAX_FAILED_ATTEMPTS => {
                failed += 1;
                eprintln!("surelink send: {e}; connecting again");
                tokio::time::sleep(RETRY_BACKOFF * failed).await;
                continue;
            }
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("cannot resume session {session}"));
                return crate::security::explain_refusal(&conn, Err(e)).await;
            }
        };
        failed = 0;
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
                 re-sent {} from the journal; continuing the input at byte {}",
                resumed.resent,
                tx.resume_cursor()
            );
        } else {
            eprintln!("surelink send: session {session}: the receiver accepted it; sending");
        }
        // A batch never exceeds the outbox, which would admit it whole.
        let batch_bytes = BATCH_BYTES.min(args.state.max_unconfirmed);
        match stream(&mut tx, &mut file, args.chunk, batch_bytes).await {
            Ok(()) => break,
            Err(Failure::Session(e)) if e.is_connection() => {
                eprintln!("surelink send: {e}; connecting again");
            }
            Err(Failure::Session(e)) => {
                return Err(anyhow::Error::new(e).context(format!("session {session} failed")))
            }
            Err(Failure::Input(e)) => return Err(e),
        }
    }
    if let (Some(conn), Some(_)) = (&last_conn, args.stats.stats_interval) {
        eprintln!("{}", stats_line("send", conn, started));
    }
    let stats = tx.stats();
    eprintln!(
        "surelink send: session {session} complete: {} messages sent, {} re-sent after a resume, \
         {} connections; {}",
        stats.messages_sent,
        stats.messages_resent,
        stats.attaches,
        super::journal_summary(&tx.journal_metrics())
    );
    Ok(())
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
) -> Result<(), Failure> {
    if tx.is_complete() {
        return Ok(tx.finish().await?);
    }
    let input =
        |e: std::io::Error| Failure::Input(anyhow::Error::new(e).context("cannot read the input"));
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
    }
}
