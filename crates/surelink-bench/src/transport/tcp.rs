//! TCP over loopback (tokio, `TCP_NODELAY`), length-prefixed messages.
//!
//! TCP cannot go through the UDP impairer, so it takes part in the bulk and
//! small-message workloads only.

use std::io;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::framed::{FramedRx, FramedTx};
use super::{loopback, Mode, Pair};

/// The pair type of this system.
pub type TcpPair = Pair<FramedTx<OwnedWriteHalf>, FramedRx<OwnedReadHalf>>;

/// Connects a client to a fresh listener on 127.0.0.1.
pub async fn open(mode: Mode) -> io::Result<TcpPair> {
    let listener = TcpListener::bind(loopback(0)).await?;
    let addr = listener.local_addr()?;
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client?;
    let (server, _) = accepted?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    // The client sends, the server receives; the unused halves stay open.
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    Ok(Pair {
        tx: FramedTx::new(client_write, mode),
        rx: FramedRx::new(server_read),
        impairer: None,
        keep: vec![Box::new(client_read), Box::new(server_write)],
    })
}
