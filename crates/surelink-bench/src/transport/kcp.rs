//! KCP with `tokio_kcp`, in stream mode with length-prefixed messages.
//!
//! Settings are KCP's documented "fast mode" (`ikcp_nodelay(kcp, 1, 10, 2,
//! 1)`: nodelay, 10 ms internal interval, fast resend after 2 duplicate
//! ACKs, no congestion window), windows of 1024 segments each way (as
//! kcptun uses), MTU 1400. In the real-time workload every write and every
//! received packet is flushed at once (`flush_write`, `flush_acks_input`).

use std::io;

use bytes::Bytes;
use tokio::io::{ReadHalf, WriteHalf};
use tokio_kcp::{KcpConfig, KcpListener, KcpNoDelayConfig, KcpStream};

use super::framed::{FramedRx, FramedTx};
use super::{loopback, udp, wire, Mode, Pair, Route, Rx, Tx};

fn config(mode: Mode) -> KcpConfig {
    KcpConfig {
        mtu: 1400,
        nodelay: KcpNoDelayConfig::fastest(),
        wnd_size: (1024, 1024),
        stream: true,
        flush_write: mode == Mode::Realtime,
        flush_acks_input: mode == Mode::Realtime,
        ..KcpConfig::default()
    }
}

/// The pair type of this system.
pub type KcpPair = Pair<FramedTx<WriteHalf<KcpStream>>, FramedRx<ReadHalf<KcpStream>>>;

/// A listener and a client session, client to server.
pub async fn open(mode: Mode, route: Option<&Route>) -> io::Result<KcpPair> {
    let config = config(mode);
    let mut listener = KcpListener::from_socket(config, udp::bind(loopback(0))?)
        .await
        .map_err(io::Error::other)?;
    let (to, impairer) = wire(listener.local_addr()?, route)?;
    let client = KcpStream::connect_with_socket(&config, udp::bind(loopback(0))?, to)
        .await
        .map_err(io::Error::other)?;
    let (client_read, client_write) = tokio::io::split(client);
    let mut tx = FramedTx::new(client_write, mode);
    // KCP has no handshake: the server learns of the session from the
    // first data.
    tx.send(Bytes::from_static(b"hello")).await?;
    tx.flush().await?;
    let (server, _) = tokio::time::timeout(std::time::Duration::from_secs(5), listener.accept())
        .await
        .map_err(|_| io::Error::other("KCP: no session within 5 s"))?
        .map_err(io::Error::other)?;
    let (server_read, server_write) = tokio::io::split(server);
    let mut rx = FramedRx::new(server_read);
    let hello = rx.recv().await?;
    if hello.as_deref() != Some(b"hello".as_slice()) {
        return Err(io::Error::other("KCP: unexpected first message"));
    }
    Ok(Pair {
        tx,
        rx,
        impairer,
        keep: vec![
            Box::new(listener),
            Box::new(client_read),
            Box::new(server_write),
        ],
    })
}
