//! `surelink send`: read a byte stream (or UDP datagrams) and send it to a
//! `surelink recv` over one connection.
//!
//! Stream mode (`--in PATH|-`) reads the input and sends what each read returns
//! (at most `--chunk` bytes) as one message, so the receiver reproduces the byte
//! stream exactly while interactive input still goes out at once. Gateway mode
//! (`--from udp://HOST:PORT`) turns each datagram received on that socket into
//! one message, until Ctrl-C or SIGTERM. Either way the connection is then closed
//! gracefully, and the command succeeds only once every byte was acknowledged.
//! A gateway waiting for its last acknowledgements gives up at a second Ctrl-C
//! or SIGTERM (exit status 130), as a receiver that stopped answering could
//! otherwise hold it until the idle timeout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::{BufMut, BytesMut};
use clap::Args;
use surelink::{Bytes, Connection, Endpoint, EndpointConfig};
use surelink_session::DATA_HEADER_LEN;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::args::{parse_duration, parse_host_port, parse_size, wildcard_for, HostPort};
use crate::ending::{abort_with_reason, explain_end, Side};
use crate::exit::UsageError;
use crate::progress::{summary, Progress};
use crate::report::{spawn_reporter, stats_line, StatsArgs};
use crate::state::send::DurableSend;

/// Arguments of `surelink send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The receiving peer (`surelink recv --listen`): HOST:PORT. Repeat for
    /// more paths to the same receiver (the first is the primary).
    #[arg(long, value_name = "ADDR", value_parser = parse_host_port)]
    #[cfg_attr(feature = "etcd", arg(required_unless_present = "group"))]
    #[cfg_attr(not(feature = "etcd"), arg(required = true))]
    pub to: Vec<HostPort>,
    /// How several `--to` paths are used.
    #[arg(long, value_enum, default_value = "backup")]
    pub mode: crate::paths::ModeArg,
    /// Stream mode: read the bytes to send from this file, or `-` for stdin (the default).
    #[arg(long = "in", value_name = "PATH|-", conflicts_with = "from")]
    pub input: Option<String>,
    /// Gateway mode: bind this UDP address and send each datagram received on it as
    /// one message, until Ctrl-C or SIGTERM. Port 0 picks a free port (printed on stderr).
    #[arg(long, value_name = "udp://HOST:PORT", value_parser = parse_host_port)]
    pub from: Option<HostPort>,
    /// Give up if the receiver has not answered within this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Largest message in stream mode, in bytes (e.g. 65536, 64KiB, 1MiB; at most 16MiB).
    #[arg(long, value_name = "BYTES", default_value = "64KiB", value_parser = parse_size)]
    pub chunk: usize,
    /// Local address to send from (default: any address, any port).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    #[command(flatten)]
    pub idle: crate::args::IdleTimeoutArgs,
    #[command(flatten)]
    pub delivery: crate::delivery::DeliveryArgs,
    #[command(flatten)]
    pub congestion: crate::congestion::CongestionArgs,
    #[command(flatten)]
    pub fec: crate::fec::FecArgs,
    #[command(flatten)]
    pub stats: StatsArgs,
    #[command(flatten)]
    pub security: crate::security::SendSecurityArgs,
    #[command(flatten)]
    pub state: crate::state::SendStateArgs,
    #[cfg(feature = "etcd")]
    #[command(flatten)]
    pub group: crate::group::GroupArgs,
}

/// Runs `surelink send`.
pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    args.stats.metrics.serve("send").await?;
    let mut config = EndpointConfig::default().with_connect_timeout(args.connect_timeout);
    args.idle.apply(&mut config.protocol)?;
    config.protocol.security = args.security.security()?;
    config.protocol.congestion = args.congestion.congestion_control()?;
    args.fec.apply(&mut config.protocol);
    let max_chunk = config.protocol.max_message_size;
    if args.chunk == 0 || args.chunk > max_chunk {
        bail!(UsageError(format!(
            "--chunk must be between 1 and {max_chunk} bytes, not {}",
            args.chunk
        )));
    }
    config.protocol.path_mode = args.mode.into();
    #[cfg(feature = "etcd")]
    if let Some(group) = args.group.connect().await? {
        let Some(dir) = args.state.common.state.clone() else {
            bail!(UsageError(
                "--group needs --state DIR: after a takeover the sender resumes the session \
                 with the new leader by replaying its durable outbox, which lives there"
                    .into()
            ));
        };
        if !args.to.is_empty() {
            bail!(UsageError(
                "--group finds the receiver in etcd: drop --to".into()
            ));
        }
        let target = crate::state::send::Target::Group {
            leaders: Box::new(crate::group::Leaders::new(group)),
            patience: args.group.lease_ttl * 2,
        };
        let bind = args
            .bind
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut plan = durable_plan(&args, dir, config, target, bind, Vec::new())?;
        if plan.reconnect_for.is_zero() {
            plan.reconnect_for = GROUP_RECONNECT_FOR;
        }
        return crate::state::send::run(plan).await;
    }
    let remote = args.to[0].resolve().await?;
    let mut extra_paths = Vec::new();
    for to in &args.to[1..] {
        extra_paths.push(to.resolve().await?);
    }
    if let Some(dir) = args.state.common.state.clone() {
        let target = crate::state::send::Target::Fixed(args.to[0].clone(), remote);
        let bind = args.bind.unwrap_or_else(|| wildcard_for(remote));
        let plan = durable_plan(&args, dir, config, target, bind, extra_paths)?;
        return crate::state::send::run(plan).await;
    }

    // Open the input before connecting, so a bad path fails at once.
    let mut source = match &args.from {
        Some(from) => {
            let addr = from.resolve().await?;
            let socket = crate::net::bind_udp(addr)?;
            let local = socket.local_addr()?;
            eprintln!("surelink send: gateway listening on udp://{local}");
            Source::Datagrams(socket)
        }
        None => match args.input.as_deref() {
            None | Some("-") => Source::Stream(Box::new(tokio::io::stdin()), None),
            Some(path) => {
                let path = PathBuf::from(path);
                let file = open_input(&path).await?;
                let len = file.metadata().await.map_or(0, |m| m.len());
                let progress = Progress::start("send", len, &path.display().to_string());
                Source::Stream(Box::new(file), Some(progress))
            }
        },
    };

    let bind = args.bind.unwrap_or_else(|| wildcard_for(remote));
    let endpoint = Endpoint::client_with_config(bind, config)
        .with_context(|| format!("cannot bind {bind}"))?;
    let _metrics = crate::metrics::watch(crate::metrics::Source::Endpoint(endpoint.clone()));
    let conn = endpoint
        .connect(remote)
        .await
        .map_err(|e| crate::security::connect_error(&args.to[0], e))?;
    for addr in extra_paths {
        conn.add_path(addr);
        tracing::info!(%addr, "path added");
    }
    tracing::info!(%remote, local = %endpoint.local_addr(), "connected");
    args.delivery.apply(&conn);
    crate::security::announce_server(&conn, args.security.peer_key.is_some());
    let started = Instant::now();
    let reporter = spawn_reporter(args.stats.stats_interval, "send", &conn);

    let transfer = async {
        match &mut source {
            Source::Stream(reader, progress) => {
                if let Some(progress) = progress {
                    progress.watch(&conn);
                }
                send_stream(&conn, reader, progress.as_ref(), args.chunk).await?
            }
            Source::Datagrams(socket) => send_datagrams(&conn, socket).await?,
        }
        let closing = conn.close();
        if matches!(source, Source::Datagrams(_)) {
            // Stopped by a signal: waiting for the last acknowledgements can
            // take up to the idle timeout; a second signal gives up on them.
            tokio::select! {
                closed = closing => closed,
                () = crate::shutdown::second_signal() => bail!(crate::exit::Interrupted(
                    "interrupted again while closing: datagrams not yet acknowledged were \
                     dropped"
                        .into()
                )),
            }
        } else {
            closing.await
        }
        .context("the transfer did not complete: not everything was acknowledged")
    };
    let result = transfer.await;
    if let Err(e) = &result {
        // Our own failure (the input): the receiver learns why at once.
        abort_with_reason(&conn, Side::Sender, e);
        let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
    }
    // A receiver that refused us after our side of the handshake completed
    // (allow-list, pre-shared key), or closed with a reason of its own (its
    // disk is full), ends the transfer: say so plainly.
    explain_end(&conn, result).await?;
    drop(reporter);
    if args.stats.stats_interval.is_some() {
        eprintln!("{}", stats_line("send", &conn, started));
    }
    let stats = conn.stats();
    if let Source::Stream(_, Some(progress)) = &source {
        progress.finish();
        let what = format!("sent {}, every byte acknowledged", progress.name());
        eprintln!(
            "{}",
            summary(
                "send",
                &what,
                stats.payload_bytes_sent,
                started.elapsed(),
                &stats
            )
        );
    }
    tracing::info!(
        messages = stats.messages_acked,
        bytes = stats.payload_bytes_sent,
        elapsed = ?started.elapsed(),
        "all data acknowledged; closed"
    );
    Ok(())
}

/// Checks the options of `send --state` and gathers what the durable sender needs.
fn durable_plan(
    args: &SendArgs,
    dir: PathBuf,
    config: EndpointConfig,
    target: crate::state::send::Target,
    bind: SocketAddr,
    extra_paths: Vec<SocketAddr>,
) -> anyhow::Result<DurableSend> {
    if args.from.is_some() {
        bail!(UsageError(
            "--state works with a file (--in FILE), not with --from".into()
        ));
    }
    let input = match args.input.as_deref() {
        Some(path) if path != "-" => PathBuf::from(path),
        _ => bail!(UsageError(
            "--state needs --in FILE: standard input cannot be read again after a restart".into()
        )),
    };
    if args.delivery.delivery().is_some() {
        bail!(UsageError(
            "--state needs reliable delivery: drop --deadline / --unreliable".into()
        ));
    }
    let max_chunk = config.protocol.max_message_size - DATA_HEADER_LEN;
    if args.chunk > max_chunk {
        bail!(UsageError(format!(
            "with --state, --chunk must be at most {max_chunk} bytes"
        )));
    }
    Ok(DurableSend {
        input,
        dir,
        chunk: args.chunk,
        options: args.state.session_options()?,
        bind,
        config,
        target,
        extra_paths,
        peer_key_pinned: args.security.peer_key.is_some(),
        stats_interval: args.stats.stats_interval,
        reconnect_for: args.state.reconnect_for,
        keep_state: args.state.common.keep_state,
    })
}

/// `--reconnect-for` of a sender following a receiver group when none is
/// given: long enough for several takeovers (each about a lease TTL).
#[cfg(feature = "etcd")]
const GROUP_RECONNECT_FOR: Duration = Duration::from_secs(30);

/// How long a side that aborted waits for its CLOSE to leave before exiting.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Opens the input file, failing before any connection is made if it cannot
/// be read (a directory opens but cannot be read).
pub async fn open_input(path: &Path) -> anyhow::Result<tokio::fs::File> {
    let cannot = || format!("cannot read {}", path.display());
    let file = tokio::fs::File::open(path).await.with_context(cannot)?;
    if file.metadata().await.with_context(cannot)?.is_dir() {
        return Err(std::io::Error::from(std::io::ErrorKind::IsADirectory)).with_context(cannot);
    }
    Ok(file)
}

/// Where the data comes from.
enum Source {
    /// A byte stream, with a progress bar if it is a file.
    Stream(Box<dyn AsyncRead + Unpin + Send>, Option<Progress>),
    Datagrams(tokio::net::UdpSocket),
}

/// Sends the byte stream until end of input.
async fn send_stream(
    conn: &Connection,
    reader: &mut Box<dyn AsyncRead + Unpin + Send>,
    progress: Option<&Progress>,
    chunk: usize,
) -> anyhow::Result<()> {
    let mut buf = BytesMut::with_capacity(chunk);
    loop {
        buf.reserve(chunk);
        let mut limited = (&mut buf).limit(chunk);
        let read = tokio::select! {
            read = reader.read_buf(&mut limited) => read.with_context(|| {
                format!("cannot read {}", progress.map_or("stdin", |p| p.name()))
            })?,
            ended = conn.closed() => return Err(connection_ended(ended)),
        };
        if read == 0 {
            return Ok(());
        }
        let message: Bytes = buf.split().freeze();
        conn.send(message).await.context("cannot send")?;
        if let Some(progress) = progress {
            progress.add(read as u64);
        }
    }
}

/// Sends each datagram of `socket` as one message until Ctrl-C or SIGTERM.
async fn send_datagrams(conn: &Connection, socket: &tokio::net::UdpSocket) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    let stop = crate::shutdown::signal();
    tokio::pin!(stop);
    let mut count = 0u64;
    loop {
        tokio::select! {
            biased;
            () = &mut stop => {
                tracing::info!(datagrams = count, "stopping: closing the connection");
                return Ok(());
            }
            ended = conn.closed() => return Err(connection_ended(ended)),
            received = socket.recv_from(&mut buf) => {
                let (n, from) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "gateway socket receive error");
                        continue;
                    }
                };
                tracing::trace!(%from, len = n, "datagram in");
                conn.send(Bytes::copy_from_slice(&buf[..n])).await.context("cannot send")?;
                count += 1;
            }
        }
    }
}

/// The error for a connection that ended before the sender was done.
fn connection_ended(error: Option<surelink::ConnectionError>) -> anyhow::Error {
    match error {
        Some(e) => {
            anyhow::Error::new(e).context("the connection ended before the transfer completed")
        }
        None => anyhow::anyhow!("the receiver closed the connection before the transfer completed"),
    }
}
