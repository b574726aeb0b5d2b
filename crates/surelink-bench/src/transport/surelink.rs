//! surelink itself: `Endpoint::bind` / `Endpoint::client_with_config` /
//! `connect` / `accept`, default settings except for the security mode.

use std::io;

use bytes::Bytes;
use surelink::stats_schema::{Histogram, Metric, PathLabel, StatsVisitor, Value, VisitStats};
use surelink::{Connection, Endpoint, EndpointConfig, ProtocolConfig, Security};

use super::{loopback, wire, Diagnostics, Pair, Route, Rx, Tx};

/// Sends on channel 0 of a connection.
pub struct SurelinkTx(
    /// The sending connection.
    pub Connection,
    /// Its endpoint, for the socket counters.
    pub Endpoint,
);

impl Tx for SurelinkTx {
    async fn send(&mut self, msg: Bytes) -> io::Result<()> {
        self.0.send(msg).await.map(|_| ()).map_err(io::Error::other)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn diagnostics(&self) -> Option<Diagnostics> {
        let mut out = DiagnosticsVisitor::default();
        self.0.stats().visit(&mut out);
        self.1.stats().visit(&mut out);
        Some(out.diagnostics)
    }
}

/// Receives from a connection.
pub struct SurelinkRx(
    /// The receiving connection.
    pub Connection,
);

impl Rx for SurelinkRx {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        self.0.recv().await.map_err(io::Error::other)
    }

    fn diagnostics(&self) -> Option<Diagnostics> {
        let mut out = DiagnosticsVisitor::default();
        self.0.stats().visit(&mut out);
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
/// an impairer if `route` asks); encrypted unless `plaintext`.
pub async fn open(plaintext: bool, route: Option<&Route>) -> io::Result<SurelinkPair> {
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
        tx: SurelinkTx(tx, client.clone()),
        rx: SurelinkRx(rx),
        impairer,
        keep: vec![Box::new(server), Box::new(client)],
    })
}
