//! The CLI over two paths: `send --to A --to B` through two `surelink impair`
//! links to `recv --listen A --listen B`; the primary link is cut for 1.5 s in
//! the middle of the transfer and restored. The output must be byte-identical.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_surelink");

struct Proc {
    child: Child,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start surelink");
        let (tx, lines) = channel();
        let pipe = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[{}] {line}", std::process::id());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The addresses printed after "listening on " (the first `n` of them).
    fn addrs(&mut self, n: usize) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("an address line");
            if let Some(pos) = line.find("listening on ") {
                let rest = &line[pos + "listening on ".len()..];
                let addr = rest.split([',', ' ']).next().unwrap();
                out.push(addr.trim_start_matches("udp://").parse().unwrap());
            }
        }
        out
    }

    fn wait_success(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_file_crosses_a_primary_link_cut_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let data: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();

    let mut recv = Proc::spawn(&[
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--out",
        output.to_str().unwrap(),
        "--once",
    ]);
    let server = recv.addrs(2);
    // 40 Mbit/s links: the transfer takes a few seconds; the primary is down
    // from 1 s to 2.5 s after it starts.
    let primary_target = server[0].to_string();
    let mut primary = Proc::spawn(&[
        "impair",
        "--listen",
        "127.0.0.1:0",
        "--target",
        &primary_target,
        "--delay",
        "5ms",
        "--rate",
        "40mbit",
        "--queue",
        "256kb",
        "--cut-at",
        "1s",
        "--cut-for",
        "1500ms",
    ]);
    let backup_target = server[1].to_string();
    let mut backup = Proc::spawn(&[
        "impair",
        "--listen",
        "127.0.0.1:0",
        "--target",
        &backup_target,
        "--delay",
        "8ms",
        "--rate",
        "40mbit",
        "--queue",
        "256kb",
    ]);
    let a = primary.addrs(1)[0].to_string();
    let b = backup.addrs(1)[0].to_string();
    let mut send = Proc::spawn(&[
        "send",
        "--to",
        &a,
        "--to",
        &b,
        "--in",
        input.to_str().unwrap(),
    ]);
    send.wait_success(Duration::from_secs(120));
    recv.wait_success(Duration::from_secs(60));
    let got = std::fs::read(&output).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "output differs from input");
}
