//! `surelink impair` as a process: forwarding through it to an echo server on
//! loopback, the `--json` counters on exit, the control port, SIGUSR1 and
//! SIGTERM, and argument errors. Bounded in time: every wait has a deadline.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{run, Proc};

/// A UDP echo server on a thread; it stops when the test process ends.
fn echo_server() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..len], from);
        }
    });
    addr
}

/// A running `surelink impair` (killed if the test ends early) and the
/// addresses it announced.
struct Impair {
    proc: Proc,
    listen: SocketAddr,
    control: Option<SocketAddr>,
}

impl Impair {
    fn spawn(args: &[&str]) -> Self {
        let mut all = vec!["impair"];
        all.extend_from_slice(args);
        let mut proc = Proc::spawn_default_log("impair", &all);
        let listen = proc.addr_after("listening on ");
        let control = args
            .contains(&"--control")
            .then(|| proc.addr_after("control on "));
        Self {
            proc,
            listen,
            control,
        }
    }

    /// Waits (bounded) for the process to exit; returns success and stdout.
    fn wait(mut self) -> (bool, String) {
        let (status, stdout) = self.proc.wait();
        (status.success(), stdout)
    }
}

/// Sends `count` numbered datagrams through `to` and counts the echoes that
/// come back within a quiet period.
fn exchange(to: SocketAddr, first: u32, count: u32) -> usize {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let reader = socket.try_clone().unwrap();
    let counter = thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut got = 0;
        while reader.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    for seq in first..first + count {
        socket.send_to(&seq.to_be_bytes(), to).unwrap();
        if seq % 10 == 9 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    counter.join().unwrap()
}

/// Sends a control command and returns the JSON reply.
fn control(addr: SocketAddr, command: &str) -> Value {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.send_to(command.as_bytes(), addr).unwrap();
    let mut buf = vec![0u8; 65_536];
    let len = socket.recv(&mut buf).expect("control reply");
    serde_json::from_slice(&buf[..len]).expect("JSON reply")
}

#[test]
fn forwards_and_prints_json_counters_on_exit() {
    let echo = echo_server();
    let impair = Impair::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--target",
        &echo.to_string(),
        "--loss",
        "10%",
        "--up",
        "delay=5ms",
        "--seed",
        "7",
        "--duration",
        "3s",
        "--json",
    ]);
    let received = exchange(impair.listen, 0, 300) as u64;
    let (ok, stdout) = impair.wait();
    assert!(ok, "exit status");
    let stats: Value = serde_json::from_str(stdout.trim()).expect("one JSON object on stdout");
    let (up, down) = (&stats["upstream"], &stats["downstream"]);
    assert_eq!(up["spec"], "loss=10%,delay=5ms");
    assert_eq!(down["spec"], "loss=10%");
    assert_eq!(stats["seed"], 7);
    assert_eq!(up["sent"], 300);
    let dropped = up["dropped_loss"].as_u64().unwrap() + down["dropped_loss"].as_u64().unwrap();
    // Two 10% losses in a row: about 57 of 300; loose bounds.
    assert!((15..=110).contains(&dropped), "dropped {dropped}");
    assert_eq!(received, 300 - dropped);
    assert_eq!(down["forwarded"].as_u64(), Some(received));
    assert_eq!(up["forwarded"], down["sent"]);
    assert_eq!(stats["flows"]["opened"], 1);
}

#[test]
fn control_port_sigusr1_and_sigterm() {
    let echo = echo_server();
    let impair = Impair::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--target",
        &echo.to_string(),
        "--control",
        "127.0.0.1:0",
        "--json",
    ]);
    let ctl = impair.control.unwrap();

    assert_eq!(
        control(ctl, "cut"),
        serde_json::json!({ "ok": true, "cut": true })
    );
    assert_eq!(exchange(impair.listen, 0, 10), 0, "cut");
    assert_eq!(control(ctl, "restore")["cut"], false);
    assert_eq!(exchange(impair.listen, 10, 10), 10, "restored");
    let stats = control(ctl, "stats");
    assert_eq!(stats["upstream"]["sent"], 20);
    assert_eq!(stats["upstream"]["dropped_cut"], 10);
    assert_eq!(stats["cut"], false);
    let unknown = control(ctl, "explode");
    assert_eq!(unknown["ok"], false);
    assert!(unknown["error"].as_str().unwrap().contains("explode"));

    // SIGUSR1 toggles the cut.
    let cut_state = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while control(ctl, "stats")["cut"] != want {
            assert!(Instant::now() < deadline, "SIGUSR1 did not set cut={want}");
            thread::sleep(Duration::from_millis(20));
        }
    };
    impair.proc.signal("USR1");
    cut_state(true);
    assert_eq!(exchange(impair.listen, 20, 5), 0, "cut by SIGUSR1");
    impair.proc.signal("USR1");
    cut_state(false);

    // SIGTERM stops it cleanly, with the counters on stdout.
    impair.proc.signal("TERM");
    let (ok, stdout) = impair.wait();
    assert!(ok, "exit status after SIGTERM");
    let stats: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(stats["upstream"]["sent"], 25);
    assert_eq!(stats["upstream"]["dropped_cut"], 15);
    assert_eq!(stats["downstream"]["forwarded"], 10);
}

#[test]
fn text_counters_go_to_stderr() {
    let echo = echo_server();
    let impair = Impair::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--target",
        &echo.to_string(),
        "--duration",
        "1s",
    ]);
    assert_eq!(exchange(impair.listen, 0, 5), 5);
    let mut proc = impair.proc;
    let (status, stdout) = proc.wait();
    assert!(status.success());
    assert_eq!(stdout, "", "nothing on stdout without --json");
    let text = proc.stderr();
    assert!(text.contains("stopped after"), "{text}");
    assert!(
        text.contains("upstream:") && text.contains("forwarded=5"),
        "{text}"
    );
}

/// Runs `surelink impair` with bad arguments: returns (success, stderr).
fn run_bad(args: &[&str]) -> (bool, String) {
    let mut all = vec!["impair"];
    all.extend_from_slice(args);
    let done = run(&all);
    (done.status.success(), done.stderr)
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--target",
        "127.0.0.1:9",
        "--duration",
        "1s",
    ];
    let cases: [(&[&str], &str); 5] = [
        (&["--loss", "150%"], "`loss`"),
        (&["--cut-at", "1s"], "--cut-for"),
        (&["--up", "nonsense=1"], "nonsense"),
        (&["--down", "delay=soon"], "--down"),
        (&["--reorder", "5%"], "reorder-delay"),
    ];
    for (extra, needle) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let (ok, stderr) = run_bad(&args);
        assert!(!ok, "{extra:?} must fail");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "one line for {extra:?}: {stderr}"
        );
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
    // Errors caught by the argument parser itself.
    let (ok, stderr) = run_bad(&[
        "--listen",
        "127.0.0.1:0",
        "--target",
        "127.0.0.1:9",
        "--duration",
        "5",
    ]);
    assert!(!ok);
    assert!(stderr.contains("--duration"), "{stderr}");
    let (ok, stderr) = run_bad(&["--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(stderr.contains("--target"), "{stderr}");
}
