//! The leader's commit coalescer: the checkpoints of every session a
//! leader serves, committed to etcd together, one fenced transaction per
//! batch window instead of one per session and checkpoint.
//!
//! Each session's store ([`GroupSession`](crate::GroupSession), and the
//! [`Leadership`](crate::Leadership) itself for the group's own session)
//! *submits* its new checkpoint (key and bytes) and awaits the outcome of
//! the transaction that carries it. A background task, spawned with the
//! term ([`Coalescer::spawn`]), takes everything submitted, about once per
//! window (a submission into an idle coalescer goes at once; the next
//! batch waits until one window after the previous one was due), and
//! commits it as transactions of at most [`MAX_TXN_PUTS`] puts (etcd's
//! default `--max-txn-ops` is 128), each conditional on the leader key
//! still having the term's creation revision. A submission is answered
//! only after the transaction holding it committed. A failed fence, or a
//! batch that cannot commit before the term's ownership deadline, fails
//! every submission of it and of the batches behind it, and ends the
//! term's ownership, so that every session of the leader stops at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tokio::sync::{mpsc, oneshot, watch};

/// The most puts in one transaction: etcd's default `--max-txn-ops`.
/// Larger batches are split into several transactions.
pub const MAX_TXN_PUTS: usize = 128;

/// How early, in windows, a batch may start before its slot (see `run`).
const SLOT_TOLERANCE: f64 = 0.125;

/// The pause after a failed transaction before it is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Why a submitted checkpoint was not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitFailure {
    /// The leader key no longer has this term's creation revision: another
    /// member leads.
    Fenced,
    /// The term's ownership ended (lease not renewed in time, stepped
    /// down, or etcd out of reach until the deadline) before it committed.
    Expired,
}

/// How many transactions a term's coalescer committed, and how many
/// session checkpoints they carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Fenced transactions etcd committed in this term.
    pub transactions: u64,
    /// Session checkpoints those transactions carried.
    pub checkpoints: u64,
}

/// The counters behind [`CommitStats`], shared with the coalescer's task.
#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    checkpoints: AtomicU64,
}

/// One session's checkpoint, waiting for its transaction.
struct Submission {
    key: String,
    value: Vec<u8>,
    done: oneshot::Sender<Result<(), CommitFailure>>,
}

/// What the coalescer's task needs to commit under a term.
struct Fence {
    client: Client,
    leader_key: String,
    term: i64,
    owned_until: Arc<watch::Sender<Option<Instant>>>,
}

/// A handle on a term's coalescer: submit checkpoints, read its counters.
/// Cloned into every session store of the term; the task stops when the
/// last handle is dropped (or when the term's [`Leadership`](crate::Leadership)
/// aborts it).
#[derive(Debug, Clone)]
pub(crate) struct Coalescer {
    submissions: mpsc::UnboundedSender<Submission>,
    counters: Arc<Counters>,
}

impl Coalescer {
    /// Starts the coalescer of term `term` (the leader key's creation
    /// revision) and returns its handle and its task. A batch starts at
    /// most once per `window`.
    pub(crate) fn spawn(
        client: Client,
        leader_key: String,
        term: i64,
        owned_until: Arc<watch::Sender<Option<Instant>>>,
        window: Duration,
    ) -> (Coalescer, tokio::task::JoinHandle<()>) {
        let (submissions, queue) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let fence = Fence {
            client,
            leader_key,
            term,
            owned_until,
        };
        let task = tokio::spawn(run(fence, window, queue, counters.clone()));
        (
            Coalescer {
                submissions,
                counters,
            },
            task,
        )
    }

    /// Submits `value` for `key` and waits until the transaction holding
    /// it committed, or failed.
    pub(crate) async fn commit(&self, key: String, value: Vec<u8>) -> Result<(), CommitFailure> {
        let (done, outcome) = oneshot::channel();
        let submission = Submission { key, value, done };
        if self.submissions.send(submission).is_err() {
            return Err(CommitFailure::Expired);
        }
        // A coalescer that stopped (its term ended) drops the submission.
        outcome.await.unwrap_or(Err(CommitFailure::Expired))
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            checkpoints: self.counters.checkpoints.load(Ordering::Relaxed),
        }
    }
}

/// The coalescer's task: batches, about one per `window`, until every
/// handle is gone. Each batch has a *slot*: when it was first submitted to,
/// or one window after the previous batch's slot if that is later. It
/// waits for its slot unless that is within a tolerance of
/// [`SLOT_TOLERANCE`] windows. Slots are counted from when batches were
/// allowed, not from when the task woke up, so timer rounding does not add
/// up: a session checkpointing exactly once per window is never held back.
async fn run(
    mut fence: Fence,
    window: Duration,
    mut queue: mpsc::UnboundedReceiver<Submission>,
    counters: Arc<Counters>,
) {
    let tolerance = window.mul_f64(SLOT_TOLERANCE);
    let mut last_slot: Option<tokio::time::Instant> = None;
    while let Some(first) = queue.recv().await {
        let now = tokio::time::Instant::now();
        let slot = last_slot.map_or(now, |last| now.max(last + window));
        if slot > now + tolerance {
            tokio::time::sleep_until(slot).await;
        }
        last_slot = Some(slot);
        let mut batch = vec![first];
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
        let puts = coalesce(batch);
        let mut failed = None;
        for chunk in puts.chunks(MAX_TXN_PUTS) {
            let outcome = match failed {
                Some(failure) => Err(failure),
                None => commit_chunk(&mut fence, chunk).await,
            };
            match outcome {
                Ok(()) => {
                    counters.transactions.fetch_add(1, Ordering::Relaxed);
                    counters
                        .checkpoints
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                Err(failure) => {
                    if failed.is_none() {
                        // Every session of the term stops at once.
                        fence.owned_until.send_replace(None);
                        failed = Some(failure);
                    }
                }
            }
        }
        for put in puts {
            for done in put.waiting {
                let _ = done.send(failed.map_or(Ok(()), Err));
            }
        }
    }
}

/// One key's put in a batch, and everyone waiting for it.
struct Put {
    key: String,
    value: Vec<u8>,
    waiting: Vec<oneshot::Sender<Result<(), CommitFailure>>>,
}

/// The batch as one put per key (etcd refuses a transaction that puts one
/// key twice): the last value submitted for a key wins, and all its
/// submitters wait for it. In key order.
fn coalesce(batch: Vec<Submission>) -> Vec<Put> {
    let mut by_key: BTreeMap<String, Put> = BTreeMap::new();
    for Submission { key, value, done } in batch {
        let put = by_key.entry(key.clone()).or_insert_with(|| Put {
            key,
            value: Vec::new(),
            waiting: Vec::new(),
        });
        put.value = value;
        put.waiting.push(done);
    }
    by_key.into_values().collect()
}

/// Commits `chunk` in one transaction fenced by the term, retrying on
/// errors until the term's ownership deadline.
async fn commit_chunk(fence: &mut Fence, chunk: &[Put]) -> Result<(), CommitFailure> {
    let now = tokio::time::Instant::now().into_std();
    let Some(deadline) = (*fence.owned_until.borrow()).filter(|until| *until > now) else {
        return Err(CommitFailure::Expired);
    };
    let txn = Txn::new()
        .when([Compare::create_revision(
            fence.leader_key.clone(),
            CompareOp::Equal,
            fence.term,
        )])
        .and_then(
            chunk
                .iter()
                .map(|put| TxnOp::put(put.key.clone(), put.value.clone(), None))
                .collect::<Vec<_>>(),
        );
    let client = &mut fence.client;
    let committed = async {
        loop {
            match client.txn(txn.clone()).await {
                Ok(response) => return response.succeeded(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot commit the checkpoints to etcd; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline.into(), committed).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(CommitFailure::Fenced),
        Err(_) => Err(CommitFailure::Expired),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(
        key: &str,
        value: u8,
    ) -> (Submission, oneshot::Receiver<Result<(), CommitFailure>>) {
        let (done, outcome) = oneshot::channel();
        let submission = Submission {
            key: key.to_owned(),
            value: vec![value],
            done,
        };
        (submission, outcome)
    }

    #[test]
    fn a_batch_puts_each_key_once_with_its_last_value_and_answers_every_submitter() {
        let (a1, _) = submission("a", 1);
        let (b, _) = submission("b", 2);
        let (a2, _) = submission("a", 3);
        let puts = coalesce(vec![a1, b, a2]);
        let summary: Vec<_> = puts
            .iter()
            .map(|p| (p.key.as_str(), p.value.clone(), p.waiting.len()))
            .collect();
        assert_eq!(summary, vec![("a", vec![3], 2), ("b", vec![2], 1)]);
    }
}
