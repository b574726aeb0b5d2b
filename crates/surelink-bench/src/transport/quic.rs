//! QUIC with quinn 0.11 (rustls, ring), a self-signed certificate made
//! with rcgen that the client trusts.
//!
//! Two ways to carry messages:
//!
//! * [`open_stream`]: one bidirectional stream, length-prefixed messages
//!   ([`super::framed`]): reliable and ordered, the fair peer of surelink;
//! * [`open_datagrams`]: QUIC DATAGRAM frames (RFC 9221), one message each:
//!   unreliable, for the real-time workload only.
//!
//! Transport settings are quinn's defaults; the UDP sockets get the same
//! 8 MiB kernel buffers as surelink's and raw UDP's.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::framed::{FramedRx, FramedTx};
use super::{loopback, udp, wire, Diagnostics, Mode, Pair, Route, Rx, Tx};

/// A connected quinn client and server, with the handshake done.
struct Connected {
    client: quinn::Connection,
    server: quinn::Connection,
    keep: Vec<Box<dyn std::any::Any + Send>>,
    impairer: Option<surelink::impair::ImpairHandle>,
}

fn endpoint(server: Option<quinn::ServerConfig>) -> io::Result<quinn::Endpoint> {
    let socket = udp::bind(loopback(0))?.into_std()?;
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
}

async fn connect(route: Option<&Route>) -> io::Result<Connected> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(io::Error::other)?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let server_config =
        quinn::ServerConfig::with_single_cert(vec![cert.clone()], key).map_err(io::Error::other)?;
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots.add(cert).map_err(io::Error::other)?;
    let client_config =
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).map_err(io::Error::other)?;

    let server = endpoint(Some(server_config))?;
    let mut client = endpoint(None)?;
    client.set_default_client_config(client_config);
    let (to, impairer) = wire(server.local_addr()?, route)?;

    let connecting = client.connect(to, "localhost").map_err(io::Error::other)?;
    let (client_conn, server_conn) = tokio::join!(connecting, async {
        let incoming = server
            .accept()
            .await
            .ok_or_else(|| io::Error::other("quinn server endpoint closed"))?;
        incoming.await.map_err(io::Error::other)
    });
    Ok(Connected {
        client: client_conn.map_err(io::Error::other)?,
        server: server_conn?,
        keep: vec![Box::new(server), Box::new(client)],
        impairer,
    })
}

/// The stream pair type.
pub type StreamPair = Pair<FramedTx<quinn::SendStream>, FramedRx<quinn::RecvStream>>;

/// Messages on one bidirectional stream, client to server.
pub async fn open_stream(mode: Mode, route: Option<&Route>) -> io::Result<StreamPair> {
    let c = connect(route).await?;
    let (send, client_recv) = c.client.open_bi().await.map_err(io::Error::other)?;
    let conn = c.client.clone();
    let mut tx = FramedTx::new(send, mode).with_diagnostics(move || stats(&conn));
    // A stream exists for the peer only once data was sent on it.
    tx.send(Bytes::from_static(b"hello")).await?;
    tx.flush().await?;
    let (server_send, recv) = c.server.accept_bi().await.map_err(io::Error::other)?;
    let mut rx = FramedRx::new(recv);
    let hello = rx.recv().await?;
    if hello.as_deref() != Some(b"hello".as_slice()) {
        return Err(io::Error::other("quinn stream: unexpected first message"));
    }
    let mut keep = c.keep;
    keep.push(Box::new(c.client));
    keep.push(Box::new(c.server));
    keep.push(Box::new(client_recv));
    keep.push(Box::new(server_send));
    Ok(Pair {
        tx,
        rx,
        impairer: c.impairer,
        keep,
    })
}

/// The client connection's counters.
fn stats(conn: &quinn::Connection) -> Diagnostics {
    let s = conn.stats();
    Diagnostics::from([
        ("rtt_ms", s.path.rtt.as_secs_f64() * 1000.0),
        ("cwnd", s.path.cwnd as f64),
        ("packets_sent", s.path.sent_packets as f64),
        ("packets_lost", s.path.lost_packets as f64),
        ("congestion_events", s.path.congestion_events as f64),
        ("udp_tx_datagrams", s.udp_tx.datagrams as f64),
        ("udp_tx_syscalls", s.udp_tx.ios as f64),
    ])
}

/// Sends QUIC datagrams.
pub struct DatagramTx(quinn::Connection);

impl Tx for DatagramTx {
    async fn send(&mut self, msg: Bytes) -> io::Result<()> {
        self.0
            .send_datagram_wait(msg)
            .await
            .map_err(io::Error::other)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn diagnostics(&self) -> Option<Diagnostics> {
        Some(stats(&self.0))
    }
}

/// Receives QUIC datagrams.
pub struct DatagramRx(quinn::Connection);

impl Rx for DatagramRx {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        match self.0.read_datagram().await {
            Ok(d) => Ok(Some(d)),
            Err(quinn::ConnectionError::LocallyClosed) => Ok(None),
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

/// The datagram pair type.
pub type DatagramPair = Pair<DatagramTx, DatagramRx>;

/// Messages as QUIC datagrams, client to server.
pub async fn open_datagrams(route: Option<&Route>) -> io::Result<DatagramPair> {
    let c = connect(route).await?;
    Ok(Pair {
        tx: DatagramTx(c.client),
        rx: DatagramRx(c.server),
        impairer: c.impairer,
        keep: c.keep,
    })
}
