//! `surelink recv --merge`: the messages of all senders merged into one
//! stream, ordered by their send times.
//!
//! Senders are served concurrently. Each message's send time, mapped onto
//! this host's clock through its connection's clock estimate, and the
//! estimate's error bound go with it into a [`Merge`] (the sans-IO merge of
//! `surelink_proto::merge`, driven here by the clock), which holds it for
//! `--merge-window` after that time and then releases everything in time
//! order. A message arriving after the output has passed its time is late:
//! counted, and dropped (`--late drop`, the default) or written at once,
//! flagged (`--late deliver`).
//!
//! Each message becomes one record ([`encode_record`]): in stream mode
//! (`--out PATH|-`) a 36-byte header and the message; in datagram mode
//! (`--to udp://`) one datagram of the header without its length field and
//! the message. All integers are big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | source: the sender's key fingerprint (as `--tag-source`) |
//! | 8 | sequence number of the message on its connection |
//! | 8 | corrected send time: µs since the Unix epoch on this host's clock |
//! | 4 | error bound of that time, µs (`0xffffffff`: no clock estimate yet) |
//! | 4 | late by, µs: 0 in order; else how far the output had passed its time |
//! | 4 | message length (stream mode only) |
//!
//! The merge ends on Ctrl-C or SIGTERM (or, with `--once`, when the first
//! sender has finished): it then takes no new connection, reads every
//! message the connections already received (acknowledged to their senders)
//! without waiting for new data, and writes out everything held in order; a
//! second signal ends it at once without the output. A file output is written
//! under a temporary name and renamed over PATH at that end, so an existing
//! PATH is replaced only by a complete merge. The counts (records,
//! late, duplicates) are printed on stderr at the end.
//!
//! With `--state DIR` (a file output only) the merge is durable across
//! restarts: each sender's session is spooled ([`spool`]), the merge reads
//! the spools and journals its progress ([`progress`]), see [`durable`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use surelink::proto::merge::{Arrival, LatePolicy, Merge, MergeConfig, MergeStats, Merged};
use surelink::{Bytes, Connection, Endpoint};
use tokio::io::AsyncWriteExt as _;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::args::parse_duration;
use crate::cmd::recv::{Output, Sink};
use crate::routes::Destination;
use crate::source::Source;
use crate::stop::{take_waiting, ConnectionTasks, End, Next, Stopping};

pub mod durable;
pub mod progress;
pub mod spool;

/// `recv`'s merge options.
#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// Merge the messages of all senders into one stream (--out or --to) ordered by their
    /// send times on this host's clock (through each sender's clock estimate); each record
    /// carries its source and corrected time (format: `surelink recv --help`, docs/MERGE.md).
    /// With --state (and --out FILE; senders with send --state) each sender's session is
    /// spooled under DIR and the merge's progress journaled: restarted after kill -9, it
    /// continues with nothing lost or repeated.
    #[arg(long, conflicts_with = "out_dir")]
    pub merge: bool,
    /// With --merge: hold each message this long after its send time before writing it,
    /// so that later-arriving messages of other senders can still go before it.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration, requires = "merge")]
    pub merge_window: Duration,
    /// With --merge: what to do with a message that arrives after the output passed its time.
    #[arg(long, value_enum, default_value = "drop", requires = "merge")]
    pub late: LateArg,
}

/// `--late`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LateArg {
    /// Count it and drop it: the output stays in time order.
    Drop,
    /// Count it and write it at once, flagged with how late it is.
    Deliver,
}

impl MergeArgs {
    /// The merge's configuration from these options.
    pub fn config(&self) -> MergeConfig {
        MergeConfig {
            window_us: u64::try_from(self.merge_window.as_micros()).unwrap_or(u64::MAX),
            late: match self.late {
                LateArg::Drop => LatePolicy::Drop,
                LateArg::Deliver => LatePolicy::Deliver,
            },
        }
    }
}

/// Length of a record's header in stream mode.
pub const RECORD_HEADER_LEN: usize = 36;

/// The error bound written when a connection has no clock estimate yet.
const UNKNOWN_BOUND: u32 = u32::MAX;

/// Appends `record` to `out`, with the length field in stream mode
/// (`with_len`); see the [module docs](self) for the layout.
pub fn encode_record(record: &Merged<(Source, Bytes)>, with_len: bool, out: &mut Vec<u8>) {
    let (source, data) = &record.payload;
    out.reserve(RECORD_HEADER_LEN + data.len());
    out.extend_from_slice(&source.id);
    out.extend_from_slice(&record.seq.to_be_bytes());
    out.extend_from_slice(&record.time_us.to_be_bytes());
    let bound = u32::try_from(record.error_bound_us).unwrap_or(UNKNOWN_BOUND);
    out.extend_from_slice(&bound.to_be_bytes());
    let late = record
        .late_by_us
        .map_or(0, |l| u32::try_from(l.max(1)).unwrap_or(u32::MAX));
    out.extend_from_slice(&late.to_be_bytes());
    if with_len {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    }
    out.extend_from_slice(data);
}

/// A message on its way to the merge, with when it was taken (this host's
/// monotonic clock) and the connection's clock reading then.
struct Incoming {
    taken: Instant,
    arrived_us: u64,
    arrival: Arrival<(Source, Bytes)>,
}

/// Maps this host's monotonic clock to the connections' clock (µs since the
/// Unix epoch, as `Message::source_time_us`), anchored on the first message.
struct Clock {
    anchor: Option<(Instant, u64)>,
}

impl Clock {
    fn now_us(&mut self, at: Instant) -> u64 {
        match self.anchor {
            Some((instant, us)) => {
                us + u64::try_from(at.saturating_duration_since(instant).as_micros()).unwrap_or(0)
            }
            None => 0,
        }
    }

    /// Hands `m` to `merge` at the connections' clock reading when it was
    /// taken (anchoring the clock on the first message).
    fn push(&mut self, merge: &mut Merge<(Source, Bytes)>, m: Incoming) {
        self.anchor.get_or_insert((m.taken, m.arrived_us));
        let now_us = self.now_us(m.taken).max(m.arrived_us);
        merge.push(now_us, m.arrival);
    }

    /// The instant at which the connections' clock reads `us`.
    fn instant_at(&self, us: u64) -> Option<Instant> {
        let (instant, anchor_us) = self.anchor?;
        Some(instant + Duration::from_micros(us.saturating_sub(anchor_us)))
    }
}

/// Serves senders concurrently and writes their merged messages to `sink`
/// until Ctrl-C or SIGTERM (or, with `once`, the first sender finished).
///
/// Then it stops accepting connections, reads every message the transport
/// already accepted on every connection (without waiting for new data, within
/// [`DRAIN_LIMIT`](crate::stop::DRAIN_LIMIT)), merges them, writes out what
/// is held and, for a file, syncs and renames it (see [`crate::stop`]; the
/// caller ends it at once on a second signal, without the output).
pub async fn serve(
    endpoint: &Endpoint,
    sink: Sink,
    args: &MergeArgs,
    once: bool,
) -> anyhow::Result<()> {
    let mut writer = RecordWriter::new(sink)?;
    let (tx, mut incoming) = mpsc::channel::<Incoming>(1024);
    let (finished_tx, mut finished) = mpsc::channel::<()>(1);
    let mut feeds = Feeds {
        tasks: ConnectionTasks::new(),
        next_key: 0,
        tx,
        finished: finished_tx,
    };
    let mut merge = Merge::new(args.config());
    let mut clock = Clock { anchor: None };
    let mut stopping = feeds.tasks.stopping();
    loop {
        let due = merge.poll_timeout().and_then(|us| clock.instant_at(us));
        tokio::select! {
            biased;
            Some(m) = incoming.recv() => clock.push(&mut merge, m),
            conn = endpoint.accept() => match conn {
                Some(conn) => feeds.start(conn),
                None => bail!("the endpoint stopped accepting connections"),
            },
            Some(_) = feeds.tasks.join_next(), if !feeds.tasks.is_empty() => {}
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
            () = stopping.begun() => break,
            Some(()) = finished.recv(), if once => break,
        }
        let now_us = clock.now_us(Instant::now());
        while let Some(record) = merge.poll(now_us) {
            writer.write(&record).await?;
        }
        writer.flush().await?;
    }
    // Stopping: every connection hands over what it already holds, then its
    // feed ends. The connections already established and waiting to be
    // accepted are taken too (the transport may have acknowledged their
    // messages); no other is.
    feeds.tasks.stop();
    while let Some(conn) = take_waiting(endpoint).await {
        feeds.start(conn);
    }
    let Feeds { tasks, tx, .. } = feeds;
    drop(tx);
    // Each feed ends within the stop's limit; then the channel closes.
    while let Some(m) = incoming.recv().await {
        clock.push(&mut merge, m);
    }
    drop(tasks);
    while let Some(record) = merge.flush() {
        writer.write(&record).await?;
    }
    writer.finish().await?;
    report_counts(&merge.stats());
    Ok(())
}

/// Prints a merge's counts on stderr at its end.
fn report_counts(stats: &MergeStats) {
    eprintln!(
        "surelink recv: merged {} records in order, {} late ({} dropped, {} delivered flagged), \
         {} duplicates dropped",
        stats.released,
        stats.late_dropped + stats.late_delivered,
        stats.late_dropped,
        stats.late_delivered,
        stats.duplicates
    );
}

/// The tasks feeding the senders' connections to the merge, and what each
/// new one is given.
struct Feeds {
    tasks: ConnectionTasks<()>,
    /// The merge's key for the next connection.
    next_key: u64,
    tx: mpsc::Sender<Incoming>,
    /// Told when a connection has ended (for `--once`).
    finished: mpsc::Sender<()>,
}

impl Feeds {
    /// Starts feeding `conn` to the merge.
    fn start(&mut self, conn: Connection) {
        let (key, tx, finished) = (self.next_key, self.tx.clone(), self.finished.clone());
        self.tasks
            .spawn(|stopping| serve_sender(conn, key, tx, stopping, finished));
        self.next_key += 1;
    }
}

/// Feeds one sender's connection to the merge (see [`feed`]) and reports how
/// it ended: on stderr, and on `finished` when it closed gracefully or failed.
async fn serve_sender(
    conn: Connection,
    key: u64,
    tx: mpsc::Sender<Incoming>,
    stopping: Stopping,
    finished: mpsc::Sender<()>,
) {
    let remote = conn.remote_addr();
    match feed(&conn, key, &tx, stopping).await {
        Ok((End::Finished, count)) => eprintln!(
            "surelink recv: sender {} ({remote}) finished: {count} messages",
            Source::of(&conn).name()
        ),
        Ok((End::Stopped, count)) => {
            tracing::info!(%remote, messages = count, "sender still connected at the stop");
            return;
        }
        Err(e) => tracing::warn!(%remote, "sender failed: {e:#}"),
    }
    let _ = finished.try_send(());
}

/// Hands one connection's messages to the merge until it closes or, at the
/// stop, until it holds no more received messages (no new data is awaited
/// then); returns how it ended and how many messages it handed over.
async fn feed(
    conn: &Connection,
    key: u64,
    tx: &mpsc::Sender<Incoming>,
    mut stopping: Stopping,
) -> anyhow::Result<(End, u64)> {
    let source = Source::of(conn);
    let mut count = 0;
    loop {
        let msg = match stopping.next(conn).await? {
            Next::Message(msg) => msg,
            Next::End(end) => return Ok((end, count)),
        };
        crate::state::refuse_session(conn, &msg)?;
        let error_bound_us = conn
            .clock_estimate()
            .map_or(u64::from(UNKNOWN_BOUND), |e| e.error_bound_us.ceil() as u64);
        let incoming = Incoming {
            taken: Instant::now(),
            arrived_us: msg.source_time_us + msg.latency_us,
            arrival: Arrival {
                source: key,
                seq: msg.seq,
                time_us: msg.source_time_us,
                error_bound_us,
                payload: (source, msg.data),
            },
        };
        if tx.send(incoming).await.is_err() {
            bail!("the merge has stopped");
        }
        count += 1;
    }
}

/// Writes records to the merge's output.
enum RecordWriter {
    Stream {
        out: Output,
        buf: Vec<u8>,
    },
    Datagrams {
        socket: Arc<UdpSocket>,
        target: SocketAddr,
        buf: Vec<u8>,
    },
}

impl RecordWriter {
    fn new(sink: Sink) -> anyhow::Result<Self> {
        Ok(match sink {
            Sink::Datagrams(routes) => {
                let Destination { socket, target } = routes.default_destination().clone();
                RecordWriter::Datagrams {
                    socket,
                    target,
                    buf: Vec::new(),
                }
            }
            Sink::Stream(out) => RecordWriter::Stream {
                out,
                buf: Vec::new(),
            },
            Sink::Dir(_) => bail!(crate::exit::UsageError(
                "--merge writes one stream (--out or --to), not --out-dir".into()
            )),
        })
    }

    async fn write(&mut self, record: &Merged<(Source, Bytes)>) -> anyhow::Result<()> {
        match self {
            RecordWriter::Stream { out, buf } => {
                buf.clear();
                encode_record(record, true, buf);
                let name = out.name();
                out.writer()
                    .write_all(buf)
                    .await
                    .with_context(|| format!("cannot write {name}"))
            }
            RecordWriter::Datagrams {
                socket,
                target,
                buf,
            } => {
                buf.clear();
                encode_record(record, false, buf);
                if let Err(e) = socket.send_to(buf, *target).await {
                    tracing::warn!(%target, error = %e, "cannot forward a datagram");
                }
                Ok(())
            }
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if let RecordWriter::Stream { out, .. } = self {
            let name = out.name();
            out.writer()
                .flush()
                .await
                .with_context(|| format!("cannot write {name}"))?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        match self {
            RecordWriter::Stream { out, .. } => out.finish(true).await,
            RecordWriter::Datagrams { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_documented_layout() {
        let record = Merged {
            source: 3,
            seq: 7,
            time_us: 1_767_225_600_000_123,
            error_bound_us: 250,
            late_by_us: Some(40),
            arrived_us: 0,
            payload: (Source { id: [9; 8] }, Bytes::from_static(b"abc")),
        };
        let mut out = Vec::new();
        encode_record(&record, true, &mut out);
        assert_eq!(out.len(), RECORD_HEADER_LEN + 3);
        assert_eq!(&out[..8], &[9; 8]);
        assert_eq!(&out[8..16], &7u64.to_be_bytes());
        assert_eq!(&out[16..24], &1_767_225_600_000_123u64.to_be_bytes());
        assert_eq!(&out[24..28], &250u32.to_be_bytes());
        assert_eq!(&out[28..32], &40u32.to_be_bytes());
        assert_eq!(&out[32..36], &3u32.to_be_bytes());
        assert_eq!(&out[36..], b"abc");
        out.clear();
        encode_record(&record, false, &mut out);
        assert_eq!(out.len(), RECORD_HEADER_LEN - 4 + 3);
    }
}
