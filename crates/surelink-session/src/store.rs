//! [`ReceiverStore`]: where a [`DurableReceiver`](super::DurableReceiver)
//! keeps its checkpoint, and [`JournalStore`], the local journal (the
//! default).
//!
//! A receiver's checkpoint is one [`SessionRecord`]: the session, its resume
//! token, and (in `peer`) the watermarks with the sink's position. The
//! receiver reads it once when it opens the store and then, at every
//! checkpoint, *commits* a new one before it tells the sender. The store is
//! driven by the receiver alone: [`commit`](ReceiverStore::commit) at each
//! checkpoint, [`tick`](ReceiverStore::tick) when
//! [`next_sync_at`](ReceiverStore::next_sync_at) says so, and
//! [`deposed`](ReceiverStore::deposed) raced against the connection while
//! it serves.
//!
//! A store may be *shared* by several receivers of which one at a time owns
//! it (a receiver group, e.g. on etcd). Then the store holds an
//! ownership (a lease) and a *fencing token*: a commit is a compare-and-set
//! that succeeds only while the token is still the owner's, and the
//! receiver checks [`owned`](ReceiverStore::owned) before it writes to its
//! sink, so a receiver that lost the ownership (paused past its lease,
//! partitioned from the store) neither writes nor confirms anything: it
//! gets [`SessionError::Deposed`]. The local journal is owned by its process
//! for ever.

use std::future::Future;
use std::time::Instant;

use surelink_journal::{CheckpointStore, JournalMetrics, SessionRecord, Storage};

use super::{blocking, SessionError};

/// The checkpoint store of a durable receiver: it holds the last committed
/// checkpoint (one [`SessionRecord`]: the session, its resume token, and the
/// watermarks with the sink's position in `peer`), and the receiver commits
/// a new one at every checkpoint before it tells the sender. Driven by the
/// receiver alone.
pub trait ReceiverStore: Send {
    /// The last committed checkpoint (read when the store was opened, then
    /// the last one [`commit`](Self::commit)ted), if any.
    fn checkpoint(&self) -> Option<&SessionRecord>;

    /// Commits `record` as the checkpoint: durably on return when `sync`,
    /// else at least handed over so that a crash of this process does not
    /// lose it. A shared store commits only while this receiver still owns
    /// it (a compare-and-set under its fencing token) and returns
    /// [`SessionError::Deposed`] otherwise; nothing was committed then.
    fn commit(
        &mut self,
        record: SessionRecord,
        sync: bool,
    ) -> impl Future<Output = Result<(), SessionError>> + Send;

    /// Whether this receiver owns the store at `now` (may write to its sink
    /// and commit). Always true for a local store.
    fn owned(&self, now: Instant) -> bool {
        let _ = now;
        true
    }

    /// Resolves once this receiver no longer owns the store (its lease
    /// expired or was revoked), with the reason; never for a local store.
    fn deposed(&self) -> impl Future<Output = SessionError> + Send + 'static {
        std::future::pending()
    }

    /// When periodic durability work (an interval fsync) is due next, if any.
    fn next_sync_at(&self, now: Instant) -> Option<Instant> {
        let _ = now;
        None
    }

    /// Does the periodic work due at `now`.
    fn tick(&mut self, now: Instant) -> Result<(), SessionError> {
        let _ = now;
        Ok(())
    }

    /// The local journal's counters (zero for a store without one).
    fn metrics(&self) -> JournalMetrics {
        JournalMetrics::default()
    }
}

/// The default [`ReceiverStore`]: the local checkpoint journal, one record
/// per checkpoint, compacted as it grows.
#[derive(Debug)]
pub struct JournalStore<S: Storage> {
    store: CheckpointStore<S>,
}

impl<S: Storage> JournalStore<S> {
    /// The store on an opened journal.
    pub fn new(store: CheckpointStore<S>) -> Self {
        JournalStore { store }
    }
}

impl<S: Storage + Send> ReceiverStore for JournalStore<S> {
    fn checkpoint(&self) -> Option<&SessionRecord> {
        self.store.session()
    }

    async fn commit(&mut self, record: SessionRecord, sync: bool) -> Result<(), SessionError> {
        let store = &mut self.store;
        blocking(|| -> Result<(), SessionError> {
            store.set_session(record)?;
            if sync {
                store.sync()?;
            } else {
                store.commit()?;
            }
            if store.journal().should_compact() {
                store.compact()?;
            }
            Ok(())
        })
    }

    fn next_sync_at(&self, now: Instant) -> Option<Instant> {
        self.store.journal().next_sync_at(now)
    }

    fn tick(&mut self, now: Instant) -> Result<(), SessionError> {
        let store = &mut self.store;
        blocking(|| store.tick(now))?;
        Ok(())
    }

    fn metrics(&self) -> JournalMetrics {
        self.store.metrics()
    }
}
