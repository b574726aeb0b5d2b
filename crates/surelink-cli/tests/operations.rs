//! Operating `surelink` as a user would: failures name their cause on both
//! sides of the connection (a full disk on the receiver, an unreadable input
//! on the sender), each failure class has its documented exit status, a
//! damaged state directory says what to delete, a complete durable session
//! removes its state unless `--keep-state`, `--reconnect-for` keeps a sender
//! trying, the help pages carry examples, and completions and manual pages
//! are generated from the options. Every wait is bounded; a full
//! disk is a real EFBIG from write(2) under a file size limit.

mod support;

use std::net::UdpSocket;
use std::path::Path;

use rand::{RngCore, SeedableRng};
use support::{free_addr, s, Proc};

fn write_random(path: &Path, seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("surelink: error:"))
        .collect()
}

/// The receiver may write 64 KiB; the input is far larger than what flow
/// control lets the sender have in flight, so the sender is still sending
/// when the receiver's write fails.
const FILE_SIZE_LIMIT: u64 = 64 << 10;
const LARGE_INPUT: usize = 32 << 20;

/// One transfer into a receiver whose file size limit is [`FILE_SIZE_LIMIT`]:
/// the receiver fails with the write error (exit 3), and the sender reports
/// the receiver's reason (exit 5). Without `--state` the reason travels only
/// in the receiver's CLOSE; if that is lost, the receiver sends it again
/// when the sender's next packets arrive.
fn full_disk_is_reported_by_the_sender(durable: bool) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let out = dir.path().join("out.bin");
    write_random(&input, 1, LARGE_INPUT);
    let (rs, ss) = (dir.path().join("rs"), dir.path().join("ss"));
    let mut recv_args = vec![
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--out",
        s(&out),
        "--once",
    ];
    if durable {
        recv_args.extend_from_slice(&["--state", s(&rs)]);
    }
    let mut recv = Proc::spawn_with_file_size_limit("recv", &recv_args, FILE_SIZE_LIMIT);
    let addr = recv.listening_addr().to_string();
    let mut send_args = vec!["send", "--to", &addr, "--in", s(&input)];
    if durable {
        send_args.extend_from_slice(&["--state", s(&ss)]);
    }
    let mut send = Proc::spawn_default_log("send", &send_args);
    let (send_status, _) = send.wait();
    let (status, _) = recv.wait();
    let write_error = format!("cannot write {}: File too large", out.display());
    assert_eq!(status.code(), Some(3), "{}", recv.stderr());
    assert!(recv.stderr().contains(&write_error), "{}", recv.stderr());
    if durable {
        // Both states stay for a restart once there is room.
        assert!(rs.exists() && ss.exists());
    } else {
        // The partial output was a temporary file, removed.
        assert!(!out.exists());
    }
    let stderr = send.stderr();
    let errors = error_lines(&stderr);
    let expected = format!("the receiver ended the connection: receiver: {write_error}");
    assert_eq!(send_status.code(), Some(5), "{stderr}");
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&expected), "{stderr}");
    assert!(!stderr.contains("connecting again"), "{stderr}");
}

#[test]
fn a_full_disk_on_the_receiver_is_reported_by_the_sender() {
    full_disk_is_reported_by_the_sender(false);
}

#[test]
fn a_full_disk_on_a_durable_receiver_is_reported_by_the_sender() {
    full_disk_is_reported_by_the_sender(true);
}

#[test]
fn a_sender_whose_input_fails_tells_the_receiver_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.bin");
    let mut recv = Proc::spawn_default_log(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--out",
            s(&out),
            "--once",
        ],
    );
    let addr = recv.listening_addr().to_string();
    // Opens fine; reading at offset 0 fails with EIO (nothing is mapped there).
    let mut send =
        Proc::spawn_default_log("send", &["send", "--to", &addr, "--in", "/proc/self/mem"]);
    let (status, _) = send.wait();
    assert_eq!(status.code(), Some(3), "{}", send.stderr());
    assert!(
        send.stderr().contains("cannot read /proc/self/mem"),
        "{}",
        send.stderr()
    );
    let (status, _) = recv.wait();
    let stderr = recv.stderr();
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("the sender ended the connection: sender: cannot read /proc/self/mem"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn an_input_directory_fails_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut send = Proc::spawn_default_log("send", &["send", "--to", &addr, "--in", s(dir.path())]);
    let (status, _) = send.wait();
    assert_eq!(status.code(), Some(3), "{}", send.stderr());
    let stderr = send.stderr();
    let errors = error_lines(&stderr);
    assert_eq!(
        errors,
        [format!(
            "surelink: error: cannot read {}: is a directory",
            dir.path().display()
        )],
        "{}",
        send.stderr()
    );
    // Not a single packet was sent.
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    assert_eq!(
        silent.recv_from(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

/// One complete durable session over loopback; returns both processes' stderr.
fn durable_transfer(dir: &Path, extra: &[&str]) -> (String, String) {
    let input = dir.join("in.bin");
    let data = write_random(&input, 3, 256 << 10);
    let out = dir.join("out.bin");
    let mut recv_args = vec![
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--out",
        s(&out),
        "--once",
        "--state",
    ];
    let rs = dir.join("rs");
    recv_args.push(s(&rs));
    recv_args.extend_from_slice(extra);
    let mut recv = Proc::spawn_default_log("recv", &recv_args);
    let addr = recv.listening_addr().to_string();
    let ss = dir.join("ss");
    let mut send_args = vec!["send", "--to", &addr, "--in", s(&input), "--state", s(&ss)];
    send_args.extend_from_slice(extra);
    let mut send = Proc::spawn_default_log("send", &send_args);
    send.wait_success();
    recv.wait_success();
    assert!(std::fs::read(&out).unwrap() == data, "output differs");
    (send.stderr(), recv.stderr())
}

#[test]
fn a_complete_session_removes_its_state_unless_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (send, recv) = durable_transfer(dir.path(), &[]);
    assert!(!dir.path().join("ss").exists(), "{send}");
    assert!(!dir.path().join("rs").exists(), "{recv}");
    assert!(
        send.contains("removed the state of the complete session"),
        "{send}"
    );
    assert!(
        recv.contains("removed the state of the complete session"),
        "{recv}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (send, recv) = durable_transfer(dir.path(), &["--keep-state"]);
    assert!(dir.path().join("ss").is_dir(), "{send}");
    assert!(dir.path().join("rs").is_dir(), "{recv}");
    assert!(send.contains("state kept in"), "{send}");

    // A receiver restarted on its kept, complete state says why it waits,
    // then exits 0 without a sender.
    let out = dir.path().join("out.bin");
    let rs = dir.path().join("rs");
    let mut recv = Proc::spawn_default_log(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--out",
            s(&out),
            "--once",
            "--state",
            s(&rs),
        ],
    );
    recv.wait_for_line("(complete: waiting 10s for its sender to collect the last confirmation");
    recv.wait_success();
}

#[test]
fn a_corrupt_journal_says_what_to_delete_on_which_side() {
    let dir = tempfile::tempdir().unwrap();
    durable_transfer(dir.path(), &["--keep-state"]);
    for (side, state) in [("send", "ss"), ("recv", "rs")] {
        let state = dir.path().join(state);
        let segment = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .expect("a journal segment");
        let mut bytes = std::fs::read(&segment).unwrap();
        // Past the segment header, inside the first record.
        bytes[40] ^= 0xff;
        std::fs::write(&segment, bytes).unwrap();
        let input = dir.path().join("in.bin");
        let out = dir.path().join("out.bin");
        let args = match side {
            "send" => vec!["send", "--to", "127.0.0.1:9", "--in", s(&input)],
            _ => vec![
                "recv",
                "--listen",
                "127.0.0.1:0",
                "--out",
                s(&out),
                "--once",
            ],
        };
        let mut args = args;
        args.extend_from_slice(&["--state", s(&state)]);
        let mut p = Proc::spawn_default_log(side, &args);
        let (status, _) = p.wait();
        let stderr = p.stderr();
        assert_eq!(status.code(), Some(6), "{stderr}");
        let errors = error_lines(&stderr);
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains("journal corrupt"), "{stderr}");
        let advice = match side {
            "send" => format!(
                "delete {} here and the receiver's --state directory",
                state.display()
            ),
            _ => format!(
                "delete {} and the output file here, and the sender's --state directory",
                state.display()
            ),
        };
        assert!(errors[0].contains(&advice), "{stderr}");
    }
}

#[test]
fn a_sender_keeps_connecting_for_reconnect_for() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let data = write_random(&input, 4, 64 << 10);
    let out = dir.path().join("out.bin");
    let addr = free_addr();
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
            "--connect-timeout",
            "200ms",
            "--reconnect-for",
            "2m",
        ],
    );
    // No receiver yet: the sender says it tries again instead of giving up.
    send.wait_for_line("connecting again in");
    let mut recv = Proc::spawn_default_log(
        "recv",
        &[
            "recv",
            "--listen",
            &addr,
            "--out",
            s(&out),
            "--once",
            "--state",
            s(&dir.path().join("rs")),
        ],
    );
    send.wait_success();
    recv.wait_success();
    assert!(std::fs::read(&out).unwrap() == data, "output differs");
}

#[test]
fn help_pages_carry_examples_exit_statuses_and_timeouts() {
    for command in [
        &["--help"][..],
        &["send", "--help"],
        &["recv", "--help"],
        &["impair", "--help"],
        &["demo", "--help"],
        &["time", "--help"],
        &["keygen", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
    ] {
        let finished = support::run(command);
        assert!(finished.status.success(), "{command:?}");
        for section in ["Examples:\n  surelink ", "Exit status:", "2    usage error"] {
            assert!(
                finished.stdout.contains(section),
                "{command:?} lacks {section:?}:\n{}",
                finished.stdout
            );
        }
    }
    let send = support::run(&["send", "--help"]).stdout;
    for option in [
        "--idle-timeout <DURATION>",
        "[default: 10s]",
        "--reconnect-for <DURATION>",
        "[default: 0s]",
        "--keep-state",
    ] {
        assert!(send.contains(option), "send --help lacks {option}:\n{send}");
    }
}

#[test]
fn completions_and_man_pages_come_from_the_options() {
    for (shell, marker) in [
        ("bash", "_surelink()"),
        ("zsh", "#compdef surelink"),
        ("fish", "complete -c surelink"),
    ] {
        let finished = support::run(&["completions", shell]);
        assert!(finished.status.success(), "{shell}: {}", finished.stderr);
        assert!(finished.stdout.contains(marker), "{shell}");
        assert!(finished.stdout.contains("reconnect-for"), "{shell}");
    }
    let finished = support::run(&["completions", "tcsh"]);
    assert_eq!(finished.status.code(), Some(2));

    let page = support::run(&["man"]);
    assert!(page.status.success(), "{}", page.stderr);
    assert!(page.stdout.contains(".TH surelink 1"), "{}", page.stdout);
    let dir = tempfile::tempdir().unwrap();
    let man_dir = dir.path().join("man1");
    let finished = support::run(&["man", "--dir", s(&man_dir)]);
    assert!(finished.status.success(), "{}", finished.stderr);
    let send = std::fs::read_to_string(man_dir.join("surelink-send.1")).unwrap();
    assert!(send.contains("reconnect\\-for"), "{send}");
    assert!(man_dir.join("surelink-recv.1").exists());
}
