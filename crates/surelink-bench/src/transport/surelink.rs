//! surelink itself: `Endpoint::bind` / `Endpoint::client_with_config` /
//! `connect` / `accept`, default settings except for the security mode.

use std::io;

use bytes::Bytes;
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
        let s = self.0.stats();
        let io = self.1.stats();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        Some(Diagnostics::from([
            ("rtt_ms", ms(s.rtt)),
            ("min_rtt_ms", ms(s.min_rtt)),
            ("cwnd_bytes", s.cwnd as f64),
            ("packets_sent", s.packets_sent as f64),
            ("packets_received", s.packets_received as f64),
            ("packets_lost", s.packets_lost as f64),
            ("retransmissions", s.retransmissions as f64),
            ("probe_timeouts", s.probe_timeouts as f64),
            ("retransmission_rate", s.retransmission_rate()),
            ("udp_tx_datagrams", io.datagrams_sent as f64),
            ("udp_tx_syscalls", io.send_calls as f64),
        ]))
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
        let s = self.0.stats();
        Some(Diagnostics::from([
            ("messages_delivered", s.messages_delivered as f64),
            ("messages_skipped", s.messages_skipped as f64),
            ("messages_late", s.messages_late as f64),
        ]))
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
