//! The CLI over two paths: `send --to A --to B` through two `surelink impair`
//! links to `recv --listen A --listen B`; the primary link is cut for 1.5 s in
//! the middle of the transfer and restored. The output must be byte-identical,
//! and the sender's log reports the failover.

mod support;

use support::Proc;

#[test]
fn a_file_crosses_a_primary_link_cut_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let data: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();

    let mut recv = Proc::spawn_default_log(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--out",
            output.to_str().unwrap(),
            "--once",
        ],
    );
    let server = [recv.listening_addr(), recv.listening_addr()];
    // 40 Mbit/s links: the transfer takes a few seconds; the primary is down
    // from 1 s to 2.5 s after it starts.
    let primary_target = server[0].to_string();
    let mut primary = Proc::spawn_default_log(
        "primary impair",
        &[
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
        ],
    );
    let backup_target = server[1].to_string();
    let mut backup = Proc::spawn_default_log(
        "backup impair",
        &[
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
        ],
    );
    let a = primary.listening_addr().to_string();
    let b = backup.listening_addr().to_string();
    let mut send = Proc::spawn_default_log(
        "send",
        &[
            "send",
            "--to",
            &a,
            "--to",
            &b,
            "--in",
            input.to_str().unwrap(),
        ],
    );
    send.wait_success();
    recv.wait_success();
    let got = std::fs::read(&output).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "output differs from input");
    // The sender's log tells what happened to the primary.
    let log = send.stderr();
    for line in ["path suspect", "data moved to another path", "path down"] {
        assert!(
            log.contains(line),
            "no {line:?} in the sender's log:\n{log}"
        );
    }
}
