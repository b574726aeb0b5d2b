//! A file transfer that survives `kill -9` of either side.
//!
//! ```text
//! cargo run -p surelink-session --example durable            # the demo below
//! cargo run -p surelink-session --example durable -- recv 127.0.0.1:7000 rx-state out.bin
//! cargo run -p surelink-session --example durable -- send 127.0.0.1:7000 tx-state in.bin
//! ```
//!
//! `recv` and `send` are the two sides, each with its state directory:
//! kill either of them at any moment (Ctrl-C, `kill -9`) and start it again
//! with the same arguments; the transfer resumes and `out.bin` ends up
//! identical to `in.bin`.
//!
//! Without arguments the example demonstrates it: it writes 16 MiB of random
//! bytes to a temporary directory, runs itself as a receiver and a sender
//! (two child processes), kills the sender with SIGKILL when about a third
//! has arrived and the receiver when about two thirds have, restarts each,
//! and compares the output with the input.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use surelink::{Bytes, Endpoint, EndpointConfig};
use surelink_session::{
    DurableReceiver, DurableSender, FileSink, Outgoing, ReceiverEvent, SessionError, SessionOptions,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Bytes per message.
const CHUNK: usize = 64 << 10;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => demo(),
        ["recv", addr, state, out] => recv(addr.parse()?, Path::new(state), Path::new(out)).await,
        ["send", addr, state, input] => {
            send(addr.parse()?, Path::new(state), Path::new(input)).await
        }
        _ => Err("usage: durable [recv ADDR STATE OUT | send ADDR STATE IN]".into()),
    }
}

/// The receiving side: one session into `out`, until it is complete.
async fn recv(addr: SocketAddr, state: &Path, out: &Path) -> Result<()> {
    let mut rx = DurableReceiver::open_dir(state, FileSink::open(out)?, SessionOptions::default())?;
    let endpoint = Endpoint::bind(addr, EndpointConfig::default())?;
    eprintln!("recv: listening on {addr}");
    rx.run(&endpoint, |event| match event {
        ReceiverEvent::Accepted { remote, accepted } => eprintln!(
            "recv: session {} {} by {remote}, output at byte {}",
            accepted.session_id,
            if accepted.new_session {
                "started"
            } else {
                "resumed"
            },
            accepted.position
        ),
        ReceiverEvent::Refused { remote, error } => eprintln!("recv: refused {remote}: {error}"),
        ReceiverEvent::ConnectionEnded { error, .. } => {
            eprintln!("recv: connection ended: {error}")
        }
        _ => {}
    })
    .await?;
    let stats = rx.stats();
    eprintln!(
        "recv: complete; {} messages written in this run, {} duplicates dropped",
        stats.messages_delivered, stats.duplicates_dropped
    );
    endpoint.wait_idle().await;
    Ok(())
}

/// The sending side: `input` in 64 KiB messages; the cursor of each message
/// is the input offset after it.
async fn send(addr: SocketAddr, state: &Path, input: &Path) -> Result<()> {
    let data = std::fs::read(input)?;
    let label = format!("{} ({} bytes)", input.display(), data.len());
    // A 1 MiB outbox keeps the demo slow enough to kill mid-transfer.
    let options = SessionOptions::default().with_max_unconfirmed_bytes(1 << 20);
    let mut tx = DurableSender::open_dir(state, &label, options)?;
    if tx.is_complete() {
        eprintln!("send: already complete");
        return Ok(());
    }
    let endpoint = Endpoint::client("127.0.0.1:0".parse()?)?;
    loop {
        let conn = endpoint.connect(addr).await?;
        let resumed = match tx.attach(conn).await {
            Ok(resumed) => resumed,
            Err(e) if e.is_connection() => continue,
            Err(e) => return Err(e.into()),
        };
        eprintln!(
            "send: session {}: receiver at {:?}, {} re-sent, input from byte {}",
            tx.session_id(),
            resumed.receiver_next,
            resumed.resent,
            tx.resume_cursor()
        );
        match stream(&mut tx, &data).await {
            Ok(()) => break,
            Err(e) if e.is_connection() => eprintln!("send: {e}; connecting again"),
            Err(e) => return Err(e.into()),
        }
    }
    eprintln!("send: complete");
    Ok(())
}

/// Sends `data` from the session's resume cursor, then finishes.
async fn stream(tx: &mut DurableSender, data: &[u8]) -> std::result::Result<(), SessionError> {
    loop {
        // Always continue from the session's cursor: it says which bytes
        // are already queued (in the outbox or confirmed).
        let from = tx.resume_cursor() as usize;
        if from >= data.len() {
            return tx.finish().await;
        }
        let batch: Vec<Outgoing> = (from..data.len())
            .step_by(CHUNK)
            .take(16)
            .map(|start| {
                let end = (start + CHUNK).min(data.len());
                Outgoing {
                    channel: 0,
                    data: Bytes::copy_from_slice(&data[start..end]),
                    cursor: end as u64,
                }
            })
            .collect();
        tx.send_batch(batch).await?;
    }
}

/// Runs both sides as child processes, kills each once, checks the output.
fn demo() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("surelink-durable-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("in.bin");
    let output = dir.join("out.bin");
    let mut data = vec![0u8; 16 << 20];
    rand::rngs::SmallRng::seed_from_u64(7).fill_bytes(&mut data);
    std::fs::write(&input, &data)?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let exe = std::env::current_exe()?;
    let child = |args: &[&str]| -> Result<Child> { Ok(Command::new(&exe).args(args).spawn()?) };
    let path = |p: &PathBuf| p.to_str().expect("utf-8 path").to_owned();
    let recv_args = ["recv", &addr, &path(&dir.join("rx")), &path(&output)];
    let send_args = ["send", &addr, &path(&dir.join("tx")), &path(&input)];

    let mut receiver = child(&recv_args)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut sender = child(&send_args)?;

    wait_for_output(&output, data.len() / 3)?;
    eprintln!("demo: kill -9 the sender");
    sender.kill()?;
    sender.wait()?;
    let mut sender = child(&send_args)?;

    wait_for_output(&output, 2 * data.len() / 3)?;
    eprintln!("demo: kill -9 the receiver");
    receiver.kill()?;
    receiver.wait()?;
    let mut receiver = child(&recv_args)?;

    let sent = sender.wait()?;
    let received = receiver.wait()?;
    let got = std::fs::read(&output)?;
    std::fs::remove_dir_all(&dir)?;
    if !sent.success() || !received.success() || got != data {
        return Err(format!(
            "demo failed: sender {sent}, receiver {received}, output {} of {} bytes{}",
            got.len(),
            data.len(),
            if got == data { "" } else { ", different" }
        )
        .into());
    }
    eprintln!(
        "demo: output identical to the input ({} bytes) after killing both sides",
        data.len()
    );
    Ok(())
}

fn wait_for_output(path: &Path, len: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(path).map_or(0, |m| m.len() as usize) < len {
        if Instant::now() > deadline {
            return Err("no progress".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
