//! Security of the `surelink` binary over real UDP on loopback: `keygen`,
//! key files, the handshake matrix (right key, wrong `--peer-key`, not on
//! `--allow`, pre-shared key mismatch, plaintext against encrypted both ways)
//! with the exit status and the distinct message on each side, and what is
//! on the wire (through a relay that inspects every datagram).
//!
//! Every wait is bounded; a process that does not finish in time is killed
//! and the test fails with its stderr. Nothing asserts on timing.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use support::{run, Finished, Proc, PROCESS_LIMIT};
use surelink::{Identity, PublicKey};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `keygen --out path` and returns the printed public key and fingerprint.
fn keygen(path: &Path) -> (PublicKey, String) {
    let out = run(&["keygen", "--out", path_str(path)]);
    assert!(out.status.success(), "keygen: {}", out.stderr);
    parse_keygen_output(&out.stdout)
}

fn parse_keygen_output(stdout: &str) -> (PublicKey, String) {
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} line in {stdout:?}"))
            .trim()
            .to_owned()
    };
    let key: PublicKey = field("public-key:").parse().expect("a 64-hex public key");
    (key, field("fingerprint:"))
}

#[test]
fn keygen_writes_a_private_file_and_prints_its_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.key");
    let (key, fingerprint) = keygen(&path);

    // The file holds the identity whose public half was printed.
    let contents = std::fs::read_to_string(&path).unwrap();
    let identity = Identity::from_file_str(&contents).expect("a surelink private key file");
    assert_eq!(identity.public(), key);
    assert_eq!(fingerprint, key.fingerprint());
    #[cfg(unix)]
    assert_eq!(mode(&path), 0o600, "private key file mode");

    // `--show` prints the same lines for the existing file.
    let out = run(&["keygen", "--show", path_str(&path)]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(parse_keygen_output(&out.stdout), (key, fingerprint));

    // No overwrite without --force; the key is untouched.
    let out = run(&["keygen", "--out", path_str(&path)]);
    assert_eq!(out.status.code(), Some(1), "any other failure");
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), contents);

    // --force replaces it, and a loosened mode is tightened again.
    #[cfg(unix)]
    set_mode(&path, 0o644);
    let out = run(&["keygen", "--out", path_str(&path), "--force"]);
    assert!(out.status.success(), "{}", out.stderr);
    let (new_key, _) = parse_keygen_output(&out.stdout);
    assert_ne!(new_key, key);
    let identity = Identity::from_file_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(identity.public(), new_key);
    #[cfg(unix)]
    assert_eq!(mode(&path), 0o600, "private key file mode after --force");
}

#[cfg(unix)]
#[test]
fn key_files_others_can_read_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    keygen(&key);
    set_mode(&key, 0o640);
    for args in [
        vec!["recv", "--listen", "127.0.0.1:0", "--key", path_str(&key)],
        vec!["send", "--to", "127.0.0.1:9", "--key", path_str(&key)],
        vec!["keygen", "--show", path_str(&key)],
    ] {
        let out = run(&args);
        let expected = if args[0] == "keygen" { 1 } else { 2 };
        assert_eq!(out.status.code(), Some(expected), "{args:?}");
        let err = out.stderr;
        assert!(
            err.contains("accessible by group or others") && err.contains("chmod 600"),
            "{args:?}: {err}"
        );
    }
    // The same for a pre-shared key file.
    let psk = dir.path().join("psk");
    std::fs::write(&psk, "ab".repeat(32)).unwrap();
    set_mode(&psk, 0o644);
    let at = format!("@{}", path_str(&psk));
    let out = run(&["send", "--to", "127.0.0.1:9", "--psk", &at]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
}

#[test]
fn bad_key_material_is_a_clear_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let allow = dir.path().join("allow");
    std::fs::write(&allow, "# nobody yet\n").unwrap();
    let empty = run(&[
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--allow",
        path_str(&allow),
    ]);
    std::fs::write(&allow, format!("{}\nnot-a-key\n", "ab".repeat(32))).unwrap();
    let bad_line = run(&[
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--allow",
        path_str(&allow),
    ]);
    let fingerprint = run(&[
        "send",
        "--to",
        "127.0.0.1:9",
        "--peer-key",
        "1a2b:3c4d:5e6f:7a8b",
    ]);
    let short_psk = run(&["send", "--to", "127.0.0.1:9", "--psk", "abcd"]);
    let plaintext_with_key = run(&[
        "send",
        "--to",
        "127.0.0.1:9",
        "--insecure-plaintext",
        "--peer-key",
        &"ab".repeat(32),
    ]);
    for (out, expected) in [
        (&empty, "contains no keys"),
        (&bad_line, "line 2"),
        (&fingerprint, "not the short fingerprint"),
        (&short_psk, "64 hex digits"),
        (&plaintext_with_key, "cannot be used with"),
    ] {
        assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
        assert!(
            out.stderr.contains(expected),
            "expected {expected:?} in {}",
            out.stderr
        );
    }
}

// ----- the handshake matrix ------------------------------------------------------

/// Keys and files shared by the matrix cases.
struct Keys {
    _dir: tempfile::TempDir,
    server_key: PathBuf,
    server_pub: PublicKey,
    client_key: PathBuf,
    client_pub: PublicKey,
    stranger_key: PathBuf,
    stranger_pub: PublicKey,
    /// An allow-list holding only the client's key.
    allow_client: PathBuf,
    /// An allow-list holding only the stranger's key.
    allow_stranger: PathBuf,
    psk_a: PathBuf,
    psk_b: String,
    input: PathBuf,
    data: Vec<u8>,
}

impl Keys {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server_key = dir.path().join("server.key");
        let client_key = dir.path().join("client.key");
        let stranger_key = dir.path().join("stranger.key");
        let (server_pub, _) = keygen(&server_key);
        let (client_pub, _) = keygen(&client_key);
        let (stranger_pub, _) = keygen(&stranger_key);
        let allow_client = dir.path().join("allow-client");
        std::fs::write(
            &allow_client,
            format!("# senders we accept\n{client_pub} client  # the test's sender\n"),
        )
        .unwrap();
        let allow_stranger = dir.path().join("allow-stranger");
        std::fs::write(&allow_stranger, format!("{stranger_pub}\n")).unwrap();
        let psk_a = dir.path().join("a.psk");
        std::fs::write(&psk_a, format!("{}\n", "5a".repeat(32))).unwrap();
        #[cfg(unix)]
        set_mode(&psk_a, 0o600);
        let input = dir.path().join("in.bin");
        let mut data = vec![0u8; 200_000];
        SmallRng::seed_from_u64(5).fill_bytes(&mut data);
        std::fs::write(&input, &data).unwrap();
        Self {
            _dir: dir,
            server_key,
            server_pub,
            client_key,
            client_pub,
            stranger_key,
            stranger_pub,
            allow_client,
            allow_stranger,
            psk_a,
            psk_b: "a5".repeat(32),
            input,
            data,
        }
    }

    fn output(&self, name: &str) -> PathBuf {
        self._dir.path().join(name)
    }
}

/// One case: a receiver started with `recv_args` (and `--once`), a sender
/// with `bad_send_args` that must fail with `send_error` while the receiver
/// logs `recv_log` and keeps waiting, then a sender with `good_send_args` that
/// the receiver accepts, after which it exits 0 with the data intact.
struct Case<'a> {
    name: &'a str,
    recv_args: Vec<String>,
    bad_send_args: Vec<String>,
    send_error: Vec<String>,
    recv_log: Vec<String>,
    good_send_args: Vec<String>,
}

fn run_case(keys: &Keys, case: Case<'_>) {
    let out = keys.output(&format!("{}.out", case.name));
    let mut recv_args: Vec<String> = [
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--once",
        "--out",
        path_str(&out),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    recv_args.extend(case.recv_args);
    let recv_args: Vec<&str> = recv_args.iter().map(String::as_str).collect();
    let mut recv = Proc::spawn_default_log(&format!("{} recv", case.name), &recv_args);
    let addr = recv.listening_addr().to_string();
    let sender = |extra: &[String]| -> Vec<String> {
        let mut args: Vec<String> = [
            "send",
            "--to",
            &addr,
            "--in",
            path_str(&keys.input),
            "--connect-timeout",
            "30s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend_from_slice(extra);
        args
    };

    // The refused sender: exit 4 (no connection), its message, promptly (not the connect timeout).
    let bad = sender(&case.bad_send_args);
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    let Finished { status, stderr, .. } =
        Proc::spawn_default_log(&format!("{} bad send", case.name), &bad).wait_all();
    assert_eq!(status.code(), Some(4), "{}: {stderr}", case.name);
    for part in &case.send_error {
        assert!(
            stderr.contains(part.as_str()),
            "{}: expected {part:?} in the sender's stderr:\n{stderr}",
            case.name
        );
    }
    assert!(!stderr.contains("no answer"), "{}: {stderr}", case.name);
    let error_lines = stderr
        .lines()
        .filter(|l| l.starts_with("surelink: error:"))
        .count();
    assert_eq!(error_lines, 1, "{}: one error line:\n{stderr}", case.name);

    // The receiver logged the refusal and, although `--once`, is still waiting.
    let line = recv.wait_for_line(&case.recv_log[0]);
    for part in &case.recv_log[1..] {
        assert!(
            line.contains(part.as_str()),
            "{}: expected {part:?} in the receiver's line {line:?}",
            case.name
        );
    }
    assert!(
        recv.is_running(),
        "{}: the receiver exited after a refused handshake:\n{}",
        case.name,
        recv.stderr()
    );

    // An acceptable sender is then served, and `--once` ends the receiver.
    let good = sender(&case.good_send_args);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let Finished { status, stderr, .. } =
        Proc::spawn_default_log(&format!("{} good send", case.name), &good).wait_all();
    assert!(status.success(), "{}: good sender: {stderr}", case.name);
    let Finished {
        status,
        stderr: recv_stderr,
        ..
    } = recv.wait_all();
    assert!(status.success(), "{}: receiver: {recv_stderr}", case.name);
    assert!(
        std::fs::read(&out).unwrap() == keys.data,
        "{}: output differs",
        case.name
    );
    assert!(
        recv_stderr.contains("accepted connection from 127.0.0.1:"),
        "{}: {recv_stderr}",
        case.name
    );
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn right_keys_connect_and_both_sides_print_fingerprints() {
    let keys = Keys::new();
    let out = keys.output("right.out");
    let mut recv = Proc::spawn_default_log(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--out",
            path_str(&out),
            "--key",
            path_str(&keys.server_key),
            "--allow",
            path_str(&keys.allow_client),
            "--psk",
            &format!("@{}", path_str(&keys.psk_a)),
        ],
    );
    let addr = recv.listening_addr().to_string();
    // The receiver announces its key, so a sender can pin it.
    let line = recv.wait_for_line("public key ");
    assert!(
        line.contains(&keys.server_pub.to_string())
            && line.contains(&keys.server_pub.fingerprint()),
        "{line}"
    );
    let Finished {
        status,
        stderr: send_stderr,
        ..
    } = Proc::spawn_default_log(
        "send",
        &[
            "send",
            "--to",
            &addr,
            "--in",
            path_str(&keys.input),
            "--key",
            path_str(&keys.client_key),
            "--peer-key",
            &keys.server_pub.to_string(),
            "--psk",
            &"5a".repeat(32),
        ],
    )
    .wait_all();
    assert!(status.success(), "{send_stderr}");
    assert!(
        send_stderr.contains(&format!(
            "server key fingerprint {} (matches --peer-key)",
            keys.server_pub.fingerprint()
        )),
        "{send_stderr}"
    );
    let Finished {
        status,
        stderr: recv_stderr,
        ..
    } = recv.wait_all();
    assert!(status.success(), "{recv_stderr}");
    let accepted = recv_stderr
        .lines()
        .find(|l| l.contains("accepted connection from 127.0.0.1:"))
        .unwrap_or_else(|| panic!("{recv_stderr}"));
    assert!(
        accepted.ends_with(&format!(
            ", peer key fingerprint {}",
            keys.client_pub.fingerprint()
        )),
        "{accepted}"
    );
    assert!(std::fs::read(&out).unwrap() == keys.data);
}

#[test]
fn without_keys_each_side_sees_the_others_fingerprint() {
    let keys = Keys::new();
    let out = keys.output("tofu.out");
    let mut recv = Proc::spawn_default_log(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--out",
            path_str(&out),
        ],
    );
    let addr = recv.listening_addr().to_string();
    let announced = recv.wait_for_line("public key ");
    let Finished {
        status,
        stderr: send_stderr,
        ..
    } = Proc::spawn_default_log(
        "send",
        &["send", "--to", &addr, "--in", path_str(&keys.input)],
    )
    .wait_all();
    assert!(status.success(), "{send_stderr}");
    // The sender's line names the fingerprint the receiver announced, and how to pin it.
    let line = send_stderr
        .lines()
        .find(|l| l.contains("server key fingerprint"))
        .unwrap_or_else(|| panic!("{send_stderr}"));
    let fingerprint = line
        .split("server key fingerprint ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(announced.contains(fingerprint), "{announced} / {line}");
    assert!(line.contains("--peer-key"), "{line}");
    let Finished {
        status,
        stderr: recv_stderr,
        ..
    } = recv.wait_all();
    assert!(status.success(), "{recv_stderr}");
    assert!(
        recv_stderr.contains(", peer key fingerprint "),
        "{recv_stderr}"
    );
}

#[test]
fn a_wrong_peer_key_fails_on_both_sides() {
    let keys = Keys::new();
    let server_fp = keys.server_pub.fingerprint();
    let stranger_fp = keys.stranger_pub.fingerprint();
    run_case(
        &keys,
        Case {
            name: "peer-key",
            recv_args: strings(&["--key", path_str(&keys.server_key)]),
            bad_send_args: strings(&["--peer-key", &keys.stranger_pub.to_string()]),
            send_error: vec![format!(
                "surelink: error: server key mismatch: expected {stranger_fp}, got {server_fp}"
            )],
            recv_log: vec![
                "refused the connection".into(),
                "the client at 127.0.0.1:".into(),
                format!("the client expected server key {stranger_fp}"),
                "(code 18)".into(),
            ],
            good_send_args: strings(&["--peer-key", &keys.server_pub.to_string()]),
        },
    );
}

#[test]
fn a_sender_not_on_the_allow_list_is_refused() {
    let keys = Keys::new();
    let client_fp = keys.client_pub.fingerprint();
    run_case(
        &keys,
        Case {
            name: "allow",
            recv_args: strings(&["--allow", path_str(&keys.allow_stranger)]),
            bad_send_args: strings(&["--key", path_str(&keys.client_key)]),
            send_error: vec![format!(
                "surelink: error: the receiver refused the connection: client key {client_fp} \
                 is not on the server's allow-list (code 17)"
            )],
            recv_log: vec![
                format!("client key {client_fp} is not on the allow-list"),
                "refused connection from 127.0.0.1:".into(),
            ],
            // The stranger's key is the one on the list.
            good_send_args: strings(&["--key", path_str(&keys.stranger_key)]),
        },
    );
}

#[test]
fn a_pre_shared_key_mismatch_fails_on_both_sides() {
    let keys = Keys::new();
    let psk_file = format!("@{}", path_str(&keys.psk_a));
    run_case(
        &keys,
        Case {
            name: "psk",
            recv_args: vec!["--psk".into(), psk_file.clone()],
            bad_send_args: vec!["--psk".into(), keys.psk_b.clone()],
            send_error: vec![
                "surelink: error: the receiver refused the connection: handshake authentication \
                 failed (pre-shared key mismatch"
                    .into(),
                "(code 16)".into(),
            ],
            recv_log: vec![
                "pre-shared key mismatch".into(),
                "refused connection from 127.0.0.1:".into(),
            ],
            good_send_args: vec!["--psk".into(), psk_file],
        },
    );
}

#[test]
fn a_plaintext_sender_is_refused_by_an_encrypted_receiver() {
    let keys = Keys::new();
    run_case(
        &keys,
        Case {
            name: "plaintext-sender",
            recv_args: vec![],
            bad_send_args: strings(&["--insecure-plaintext"]),
            send_error: vec![
                "WARNING: --insecure-plaintext".into(),
                "surelink: error: the receiver refused the connection: the server requires \
                 encryption but the client runs in insecure plaintext mode (code 19)"
                    .into(),
            ],
            recv_log: vec![
                "requires encryption".into(),
                "refused connection from 127.0.0.1:".into(),
            ],
            good_send_args: vec![],
        },
    );
}

#[test]
fn an_encrypted_sender_is_refused_by_a_plaintext_receiver() {
    let keys = Keys::new();
    run_case(
        &keys,
        Case {
            name: "plaintext-receiver",
            recv_args: strings(&["--insecure-plaintext"]),
            bad_send_args: vec![],
            send_error: vec![
                "surelink: error: the receiver refused the connection: the server runs in \
                 insecure plaintext mode; the client requires encryption (code 20)"
                    .into(),
            ],
            recv_log: vec![
                "runs in insecure plaintext mode".into(),
                "refused connection from 127.0.0.1:".into(),
            ],
            good_send_args: strings(&["--insecure-plaintext"]),
        },
    );
}

#[test]
fn plaintext_mode_warns_on_every_run() {
    let out = run(&[
        "send",
        "--to",
        "127.0.0.1:9",
        "--insecure-plaintext",
        "--connect-timeout",
        "100ms",
    ]);
    assert_eq!(out.status.code(), Some(4), "no answer: no connection");
    let err = out.stderr;
    assert!(err.contains("WARNING: --insecure-plaintext"), "{err}");
    assert!(
        err.contains("encryption and authentication are OFF"),
        "{err}"
    );
}

// ----- what is on the wire -------------------------------------------------------

/// A UDP relay between one client and `server` that checks every datagram,
/// both ways, for `marker`.
struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<(u64, u64)>>,
}

impl Relay {
    fn start(server: SocketAddr, marker: &'static [u8]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut client = None;
            let (mut datagrams, mut with_marker) = (0u64, 0u64);
            let deadline = Instant::now() + PROCESS_LIMIT;
            while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let datagram = &buf[..n];
                datagrams += 1;
                if datagram.windows(marker.len()).any(|w| w == marker) {
                    with_marker += 1;
                }
                let to = if from == server {
                    client
                } else {
                    client = Some(from);
                    Some(server)
                };
                if let Some(to) = to {
                    let _ = socket.send_to(datagram, to);
                }
            }
            (datagrams, with_marker)
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the relay; returns (datagrams relayed, datagrams containing the marker).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Transfers a file full of `MARKER` through a relay; returns what the relay saw.
fn transfer_through_relay(extra: &[&str]) -> (u64, u64) {
    const MARKER: &[u8] = b"SURELINK-SECRET-MARKER-5e1f";
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("secret.txt");
    let output = dir.path().join("out.txt");
    let mut data = Vec::new();
    let mut rng = SmallRng::seed_from_u64(3);
    while data.len() < 300_000 {
        data.extend_from_slice(MARKER);
        let mut filler = [0u8; 37];
        rng.fill_bytes(&mut filler);
        data.extend_from_slice(&filler);
    }
    std::fs::write(&input, &data).unwrap();

    let mut recv_args = vec![
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--once",
        "--out",
        path_str(&output),
    ];
    recv_args.extend_from_slice(extra);
    let mut recv = Proc::spawn_default_log("recv", &recv_args);
    let server = recv.listening_addr();
    let relay = Relay::start(server, MARKER);
    let relay_addr = relay.addr.to_string();
    let mut send_args = vec!["send", "--to", &relay_addr, "--in", path_str(&input)];
    send_args.extend_from_slice(extra);
    let Finished { status, stderr, .. } = Proc::spawn_default_log("send", &send_args).wait_all();
    assert!(status.success(), "send: {stderr}");
    let Finished { status, stderr, .. } = recv.wait_all();
    assert!(status.success(), "recv: {stderr}");
    assert!(std::fs::read(&output).unwrap() == data, "output differs");
    relay.finish()
}

#[test]
fn no_plaintext_on_the_wire_unless_asked_for() {
    let (datagrams, with_marker) = transfer_through_relay(&[]);
    assert!(datagrams > 100, "the transfer went through the relay");
    assert_eq!(with_marker, 0, "the marker was visible on the wire");

    // The check can fail: in plaintext mode the marker is there to see.
    let (datagrams, with_marker) = transfer_through_relay(&["--insecure-plaintext"]);
    assert!(datagrams > 100);
    assert!(with_marker > 0, "the relay should see plaintext");
}
