//! Echo: a server that sends every message back, and a client that checks the echoes.
//!
//! ```text
//! cargo run -p surelink --example echo                 # both, in one process
//! cargo run -p surelink --example echo -- server 127.0.0.1:4433
//! cargo run -p surelink --example echo -- client 127.0.0.1:4433
//! ```

use std::error::Error;
use std::net::SocketAddr;

use surelink::{Bytes, Connection, Endpoint, EndpointConfig};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            let server = Endpoint::bind("127.0.0.1:0".parse()?, EndpointConfig::default())?;
            let addr = server.local_addr();
            let serving = tokio::spawn(serve(server, true));
            client(addr).await?;
            serving.await??;
            Ok(())
        }
        [role, addr] if role == "server" => {
            let server = Endpoint::bind(addr.parse()?, EndpointConfig::default())?;
            println!("echo server on {}", server.local_addr());
            serve(server, false).await
        }
        [role, addr] if role == "client" => client(addr.parse()?).await,
        _ => Err("usage: echo [server ADDR | client ADDR]".into()),
    }
}

/// Accepts connections and echoes each one's messages; with `once`, stops after one.
async fn serve(server: Endpoint, once: bool) -> Result<()> {
    while let Some(conn) = server.accept().await {
        println!("server: connection from {}", conn.remote_addr());
        let echo = tokio::spawn(echo(conn));
        if once {
            echo.await??;
            // Let the client's close handshake finish before the process exits.
            server.wait_idle().await;
            break;
        }
    }
    Ok(())
}

async fn echo(conn: Connection) -> Result<()> {
    while let Some(msg) = conn.recv_message().await? {
        conn.send_on(msg.channel, msg.data).await?;
    }
    println!("server: peer closed; {:?}", conn.stats());
    Ok(())
}

async fn client(addr: SocketAddr) -> Result<()> {
    let endpoint = Endpoint::client("0.0.0.0:0".parse()?)?;
    let conn = endpoint.connect(addr).await?;
    println!("client: connected to {addr}");
    for i in 0..10u32 {
        let msg = Bytes::from(format!("message {i}: {}", "x".repeat(i as usize * 500)));
        conn.send(msg.clone()).await?;
        let back = conn.recv().await?.ok_or("server closed early")?;
        assert_eq!(back, msg, "echo differs");
    }
    let stats = conn.stats();
    println!(
        "client: 10 echoes ok; rtt {:?}, {} packets sent, {} lost",
        stats.rtt, stats.packets_sent, stats.packets_lost
    );
    conn.close().await?;
    println!("client: closed gracefully");
    Ok(())
}
