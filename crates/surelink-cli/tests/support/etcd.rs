//! Real `etcd` processes for the receiver-group tests: a cluster of one or
//! more members on free 127.0.0.1 ports, each with its own data directory
//! in a temporary directory, waited for by polling its `/health` endpoint
//! (bounded), and killed by PID when dropped (or on purpose, one member at
//! a time). Debian's `etcd-server` package provides the binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Bound on waiting for a cluster to become healthy.
const HEALTH_LIMIT: Duration = Duration::from_secs(30);
/// Pause between two health checks.
const HEALTH_POLL: Duration = Duration::from_millis(50);

/// One member of a test cluster.
struct Member {
    client: SocketAddr,
    child: Option<Child>,
}

/// A running etcd cluster, killed when dropped.
pub struct Etcd {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (etcd speaks TCP).
fn free_tcp_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Etcd {
    /// Starts a cluster of `size` members and waits until each is healthy.
    /// Heartbeat 50 ms and election timeout 500 ms (etcd's minimum lease
    /// TTL is then below a second, so tests can use 1 s leases).
    pub fn start(size: usize) -> Etcd {
        let dir = tempfile::tempdir().expect("temporary directory");
        let peers: Vec<SocketAddr> = (0..size).map(|_| free_tcp_addr()).collect();
        let clients: Vec<SocketAddr> = (0..size).map(|_| free_tcp_addr()).collect();
        let initial_cluster = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = (0..size)
            .map(|i| {
                let data: PathBuf = dir.path().join(format!("m{i}"));
                let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
                let child = Command::new("etcd")
                    .args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--listen-client-urls", &format!("http://{}", clients[i])])
                    .args(["--advertise-client-urls", &format!("http://{}", clients[i])])
                    .args(["--listen-peer-urls", &format!("http://{}", peers[i])])
                    .args([
                        "--initial-advertise-peer-urls",
                        &format!("http://{}", peers[i]),
                    ])
                    .args(["--initial-cluster", &initial_cluster])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "surelink-test"])
                    .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                    .args(["--logger", "zap", "--log-outputs", "stderr"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("cannot start etcd (Debian package etcd-server)");
                Member {
                    client: clients[i],
                    child: Some(child),
                }
            })
            .collect();
        let etcd = Etcd { members, _dir: dir };
        for i in 0..size {
            etcd.wait_healthy(i);
        }
        etcd
    }

    /// The client URLs of the members still running, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.members[i].client)
    }

    /// Kills member `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends signal `name` ("STOP", "CONT") to member `i`.
    pub fn signal(&self, i: usize, name: &str) {
        let child = self.members[i].child.as_ref().expect("a running member");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Waits (bounded) until member `i` answers healthy; panics if it does not.
    fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + HEALTH_LIMIT;
        while Instant::now() < deadline {
            if healthy(self.members[i].client) {
                return;
            }
            thread::sleep(HEALTH_POLL);
        }
        panic!("etcd member {i} did not become healthy within {HEALTH_LIMIT:?}");
    }
}

/// One `GET /health` over plain HTTP/1.0.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
