//! Crash recovery of `send --state` / `recv --state` as real processes, in
//! the style of sled's crash tests: the sender, the receiver, or both are
//! killed with SIGKILL at seeded random moments while data flows, restarted
//! with the same arguments, and in the end the output must be byte-identical
//! to the input (random bytes, so a lost or repeated byte cannot go unseen).
//!
//! Each test kills 24 times during a 3 MiB transfer on loopback, directly or
//! through `surelink impair` with 2% loss. The sender runs with
//! `--max-unconfirmed 64KiB`, so it reads its input a little at a time and
//! restarts land both while the input is being read and while the outbox is
//! re-sent. A moment to kill is chosen by waiting until the restarted
//! processes are at work (the receiver listens, the sender has resumed the
//! session) and the output has grown by a random amount, then a random delay
//! of up to 10 ms; one kill in four instead hits a sender at a random moment
//! of its start-up (opening its journal, connecting, resuming). Every wait is
//! bounded; nothing asserts on timing.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use support::{free_port, Proc};

/// Size of the transferred file.
const FILE_SIZE: usize = 3 << 20;
/// Kills per test.
const KILLS: usize = 24;
/// Bound on one whole scenario (debug build, two cores, tests in parallel).
const SCENARIO_LIMIT: Duration = Duration::from_secs(240);
/// Bound on waiting for a line or for progress.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Which process dies at each kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victims {
    Sender,
    Receiver,
    Both,
    /// One of the three, at random each time.
    Any,
}

fn file_len(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| m.len() as usize)
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

struct Scenario {
    log: Arc<Mutex<String>>,
    recv_args: Vec<String>,
    send_args: Vec<String>,
    output: PathBuf,
    incarnations: usize,
}

impl Scenario {
    fn start_recv(&mut self) -> Proc {
        self.incarnations += 1;
        let mut p = self.spawn(&format!("recv#{}", self.incarnations), &self.recv_args);
        // Printed after the state was opened and the output cut back to
        // its checkpoint.
        if p.find_line("listening on", WAIT_LIMIT).is_none() {
            self.fail("the receiver did not listen");
        }
        p
    }

    fn start_send(&mut self) -> Proc {
        self.incarnations += 1;
        self.spawn(&format!("send#{}", self.incarnations), &self.send_args)
    }

    /// Starts `surelink ARGS`, its stderr going to the scenario's log.
    fn spawn(&self, name: &str, args: &[String]) -> Proc {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn_logged(name, &args, &self.log)
    }

    /// Waits (bounded) until a sender resumed (or started) its session;
    /// false if it exited first.
    fn wait_attached(&self, send: &mut Proc) -> bool {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            match send.next_line(Duration::from_millis(10)) {
                Some(line)
                    if line.contains(" resumed: ")
                        || line.contains("the receiver accepted it")
                        || line.contains("the receiver has it complete") =>
                {
                    return true
                }
                Some(_) => {}
                None => {
                    if send.exited().is_some() {
                        return false;
                    }
                    if Instant::now() > deadline {
                        self.fail("the sender did not resume its session");
                    }
                }
            }
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n--- log ---\n{}", self.log.lock().unwrap());
    }
}

/// Runs one scenario; returns the log of every process's stderr.
fn run(seed: u64, victims: Victims, loss: Option<&str>, durability: &str) -> String {
    // `SURELINK_CRASH_SEED=N` shifts every seed (for stress runs).
    let seed = seed
        + std::env::var("SURELINK_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            * 100;
    let started = Instant::now();
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let mut data = vec![0u8; FILE_SIZE];
    rng.fill_bytes(&mut data);
    std::fs::write(&input, &data).unwrap();

    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let _impair;
    let target = match loss {
        Some(loss) => {
            let mut impair = Proc::spawn_logged(
                "impair",
                &[
                    "impair",
                    "--listen",
                    "127.0.0.1:0",
                    "--target",
                    &listen.to_string(),
                    "--loss",
                    loss,
                    "--seed",
                    &seed.to_string(),
                ],
                &log,
            );
            let addr = impair.addr_after("listening on ").to_string();
            _impair = Some(impair);
            addr
        }
        None => {
            _impair = None;
            listen.to_string()
        }
    };
    let mut sc = Scenario {
        log: log.clone(),
        recv_args: [
            "recv",
            "--listen",
            &listen.to_string(),
            "--out",
            &s(&output),
            "--state",
            &s(&dir.path().join("recv-state")),
            "--once",
            "--durability",
            durability,
        ]
        .map(String::from)
        .to_vec(),
        send_args: [
            "send",
            "--to",
            &target,
            "--in",
            &s(&input),
            "--state",
            &s(&dir.path().join("send-state")),
            "--durability",
            durability,
            "--max-unconfirmed",
            "64KiB",
            "--chunk",
            "16KiB",
        ]
        .map(String::from)
        .to_vec(),
        output: output.clone(),
        incarnations: 0,
    };

    let mut recv = sc.start_recv();
    let mut send = sc.start_send();
    let mut kills = 0;
    let mut early_kills = 0;
    let mut sender_restarts = 0;
    let mut sender_fresh = true;
    while kills < KILLS {
        let early = sender_fresh && victims != Victims::Receiver && rng.gen_range(0..4) == 0;
        if early {
            // A random moment of the sender's start-up.
            thread::sleep(Duration::from_micros(rng.gen_range(0..40_000)));
            early_kills += 1;
        } else if sender_fresh && !sc.wait_attached(&mut send) {
            // It exited (complete, or gave up): handled below.
        }
        // A random moment while data flows: the output grew by a random
        // amount, then a random delay.
        let base = file_len(&sc.output);
        let grow = if early {
            0
        } else {
            rng.gen_range(1..=FILE_SIZE / (4 * KILLS))
        };
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut finished = false;
        loop {
            if let Some(status) = recv.exited() {
                if !status.success() {
                    sc.fail(&format!("the receiver exited with {status}"));
                }
                finished = true;
                break;
            }
            if let Some(status) = send.exited() {
                if status.success() {
                    finished = true;
                    break;
                }
                // A sender that gave up (e.g. while the receiver was down)
                // is restarted like a killed one.
                sender_restarts += 1;
                if sender_restarts > 10 {
                    sc.fail("the sender keeps failing");
                }
                send = sc.start_send();
                sc.wait_attached(&mut send);
            }
            if file_len(&sc.output) >= (base + grow).min(FILE_SIZE) {
                break;
            }
            if Instant::now() > deadline {
                sc.fail(&format!(
                    "no progress: output at {} of {FILE_SIZE} bytes",
                    file_len(&sc.output)
                ));
            }
            thread::sleep(Duration::from_millis(1));
        }
        if finished {
            break;
        }
        if !early {
            thread::sleep(Duration::from_micros(rng.gen_range(0..10_000)));
        }
        let victim = match victims {
            Victims::Any => {
                [Victims::Sender, Victims::Receiver, Victims::Both][rng.gen_range(0..3)]
            }
            v => v,
        };
        if matches!(victim, Victims::Sender | Victims::Both) {
            send.kill();
        }
        if matches!(victim, Victims::Receiver | Victims::Both) {
            recv.kill();
            recv = sc.start_recv();
        }
        sender_fresh = matches!(victim, Victims::Sender | Victims::Both);
        if sender_fresh {
            send = sc.start_send();
        }
        kills += 1;
    }
    assert!(
        kills >= KILLS,
        "the transfer finished after only {kills} kills\n{}",
        log.lock().unwrap()
    );

    // Let it finish: both exit 0 (a sender that gives up is restarted).
    loop {
        if started.elapsed() > SCENARIO_LIMIT {
            sc.fail("the session did not complete in time");
        }
        match send.exited() {
            Some(status) if !status.success() => {
                sender_restarts += 1;
                if sender_restarts > 10 {
                    sc.fail("the sender keeps failing");
                }
                send = sc.start_send();
            }
            Some(_) => {
                if let Some(status) = recv.exited() {
                    if !status.success() {
                        sc.fail(&format!("the receiver exited with {status}"));
                    }
                    break;
                }
            }
            None => {
                if let Some(status) = recv.exited() {
                    if !status.success() {
                        sc.fail(&format!("the receiver exited with {status}"));
                    }
                }
            }
        }
        thread::sleep(Duration::from_millis(10));
    }

    let got = std::fs::read(&output).unwrap();
    if got != data {
        let first = got
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(data.len()));
        sc.fail(&format!(
            "output differs from input: {} bytes vs {}, first difference at byte {first}",
            got.len(),
            data.len()
        ));
    }
    let log = log.lock().unwrap().clone();
    assert!(log.contains("resumed"), "no session was resumed:\n{log}");
    if std::env::var_os("SURELINK_CRASH_LOG").is_some() {
        eprintln!("{log}");
    }
    eprintln!(
        "seed {seed}: {kills} kills ({early_kills} during a sender's start-up), \
         {sender_restarts} sender restarts after giving up, {:?}",
        started.elapsed()
    );
    log
}

/// Messages the senders of `log` re-sent by reading the input again (their
/// outbox refers to the input file rather than copying it).
fn resent_from_input(log: &str) -> u64 {
    log.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("re-sent ")?;
            let (n, rest) = rest.split_once(' ')?;
            rest.starts_with("read again from the input")
                .then(|| n.parse::<u64>().ok())?
        })
        .sum()
}

#[test]
fn killing_the_sender_loses_and_repeats_nothing() {
    run(1, Victims::Sender, None, "interval");
}

#[test]
fn killing_the_receiver_loses_and_repeats_nothing() {
    let log = run(2, Victims::Receiver, None, "none");
    // The restarted receiver keeps the reset secret in its state directory:
    // it answers the sender's packets for the connection of its previous
    // life with a stateless reset, and the sender reconnects at once instead
    // of waiting for its peer timeout.
    let resets = log.matches("the peer reset the connection").count();
    let timeouts = log.matches("no packet from the peer").count();
    assert!(
        resets > 0 && resets >= timeouts,
        "{resets} resets, {timeouts} peer timeouts:\n{log}"
    );
}

#[test]
fn killing_both_loses_and_repeats_nothing() {
    let log = run(3, Victims::Both, None, "always");
    // Restarted receivers lacked what they had not checkpointed: restarted
    // senders read it again from the input file.
    let replayed = resent_from_input(&log);
    assert!(replayed > 0, "nothing was re-sent from the input:\n{log}");
}

#[test]
fn killing_either_through_a_lossy_link_loses_and_repeats_nothing() {
    run(4, Victims::Any, Some("2%"), "interval");
}
