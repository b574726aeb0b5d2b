//! One receiver-group leader serving many sessions at once, with a real
//! etcd (built with the `etcd` feature; `etcd` from Debian's `etcd-server`
//! on PATH), through the library (`surelink_etcd::Leadership` and its
//! `GroupSession` stores):
//!
//! * the checkpoints the sessions submit together are committed in a
//!   handful of fenced transactions, split at etcd's 128 operations per
//!   transaction, not one per session — counted by the leader's coalescer
//!   and by etcd's own revision, which each committed transaction advances
//!   by one; every session's checkpoint reads back as committed;
//! * a fence that fails (the leader key gone) fails every session's pending
//!   checkpoint and deposes all of the leader's sessions at once;
//! * several durable sessions streamed through one leader at once each end
//!   byte-identical to what their sender sent.
//!
//! No assertion is about time; every wait is bounded.

#![cfg(feature = "etcd")]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::etcd::Etcd;
use surelink::{Endpoint, EndpointConfig};
use surelink_etcd::{
    EtcdAccess, Group, GroupSession, Leadership, DEFAULT_BATCH_WINDOW, MAX_TXN_PUTS,
};
use surelink_session::{
    DurableReceiver, DurableSender, FileSink, MemStorage, ReceiverStore, SessionError,
    SessionOptions, SessionRecord,
};

/// Bound on any one scenario.
const SCENARIO_LIMIT: Duration = Duration::from_secs(90);
/// The leader's lease (long: these tests are not about expiry).
const LEASE_TTL: Duration = Duration::from_secs(5);

/// Connects to `etcd` as a member of `group` whose leaders start a batch
/// about once per `window`, and wins its leadership.
async fn lead(etcd: &Etcd, group: &str, window: Duration) -> (Group, Leadership) {
    let group = Group::connect(&EtcdAccess::new(vec![etcd.endpoint(0)]), group, LEASE_TTL)
        .await
        .expect("connect to etcd")
        .with_batch_window(window);
    let leadership = tokio::time::timeout(SCENARIO_LIMIT, group.campaign("127.0.0.1:1", |_| {}))
        .await
        .expect("elected within the bound")
        .expect("campaign");
    (group, leadership)
}

/// Session `index`'s checkpoint number `round`: distinct for each.
fn record(index: usize, round: u64) -> SessionRecord {
    let mut session_id = [0u8; 16];
    session_id[..8].copy_from_slice(&(index as u64).to_le_bytes());
    SessionRecord {
        session_id,
        resume_token: [0x5a; 32],
        peer: round.to_le_bytes().to_vec(),
    }
}

/// Every session of `sessions` commits its checkpoint of `round` at once
/// (all submitted before any is awaited); their outcomes, in order.
async fn commit_all(sessions: &mut [GroupSession], round: u64) -> Vec<Result<(), SessionError>> {
    let commits = sessions
        .iter_mut()
        .enumerate()
        .map(|(i, session)| session.commit(record(i, round), true));
    tokio::time::timeout(SCENARIO_LIMIT, join_all(commits))
        .await
        .expect("the commits are answered within the bound")
}

/// Polls every future to completion, all of them from the first poll on
/// (so each submits its checkpoint before any is answered).
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(Box::pin).map(Some).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("completed")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_of_many_sessions_go_in_few_fenced_transactions_and_a_failed_fence_deposes_all()
{
    let etcd = Etcd::start(1);
    // A long window: each round is at most two batches, however the
    // submissions and the coalescer interleave.
    let (_group, leadership) = lead(&etcd, "batch", Duration::from_secs(1)).await;
    // More sessions than one transaction may carry: every batch is split.
    let count = 2 * MAX_TXN_PUTS + 44;
    let mut sessions = Vec::with_capacity(count);
    for i in 0..count {
        let session = leadership
            .open_session(&format!("s{i}"))
            .await
            .expect("open a session");
        assert!(session.checkpoint().is_none(), "a new slot is empty");
        sessions.push(session);
    }

    let rounds = 3;
    let before = etcd.revision();
    for round in 1..=rounds {
        for (i, outcome) in commit_all(&mut sessions, round)
            .await
            .into_iter()
            .enumerate()
        {
            outcome.unwrap_or_else(|e| panic!("session {i}, round {round}: {e}"));
        }
    }
    let stats = leadership.commit_stats();
    let written = (etcd.revision() - before) as u64;
    eprintln!(
        "{count} sessions × {rounds} rounds: {} checkpoints in {} transactions \
         (etcd revision +{written})",
        stats.checkpoints, stats.transactions
    );
    assert_eq!(stats.checkpoints, count as u64 * rounds);
    assert_eq!(
        written, stats.transactions,
        "one etcd revision per transaction"
    );
    // Each round is at most two batches (the one the first submission
    // started, and everything behind it), each split at MAX_TXN_PUTS; and
    // no transaction carries more than that.
    let per_round_at_least = count.div_ceil(MAX_TXN_PUTS) as u64;
    let per_round_at_most = per_round_at_least + 1;
    assert!(
        (per_round_at_least * rounds..=per_round_at_most * rounds).contains(&stats.transactions),
        "{} transactions for {rounds} rounds of {count} sessions",
        stats.transactions
    );
    for (i, session) in sessions.iter().enumerate() {
        assert_eq!(session.commits(), rounds, "session {i}");
    }
    // Each slot holds its session's last checkpoint.
    for i in [0, MAX_TXN_PUTS - 1, MAX_TXN_PUTS, count - 1] {
        let read = leadership.open_session(&format!("s{i}")).await.unwrap();
        assert_eq!(read.checkpoint(), Some(&record(i, rounds)), "slot s{i}");
    }

    // The leader key goes (as when another member's term began): the next
    // batch fails its fence, every session's checkpoint with it, and every
    // session of the term — the leadership's own too — is deposed.
    etcd.delete("/surelink/groups/batch/leader");
    let before = etcd.revision();
    for (i, outcome) in commit_all(&mut sessions[..10], rounds + 1)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(
            matches!(outcome, Err(SessionError::Deposed(_))),
            "session {i}: {outcome:?}"
        );
    }
    assert_eq!(etcd.revision(), before, "a failed fence writes nothing");
    let now = Instant::now();
    assert!(
        sessions.iter().all(|s| !s.owned(now)),
        "a session still owned"
    );
    assert!(!leadership.owned(now), "the leadership still owned");
    let last = sessions.last_mut().unwrap();
    let outcome = last.commit(record(count - 1, rounds + 1), true).await;
    assert!(
        matches!(outcome, Err(SessionError::Deposed(_))),
        "{outcome:?}"
    );
    assert_eq!(leadership.commit_stats(), stats, "nothing more committed");
}

/// Message `i` of a session: its length and bytes derive from `i` and the
/// session, so a duplicate, a gap or a mix-up changes the output.
fn message(session: usize, i: u64) -> Vec<u8> {
    let len = (i.wrapping_mul(7919) % 1200 + 1) as usize;
    (0..len)
        .map(|k| (i as usize * 31 + k * 7 + session * 13) as u8)
        .collect()
}

/// Sends `count` messages of session `index` to `addr`, reconnecting after
/// a connection error, and finishes the session.
async fn send(index: usize, addr: std::net::SocketAddr, count: u64, options: SessionOptions) {
    let mut tx = DurableSender::open(MemStorage::new(), &format!("s{index}"), options)
        .expect("open the sender");
    let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    loop {
        let Ok(conn) = client.connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let result = async {
            tx.attach(conn).await?;
            while tx.resume_cursor() < count {
                let i = tx.resume_cursor();
                tx.send(0, Bytes::from(message(index, i)), i + 1).await?;
            }
            tx.finish().await
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) if e.is_connection() => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("sender {index}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_sessions_streamed_through_one_leader_each_end_exact() {
    let etcd = Etcd::start(1);
    let (_group, leadership) = lead(&etcd, "streams", DEFAULT_BATCH_WINDOW).await;
    let dir = tempfile::tempdir().unwrap();
    let count = 400;
    let sessions = 6;
    // A small outbox paces each sender by its checkpoints, so the sessions'
    // checkpoints interleave in the leader's batches.
    let options = SessionOptions::default()
        .with_max_unconfirmed_bytes(32 << 10)
        .with_linger(Duration::from_millis(200));
    let mut stores = Vec::new();
    for i in 1..sessions {
        stores.push(leadership.open_session(&format!("s{i}")).await.unwrap());
    }
    let path = |i: usize| dir.path().join(format!("s{i}.bin"));
    let serve = |store: GroupSession, i: usize| {
        let endpoint =
            Endpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::default()).unwrap();
        let addr = endpoint.local_addr();
        let sink = FileSink::open(path(i)).unwrap();
        let options = options.clone();
        let task = tokio::spawn(async move {
            let mut rx = DurableReceiver::with_store(store, sink, options).unwrap();
            rx.run(&endpoint, |_| {}).await?;
            Ok::<_, SessionError>(rx.store().commits())
        });
        (addr, task)
    };
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (i, store) in stores.into_iter().enumerate() {
        let (addr, task) = serve(store, i + 1);
        receivers.push(task);
        senders.push(tokio::spawn(send(i + 1, addr, count, options.clone())));
    }
    // The group's own session, served by the leadership itself.
    let own = {
        let endpoint =
            Endpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::default()).unwrap();
        let addr = endpoint.local_addr();
        let sink = FileSink::open(path(0)).unwrap();
        let options = options.clone();
        senders.push(tokio::spawn(send(0, addr, count, options.clone())));
        tokio::spawn(async move {
            let mut rx = DurableReceiver::with_store(leadership, sink, options).unwrap();
            rx.run(&endpoint, |_| {}).await?;
            let commits = rx.store().commits();
            Ok::<_, SessionError>((commits, rx.into_parts().1))
        })
    };
    for sender in senders {
        tokio::time::timeout(SCENARIO_LIMIT, sender)
            .await
            .expect("every sender completes within the bound")
            .unwrap();
    }
    let mut commits = 0;
    for receiver in receivers {
        commits += tokio::time::timeout(SCENARIO_LIMIT, receiver)
            .await
            .expect("every receiver completes within the bound")
            .unwrap()
            .unwrap();
    }
    let (own_commits, leadership) = tokio::time::timeout(SCENARIO_LIMIT, own)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    commits += own_commits;
    for i in 0..sessions {
        let expected: Vec<u8> = (0..count).flat_map(|m| message(i, m)).collect();
        let output = std::fs::read(path(i)).unwrap();
        assert!(output == expected, "session {i}'s output is not exact");
    }
    let stats = leadership.commit_stats();
    eprintln!(
        "{sessions} sessions: {} checkpoints in {} transactions",
        stats.checkpoints, stats.transactions
    );
    assert_eq!(
        stats.checkpoints, commits,
        "every checkpoint went through the coalescer"
    );
    assert!(stats.transactions <= stats.checkpoints);
}
