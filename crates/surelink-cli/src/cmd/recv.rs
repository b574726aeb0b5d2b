//! `surelink recv`: accept `surelink send` connections and write what arrives.
//!
//! Stream mode (`--out PATH|-`, stdout by default) writes the bytes of every
//! message, in order, exactly. A file is written under a temporary name beside
//! PATH and renamed over PATH when the first sender has finished: an existing
//! PATH is left untouched until then, so a receiver that fails (cannot bind,
//! interrupted, the sender failed) never destroys what was there. Senders are served one after another: the next
//! connection is taken from the accept queue only when the previous one ended,
//! so each sender's stream lands whole, in the order the connections arrived
//! (a waiting sender is held back by flow control meanwhile).
//!
//! Datagram mode (`--to udp://HOST:PORT`) sends each message as one UDP
//! datagram to that address. Senders are served concurrently; each one's
//! datagrams leave in its message order. With `--tag-source` each datagram
//! starts with the sender's [`SourceHeader`](crate::source::SourceHeader);
//! with `--route KEY=udp://…` a sender's datagrams go to an address of their
//! own ([`crate::routes`]).
//!
//! Merge mode (`--merge`, in [`crate::merge_out`]) serves senders
//! concurrently and writes their messages to `--out` or `--to` as records in
//! send-time order, through each sender's clock estimate; with `--state`
//! (`--out FILE` only) durably, across restarts.
//!
//! Per-source mode (`--out-dir DIR`, in [`crate::out_dir`]) serves senders
//! concurrently, each into its own file, listed in `DIR/index.jsonl`.
//!
//! With `--once` the command exits after the first sender closed gracefully and
//! all of its output was written (and, for a file, synced to disk): 0 if that
//! connection ended gracefully, 1 if it failed. Without `--once` it serves
//! senders until Ctrl-C or SIGTERM, and a failed sender is only logged.
//!
//! A stop (Ctrl-C or SIGTERM, and with `--once` the first sender's end) loses
//! nothing the transport acknowledged to a sender ([`crate::stop`]): the
//! receiver takes no new connection, reads what every connection (and every
//! one waiting to be accepted) already holds, without waiting for new data
//! (at most 10 s), including the messages `--playout` still holds back
//! (released early, in order), writes it out as at a sender's end, and
//! exits 0; a second signal ends it at once (130). A sender still connected is then aborted:
//! `--out-dir` lists its file as incomplete. In stream mode the stop reads
//! the sender being served and, while each one turns out to have finished,
//! the senders waiting after it; a file takes its real name only if a sender
//! finished, so a stop in the middle of the first stream leaves an existing
//! PATH as it was (and with `--once` exits 130). With `--state` a sender is
//! told a message is safe only once it is checkpointed, so a stop loses
//! nothing it was told; the rest is sent again when it resumes.
//!
//! Every connection attempt is reported on stderr: accepted ones with the
//! sender's key fingerprint, refused ones (not on `--allow`, pre-shared key or
//! security mode mismatch) with the reason. A refused attempt never reaches
//! the accept queue, so with `--once` it is not "the first sender": the
//! receiver keeps waiting for one it accepts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use surelink::{Connection, Endpoint, EndpointConfig};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::args::{parse_host_port, HostPort};
use crate::ending::{abort_with_reason, Side};
use crate::exit::UsageError;
use crate::progress::{summary, Progress};
use crate::report::{spawn_reporter, stats_line, StatsArgs};
use crate::routes::{Destination, Routes};
use crate::state::recv::DurableRecv;
use crate::stop::{End, Next, Stopping};

/// Arguments of `surelink recv`.
#[derive(Debug, Args)]
pub struct RecvArgs {
    /// Address to listen on, HOST:PORT (port 0 picks a free port; the address is
    /// printed on stderr). Repeat to listen on several addresses: each can be a
    /// path of the same connection (`send --to A --to B`).
    #[arg(long, value_name = "ADDR", value_parser = parse_host_port, required = true)]
    pub listen: Vec<HostPort>,
    /// How several paths are used (the sender's choice governs its data).
    #[arg(long, value_enum, default_value = "backup")]
    pub mode: crate::paths::ModeArg,
    /// Stream mode: write the received bytes to this file, or `-` for stdout (the default).
    /// The bytes go to a temporary file beside it, renamed over PATH once the first sender
    /// has finished: an existing file is replaced only then, never lost to a failed run. A
    /// stop (Ctrl-C, SIGTERM) first writes out what the connection already holds: the file
    /// is completed if the sender had finished, and left as it was if it was mid-stream.
    #[arg(long = "out", value_name = "PATH|-", conflicts_with_all = ["to", "out_dir"])]
    pub output: Option<String>,
    /// Stream mode, one file per sender: write each sender's stream to DIR/SOURCE-SESSION.bin
    /// (SOURCE: its key fingerprint; SESSION: a new id per connection, or the durable session's
    /// id with --state) and list the files in DIR/index.jsonl (source, file, bytes, start/end
    /// time, complete or not). Senders are served concurrently; no existing file is overwritten.
    /// With --state, each sender's session is durable and resumes on its own.
    #[arg(long, value_name = "DIR", conflicts_with = "to")]
    pub out_dir: Option<PathBuf>,
    /// Datagram mode: send each received message as one UDP datagram to this address.
    #[arg(long, value_name = "udp://HOST:PORT", value_parser = parse_host_port)]
    pub to: Option<HostPort>,
    /// Datagram mode: put a 16-byte source header before each datagram: the sender's key
    /// fingerprint (8 bytes), then the message's sequence number on its connection (8 bytes,
    /// big-endian).
    #[arg(long, requires = "to", conflicts_with = "merge")]
    pub tag_source: bool,
    /// Datagram mode: send the messages of the sender with this public key (the 64 hex digits
    /// `surelink keygen` prints; the sender uses `send --key`) to this address instead of --to.
    /// Repeat for more senders; senders without a route go to --to.
    #[arg(long, value_name = "KEY=udp://HOST:PORT", value_parser = crate::routes::parse_route,
          requires = "to", conflicts_with = "merge")]
    pub route: Vec<crate::routes::Route>,
    /// Exit after the first sender has closed and its output is written.
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub idle: crate::args::IdleTimeoutArgs,
    #[command(flatten)]
    pub drivers: crate::args::DriversArgs,
    #[command(flatten)]
    pub playout: crate::delivery::PlayoutArgs,
    #[command(flatten)]
    pub stats: StatsArgs,
    #[command(flatten)]
    pub security: crate::security::RecvSecurityArgs,
    #[command(flatten)]
    pub state: crate::state::RecvStateArgs,
    #[command(flatten)]
    pub merge: crate::merge_out::MergeArgs,
    #[cfg(feature = "etcd")]
    #[command(flatten)]
    pub group: crate::group::GroupArgs,
}

/// Runs `surelink recv`.
pub async fn run(args: RecvArgs) -> anyhow::Result<()> {
    args.stats.metrics.serve("recv").await?;
    // Keys first: a bad key file fails before the output file is truncated.
    let security = args.security.security()?;
    let mut listen = Vec::new();
    for l in &args.listen {
        listen.push(l.resolve().await?);
    }
    let mut config = EndpointConfig::default();
    args.playout.apply(&mut config.protocol);
    args.idle.apply(&mut config.protocol)?;
    args.drivers.apply(&mut config);
    config.protocol.security = security;
    config.protocol.path_mode = args.mode.into();
    #[cfg(feature = "etcd")]
    if let Some(group) = args.group.connect().await? {
        let plan = group_plan(&args, group, listen, config).await?;
        return crate::group::recv::run(plan).await;
    }
    // Every mode below stops cleanly on a signal; a group member keeps the
    // default action (its checkpoints are in etcd).
    crate::shutdown::install();
    if let (Some(state), Some(out)) = (&args.state.common.state, &args.out_dir) {
        return crate::out_dir::durable::run(crate::out_dir::durable::DurableOutDir {
            out: crate::out_dir::OutDir::open(out)?,
            state: state.clone(),
            options: args.state.session_options()?,
            listen,
            config,
            once: args.once,
            keep_state: args.state.common.keep_state,
        })
        .await;
    }
    if let (Some(state), true) = (&args.state.common.state, args.merge.merge) {
        let plan = durable_merge_plan(&args, state.clone(), listen, config)?;
        return crate::merge_out::durable::run(plan).await;
    }
    if !args.route.is_empty() && args.state.common.state.is_some() {
        bail!(UsageError(
            "--route is for the datagram mode without --state: run it without --state".into()
        ));
    }
    if let Some(dir) = args.state.common.state.clone() {
        let plan = durable_plan(&args, dir, listen, config)?;
        return crate::state::recv::run(plan).await;
    }
    let sink = match (&args.to, &args.out_dir) {
        (_, Some(dir)) => Sink::Dir(crate::out_dir::OutDir::open(dir)?),
        (Some(to), None) => {
            let default = Destination::bind(to.resolve().await?)?;
            Sink::Datagrams(Routes::resolve(default, &args.route).await?)
        }
        (None, None) => match args.output.as_deref() {
            None | Some("-") => Sink::Stream(Output::Stdout(tokio::io::stdout())),
            Some(path) => Sink::Stream(Output::File(PendingFile::create(PathBuf::from(path))?)),
        },
    };
    let idle_timeout = config.protocol.idle_timeout;
    let endpoint = Endpoint::bind_many(&listen, config)
        .with_context(|| format!("cannot listen on {listen:?}"))?;
    let _metrics = crate::metrics::watch(crate::metrics::Source::Endpoint(endpoint.clone()));
    for addr in endpoint.local_addrs() {
        eprintln!("surelink recv: listening on {addr}");
    }
    crate::security::announce_receiver(&endpoint);
    crate::security::spawn_handshake_log(&endpoint);

    // Every mode stops on Ctrl-C or SIGTERM by itself, writing out what the
    // connections already hold (see crate::stop); a second signal ends it
    // at once.
    let outcome = crate::stop::unless_interrupted_again(
        async {
            match sink {
                _ if args.merge.merge => {
                    crate::merge_out::serve(&endpoint, sink, &args.merge, args.once).await
                }
                Sink::Stream(out) => serve_stream(&endpoint, out, &args).await,
                Sink::Dir(out) => crate::out_dir::serve(&endpoint, out, args.once).await,
                Sink::Datagrams(routes) => serve_datagrams(&endpoint, routes, &args).await,
            }
        },
        "the output is not complete",
    )
    .await;
    // Let the last connections finish their close handshake (we acknowledge
    // the sender's CLOSE while draining), so the sender's close completes
    // too; those still open at a stop were aborted, which needs less.
    let linger = if crate::shutdown::signalled() {
        crate::cmd::send::CLOSE_LINGER
    } else {
        idle_timeout
    };
    if tokio::time::timeout(linger, endpoint.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("connections still draining at exit");
    }
    let stats = endpoint.stats();
    tracing::info!(
        malformed = stats.protocol.malformed,
        unknown_connection = stats.protocol.unknown_connection,
        refused = stats.protocol.refused,
        accepted = stats.protocol.accepted,
        "datagrams dropped by the endpoint"
    );
    outcome
}

/// Checks the options of `recv --state` and gathers what the durable receiver needs.
fn durable_plan(
    args: &RecvArgs,
    dir: PathBuf,
    listen: Vec<SocketAddr>,
    config: EndpointConfig,
) -> anyhow::Result<DurableRecv> {
    if args.to.is_some() {
        bail!(UsageError(
            "--state works with a file (--out FILE), not with --to".into()
        ));
    }
    let output = match args.output.as_deref() {
        Some(path) if path != "-" => PathBuf::from(path),
        _ => bail!(UsageError(
            "--state needs --out FILE or --out-dir DIR: standard output cannot be rewound after a restart".into()
        )),
    };
    Ok(DurableRecv {
        output,
        dir,
        options: args.state.session_options()?,
        listen,
        config,
        once: args.once,
        keep_state: args.state.common.keep_state,
    })
}

/// Checks the options of `recv --merge --state` and gathers what the durable
/// merge needs.
fn durable_merge_plan(
    args: &RecvArgs,
    state: PathBuf,
    listen: Vec<SocketAddr>,
    config: EndpointConfig,
) -> anyhow::Result<crate::merge_out::durable::DurableMergePlan> {
    let output = match (&args.to, args.output.as_deref()) {
        (None, Some(path)) if path != "-" => PathBuf::from(path),
        _ => bail!(UsageError(
            "--merge --state needs --out FILE: the merged output is cut back to its last \
             checkpoint after a restart, which standard output and datagrams cannot be"
                .into()
        )),
    };
    Ok(crate::merge_out::durable::DurableMergePlan {
        output,
        state,
        merge: args.merge.config(),
        options: args.state.session_options()?,
        listen,
        config,
        once: args.once,
        keep_state: args.state.common.keep_state,
    })
}

/// Checks the options of `recv --group` and gathers what the group member needs.
#[cfg(feature = "etcd")]
async fn group_plan(
    args: &RecvArgs,
    group: surelink_etcd::Group,
    listen: Vec<SocketAddr>,
    config: EndpointConfig,
) -> anyhow::Result<crate::group::recv::GroupRecv> {
    use crate::group::recv::GroupOutput;
    if args.state.common.state.is_some() {
        bail!(UsageError(
            "--group keeps the session's state in etcd: drop --state".into()
        ));
    }
    if args.out_dir.is_some() || args.merge.merge || !args.route.is_empty() {
        bail!(UsageError(
            "--group serves one session at a time: it cannot be combined with --out-dir, \
             --merge or --route"
                .into()
        ));
    }
    let output = match (&args.to, args.output.as_deref()) {
        (Some(to), _) => GroupOutput::Datagrams(to.resolve().await?),
        (None, Some(path)) if path != "-" => GroupOutput::File(PathBuf::from(path)),
        _ => bail!(UsageError(
            "--group needs --out FILE (on storage every member reaches) or --to udp://HOST:PORT"
                .into()
        )),
    };
    if listen.iter().any(|a| a.port() == 0) {
        bail!(UsageError(
            "--group needs --listen with a fixed port: senders find the leader by it".into()
        ));
    }
    let advertised = args.group.advertised(&listen)?;
    Ok(crate::group::recv::GroupRecv {
        group,
        output,
        options: args.state.session_options()?,
        listen,
        advertised,
        config,
        once: args.once,
    })
}

/// Where received messages go.
pub(crate) enum Sink {
    Stream(Output),
    /// One file per sender (`--out-dir`).
    Dir(std::sync::Arc<crate::out_dir::OutDir>),
    /// One datagram per message (`--to`), per sender where `--route` says.
    Datagrams(Routes),
}

/// The byte-stream output.
pub(crate) enum Output {
    Stdout(tokio::io::Stdout),
    File(PendingFile),
}

/// An output file written under a temporary name in PATH's directory until a
/// sender has finished, then renamed over PATH (the open handle follows the
/// rename, so later senders append to PATH itself). Dropped before that, the
/// temporary file is removed and PATH was never touched.
pub(crate) struct PendingFile {
    file: tokio::fs::File,
    path: PathBuf,
    /// The temporary name, until the rename.
    temp: Option<tempfile::TempPath>,
}

impl PendingFile {
    /// Creates the temporary file beside `path`; fails, touching nothing, if
    /// `path` is a directory or its directory cannot be written.
    fn create(path: PathBuf) -> anyhow::Result<Self> {
        if path.is_dir() {
            return Err(std::io::Error::from(std::io::ErrorKind::IsADirectory))
                .with_context(|| format!("cannot write {}", path.display()));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".part")
            .tempfile_in(&dir)
            .with_context(|| {
                format!(
                    "cannot create a file in {} for {}",
                    dir.display(),
                    path.display()
                )
            })?;
        let (file, temp) = temp.into_parts();
        Ok(Self {
            file: tokio::fs::File::from_std(file),
            path,
            temp: Some(temp),
        })
    }

    /// Renames the temporary file over the output path (once).
    fn commit(&mut self) -> anyhow::Result<()> {
        if let Some(temp) = self.temp.take() {
            temp.persist(&self.path).with_context(|| {
                format!("cannot rename the received data to {}", self.path.display())
            })?;
        }
        Ok(())
    }
}

impl Output {
    /// Where the bytes go.
    pub(crate) fn writer(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        match self {
            Output::Stdout(s) => s,
            Output::File(f) => &mut f.file,
        }
    }

    /// The output's name for messages: its path or `stdout`.
    pub(crate) fn name(&self) -> String {
        match self {
            Output::Stdout(_) => "stdout".to_owned(),
            Output::File(f) => f.path.display().to_string(),
        }
    }

    /// Flushes, and for a file syncs it to disk; once a sender has finished
    /// (`completed`), a file takes its real name.
    pub(crate) async fn finish(&mut self, completed: bool) -> anyhow::Result<()> {
        let name = self.name();
        self.writer()
            .flush()
            .await
            .with_context(|| format!("cannot write {name}"))?;
        if let Output::File(f) = self {
            f.file
                .sync_all()
                .await
                .with_context(|| format!("cannot sync {name}"))?;
            if completed {
                f.commit()?;
            }
        }
        Ok(())
    }
}

/// Serves senders one after another, writing their byte streams to `out`,
/// until the stop (a signal or, with `--once`, the first sender's end).
///
/// At a stop the sender being served hands over what its connection holds;
/// if that completes its stream (it had closed), the senders already
/// waiting follow in turn, each with what it holds, until one is still
/// connected: its stream ends the output. A file takes its real name only
/// once a sender has finished, so a stop before that leaves PATH as it was.
async fn serve_stream(endpoint: &Endpoint, mut out: Output, args: &RecvArgs) -> anyhow::Result<()> {
    let switch = crate::stop::StopSwitch::on_signal();
    let mut stopping = switch.stopping();
    let mut finished_any = false;
    loop {
        let stopped = stopping.is_stopping();
        let conn = if stopped {
            crate::stop::take_waiting(endpoint).await
        } else {
            tokio::select! {
                biased;
                () = stopping.begun() => continue,
                conn = endpoint.accept() => match conn {
                    Some(conn) => Some(conn),
                    None => bail!("the endpoint stopped accepting connections"),
                },
            }
        };
        let Some(conn) = conn else { break };
        let remote = conn.remote_addr();
        tracing::info!(%remote, "sender connected");
        let result =
            receive_stream(&conn, &mut out, args.stats.stats_interval, stopping.clone()).await;
        let finished = matches!(result, Ok(End::Finished));
        let written = out.finish(finished).await;
        if let Some(e) = result.as_ref().err().or(written.as_ref().err()) {
            // A local failure (the output cannot be written) is told to the
            // sender; a connection that already ended is left as it is.
            abort_with_reason(&conn, Side::Receiver, e);
        }
        written?;
        match result {
            Ok(End::Finished) => {
                tracing::info!(%remote, "sender finished");
                finished_any = true;
                if args.once {
                    return Ok(());
                }
            }
            Ok(End::Stopped) => {
                tracing::info!(%remote, "sender still connected at the stop");
                break;
            }
            Err(e) if args.once => return Err(e),
            Err(e) => tracing::warn!(%remote, "sender failed: {e:#}"),
        }
    }
    if !finished_any {
        if let Output::File(f) = &out {
            eprintln!(
                "surelink recv: no sender finished: {} was left as it was",
                f.path.display()
            );
        }
        if args.once {
            bail!(crate::exit::Interrupted(
                "interrupted before a sender finished".into()
            ));
        }
    }
    Ok(())
}

/// Writes one connection's messages to `out` until it closes or, at the
/// stop, until it holds no more.
async fn receive_stream(
    conn: &Connection,
    out: &mut Output,
    stats_interval: Option<Duration>,
    mut stopping: Stopping,
) -> anyhow::Result<End> {
    let started = Instant::now();
    let reporter = spawn_reporter(stats_interval, "recv", conn);
    let name = out.name();
    let mut progress = matches!(out, Output::File(_)).then(|| Progress::start("recv", 0, &name));
    if let Some(progress) = &mut progress {
        progress.watch(conn);
    }
    let mut received = 0u64;
    let result = async {
        loop {
            let msg = match stopping.next(conn).await? {
                Next::Message(msg) => msg,
                Next::End(end) => return Ok(end),
            };
            crate::state::refuse_session(conn, &msg)?;
            let data = msg.data;
            let w = out.writer();
            w.write_all(&data)
                .await
                .with_context(|| format!("cannot write {name}"))?;
            w.flush()
                .await
                .with_context(|| format!("cannot write {name}"))?;
            received += data.len() as u64;
            if let Some(progress) = &progress {
                progress.add(data.len() as u64);
            }
        }
    }
    .await;
    drop(reporter);
    if stats_interval.is_some() {
        eprintln!("{}", stats_line("recv", conn, started));
    }
    if let (Some(progress), Ok(End::Finished)) = (&progress, &result) {
        progress.finish();
        let what = format!("received {name} from {}", conn.remote_addr());
        eprintln!(
            "{}",
            summary("recv", &what, received, started.elapsed(), &conn.stats())
        );
    }
    result
}

/// Serves senders concurrently, forwarding each message as one datagram to
/// its sender's destination in `routes`, until the stop (see
/// [`crate::stop::serve_concurrently`]).
async fn serve_datagrams(
    endpoint: &Endpoint,
    routes: Routes,
    args: &RecvArgs,
) -> anyhow::Result<()> {
    let interval = args.stats.stats_interval;
    let tag = args.tag_source;
    crate::stop::serve_concurrently(endpoint, args.once, |conn, stopping| {
        let remote = conn.remote_addr();
        let destination = routes.for_connection(&conn).clone();
        tracing::info!(%remote, target = %destination.target, "sender connected");
        async move {
            let result = forward(&conn, &destination, interval, tag, stopping).await;
            match &result {
                Ok(End::Finished) => tracing::info!(%remote, "sender finished"),
                Ok(End::Stopped) => tracing::info!(%remote, "sender still connected at the stop"),
                Err(e) => tracing::warn!(%remote, "sender failed: {e:#}"),
            }
            result
        }
    })
    .await
}

/// Sends one connection's messages as datagrams to `destination` until it
/// closes (or, at the stop, holds no more), each after a
/// [`SourceHeader`](crate::source::SourceHeader) if `tag`.
async fn forward(
    conn: &Connection,
    destination: &Destination,
    stats_interval: Option<Duration>,
    tag: bool,
    mut stopping: Stopping,
) -> anyhow::Result<End> {
    let source = crate::source::Source::of(conn);
    let started = Instant::now();
    let reporter = spawn_reporter(stats_interval, "recv", conn);
    let result = async {
        loop {
            let msg = match stopping.next(conn).await? {
                Next::Message(msg) => msg,
                Next::End(end) => return Ok(end),
            };
            crate::state::refuse_session(conn, &msg)?;
            let data = if tag {
                let mut tagged =
                    Vec::with_capacity(crate::source::SourceHeader::LEN + msg.data.len());
                crate::source::SourceHeader {
                    source,
                    seq: msg.seq,
                }
                .encode_into(&mut tagged);
                tagged.extend_from_slice(&msg.data);
                surelink::Bytes::from(tagged)
            } else {
                msg.data
            };
            let target = destination.target;
            if let Err(e) = destination.socket.send_to(&data, target).await {
                tracing::warn!(%target, len = data.len(), error = %e, "cannot forward a datagram");
            }
        }
    }
    .await;
    drop(reporter);
    if stats_interval.is_some() {
        eprintln!("{}", stats_line("recv", conn, started));
    }
    result
}
