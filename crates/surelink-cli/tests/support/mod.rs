//! Running `surelink` processes from the integration tests: the one bounded
//! spawn / wait / kill helper. Stderr is read by a thread (addresses are
//! learnt from the "listening on" / "serving on" lines) and kept, stdout is
//! captured, and every wait is bounded: a process that does not finish in
//! time is killed and the test fails with its stderr. A process still running
//! when its `Proc` is dropped is killed.

#![allow(dead_code)]

#[cfg(feature = "etcd")]
pub mod etcd;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The `surelink` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_surelink");
/// Bound on any one process's run (debug builds on a two-core machine).
pub const PROCESS_LIMIT: Duration = Duration::from_secs(120);
/// Bound on waiting for a process to print a line.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// Bound on collecting the last stderr lines of a process that exited.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// A running `surelink` process.
pub struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
    /// Stdout not read yet ([`Proc::spawn_holding_stdout`]).
    held_stdout: Option<std::process::ChildStdout>,
}

/// What a finished process left.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout (lossily decoded).
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs `surelink ARGS` to completion (bounded) with the default log level.
pub fn run(args: &[&str]) -> Finished {
    Proc::spawn_default_log(args.first().copied().unwrap_or("surelink"), args).wait_all()
}

impl Proc {
    /// Starts `surelink ARGS` at log level info, stdin closed.
    pub fn spawn(name: &str, args: &[&str]) -> Self {
        Self::start(name, args, Stdio::null(), Some("info"), None)
    }

    /// Starts `surelink ARGS` at log level info with the given stdin (take a
    /// piped one with [`Proc::child`]).
    pub fn spawn_with(name: &str, args: &[&str], stdin: Stdio) -> Self {
        Self::start(name, args, stdin, Some("info"), None)
    }

    /// Starts `surelink ARGS` with its default log level (`RUST_LOG` unset),
    /// stdin closed.
    pub fn spawn_default_log(name: &str, args: &[&str]) -> Self {
        Self::start(name, args, Stdio::null(), None, None)
    }

    /// Like [`Proc::spawn_default_log`], and every stderr line is also
    /// appended to `shared` as "[name] line" (one log for many processes).
    pub fn spawn_logged(name: &str, args: &[&str], shared: &Arc<Mutex<String>>) -> Self {
        Self::start(name, args, Stdio::null(), None, Some(shared.clone()))
    }

    /// Like [`Proc::spawn`], but nothing reads its stdout until
    /// [`Proc::read_stdout`]: once the pipe is full, its writes wait.
    pub fn spawn_holding_stdout(name: &str, args: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        command.args(args);
        Self::start_holding_stdout(name, command, Stdio::null(), Some("info"), None)
    }

    /// Starts reading the stdout held back by [`Proc::spawn_holding_stdout`].
    pub fn read_stdout(&mut self) {
        if let Some(out) = self.held_stdout.take() {
            self.stdout = Some(read_to_end(out));
        }
    }

    /// Like [`Proc::spawn_logged`], with extra environment variables.
    pub fn spawn_logged_env(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        shared: &Arc<Mutex<String>>,
    ) -> Self {
        let mut command = Command::new(BIN);
        command.args(args).envs(env.iter().copied());
        Self::start_command(name, command, Stdio::null(), None, Some(shared.clone()))
    }

    /// Like [`Proc::spawn_default_log`], with the process's file size limit
    /// (RLIMIT_FSIZE, set by `sh -c 'ulimit -f'`) at `max_bytes` (a multiple
    /// of 512) and SIGXFSZ ignored: a write beyond the limit fails with
    /// EFBIG, as a write to a full disk fails with ENOSPC.
    pub fn spawn_with_file_size_limit(name: &str, args: &[&str], max_bytes: u64) -> Self {
        assert_eq!(max_bytes % 512, 0, "ulimit -f counts 512-byte blocks");
        let script = format!(
            "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
            max_bytes / 512
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).arg(BIN).args(args);
        Self::start_command(name, command, Stdio::null(), None, None)
    }

    fn start(
        name: &str,
        args: &[&str],
        stdin: Stdio,
        log: Option<&str>,
        shared: Option<Arc<Mutex<String>>>,
    ) -> Self {
        let mut command = Command::new(BIN);
        command.args(args);
        Self::start_command(name, command, stdin, log, shared)
    }

    fn start_command(
        name: &str,
        command: Command,
        stdin: Stdio,
        log: Option<&str>,
        shared: Option<Arc<Mutex<String>>>,
    ) -> Self {
        let mut proc = Self::start_holding_stdout(name, command, stdin, log, shared);
        proc.read_stdout();
        proc
    }

    /// Starts `command` with its stdout held back (see [`Proc::read_stdout`]).
    fn start_holding_stdout(
        name: &str,
        mut command: Command,
        stdin: Stdio,
        log: Option<&str>,
        shared: Option<Arc<Mutex<String>>>,
    ) -> Self {
        command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match log {
            Some(level) => command.env("RUST_LOG", level),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command.spawn().expect("cannot start surelink");
        let (tx, lines) = channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr");
        let all = stderr.clone();
        let tag = name.to_owned();
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                {
                    let mut all = all.lock().expect("lock");
                    all.push_str(&line);
                    all.push('\n');
                }
                if let Some(shared) = &shared {
                    let mut shared = shared.lock().expect("lock");
                    shared.push_str(&format!("[{tag}] {line}\n"));
                }
                let _ = tx.send(line);
            }
        });
        let held_stdout = child.stdout.take();
        Self {
            name: name.to_owned(),
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
            stdout: None,
            held_stdout,
        }
    }

    /// The child process (to take a piped stdin, or for its id).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// The next stderr line not yet taken, waiting at most `limit`.
    pub fn next_line(&mut self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Waits at most `limit` for a stderr line containing `marker` and
    /// returns it; None if none came in time or the process closed its stderr.
    pub fn find_line(&mut self, marker: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return Some(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None
                }
            }
        }
    }

    /// Waits (bounded) for a stderr line containing `marker` and returns it;
    /// fails the test (with the process's stderr) if none comes.
    pub fn wait_for_line(&mut self, marker: &str) -> String {
        self.find_line(marker, STARTUP_LIMIT).unwrap_or_else(|| {
            self.kill();
            panic!(
                "{}: no line with {marker:?}; stderr:\n{}",
                self.name,
                self.stderr()
            )
        })
    }

    /// The address printed after `marker` (an optional `udp://` is dropped,
    /// as is anything after the address).
    pub fn addr_after(&mut self, marker: &str) -> SocketAddr {
        let line = self.wait_for_line(marker);
        let text = line.split(marker).nth(1).unwrap_or("").trim();
        let text = text.strip_prefix("udp://").unwrap_or(text);
        let text = text.split([' ', ',']).next().unwrap_or("");
        text.parse()
            .unwrap_or_else(|_| panic!("{}: no address in {text:?}", self.name))
    }

    /// The address printed after "listening on ".
    pub fn listening_addr(&mut self) -> SocketAddr {
        self.addr_after("listening on ")
    }

    /// Waits (bounded) for the process to exit; returns its status and raw
    /// stdout. All of its stderr is collected by then.
    pub fn wait_bytes(&mut self) -> (ExitStatus, Vec<u8>) {
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
        // The pipes close when the process is gone (unless it left children
        // holding them): let the readers finish, within a bound.
        let until = Instant::now() + DRAIN_LIMIT;
        while !(finished(&self.stderr_reader) && finished(&self.stdout)) && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
        if finished(&self.stderr_reader) {
            if let Some(h) = self.stderr_reader.take() {
                let _ = h.join();
            }
        }
        let stdout = match self.stdout.take() {
            Some(h) if h.is_finished() => h.join().unwrap_or_default(),
            other => {
                self.stdout = other;
                Vec::new()
            }
        };
        (status, stdout)
    }

    /// Waits (bounded) for the process to exit; returns its status, stdout
    /// and stderr.
    pub fn wait_all(&mut self) -> Finished {
        let (status, stdout) = self.wait();
        Finished {
            status,
            stdout,
            stderr: self.stderr(),
        }
    }

    /// Waits (bounded) for the process to exit; returns its status and stdout.
    pub fn wait(&mut self) -> (ExitStatus, String) {
        let (status, stdout) = self.wait_bytes();
        (status, String::from_utf8_lossy(&stdout).into_owned())
    }

    /// Waits for a successful exit; returns raw stdout.
    pub fn wait_success_bytes(&mut self) -> Vec<u8> {
        let (status, stdout) = self.wait_bytes();
        assert!(
            status.success(),
            "{}: exited with {status}; stdout:\n{}\nstderr:\n{}",
            self.name,
            String::from_utf8_lossy(&stdout),
            self.stderr()
        );
        stdout
    }

    /// Waits for a successful exit; returns stdout.
    pub fn wait_success(&mut self) -> String {
        String::from_utf8_lossy(&self.wait_success_bytes()).into_owned()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends the signal `name` (for example "TERM", "USR1").
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }
}

/// A thread reading `out` to its end.
fn read_to_end(mut out: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = out.read_to_end(&mut bytes);
        bytes
    })
}

/// True if the reader thread `h` is gone or done.
fn finished<T>(h: &Option<thread::JoinHandle<T>>) -> bool {
    h.as_ref().is_none_or(thread::JoinHandle::is_finished)
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
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

/// A free UDP port on loopback that a process can keep across restarts
/// (a receiver killed and started again on the same address). It is taken
/// below Linux's ephemeral range (32768–60999): while a killed process is
/// down, a port in that range can be handed to another test's socket bound
/// to port 0, and the restarted process would find its address in use.
pub fn free_port() -> u16 {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::from_entropy();
    for _ in 0..1_000 {
        let port = rng.gen_range(20_000..32_000);
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free UDP port between 20000 and 32000 on 127.0.0.1");
}

/// `127.0.0.1:PORT` with a [`free_port`].
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// `len` pseudo-random bytes from `seed` (test inputs).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut data = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// A loopback UDP socket with a receive buffer of 8 MiB (64 MiB where the
/// process may exceed `net.core.rmem_max`), so that the test's
/// own socket does not drop datagrams when its thread is descheduled for a
/// while (only the path through surelink is under test).
pub fn udp_with_big_buffer() -> std::net::UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    socket.set_recv_buffer_size(8 << 20).expect("SO_RCVBUF");
    // Beyond net.core.rmem_max where allowed (as root): a receiver that
    // stops forwards everything it held in one burst of small datagrams,
    // each charged at several times its size, and a sink thread starved on
    // a loaded machine must not have the kernel drop some of them.
    let _ =
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(64 << 20));
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.into()
}

/// A path as a command-line argument.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}
