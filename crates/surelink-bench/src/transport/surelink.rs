//! surelink itself: `Endpoint::bind` / `Endpoint::client_with_config` /
//! `connect` / `accept`, default settings except for the security mode.
//! Messages go one per `send` / `recv` call, or, in the modes that batch
//! ([`Mode::batches`]), 64 KiB of small messages at a time as one packed
//! batch (`send_batch`), received with `recv_many` or, whole,
//! `recv_batch`.

use std::io;

use bytes::Bytes;
use surelink::stats_schema::{Histogram, Metric, PathLabel, StatsVisitor, Value, VisitStats};
use surelink::{
    Connection, Endpoint, EndpointConfig, Message, MessageBatch, ProtocolConfig, Security,
    SMALL_MESSAGE,
};

use super::{loopback, wire, Diagnostics, Mode, Pair, Route, Rx, Tx};

/// Bytes of messages collected before one `send_many` when batching (the
/// stream peers' staged write is the same size).
const STAGE: usize = 64 << 10;
/// Most messages one `recv_many` takes when batching.
const RECV_BATCH: usize = 1024;

/// Sends on channel 0 of a connection: each message with `send`, or, when
/// the mode batches, 64 KiB of small messages at a time staged in a
/// [`MessageBatch`] (one copy each, like the stream peers' staged write) and
/// queued as one packed batch with `send_batch` (uncopied, like the stream
/// peers' write of their staged frames); a message larger than
/// [`SMALL_MESSAGE`] goes whole with `send`, uncopied.
pub struct SurelinkTx {
    conn: Connection,
    /// The connection's endpoint, for the socket counters.
    endpoint: Endpoint,
    batches: bool,
    staged: MessageBatch,
}

impl SurelinkTx {
    /// Wraps the sending connection and its endpoint.
    pub fn new(conn: Connection, endpoint: Endpoint, mode: Mode) -> Self {
        Self {
            conn,
            endpoint,
            batches: mode.batches(),
            staged: MessageBatch::with_capacity(STAGE / 16, STAGE + 1024),
        }
    }

    /// The sending connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl SurelinkTx {
    /// Copies a small message into the staged batch, and queues the batch
    /// once it holds [`STAGE`] bytes.
    async fn stage(&mut self, msg: &[u8]) -> io::Result<()> {
        self.staged.push(msg);
        if self.staged.bytes() >= STAGE {
            self.flush().await?;
        }
        Ok(())
    }
}

impl Tx for SurelinkTx {
    async fn send(&mut self, msg: Bytes) -> io::Result<()> {
        if self.batches && msg.len() <= SMALL_MESSAGE {
            return self.stage(&msg).await;
        }
        // One at a time, or a large message, which the transport keeps as
        // it is, uncopied: after the small messages staged before it.
        self.flush().await?;
        self.conn
            .send(msg)
            .await
            .map(|_| ())
            .map_err(io::Error::other)
    }

    async fn send_ref(&mut self, msg: &Bytes) -> io::Result<()> {
        if self.batches && msg.len() <= SMALL_MESSAGE {
            return self.stage(msg).await;
        }
        self.send(msg.clone()).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.conn
            .send_batch(0, &mut self.staged)
            .await
            .map(|_| ())
            .map_err(io::Error::other)
    }

    fn diagnostics(&self) -> Option<Diagnostics> {
        let mut out = DiagnosticsVisitor::default();
        self.conn.stats().visit(&mut out);
        self.endpoint.stats().visit(&mut out);
        Some(out.diagnostics)
    }
}

/// Receives from a connection: each message with `recv`, or, when the mode
/// batches, every ready message at once with `recv_many`; `recv_each`
/// takes each batch whole with `recv_batch`.
pub struct SurelinkRx {
    conn: Connection,
    batches: bool,
    /// Messages taken by the last `recv_many`, handed out one by one.
    ready: std::vec::IntoIter<Message>,
    scratch: Vec<Message>,
}

impl SurelinkRx {
    /// Wraps the receiving connection.
    pub fn new(conn: Connection, mode: Mode) -> Self {
        Self {
            conn,
            batches: mode.batches(),
            ready: Vec::new().into_iter(),
            scratch: Vec::new(),
        }
    }
}

impl Rx for SurelinkRx {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        if !self.batches {
            return self.conn.recv().await.map_err(io::Error::other);
        }
        if let Some(m) = self.ready.next() {
            return Ok(Some(m.data));
        }
        // Cancel-safe: what recv_many took is in `scratch` once it returns.
        let n = self
            .conn
            .recv_many(&mut self.scratch, RECV_BATCH)
            .await
            .map_err(io::Error::other)?;
        if n == 0 {
            return Ok(None);
        }
        self.ready = std::mem::take(&mut self.scratch).into_iter();
        Ok(self.ready.next().map(|m| m.data))
    }

    async fn recv_each<F: FnMut(&[u8]) + Send>(&mut self, each: &mut F) -> io::Result<bool> {
        if self.ready.len() > 0 {
            self.ready.by_ref().for_each(|m| each(&m.data));
            return Ok(true);
        }
        match self.conn.recv_batch().await.map_err(io::Error::other)? {
            Some(batch) => {
                batch.iter().for_each(each);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn diagnostics(&self) -> Option<Diagnostics> {
        let mut out = DiagnosticsVisitor::default();
        self.conn.stats().visit(&mut out);
        Some(out.diagnostics)
    }
}

/// Collects a connection's or an endpoint's statistics by their schema key;
/// per-path figures are left out (the connection's totals cover them).
#[derive(Default)]
struct DiagnosticsVisitor {
    diagnostics: Diagnostics,
    in_path: bool,
}

impl StatsVisitor for DiagnosticsVisitor {
    fn counter(&mut self, metric: &Metric, value: u64) {
        if !self.in_path {
            self.diagnostics.insert(metric.key, value as f64);
        }
    }

    fn gauge(&mut self, metric: &Metric, value: Value) {
        if !self.in_path {
            self.diagnostics.insert(metric.key, value.as_f64());
        }
    }

    /// Histograms are left out: the diagnostics are single figures, and the
    /// latency quantiles and RTT gauges already summarise the same samples.
    fn histogram(&mut self, _: &Metric, _: &Histogram) {}

    fn path_start(&mut self, _: PathLabel) {
        self.in_path = true;
    }

    fn path_end(&mut self) {
        self.in_path = false;
    }
}

/// The pair type of this system.
pub type SurelinkPair = Pair<SurelinkTx, SurelinkRx>;

/// A server endpoint and a client endpoint on 127.0.0.1, connected (through
/// an impairer if `route` asks); encrypted unless `plaintext`; the halves
/// batch as `mode` says.
pub async fn open(plaintext: bool, route: Option<&Route>, mode: Mode) -> io::Result<SurelinkPair> {
    let mut protocol = ProtocolConfig::default();
    if plaintext {
        protocol.security = Security::InsecurePlaintext;
    }
    let config = EndpointConfig::default().with_protocol(protocol);
    let server = Endpoint::bind(loopback(0), config.clone()).map_err(io::Error::other)?;
    let client = Endpoint::client_with_config(loopback(0), config).map_err(io::Error::other)?;
    let (to, impairer) = wire(server.local_addr(), route)?;
    let (connected, accepted) = tokio::join!(client.connect(to), server.accept());
    let tx = connected.map_err(io::Error::other)?;
    let rx = accepted.ok_or_else(|| io::Error::other("server endpoint stopped"))?;
    Ok(Pair {
        tx: SurelinkTx::new(tx, client.clone(), mode),
        rx: SurelinkRx::new(rx, mode),
        impairer,
        keep: vec![Box::new(server), Box::new(client)],
    })
}
