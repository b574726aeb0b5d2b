//! [`Group`] and [`Leadership`]: leader election by lease and transaction,
//! and the group's checkpoint committed under the leader's fencing token.
//! See the [crate docs](crate) for how they are driven.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, Event, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use surelink_journal::CheckpointRecord;
use surelink_session::{ReceiverStore, SessionError, SessionRecord};
use tokio::sync::watch;

use crate::access::EtcdAccess;
use crate::batch::{Coalescer, CommitFailure, CommitStats};

/// The pause after a failed etcd request before the next one (and how often
/// a standby looks at the leader key when it cannot watch it).
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Longest a standby trusts one watch of the leader key before it reads the
/// key again (a watch that silently stopped cannot stall a campaign).
const LEADER_RECHECK: Duration = Duration::from_secs(1);
/// TTL of the lease a sender's suspicion is attached to: long enough for
/// the leader to see it and measure its own silence (its failure-detection
/// time, a second by default), short enough that a stale one goes away.
pub const SUSPICION_TTL: Duration = Duration::from_secs(5);
/// The default [`Group::with_batch_window`]: the default checkpoint
/// interval of a session, so a leader streaming any number of sessions
/// commits about one transaction per interval.
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(20);
/// How often a standby reads the remaining TTL of a suspected leader's
/// lease (only while a sender suspects it), or its alive key (all along).
const EVIDENCE_POLL: Duration = Duration::from_millis(20);

/// How a leader keeps a lease of a given TTL, and when a standby may end
/// its term before etcd expires it ([`lease_timing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseTiming {
    /// The leader renews its lease this often; an answer that takes longer
    /// does not count.
    renew_every: Duration,
    /// After a renewal *sent* at `s` and answered in time, the leader
    /// writes and confirms until `s + own_for`, never longer.
    own_for: Duration,
    /// The silence to etcd that proves a leader's ownership over: at least
    /// `own_for + renew_every`.
    silent: Duration,
    /// How a standby observes that silence.
    evidence: Evidence,
}

/// What shows a standby that a suspected leader stopped renewing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evidence {
    /// etcd's remaining TTL reading of the lease (whole seconds, rounded
    /// down): at or below this, the lease has not been renewed for more
    /// than `silent`.
    RemainingTtl(i64),
    /// The leader's *alive key* (`alive/TERM`): every renewal also puts it,
    /// in a transaction fenced by the term, and counts only if that put
    /// succeeded in time. A standby that has seen the key's revision
    /// unchanged from a read answered at `a` to a read sent at `a + silent`
    /// or later has proof of the silence. For TTLs whose readings are all
    /// 0 s while the lease lives (below 2 s).
    AliveKey,
}

/// The lease timing for a TTL etcd granted. In both cases the leader
/// renews every `renew_every` (W), counts a renewal only if it is answered
/// within W, and owns its term until `own_for` (3W) after *sending* it; a
/// standby revokes only on proof that no renewal reached etcd for
/// `silent` (4W) or more. So when it revokes, the leader's ownership has
/// already ended: a renewal etcd processed before the silence began was
/// sent before it, so its ownership ended W before the proof; one
/// processed after the proof was sent while the leader still owned its
/// term, so more than W before it, and was answered too late to count.
///
/// The proof: etcd reports a lease's remaining TTL in whole seconds,
/// rounded down, so a reading of `k` proves only that the last renewal
/// etcd processed is more than `TTL − k − 1` s old. With a TTL of 2 s or
/// more, `silent` is E, half the TTL in whole seconds, and a reading of
/// `TTL − 1 − E` or less proves it ([`Evidence::RemainingTtl`]). Below 2 s
/// every reading of a live lease is 0, which proves nothing: `silent` is
/// then three quarters of the TTL and the proof is the leader's alive key
/// ([`Evidence::AliveKey`]).
fn lease_timing(ttl: Duration) -> LeaseTiming {
    let secs = ttl.as_secs();
    let (silent, evidence) = if secs < 2 {
        (ttl * 3 / 4, Evidence::AliveKey)
    } else {
        let silent = Duration::from_secs(secs / 2);
        let remaining_at_most = (secs - 1) as i64 - silent.as_secs() as i64;
        (silent, Evidence::RemainingTtl(remaining_at_most))
    };
    LeaseTiming {
        renew_every: silent / 4,
        own_for: silent * 3 / 4,
        silent,
        evidence,
    }
}

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// etcd refused or did not answer a request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd refused the user name or password (`--etcd-user`).
    #[error("etcd refused the user name or password: {0}")]
    Authentication(etcd_client::Error),
    /// etcd refused a request for lack of permission: the user's role does
    /// not grant read and write access to the group's keys.
    #[error("etcd refused access to the group's keys {prefix}: {source}")]
    PermissionDenied {
        /// The group's key prefix, to which the user's role needs read and write access.
        prefix: String,
        /// etcd's answer.
        source: etcd_client::Error,
    },
    /// The TLS settings (`--etcd-ca`, `--etcd-cert`, `--etcd-key`) cannot be used.
    #[error("etcd TLS: {0}")]
    Tls(String),
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
    /// The etcd lease the leader key is attached to (0 if none).
    pub lease: i64,
}

/// What a standby reports while it campaigns ([`Group::campaign`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum CampaignEvent<'a> {
    /// Another member leads (reported once per term).
    StandingBy(&'a Leader),
    /// A sender suspects the leader and etcd shows that its lease missed
    /// its renewals: this member revoked the lease, ending the term before
    /// etcd would have expired it.
    EndedEarly {
        /// The leader whose term ended.
        leader: &'a Leader,
        /// The senders that suspected it.
        suspected_by: &'a [String],
        /// etcd's reading of the lease's remaining TTL, whole seconds.
        remaining: i64,
        /// The TTL etcd granted the lease.
        granted: Duration,
        /// How long the leader had been silent to etcd at least.
        silent: Duration,
    },
    /// etcd could not be reached (waited out).
    Unreachable(&'a GroupError),
}

/// A connection to the etcd cluster for one receiver group.
#[derive(Clone)]
pub struct Group {
    client: Client,
    name: String,
    lease_ttl: Duration,
    batch_window: Duration,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("lease_ttl", &self.lease_ttl)
            .field("batch_window", &self.batch_window)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// Connects to the etcd cluster described by `access` for group `name`,
    /// whose leaders hold leases of `lease_ttl` (whole seconds), and reads
    /// the group's leader key once, so that a wrong password or a role
    /// without access to the group's keys fails here, named. Requests go to
    /// whichever member answers.
    pub async fn connect(
        access: &EtcdAccess,
        name: &str,
        lease_ttl: Duration,
    ) -> Result<Self, GroupError> {
        if name.is_empty() || name.contains('/') {
            return Err(GroupError::BadName(name.to_owned()));
        }
        if lease_ttl.subsec_nanos() != 0 || lease_ttl < Duration::from_secs(1) {
            return Err(GroupError::BadLeaseTtl(lease_ttl));
        }
        let options = access.connect_options()?;
        let client = Client::connect(access.endpoints(), Some(options))
            .await
            .map_err(|e| {
                if is_status(&e, "authentication failed") {
                    GroupError::Authentication(e)
                } else {
                    GroupError::Etcd(e)
                }
            })?;
        let group = Group {
            client,
            name: name.to_owned(),
            lease_ttl,
            batch_window: DEFAULT_BATCH_WINDOW,
        };
        group.leader().await.map_err(|e| match e {
            GroupError::Etcd(e) if is_status(&e, "permission denied") => {
                GroupError::PermissionDenied {
                    prefix: group.prefix(),
                    source: e,
                }
            }
            other => other,
        })?;
        Ok(group)
    }

    /// Sets how often, at most, a leader of this member starts a batch of
    /// checkpoint transactions: every session's checkpoint submitted
    /// meanwhile goes into the same fenced transaction (split beyond
    /// [`MAX_TXN_PUTS`](crate::MAX_TXN_PUTS) puts). A checkpoint into an
    /// idle leader goes at once; one that follows within the window waits
    /// for it. Default [`DEFAULT_BATCH_WINDOW`]; zero commits whatever is
    /// pending as soon as the previous transaction returned.
    pub fn with_batch_window(mut self, window: Duration) -> Self {
        self.batch_window = window;
        self
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease TTL its leaders ask etcd for.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// The prefix of all the group's keys: `/surelink/groups/NAME/`.
    pub fn prefix(&self) -> String {
        format!("/surelink/groups/{}/", self.name)
    }

    fn leader_key(&self) -> String {
        format!("{}leader", self.prefix())
    }

    fn checkpoint_key(&self) -> String {
        format!("{}checkpoint", self.prefix())
    }

    /// Where the leader keeps the checkpoint of session slot `name`
    /// ([`Leadership::open_session`]).
    fn session_key(prefix: &str, name: &str) -> String {
        format!("{prefix}sessions/{name}")
    }

    /// The key the leader of `term` puts with each renewal of a short
    /// lease ([`Evidence::AliveKey`]).
    fn alive_key(&self, term: i64) -> String {
        format!("{}alive/{term}", self.prefix())
    }

    /// Where the suspicions of the leader of `term` are kept.
    fn suspicions_prefix(&self, term: i64) -> String {
        format!("{}suspicions/{term}/", self.prefix())
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<Leader>, GroupError> {
        Ok(self.leader_at().await?.0)
    }

    /// The current leader, if any, and the revision etcd read it at.
    async fn leader_at(&self) -> Result<(Option<Leader>, i64), GroupError> {
        let mut client = self.client.clone();
        let response = client.get(self.leader_key(), None).await?;
        let revision = response
            .header()
            .ok_or(GroupError::Incomplete("a response header"))?
            .revision();
        Ok((response.kvs().first().map(leader_of), revision))
    }

    /// Waits until this member leads the group and returns its
    /// [`Leadership`]. `member` is what senders read to find it (the
    /// addresses it advertises). Each leader seen meanwhile is reported
    /// once ([`CampaignEvent::StandingBy`]); an unreachable etcd is
    /// reported and waited out. While a sender suspects the leader, the
    /// standby also reads the remaining TTL of the leader's lease and, if
    /// it shows that the leader stopped renewing it, revokes it
    /// ([`CampaignEvent::EndedEarly`]; see [`Group::suspect`]). Runs until
    /// it wins: a standby's whole job.
    pub async fn campaign(
        &self,
        member: &str,
        mut on_event: impl FnMut(CampaignEvent<'_>),
    ) -> Result<Leadership, GroupError> {
        let mut seen = None;
        loop {
            match self.leader().await {
                Ok(Some(leader)) => {
                    if seen != Some(leader.term) {
                        seen = Some(leader.term);
                        on_event(CampaignEvent::StandingBy(&leader));
                    }
                    self.outlive(&leader, &mut on_event).await;
                    continue;
                }
                Ok(None) => match self.try_lead(member).await {
                    Ok(Some(leadership)) => return Ok(leadership),
                    Ok(None) => continue,
                    Err(e @ GroupError::BadCheckpoint(_)) => return Err(e),
                    Err(e) => on_event(CampaignEvent::Unreachable(&e)),
                },
                Err(e) => on_event(CampaignEvent::Unreachable(&e)),
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits while `leader` leads: until etcd deletes its key (its lease
    /// expired or was revoked, or it resigned) or the key names another
    /// term. Meanwhile, [judges](Self::end_if_dead) the suspicions of its
    /// term.
    async fn outlive(&self, leader: &Leader, on_event: &mut impl FnMut(CampaignEvent<'_>)) {
        let revoking = AtomicBool::new(false);
        let judge = self.end_if_dead(leader, &revoking);
        tokio::pin!(judge);
        let mut judging = true;
        let mut report = |ended: EndedEarly| {
            on_event(CampaignEvent::EndedEarly {
                leader,
                suspected_by: &ended.suspected_by,
                remaining: ended.reading.ttl(),
                granted: Duration::from_secs(ended.reading.granted_ttl().max(0) as u64),
                silent: ended.silent,
            })
        };
        loop {
            let deleted = |event: &Event| (event.event_type() == EventType::Delete).then_some(());
            tokio::select! {
                ended = &mut judge, if judging => match ended {
                    Some(ended) => return report(ended),
                    None => judging = false,
                },
                gone = self.watch_leader(leader.term, deleted) => {
                    if gone.is_some() {
                        // Deleted by this member's own revocation, whose
                        // answer may come after the watch event: report it.
                        if judging && revoking.load(Ordering::Relaxed) {
                            if let Ok(Some(ended)) = tokio::time::timeout(LEADER_RECHECK, &mut judge).await {
                                report(ended);
                            }
                        }
                        return;
                    }
                    // The watch's recheck: still the same term?
                    match self.leader().await {
                        Ok(Some(now)) if now.term == leader.term => {}
                        _ => return,
                    }
                }
            }
        }
    }

    /// Ends `leader`'s term early if it is dead: once a sender suspects
    /// that term (`suspicions/TERM/`) *and* etcd shows that the leader has
    /// not renewed for longer than it may own its term after a renewal
    /// ([`lease_timing`]: the lease's remaining TTL, or for short TTLs the
    /// leader's alive key, read all along), revokes the lease (`revoking`
    /// is set just before) and returns what proved it; `None` if the lease
    /// turned out to be gone already. Never resolves while the leader
    /// renews (a wrong or lying suspicion does nothing).
    async fn end_if_dead(&self, leader: &Leader, revoking: &AtomicBool) -> Option<EndedEarly> {
        if leader.lease == 0 {
            return std::future::pending().await;
        }
        let mut client = self.client.clone();
        let (suspected, mut suspicions) = watch::channel(BTreeSet::new());
        let _watch = AbortOnDrop(tokio::spawn(watch_suspicions(
            client.clone(),
            self.suspicions_prefix(leader.term),
            suspected,
        )));
        // The leader's timing follows from the TTL etcd granted it.
        let timing = loop {
            match client.lease_time_to_live(leader.lease, None).await {
                Ok(reading) if reading.ttl() < 0 => return None,
                Ok(reading) => {
                    break lease_timing(Duration::from_secs(reading.granted_ttl().max(1) as u64))
                }
                Err(_) => tokio::time::sleep(EVIDENCE_POLL).await,
            }
        };
        let alive_key = self.alive_key(leader.term);
        // The alive key's revision, and when a read first showed it.
        let mut alive_seen: Option<(i64, Instant)> = None;
        loop {
            if let Evidence::RemainingTtl(_) = timing.evidence {
                // Read only while suspected.
                if suspicions
                    .wait_for(|senders| !senders.is_empty())
                    .await
                    .is_err()
                {
                    return std::future::pending().await;
                }
            }
            let sent = Instant::now();
            let silent_long_enough = match timing.evidence {
                Evidence::RemainingTtl(remaining_at_most) => {
                    match client.lease_time_to_live(leader.lease, None).await {
                        Ok(reading) if reading.ttl() < 0 => return None,
                        Ok(reading) => reading.ttl() <= remaining_at_most,
                        Err(_) => false,
                    }
                }
                Evidence::AliveKey => match client.get(alive_key.as_str(), None).await {
                    Ok(read) => {
                        let revision = read.kvs().first().map_or(0, |kv| kv.mod_revision());
                        let since = match alive_seen {
                            Some((seen, at)) if seen == revision => at,
                            _ => alive_seen.insert((revision, Instant::now())).1,
                        };
                        sent.saturating_duration_since(since) >= timing.silent
                    }
                    Err(_) => false,
                },
            };
            let suspected_by: Vec<String> = suspicions.borrow().iter().cloned().collect();
            if silent_long_enough && !suspected_by.is_empty() {
                revoking.store(true, Ordering::Relaxed);
                let reading = client.lease_time_to_live(leader.lease, None).await.ok()?;
                if reading.ttl() < 0 {
                    return None;
                }
                return client
                    .lease_revoke(leader.lease)
                    .await
                    .ok()
                    .map(|_| EndedEarly {
                        suspected_by,
                        reading,
                        silent: timing.silent,
                    });
            }
            tokio::time::sleep(EVIDENCE_POLL).await;
        }
    }

    /// Waits, at most `within`, until etcd names a leader of another term
    /// than `after` (any leader if `None`), watching the leader key rather
    /// than polling it (and reading it again at least every second).
    /// `None` if no such leader appeared in time.
    pub async fn next_leader(
        &self,
        after: Option<i64>,
        within: Duration,
    ) -> Result<Option<Leader>, GroupError> {
        let deadline = tokio::time::Instant::now() + within;
        let other = |leader: &Leader| Some(leader.term) != after;
        loop {
            let (leader, revision) = self.leader_at().await?;
            if let Some(leader) = leader.filter(other) {
                return Ok(Some(leader));
            }
            let created = |event: &Event| match (event.event_type(), event.kv()) {
                (EventType::Put, Some(kv)) => Some(leader_of(kv)).filter(other),
                _ => None,
            };
            match tokio::time::timeout_at(deadline, self.watch_leader(revision + 1, created)).await
            {
                Ok(Some(leader)) => return Ok(Some(leader)),
                Ok(None) => {}
                Err(_) => return Ok(None),
            }
        }
    }

    /// Watches the leader key from `revision` on until `pick` picks one of
    /// its events, for at most [`LEADER_RECHECK`] (a watch that silently
    /// stopped cannot stall the caller, who reads the key again). `None` if
    /// nothing was picked in that time, or (after one [`POLL_INTERVAL`]) if
    /// the watch could not be made or ended early.
    async fn watch_leader<T>(
        &self,
        revision: i64,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Option<T> {
        let watch = async {
            let mut client = self.client.clone();
            let options = WatchOptions::new().with_start_revision(revision);
            let Ok(mut stream) = client.watch(self.leader_key(), Some(options)).await else {
                tokio::time::sleep(POLL_INTERVAL).await;
                return None;
            };
            loop {
                match stream.message().await {
                    Ok(Some(response)) if !response.canceled() => {
                        if let Some(picked) = response.events().iter().find_map(&mut pick) {
                            return Some(picked);
                        }
                    }
                    _ => {
                        tokio::time::sleep(POLL_INTERVAL).await;
                        return None;
                    }
                }
            }
        };
        tokio::time::timeout(LEADER_RECHECK, watch)
            .await
            .ok()
            .flatten()
    }

    /// Records that sender `who` (its session id, say) lost the leader of
    /// `term`: the key `suspicions/TERM/WHO` under the group's prefix,
    /// attached to a lease of its own of [`SUSPICION_TTL`], written only if
    /// etcd still names that term's leader (`false`, nothing written, if it
    /// does not). The leader steps down on it only if it has not heard
    /// from its sender for its own failure-detection time either (see
    /// [`Leadership::suspicions`]).
    pub async fn suspect(&self, term: i64, who: &str) -> Result<bool, GroupError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(SUSPICION_TTL.as_secs() as i64, None)
            .await?
            .id();
        let key = format!("{}{who}", self.suspicions_prefix(term));
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key(),
                CompareOp::Equal,
                term,
            )])
            .and_then([TxnOp::put(
                key,
                who,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let recorded = client.txn(txn).await.map(|r| r.succeeded());
        if !matches!(recorded, Ok(true)) {
            let _ = client.lease_revoke(lease).await;
        }
        Ok(recorded?)
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
        let timing = lease_timing(ttl);
        let (owned_until, owned) = watch::channel(Some(requested + timing.own_for));
        let owned_until = Arc::new(owned_until);
        let alive = (timing.evidence == Evidence::AliveKey).then(|| AliveBump {
            leader_key: leader_key.clone(),
            key: self.alive_key(term),
            term,
        });
        let keepalive = tokio::spawn(keep_alive(
            client.clone(),
            lease,
            timing,
            alive,
            owned_until.clone(),
        ));
        let (suspected, suspicions) = watch::channel(BTreeSet::new());
        let suspicion_watch = tokio::spawn(watch_suspicions(
            client.clone(),
            self.suspicions_prefix(term),
            suspected,
        ));
        let (coalescer, coalescing) = Coalescer::spawn(
            client.clone(),
            leader_key,
            term,
            owned_until.clone(),
            self.batch_window,
        );
        let group_session = GroupSession {
            key: checkpoint_key,
            term,
            owned,
            coalescer,
            checkpoint,
            commits: 0,
        };
        Ok(Some(Leadership {
            client,
            prefix: self.prefix(),
            lease,
            ttl,
            term,
            owned_until,
            keepalive,
            suspicions,
            suspicion_watch,
            coalescing,
            group_session,
        }))
    }
}

/// The leader a leader key names.
fn leader_of(kv: &etcd_client::KeyValue) -> Leader {
    Leader {
        member: String::from_utf8_lossy(kv.value()).into_owned(),
        term: kv.create_revision(),
        lease: kv.lease(),
    }
}

/// What proved a suspected leader dead, once its lease was revoked.
struct EndedEarly {
    suspected_by: Vec<String>,
    reading: etcd_client::LeaseTimeToLiveResponse,
    silent: Duration,
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// True if `e` is an answer of etcd whose message holds `what`.
fn is_status(e: &etcd_client::Error, what: &str) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status) if status.message().contains(what))
}

/// Keeps `suspected` equal to the senders suspecting one term's leader:
/// the keys under `prefix` (`suspicions/TERM/`), without it. Read once,
/// then watched from the read's revision on; read again whenever the watch
/// ends and at least every [`LEADER_RECHECK`]. Runs until aborted (when
/// the term ends).
async fn watch_suspicions(
    mut client: Client,
    prefix: String,
    suspected: watch::Sender<BTreeSet<String>>,
) {
    let who = |key: &[u8]| {
        String::from_utf8_lossy(key)
            .strip_prefix(prefix.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    loop {
        let read = client
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await;
        let Ok(read) = read else {
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        };
        let mut senders: BTreeSet<String> = read.kvs().iter().map(|kv| who(kv.key())).collect();
        suspected.send_replace(senders.clone());
        let revision = read.header().map_or(0, |h| h.revision());
        let follow = async {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let Ok(mut stream) = client.watch(prefix.clone(), Some(options)).await else {
                return;
            };
            while let Ok(Some(response)) = stream.message().await {
                if response.canceled() {
                    return;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        EventType::Put => senders.insert(who(kv.key())),
                        EventType::Delete => senders.remove(&who(kv.key())),
                    };
                }
                suspected.send_replace(senders.clone());
            }
        };
        if tokio::time::timeout(LEADER_RECHECK, follow).await.is_ok() {
            // The watch ended early: pause before reading again.
            tokio::time::sleep(POLL_INTERVAL).await;
        }
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

/// The alive key a leader with a short lease puts at every renewal
/// ([`Evidence::AliveKey`]), fenced by its term.
struct AliveBump {
    leader_key: String,
    key: String,
    term: i64,
}

impl AliveBump {
    /// Puts the alive key (attached to `lease`) if the leader key still
    /// has this term's creation revision; `false` if it has not.
    async fn put(&self, client: &mut Client, lease: i64) -> Result<bool, etcd_client::Error> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.clone(),
                CompareOp::Equal,
                self.term,
            )])
            .and_then([TxnOp::put(
                self.key.clone(),
                "",
                Some(PutOptions::new().with_lease(lease)),
            )]);
        Ok(client.txn(txn).await?.succeeded())
    }
}

/// Renews `lease` as `timing` says and publishes until when this member
/// owns its term: the moment a renewal answered in time was *sent* plus
/// `timing.own_for` (at most the TTL etcd granted), so the local deadline
/// never outlives etcd's, nor the moment a standby may end the term early
/// ([`lease_timing`]). With `alive` (short leases), a renewal is the lease
/// keep-alive *and* the fenced put of the alive key, both answered in
/// time. Stops, publishing `None`, once the lease is gone, the leader key
/// belongs to another term, or the deadline passed (an expired lease is
/// never revived, nor renewed: a paused or cut-off leader stays deposed).
async fn keep_alive(
    mut client: Client,
    lease: i64,
    timing: LeaseTiming,
    alive: Option<AliveBump>,
    owned_until: Arc<watch::Sender<Option<Instant>>>,
) {
    let period = timing.renew_every;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut bumper = client.clone();
    loop {
        let sent = tokio::time::Instant::now().into_std();
        if owned_until.borrow().is_none_or(|until| until <= sent) {
            owned_until.send_replace(None);
            return;
        }
        // How long the answer lets this member own its term (zero: the
        // lease is gone): `own_for`, or less if etcd renewed the lease for
        // less.
        let renewal = async {
            match &mut stream {
                Some((keeper, responses)) => {
                    keeper.keep_alive().await?;
                    Ok(responses.message().await?.map(|r| {
                        timing
                            .own_for
                            .min(Duration::from_secs(r.ttl().max(0) as u64))
                    }))
                }
                // Opening the stream renews once and checks the answer (an
                // error if the lease is gone).
                None => {
                    stream = Some(client.lease_keep_alive(lease).await?);
                    Ok::<_, etcd_client::Error>(Some(timing.own_for))
                }
            }
        };
        let bump = async {
            match &alive {
                Some(alive) => alive.put(&mut bumper, lease).await,
                None => Ok(true),
            }
        };
        // An answer later than `period` does not count (lease_timing).
        match tokio::time::timeout(period, async { tokio::join!(renewal, bump) }).await {
            Ok((_, Ok(false))) => {
                tracing::warn!(lease, "the leader key belongs to another term");
                owned_until.send_replace(None);
                return;
            }
            Ok((Ok(Some(owned_for)), Ok(true))) if !owned_for.is_zero() => {
                // A term that ended meanwhile (stepped down) stays ended.
                let extended = owned_until.send_if_modified(|until| match until {
                    Some(_) => {
                        *until = Some(sent + owned_for);
                        true
                    }
                    None => false,
                });
                if !extended {
                    return;
                }
            }
            Ok((Ok(Some(_)), Ok(true))) => {
                tracing::warn!(lease, "the lease expired in etcd");
                owned_until.send_replace(None);
                return;
            }
            failed => {
                let why = match failed {
                    Ok((Err(e), _)) => e.to_string(),
                    Ok((_, Err(e))) => format!("cannot put the alive key: {e}"),
                    Ok((Ok(_), Ok(_))) => "the renewal stream ended".to_owned(),
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
/// background), its fencing token, the senders' suspicions of this term
/// (watched in the background), and its commit coalescer (every checkpoint
/// of the term goes through it, batched into fenced transactions). A
/// [`ReceiverStore`] for the group's own session (the key `checkpoint`);
/// [`open_session`](Self::open_session) gives a store for each further
/// session the leader serves. Dropping it stops renewing the lease and
/// committing; [`resign`](Self::resign) also deletes it, so a standby
/// takes over at once.
pub struct Leadership {
    client: Client,
    prefix: String,
    lease: i64,
    ttl: Duration,
    term: i64,
    owned_until: Arc<watch::Sender<Option<Instant>>>,
    keepalive: tokio::task::JoinHandle<()>,
    suspicions: watch::Receiver<BTreeSet<String>>,
    suspicion_watch: tokio::task::JoinHandle<()>,
    coalescing: tokio::task::JoinHandle<()>,
    group_session: GroupSession,
}

/// Ends a [`Leadership`]'s ownership at once, from outside the receiver
/// that holds it as its store: after [`trigger`](Self::trigger) the store
/// is no longer [owned](ReceiverStore::owned), so the receiver writes and
/// confirms nothing more and returns
/// [`SessionError::Deposed`]; then [`Leadership::resign`] deletes the
/// leader key. The lease is not renewed into a new deadline afterwards.
#[derive(Debug, Clone)]
pub struct StepDown {
    owned_until: Arc<watch::Sender<Option<Instant>>>,
}

impl StepDown {
    /// Ends the ownership now.
    pub fn trigger(&self) {
        self.owned_until.send_replace(None);
    }

    /// True while the term is still owned at `now` (its lease known alive,
    /// not stepped down): a term already lost has nothing to step down from.
    pub fn owned(&self, now: Instant) -> bool {
        self.owned_until.borrow().is_some_and(|until| until > now)
    }
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

    /// Checkpoints of the group's own session committed to etcd in this
    /// term.
    pub fn commits(&self) -> u64 {
        self.group_session.commits
    }

    /// The transactions this term committed and the session checkpoints
    /// they carried, over all its sessions (the commit coalescer's
    /// counters).
    pub fn commit_stats(&self) -> CommitStats {
        self.group_session.coalescer.stats()
    }

    /// A store for one more session served by this leader, in slot `name`
    /// (a name the application gives it, e.g. its output's; non-empty,
    /// without `/`): its checkpoint lives in the group's key
    /// `sessions/NAME`, read now, and its commits go through this term's
    /// coalescer with every other session's. Valid for this term only:
    /// once the term ends, it is deposed with the others.
    pub async fn open_session(&self, name: &str) -> Result<GroupSession, GroupError> {
        if name.is_empty() || name.contains('/') {
            return Err(GroupError::BadName(name.to_owned()));
        }
        let key = Group::session_key(&self.prefix, name);
        let mut client = self.client.clone();
        let response = client.get(key.clone(), None).await?;
        let checkpoint = response
            .kvs()
            .first()
            .map(|kv| decode_checkpoint(kv.value()))
            .transpose()?;
        Ok(GroupSession {
            key,
            term: self.term,
            owned: self.owned_until.subscribe(),
            coalescer: self.group_session.coalescer.clone(),
            checkpoint,
            commits: 0,
        })
    }

    /// The senders currently suspecting this term's leader ([`Group::suspect`]),
    /// each until its suspicion's own lease expires; updated by a watch.
    /// A leader should [step down](Self::step_down_handle) on a suspicion
    /// only if it has not heard from its sender for its own
    /// failure-detection time: a sender that it still hears (one that is
    /// wrong, or lying) cannot depose it.
    pub fn suspicions(&self) -> watch::Receiver<BTreeSet<String>> {
        self.suspicions.clone()
    }

    /// A handle that ends this term's ownership while a receiver holds the
    /// leadership.
    pub fn step_down_handle(&self) -> StepDown {
        StepDown {
            owned_until: self.owned_until.clone(),
        }
    }

    /// Ends the term: stops owning it, then revokes the lease, which
    /// deletes the leader key (a standby takes over without waiting for the
    /// TTL).
    pub async fn resign(mut self) -> Result<(), GroupError> {
        self.keepalive.abort();
        self.owned_until.send_replace(None);
        self.client.lease_revoke(self.lease).await?;
        Ok(())
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("term", &self.term)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .field("commits", &self.group_session.commits)
            .finish_non_exhaustive()
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keepalive.abort();
        self.suspicion_watch.abort();
        self.coalescing.abort();
    }
}

impl ReceiverStore for Leadership {
    fn checkpoint(&self) -> Option<&SessionRecord> {
        self.group_session.checkpoint()
    }

    async fn commit(&mut self, record: SessionRecord, sync: bool) -> Result<(), SessionError> {
        self.group_session.commit(record, sync).await
    }

    fn owned(&self, now: Instant) -> bool {
        self.group_session.owned(now)
    }

    fn deposed(&self) -> impl Future<Output = SessionError> + Send + 'static {
        self.group_session.deposed()
    }
}

/// One session served by a group's leader: its checkpoint key, and the
/// term's ownership and coalescer. A [`ReceiverStore`] whose commits join
/// the term's batched, fenced transactions
/// ([`Leadership::open_session`]; the leadership itself holds the one of
/// the group's own session).
#[derive(Debug)]
pub struct GroupSession {
    key: String,
    term: i64,
    owned: watch::Receiver<Option<Instant>>,
    coalescer: Coalescer,
    checkpoint: Option<SessionRecord>,
    commits: u64,
}

impl GroupSession {
    /// Checkpoints of this session committed in this term.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    fn stale(&self) -> SessionError {
        SessionError::Deposed(format!(
            "the lease of term {} expired or was lost: another member may lead the group",
            self.term
        ))
    }
}

impl ReceiverStore for GroupSession {
    fn checkpoint(&self) -> Option<&SessionRecord> {
        self.checkpoint.as_ref()
    }

    /// Submits the checkpoint to the term's coalescer and waits for the
    /// transaction that carries it: a put of this session's key, with the
    /// other sessions' pending checkpoints, if the leader key still has
    /// this term's creation revision. Retried on errors until the lease's
    /// deadline, then [`SessionError::Deposed`] (nothing confirmed). etcd
    /// has the write on its quorum's disks when it answers, whatever `sync`.
    async fn commit(&mut self, record: SessionRecord, _sync: bool) -> Result<(), SessionError> {
        if !self.owned(tokio::time::Instant::now().into_std()) {
            return Err(self.stale());
        }
        let bytes = CheckpointRecord::Session(record.clone()).to_bytes();
        match self.coalescer.commit(self.key.clone(), bytes).await {
            Ok(()) => {
                self.checkpoint = Some(record);
                self.commits += 1;
                Ok(())
            }
            Err(CommitFailure::Fenced) => Err(SessionError::Deposed(format!(
                "fencing token {} is stale: another member leads the group",
                self.term
            ))),
            Err(CommitFailure::Expired) => Err(self.stale()),
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
                "the lease of term {term} is no longer held: not renewed in time, or given up"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_second_lease_ends_early_on_its_alive_key() {
        let timing = lease_timing(Duration::from_secs(1));
        assert_eq!(timing.evidence, Evidence::AliveKey);
        assert_eq!(timing.silent, Duration::from_millis(750));
        assert_eq!(timing.own_for, Duration::from_micros(562_500));
    }

    /// The safety argument of `lease_timing`, checked for every TTL a
    /// member accepts: the ownership after a renewal plus the time an
    /// answer may take stays within the silence a standby's proof shows,
    /// and within the TTL (etcd's own expiry); a leader keeps its term
    /// through one lost renewal; and from 2 s on, the remaining-TTL
    /// reading that proves the silence is one etcd can give while the
    /// lease lives, never one of a leader that renews on time.
    #[test]
    fn an_early_end_needs_a_silence_longer_than_any_ownership_after_a_renewal() {
        for secs in 1..=60u64 {
            let ttl = Duration::from_secs(secs);
            let timing = lease_timing(ttl);
            assert!(
                timing.own_for + timing.renew_every <= timing.silent,
                "{secs} s"
            );
            assert!(timing.silent < ttl, "{secs} s");
            // One renewal lost: the next, sent a period later and answered
            // within a period, lands while the term is still owned.
            assert!(timing.renew_every * 3 <= timing.own_for, "{secs} s");
            match timing.evidence {
                Evidence::AliveKey => assert!(secs < 2, "{secs} s"),
                Evidence::RemainingTtl(remaining_at_most) => {
                    assert!(secs >= 2 && remaining_at_most >= 0, "{secs} s");
                    // Reading k: the last renewal is more than TTL − k − 1 s old.
                    assert_eq!(
                        Duration::from_secs(secs - remaining_at_most as u64 - 1),
                        timing.silent,
                        "{secs} s"
                    );
                    // A leader renewing every period leaves at least
                    // TTL − 2 periods (one late answer), which reads above k.
                    let healthy = ttl - timing.renew_every * 2;
                    assert!((healthy.as_secs() as i64) > remaining_at_most, "{secs} s");
                }
            }
        }
    }
}
