//! `--state` when the two sides' states do not fit together, and misuse:
//! a receiver or a sender that lost its state directory is refused with a
//! clear line on both sides (never silently restarted from zero); a side
//! with `--state` and one without refuse each other; `--state` with stdin
//! or datagram mode is a usage error. Every wait is bounded.

mod support;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use support::{free_addr, s, Proc, PROCESS_LIMIT};

/// A session interrupted halfway: the sender killed once the receiver has
/// at least 1 MiB. Returns (receiver, receiver args, sender args).
fn interrupted(dir: &Path) -> (Proc, Vec<String>, Vec<String>) {
    let mut data = vec![0u8; 4 << 20];
    rand::rngs::SmallRng::seed_from_u64(9).fill_bytes(&mut data);
    std::fs::write(dir.join("in.bin"), &data).unwrap();
    let addr = free_addr();
    let recv_args: Vec<String> = [
        "recv",
        "--listen",
        &addr,
        "--out",
        s(&dir.join("out.bin")),
        "--state",
        s(&dir.join("rs")),
        "--once",
    ]
    .map(String::from)
    .to_vec();
    let send_args: Vec<String> = [
        "send",
        "--to",
        &addr,
        "--in",
        s(&dir.join("in.bin")),
        "--state",
        s(&dir.join("ss")),
        "--max-unconfirmed",
        "64KiB",
        "--chunk",
        "16KiB",
    ]
    .map(String::from)
    .to_vec();
    let mut recv = Proc::spawn_default_log(
        "recv",
        &recv_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    recv.wait_for_line("listening on");
    let mut send = Proc::spawn_default_log(
        "send",
        &send_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let deadline = Instant::now() + PROCESS_LIMIT;
    while std::fs::metadata(dir.join("out.bin")).map_or(0, |m| m.len()) < 1 << 20 {
        assert!(Instant::now() < deadline, "no progress:\n{}", recv.stderr());
        thread::sleep(Duration::from_millis(1));
    }
    send.kill();
    (recv, recv_args, send_args)
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_receiver_that_lost_its_state_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (mut recv, recv_args, send_args) = interrupted(dir.path());
    recv.kill();
    let out_len = std::fs::metadata(dir.path().join("out.bin")).unwrap().len();
    std::fs::remove_dir_all(dir.path().join("rs")).unwrap();

    let mut recv = Proc::spawn_default_log("recv", &args(&recv_args));
    recv.wait_for_line("listening on");
    let mut send = Proc::spawn_default_log("send", &args(&send_args));
    let (status, _) = send.wait();
    assert_eq!(status.code(), Some(4), "refused: {}", send.stderr());
    let expected = "receiver lost its state: it expects message 0 on channel 0 \
                    but the sender's oldest unconfirmed message is ";
    assert!(send.stderr().contains(expected), "{}", send.stderr());
    recv.wait_for_line("refused a sender from");
    assert!(recv.stderr().contains(expected), "{}", recv.stderr());
    // Nothing was started over: the output is as it was.
    assert_eq!(
        std::fs::metadata(dir.path().join("out.bin")).unwrap().len(),
        out_len
    );
}

#[test]
fn a_changed_input_is_refused_on_resume_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut recv, recv_args, send_args) = interrupted(dir.path());
    // The receiver is stopped too, so its output cannot grow from the
    // killed sender's packets still in flight: whatever changes it from
    // here on came from the refused sender.
    recv.kill();
    let input = dir.path().join("in.bin");
    let original = std::fs::read(&input).unwrap();
    let modified = std::fs::metadata(&input).unwrap().modified().unwrap();
    let out = dir.path().join("out.bin");
    let out_before = std::fs::read(&out).unwrap();

    // The same length and modification time; the last byte changed.
    let mut changed = original.clone();
    *changed.last_mut().unwrap() ^= 1;
    let rewrite = |data: &[u8]| {
        std::fs::write(&input, data).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&input)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    };
    rewrite(&changed);
    // Refused from the state directory alone, before any connection: no
    // receiver is running, so a sender that tried to connect would fail
    // with a connection error (another exit code and message) instead.
    let mut send = Proc::spawn_default_log("send", &args(&send_args));
    let (status, _) = send.wait();
    assert_eq!(status.code(), Some(6), "a state error: {}", send.stderr());
    assert!(
        send.stderr()
            .contains("the input changed since the session started"),
        "{}",
        send.stderr()
    );
    assert!(
        std::fs::read(&out).unwrap() == out_before,
        "output untouched"
    );

    // Restored, the session resumes and completes byte-identical.
    rewrite(&original);
    let mut recv = Proc::spawn_default_log("recv", &args(&recv_args));
    recv.wait_for_line("listening on");
    let mut send = Proc::spawn_default_log("send", &args(&send_args));
    let (status, _) = send.wait();
    assert!(status.success(), "{}", send.stderr());
    let (status, _) = recv.wait();
    assert!(status.success(), "{}", recv.stderr());
    assert!(recv.stderr().contains("resumed"), "{}", recv.stderr());
    assert!(std::fs::read(&out).unwrap() == original);
}

#[test]
fn a_sender_that_lost_its_state_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (mut recv, _recv_args, send_args) = interrupted(dir.path());
    std::fs::remove_dir_all(dir.path().join("ss")).unwrap();

    let mut send = Proc::spawn_default_log("send", &args(&send_args));
    let (status, _) = send.wait();
    assert_eq!(status.code(), Some(4), "refused: {}", send.stderr());
    let expected = "the receiver is in the middle of session";
    assert!(
        send.stderr().contains(expected)
            && send
                .stderr()
                .contains("if the sender lost its state, restart it with its original state"),
        "{}",
        send.stderr()
    );
    recv.wait_for_line("refused a sender from");
    assert!(recv.stderr().contains(expected), "{}", recv.stderr());
}

#[test]
fn state_on_one_side_only_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.bin"), b"some bytes").unwrap();
    let input = dir.path().join("in.bin");
    let out = dir.path().join("out.bin");

    // The sender keeps state, the receiver does not.
    let addr = free_addr();
    let mut recv = Proc::spawn_default_log(
        "recv",
        &["recv", "--listen", &addr, "--out", s(&out), "--once"],
    );
    recv.wait_for_line("listening on");
    let mut send = Proc::spawn_default_log(
        "send",
        &[
            "send",
            "--to",
            &addr,
            "--in",
            s(&input),
            "--state",
            s(&dir.path().join("ss")),
        ],
    );
    // The receiver closed the connection with its reason.
    assert_eq!(send.wait().0.code(), Some(5), "{}", send.stderr());
    assert!(
        send.stderr()
            .contains("this receiver runs without --state: start it with --state DIR too"),
        "{}",
        send.stderr()
    );
    assert_eq!(recv.wait().0.code(), Some(4), "refused: {}", recv.stderr());
    assert!(
        recv.stderr()
            .contains("runs with --state: this receiver must use --state DIR too"),
        "{}",
        recv.stderr()
    );
    // The refused session wrote nothing: the output was never even created
    // (it is written under a temporary name until a sender finishes).
    assert!(!out.exists(), "nothing written");

    // The receiver keeps state, the sender does not. (The refusal comes
    // with the first message; a sender whose whole input is acknowledged
    // by the transport before that would not hear of it, so the input is
    // large enough to be still in flight.)
    let mut data = vec![0u8; 8 << 20];
    rand::rngs::SmallRng::seed_from_u64(3).fill_bytes(&mut data);
    std::fs::write(&input, &data).unwrap();
    let addr = free_addr();
    let mut recv = Proc::spawn_default_log(
        "recv",
        &[
            "recv",
            "--listen",
            &addr,
            "--out",
            s(&out),
            "--state",
            s(&dir.path().join("rs")),
            "--once",
        ],
    );
    recv.wait_for_line("listening on");
    let mut send = Proc::spawn_default_log("send", &["send", "--to", &addr, "--in", s(&input)]);
    assert_eq!(send.wait().0.code(), Some(5), "{}", send.stderr());
    assert!(
        send.stderr()
            .contains("the sender must use it too (surelink send --state DIR)"),
        "{}",
        send.stderr()
    );
    recv.wait_for_line("did not start a session");
}

#[test]
fn state_needs_files() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("st");
    let mut send = Proc::spawn_default_log(
        "send",
        &["send", "--to", "127.0.0.1:9", "--state", s(&state)],
    );
    assert_eq!(send.wait().0.code(), Some(2), "a usage error");
    assert!(
        send.stderr().contains("--state needs --in FILE"),
        "{}",
        send.stderr()
    );
    let mut recv = Proc::spawn_default_log(
        "recv",
        &["recv", "--listen", "127.0.0.1:0", "--state", s(&state)],
    );
    assert_eq!(recv.wait().0.code(), Some(2), "a usage error");
    assert!(
        recv.stderr().contains("--state needs --out FILE"),
        "{}",
        recv.stderr()
    );
    let mut send = Proc::spawn_default_log(
        "send",
        &["send", "--to", "127.0.0.1:9", "--durability", "always"],
    );
    assert_eq!(send.wait().0.code(), Some(2), "--durability needs --state");
}
