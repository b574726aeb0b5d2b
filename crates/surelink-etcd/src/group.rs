//! [`Group`] and [`Leadership`]: leader election by lease and transaction,
//! and the group's checkpoint committed under the leader's fencing token.
//! See the [crate docs](crate) for how they are driven.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use surelink_journal::CheckpointRecord;
use surelink_session::{ReceiverStore, SessionError, SessionRecord};
use tokio::sync::watch;

/// The pause after a failed etcd request before the next one (and how often
/// a standby looks at the leader key when it cannot watch it).
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Longest a standby trusts one watch of the leader key before it reads the
/// key again (a watch that silently stopped cannot stall a campaign).
const LEADER_RECHECK: Duration = Duration::from_secs(1);
/// Longest wait for one etcd request of a standby or a sender (a leader's
/// requests are bounded by its lease instead).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a connection to an etcd member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// etcd refused or did not answer a request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The lease TTL is not a whole number of seconds of at least 1 s
    /// (etcd counts leases in seconds).
    #[error("the lease TTL must be a whole number of seconds, at least 1s, not {0:?}")]
    BadLeaseTtl(Duration),
    /// The group name is empty or holds a `/`.
    #[error("a group name must be non-empty and without '/', not {0:?}")]
    BadName(String),
    /// The group's checkpoint key holds something that is not a checkpoint.
    #[error("the group's checkpoint in etcd is not valid: {0}")]
    BadCheckpoint(String),
    /// An answer from etcd lacked a field it always carries.
    #[error("etcd answered without {0}")]
    Incomplete(&'static str),
}

/// The current leader of a group, as its leader key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// What the leader announced: its listen addresses, comma-separated.
    pub member: String,
    /// Its term: the leader key's creation revision, which is also its
    /// fencing token. A new leader always has a larger one.
    pub term: i64,
}

/// A connection to the etcd cluster for one receiver group.
#[derive(Clone)]
pub struct Group {
    client: Client,
    name: String,
    lease_ttl: Duration,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// Connects to the etcd cluster at `endpoints` (`http://HOST:PORT`,
    /// any member) for group `name`, whose leaders hold leases of
    /// `lease_ttl` (whole seconds). Requests go to whichever member
    /// answers.
    pub async fn connect(
        endpoints: &[String],
        name: &str,
        lease_ttl: Duration,
    ) -> Result<Self, GroupError> {
        if name.is_empty() || name.contains('/') {
            return Err(GroupError::BadName(name.to_owned()));
        }
        if lease_ttl.subsec_nanos() != 0 || lease_ttl < Duration::from_secs(1) {
            return Err(GroupError::BadLeaseTtl(lease_ttl));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Group {
            client,
            name: name.to_owned(),
            lease_ttl,
        })
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn leader_key(&self) -> String {
        format!("/surelink/groups/{}/leader", self.name)
    }

    fn checkpoint_key(&self) -> String {
        format!("/surelink/groups/{}/checkpoint", self.name)
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<Leader>, GroupError> {
        let mut client = self.client.clone();
        let response = client.get(self.leader_key(), None).await?;
        Ok(response.kvs().first().map(|kv| Leader {
            member: String::from_utf8_lossy(kv.value()).into_owned(),
            term: kv.create_revision(),
        }))
    }

    /// Waits until this member leads the group and returns its
    /// [`Leadership`]. `member` is what senders read to find it (its listen
    /// addresses). Each leader seen meanwhile is reported once to
    /// `on_standby`; an unreachable etcd is reported to `on_error` and
    /// waited out. Runs until it wins: a standby's whole job.
    pub async fn campaign(
        &self,
        member: &str,
        mut on_standby: impl FnMut(&Leader),
        mut on_error: impl FnMut(&GroupError),
    ) -> Result<Leadership, GroupError> {
        let mut seen = None;
        loop {
            match self.leader().await {
                Ok(Some(leader)) => {
                    if seen != Some(leader.term) {
                        seen = Some(leader.term);
                        on_standby(&leader);
                    }
                    self.leader_gone(leader.term).await;
                    continue;
                }
                Ok(None) => match self.try_lead(member).await {
                    Ok(Some(leadership)) => return Ok(leadership),
                    Ok(None) => continue,
                    Err(e @ GroupError::BadCheckpoint(_)) => return Err(e),
                    Err(e) => on_error(&e),
                },
                Err(e) => on_error(&e),
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the leader key created at revision `term` is deleted (its
    /// lease expired or its leader resigned), watching the key instead of
    /// polling it, so a standby campaigns as soon as etcd drops the key. At
    /// most [`LEADER_RECHECK`]; a watch that cannot be made or ends early
    /// falls back to one [`POLL_INTERVAL`].
    async fn leader_gone(&self, term: i64) {
        let watch = async {
            let mut client = self.client.clone();
            let options = WatchOptions::new().with_start_revision(term);
            let Ok(mut stream) = client.watch(self.leader_key(), Some(options)).await else {
                tokio::time::sleep(POLL_INTERVAL).await;
                return;
            };
            loop {
                match stream.message().await {
                    Ok(Some(response)) if !response.canceled() => {
                        let deleted = response
                            .events()
                            .iter()
                            .any(|event| event.event_type() == EventType::Delete);
                        if deleted {
                            return;
                        }
                    }
                    _ => {
                        tokio::time::sleep(POLL_INTERVAL).await;
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(LEADER_RECHECK, watch).await;
    }

    /// One attempt to take the leader key: a lease, then a transaction
    /// that creates the key only if it does not exist, reading the group's
    /// checkpoint in the same transaction. `None` if another member was
    /// faster.
    async fn try_lead(&self, member: &str) -> Result<Option<Leadership>, GroupError> {
        let mut client = self.client.clone();
        let requested = tokio::time::Instant::now().into_std();
        let grant = client
            .lease_grant(self.lease_ttl.as_secs() as i64, None)
            .await?;
        // etcd may lengthen a lease below its minimum TTL.
        let ttl = Duration::from_secs(grant.ttl().max(1) as u64);
        let lease = grant.id();
        let leader_key = self.leader_key();
        let checkpoint_key = self.checkpoint_key();
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    leader_key.clone(),
                    member,
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::get(checkpoint_key.clone(), None),
            ]);
        let response = match client.txn(txn).await {
            Ok(response) => response,
            Err(e) => {
                let _ = client.lease_revoke(lease).await;
                return Err(e.into());
            }
        };
        if !response.succeeded() {
            let _ = client.lease_revoke(lease).await;
            return Ok(None);
        }
        // Every write of a transaction happens at its revision: the
        // leader key's creation revision, this term's fencing token.
        let term = response
            .header()
            .ok_or(GroupError::Incomplete("a response header"))?
            .revision();
        let checkpoint = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .map(|bytes| decode_checkpoint(&bytes))
            .transpose()?;
        let (owned_until, owned) = watch::channel(Some(requested + ttl));
        let keepalive = tokio::spawn(keep_alive(client.clone(), lease, ttl, owned_until));
        Ok(Some(Leadership {
            client,
            leader_key,
            checkpoint_key,
            lease,
            ttl,
            term,
            owned,
            keepalive,
            checkpoint,
            commits: 0,
        }))
    }
}

/// The group's checkpoint from the bytes of its key.
fn decode_checkpoint(bytes: &[u8]) -> Result<SessionRecord, GroupError> {
    match CheckpointRecord::decode(bytes) {
        Ok(CheckpointRecord::Session(record)) => Ok(record),
        Ok(other) => Err(GroupError::BadCheckpoint(format!(
            "a {other:?} record instead of a session"
        ))),
        Err(e) => Err(GroupError::BadCheckpoint(e.to_string())),
    }
}

/// Renews `lease` every third of its TTL and publishes until when it is
/// known to be alive: the moment a renewal was *sent* plus the TTL etcd
/// granted, so the local deadline never outlives etcd's. Stops, publishing
/// `None`, once the lease is gone or its deadline passed (an expired lease
/// is never revived: a paused or cut-off leader stays deposed).
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    owned_until: watch::Sender<Option<Instant>>,
) {
    let period = ttl / 3;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        let sent = tokio::time::Instant::now().into_std();
        if owned_until.borrow().is_none_or(|until| until <= sent) {
            owned_until.send_replace(None);
            return;
        }
        // The TTL etcd renewed the lease with (0: the lease is gone).
        let renewal = async {
            match &mut stream {
                Some((keeper, responses)) => {
                    keeper.keep_alive().await?;
                    Ok(responses.message().await?.map(|r| r.ttl()))
                }
                // Opening the stream renews once and checks the answer (an
                // error if the lease is gone).
                None => {
                    stream = Some(client.lease_keep_alive(lease).await?);
                    Ok::<_, etcd_client::Error>(Some(ttl.as_secs() as i64))
                }
            }
        };
        match tokio::time::timeout(period, renewal).await {
            Ok(Ok(Some(renewed))) if renewed > 0 => {
                let granted = Duration::from_secs(renewed as u64);
                owned_until.send_replace(Some(sent + granted));
            }
            Ok(Ok(Some(_))) => {
                tracing::warn!(lease, "the lease expired in etcd");
                owned_until.send_replace(None);
                return;
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(_)) => "the renewal stream ended".to_owned(),
                    Err(_) => format!("no answer within {period:?}"),
                };
                tracing::warn!(lease, "cannot renew the lease ({why}); trying again");
                stream = None;
            }
        }
        tokio::time::sleep_until((sent + period).into()).await;
    }
}

/// This member's term as the group's leader: its lease (kept alive in the
/// background), its fencing token and the group's checkpoint. A
/// [`ReceiverStore`] whose commits are transactions conditional on the
/// fencing token. Dropping it stops renewing the lease; [`resign`]
/// (Self::resign) also deletes it, so a standby takes over at once.
pub struct Leadership {
    client: Client,
    leader_key: String,
    checkpoint_key: String,
    lease: i64,
    ttl: Duration,
    term: i64,
    owned: watch::Receiver<Option<Instant>>,
    keepalive: tokio::task::JoinHandle<()>,
    checkpoint: Option<SessionRecord>,
    commits: u64,
}

impl Leadership {
    /// This term's fencing token (the leader key's creation revision).
    pub fn term(&self) -> i64 {
        self.term
    }

    /// The lease's TTL as etcd granted it.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    /// Checkpoints committed to etcd in this term.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Ends the term: revokes the lease, which deletes the leader key (a
    /// standby takes over without waiting for the TTL).
    pub async fn resign(mut self) -> Result<(), GroupError> {
        self.keepalive.abort();
        self.owned = watch::channel(None).1;
        self.client.lease_revoke(self.lease).await?;
        Ok(())
    }

    fn stale(&self) -> SessionError {
        SessionError::Deposed(format!(
            "the lease of term {} expired or was lost: another member may lead the group",
            self.term
        ))
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("term", &self.term)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .field("commits", &self.commits)
            .finish_non_exhaustive()
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

impl ReceiverStore for Leadership {
    fn checkpoint(&self) -> Option<&SessionRecord> {
        self.checkpoint.as_ref()
    }

    /// One transaction: put the checkpoint if the leader key still has
    /// this term's creation revision. Retried on errors until the lease's
    /// deadline, then [`SessionError::Deposed`] (nothing confirmed). etcd
    /// has the write on its quorum's disks when it answers, whatever `sync`.
    async fn commit(&mut self, record: SessionRecord, _sync: bool) -> Result<(), SessionError> {
        let now = tokio::time::Instant::now().into_std();
        let Some(deadline) = (*self.owned.borrow()).filter(|until| *until > now) else {
            return Err(self.stale());
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.clone(),
                CompareOp::Equal,
                self.term,
            )])
            .and_then([TxnOp::put(
                self.checkpoint_key.clone(),
                CheckpointRecord::Session(record.clone()).to_bytes(),
                None,
            )]);
        let committed = async {
            loop {
                match self.client.txn(txn.clone()).await {
                    Ok(response) => return response.succeeded(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot commit the checkpoint to etcd; trying again");
                        tokio::time::sleep(POLL_INTERVAL).await;
                    }
                }
            }
        };
        match tokio::time::timeout_at(deadline.into(), committed).await {
            Ok(true) => {
                self.checkpoint = Some(record);
                self.commits += 1;
                Ok(())
            }
            Ok(false) => Err(SessionError::Deposed(format!(
                "fencing token {} is stale: another member leads the group",
                self.term
            ))),
            Err(_) => Err(self.stale()),
        }
    }

    fn owned(&self, now: Instant) -> bool {
        self.owned.borrow().is_some_and(|until| until > now)
    }

    fn deposed(&self) -> impl Future<Output = SessionError> + Send + 'static {
        let mut owned = self.owned.clone();
        let term = self.term;
        async move {
            loop {
                let until = *owned.borrow_and_update();
                let Some(until) = until else { break };
                tokio::select! {
                    () = tokio::time::sleep_until(until.into()) => {
                        let now = tokio::time::Instant::now().into_std();
                        if owned.borrow().is_none_or(|until| until <= now) {
                            break;
                        }
                    }
                    changed = owned.changed() => if changed.is_err() { break },
                }
            }
            SessionError::Deposed(format!(
                "the lease of term {term} expired: not renewed in time"
            ))
        }
    }
}
