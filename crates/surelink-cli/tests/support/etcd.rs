//! Real `etcd` processes for the receiver-group tests: a cluster of one or
//! more members on free 127.0.0.1 ports, each with its own data directory
//! in a temporary directory, waited for by polling its `/health` endpoint
//! (or, serving TLS, its log) (bounded), and killed by PID when dropped (or
//! on purpose, one member at a time). Debian's `etcd-server` package
//! provides the binary. Authentication is switched on through etcd's JSON
//! gateway (no etcd client in the tests: the CLI's default build has none).

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
    scheme: &'static str,
    dir: tempfile::TempDir,
}

/// The files of a TLS-serving member (PEM): its certificate and key, and
/// the CA its clients' certificates must be signed by.
pub struct ServerTls {
    /// The member's certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs client certificates.
    pub client_ca: PathBuf,
}

/// etcd (3.4) logs this once it is ready and serves clients ("securely"
/// with TLS).
const READY: &str = "serving client traffic";

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
        Etcd::start_with(size, None)
    }

    /// Starts one member serving clients over TLS only (https://),
    /// requiring a client certificate signed by `tls.client_ca`.
    pub fn start_tls(tls: &ServerTls) -> Etcd {
        Etcd::start_with(1, Some(tls))
    }

    fn start_with(size: usize, tls: Option<&ServerTls>) -> Etcd {
        let scheme = if tls.is_some() { "https" } else { "http" };
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
                let mut command = Command::new("etcd");
                if let Some(tls) = tls {
                    command
                        .arg("--cert-file")
                        .arg(&tls.cert)
                        .arg("--key-file")
                        .arg(&tls.key)
                        .arg("--trusted-ca-file")
                        .arg(&tls.client_ca)
                        .arg("--client-cert-auth");
                }
                let client_url = format!("{scheme}://{}", clients[i]);
                let child = command
                    .args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--listen-client-urls", &client_url])
                    .args(["--advertise-client-urls", &client_url])
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
        let etcd = Etcd {
            members,
            scheme,
            dir,
        };
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
            .map(|m| format!("{}://{}", self.scheme, m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("{}://{}", self.scheme, self.members[i].client)
    }

    /// Writes `key` = `value` (no lease) through member 0's JSON gateway
    /// (plain HTTP, authentication off).
    pub fn put(&self, key: &str, value: &str) {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            base64(key.as_bytes()),
            base64(value.as_bytes())
        );
        let answer = post(self.members[0].client, "/v3/kv/put", &body);
        assert!(answer.contains(" 200 "), "etcd put {key}: {answer}");
    }

    /// Deletes `key` through member 0's JSON gateway (plain HTTP,
    /// authentication off).
    pub fn delete(&self, key: &str) {
        let body = format!(r#"{{"key":"{}"}}"#, base64(key.as_bytes()));
        let answer = post(self.members[0].client, "/v3/kv/deleterange", &body);
        assert!(answer.contains(" 200 "), "etcd delete {key}: {answer}");
    }

    /// The cluster's current revision, as member 0 reports it (every
    /// committed transaction that writes advances it by one).
    pub fn revision(&self) -> i64 {
        let body = format!(r#"{{"key":"{}"}}"#, base64(b"/"));
        let answer = post(self.members[0].client, "/v3/kv/range", &body);
        let field = "\"revision\":\"";
        let start = answer
            .find(field)
            .unwrap_or_else(|| panic!("etcd range without a revision: {answer}"))
            + field.len();
        let digits: String = answer[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().expect("a revision")
    }

    /// Switches authentication on (through member 0's JSON gateway, plain
    /// HTTP only): a `root` user, and user `name` with `password` whose
    /// role may read and write the keys under `prefix` and nothing else.
    pub fn enable_auth(&self, name: &str, password: &str, prefix: &str) {
        let addr = self.members[0].client;
        let mut range_end = prefix.as_bytes().to_vec();
        *range_end.last_mut().expect("a prefix") += 1;
        let steps = [
            (
                "user/add",
                r#"{"name":"root","password":"root-password"}"#.to_owned(),
            ),
            ("user/grant", r#"{"user":"root","role":"root"}"#.to_owned()),
            ("role/add", r#"{"name":"group"}"#.to_owned()),
            (
                "role/grant",
                format!(
                    r#"{{"name":"group","perm":{{"permType":"READWRITE","key":"{}","range_end":"{}"}}}}"#,
                    base64(prefix.as_bytes()),
                    base64(&range_end)
                ),
            ),
            (
                "user/add",
                format!(r#"{{"name":"{name}","password":"{password}"}}"#),
            ),
            (
                "user/grant",
                format!(r#"{{"user":"{name}","role":"group"}}"#),
            ),
            ("enable", "{}".to_owned()),
        ];
        for (path, body) in steps {
            let answer = post(addr, &format!("/v3/auth/{path}"), &body);
            assert!(
                answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
                "etcd auth/{path}: {answer}"
            );
        }
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

    /// Waits (bounded) until member `i` answers healthy (or, serving TLS,
    /// logs that it is ready); panics if it does not.
    fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + HEALTH_LIMIT;
        let log = self.dir.path().join(format!("m{i}.log"));
        while Instant::now() < deadline {
            let ready = match self.scheme {
                "http" => request(self.members[i].client, "GET /health", "")
                    .contains("\"health\":\"true\""),
                _ => std::fs::read_to_string(&log).is_ok_and(|text| text.contains(READY)),
            };
            if ready {
                return;
            }
            thread::sleep(HEALTH_POLL);
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("etcd member {i} did not become healthy within {HEALTH_LIMIT:?}; its log:\n{log}");
    }
}

/// One plain HTTP/1.0 request (`line` is e.g. "GET /health") and the
/// whole answer ("" if the member cannot be reached).
fn request(addr: SocketAddr, line: &str, body: &str) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let message = format!(
        "{line} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(message.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// `POST path` with a JSON body.
fn post(addr: SocketAddr, path: &str, body: &str) -> String {
    request(addr, &format!("POST {path}"), body)
}

/// Standard base64 with padding (etcd's JSON gateway takes keys so).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
