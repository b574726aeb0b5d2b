//! Running `surelink` processes from the tests of `demo`, `time` and the
//! delivery options: stderr is read by a thread (addresses are learnt from
//! the "listening on" / "serving on" lines), stdout can be captured, and every
//! wait is bounded: a process that does not finish in time is killed and the
//! test fails with its stderr.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_surelink");
/// Bound on any one process's run (debug builds on a two-core machine).
pub const PROCESS_LIMIT: Duration = Duration::from_secs(120);
/// Bound on waiting for a process to print a line.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// A running `surelink` process.
pub struct Proc {
    name: &'static str,
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stdout: Option<thread::JoinHandle<String>>,
}

impl Proc {
    /// Starts `surelink ARGS` with stdout captured and stdin closed.
    pub fn spawn(name: &'static str, args: &[&str]) -> Self {
        Self::spawn_with(name, args, Stdio::null())
    }

    /// Starts `surelink ARGS` with the given stdin and stdout captured.
    pub fn spawn_with(name: &'static str, args: &[&str], stdin: Stdio) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start surelink");
        let (tx, lines) = channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr");
        let all = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                {
                    let mut all = all.lock().expect("lock");
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        let mut out = child.stdout.take().expect("stdout");
        let stdout = thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        Self {
            name,
            child,
            lines,
            stderr,
            stdout: Some(stdout),
        }
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits for a stderr line containing `marker` and returns what follows it.
    pub fn wait_for_line(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(pos) = line.find(marker) {
                        return line[pos + marker.len()..].trim().to_owned();
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.kill();
                    panic!(
                        "{}: no line with {marker:?}; stderr:\n{}",
                        self.name,
                        self.stderr()
                    );
                }
            }
        }
    }

    /// The address printed after `marker` (an optional `udp://` is dropped,
    /// as is anything after the address).
    pub fn addr_after(&mut self, marker: &str) -> SocketAddr {
        let text = self.wait_for_line(marker);
        let text = text.strip_prefix("udp://").unwrap_or(&text);
        let text = text.split([' ', ',']).next().unwrap_or("");
        text.parse()
            .unwrap_or_else(|_| panic!("{}: no address in {text:?}", self.name))
    }

    /// Waits (bounded) for the process to exit; returns its status and stdout.
    pub fn wait(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + PROCESS_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{}: still running after {PROCESS_LIMIT:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        // Let the reader thread collect the last stderr lines.
        thread::sleep(Duration::from_millis(50));
        (status, stdout)
    }

    /// Waits for a successful exit; returns stdout.
    pub fn wait_success(&mut self) -> String {
        let (status, stdout) = self.wait();
        assert!(
            status.success(),
            "{}: exited with {status}; stdout:\n{stdout}\nstderr:\n{}",
            self.name,
            self.stderr()
        );
        stdout
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The JSON objects among `text`'s lines.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
