//! `surelink recv --group NAME --etcd URL --listen ADDR (--out PATH | --to udp://…)`:
//! one member of a receiver group.
//!
//! The member campaigns for the group's leadership (a lease of
//! `--lease-ttl`, and a transaction that creates the leader key, holding
//! the addresses it advertises, only if no member holds it); meanwhile it
//! stands by, holding its `--listen` ports bound but reading nothing and
//! writing nothing, and says who leads (a sender's first packets after a
//! takeover wait in the bound sockets instead of being refused). Once
//! leader, it opens the output (a file is cut back to the length in the
//! group's last checkpoint; the file must be on storage every member
//! reaches), serves the group's durable session on those sockets, with
//! every checkpoint committed to etcd under its fencing token before the
//! sender hears of it. If it loses the lease (paused, or cut off from etcd,
//! for longer than the TTL) it stops at once (no more output, no more
//! confirmations), closes its endpoint and campaigns again. If a sender
//! suspects it in etcd (its failure detector gave up on this leader) and
//! it has heard nothing for its own failure-detection time either, it
//! steps down: output stopped and closed, endpoint closed, lease revoked;
//! it campaigns again once another member has led, or after a hold-off.
//! With `--once` it exits after the session is complete, resigning so that
//! no member waits for the lease to expire.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use surelink::{Endpoint, EndpointConfig};
use surelink_etcd::{CampaignEvent, Group, Leadership};
use surelink_session::{DurableReceiver, DurableSink, FileSink, SessionError, SessionOptions};

use super::sink::DatagramSink;
use crate::delivery::DATA_CHANNEL;
use crate::state::recv::{report, summary};

/// Where the leader writes what it receives.
pub enum GroupOutput {
    /// A file every member reaches (exact: cut back to the checkpoint).
    File(PathBuf),
    /// One UDP datagram per message (at least once).
    Datagrams(SocketAddr),
}

/// What `recv --group` needs, checked and resolved from the command line.
pub struct GroupRecv {
    /// The group, connected.
    pub group: Group,
    /// The output.
    pub output: GroupOutput,
    /// Session options (checkpoint interval).
    pub options: SessionOptions,
    /// The addresses to listen on once leader (fixed ports).
    pub listen: Vec<SocketAddr>,
    /// What senders read from etcd to reach the leader: `--advertise`, else
    /// the listen addresses.
    pub advertised: String,
    /// The endpoint's configuration (security, paths, playout, timeouts).
    pub config: EndpointConfig,
    /// Exit once the session is complete.
    pub once: bool,
}

/// Attempts to bind the listen addresses after taking the lead (the
/// previous term's endpoint of this process may still be closing).
const BIND_ATTEMPTS: u32 = 40;
/// Pause between two of them.
const BIND_RETRY: Duration = Duration::from_millis(50);

/// How often a leader samples its endpoint's datagram count while it
/// judges a suspicion (its silence is measured to within this).
const SILENCE_SAMPLE: Duration = Duration::from_millis(20);

/// Runs `surelink recv --group`.
pub async fn run(plan: GroupRecv) -> anyhow::Result<()> {
    let name = plan.group.name().to_owned();
    let member = plan.advertised.clone();
    loop {
        // The ports are this member's while it stands by: a sender's first
        // packets after the takeover wait in them instead of being refused.
        let sockets = bind(&plan.listen).await?;
        eprintln!("surelink recv: group {name}: campaigning as {member}");
        let leadership = plan
            .group
            .campaign(&member, |event| match event {
                CampaignEvent::StandingBy(leader) => eprintln!(
                    "surelink recv: group {name}: standing by; the leader is {} (term {})",
                    leader.member, leader.term
                ),
                CampaignEvent::EndedEarly {
                    leader,
                    suspected_by,
                    remaining,
                    granted,
                    silent,
                } => eprintln!(
                    "surelink recv: group {name}: the leader {} (term {}) is suspected by {} \
                     and has not renewed its lease for over {silent:?} ({remaining} s of \
                     {granted:?} left): revoked it, ending its term early",
                    leader.member,
                    leader.term,
                    suspected_by.join(", ")
                ),
                CampaignEvent::Unreachable(e) => {
                    eprintln!("surelink recv: group {name}: {e}; trying again")
                }
                _ => {}
            })
            .await?;
        eprintln!(
            "surelink recv: group {name}: leading (term {}, lease {:?})",
            leadership.term(),
            leadership.lease_ttl()
        );
        let outcome = match &plan.output {
            GroupOutput::File(path) => {
                let sink = FileSink::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                lead(&plan, leadership, sockets, sink).await?
            }
            GroupOutput::Datagrams(target) => {
                let socket = std::net::UdpSocket::bind(crate::args::wildcard_for(*target))
                    .context("cannot bind the datagram output's socket")?;
                lead(
                    &plan,
                    leadership,
                    sockets,
                    DatagramSink::new(socket, *target),
                )
                .await?
            }
        };
        match outcome {
            Term::Complete if plan.once => return Ok(()),
            Term::Complete => {}
            Term::Deposed(reason) => eprintln!(
                "surelink recv: group {name}: deposed ({reason}): output stopped, \
                 nothing more confirmed"
            ),
            Term::SteppedDown(term) => {
                // Let another member lead first: this one is cut off from
                // the sender, which the others may not be.
                let hold_off = plan.group.lease_ttl() * HOLD_OFF_TTLS;
                match plan.group.next_leader(Some(term), hold_off).await {
                    Ok(Some(next)) => eprintln!(
                        "surelink recv: group {name}: {} leads now (term {})",
                        next.member, next.term
                    ),
                    Ok(None) => eprintln!(
                        "surelink recv: group {name}: no other member led within {hold_off:?}"
                    ),
                    Err(e) => eprintln!("surelink recv: group {name}: {e}"),
                }
            }
        }
    }
}

/// After stepping down, a member campaigns again only once another member
/// has led, or after this many lease TTLs.
const HOLD_OFF_TTLS: u32 = 5;

/// How a term as leader ended.
enum Term {
    /// The session is complete.
    Complete,
    /// The lease was lost: output stopped.
    Deposed(String),
    /// This member stepped down on a sender's suspicion (the term given):
    /// output stopped and closed, lease revoked.
    SteppedDown(i64),
}

/// Serves the group's session as its leader until it is complete or the
/// lease is lost.
async fn lead<K: DurableSink>(
    plan: &GroupRecv,
    leadership: Leadership,
    sockets: Vec<UdpSocket>,
    sink: K,
) -> anyhow::Result<Term> {
    let name = plan.group.name();
    let output = sink.describe();
    let mut rx = DurableReceiver::with_store(leadership, sink, plan.options.clone())
        .map_err(|e| anyhow::Error::new(e).context(format!("group {name}: cannot take over")))?;
    match rx.session_id() {
        Some(id) => eprintln!(
            "surelink recv: group {name}: session {id}: {} messages committed, {output} at \
             position {}{}",
            rx.delivered(DATA_CHANNEL),
            rx.sink().position(),
            if rx.is_complete() { " (complete)" } else { "" }
        ),
        None => eprintln!("surelink recv: group {name}: no session yet"),
    }
    let endpoint = Endpoint::from_std_sockets(sockets, plan.config.clone())
        .with_context(|| format!("cannot listen on {:?}", plan.listen))?;
    for addr in endpoint.local_addrs() {
        eprintln!("surelink recv: listening on {addr}");
    }
    crate::security::announce_receiver(&endpoint);
    // Aborted when the term ends, so the endpoint (and its port) is released.
    let handshake_log = crate::security::spawn_handshake_log(&endpoint);
    let mut started = None;
    let term = rx.store().term();
    let step_down = rx.store().step_down_handle();
    let suspicions = rx.store().suspicions();
    let detection = plan.options.peer_timeout;
    let mut stepped_down = false;
    let served = {
        let run = rx.run(&endpoint, |event| {
            if let surelink_session::ReceiverEvent::Accepted { .. } = event {
                started.get_or_insert_with(Instant::now);
            }
            report(&event, &output);
        });
        tokio::pin!(run);
        tokio::select! {
            served = &mut run => served,
            suspected = unheard_and_suspected(&endpoint, suspicions, detection) => {
                // A leader woken from a pause may find its term already
                // lost: the receiver then ends with `Deposed` by itself.
                if step_down.owned(Instant::now()) {
                    eprintln!(
                        "surelink recv: group {name}: suspected by {} and nothing heard for \
                         {detection:?}: stepping down (term {term})",
                        suspected.join(", ")
                    );
                    stepped_down = true;
                    step_down.trigger();
                }
                run.await
            }
        }
    };
    handshake_log.abort();
    if stepped_down {
        // Close the output and the endpoint before the lease goes, so
        // nothing of this term is written once another member leads.
        let (sink, leadership) = rx.into_parts();
        drop(sink);
        drop(endpoint);
        if let Err(e) = leadership.resign().await {
            tracing::warn!(error = %e, "cannot resign: the lease will expire instead");
        }
        eprintln!(
            "surelink recv: group {name}: stepped down (term {term}): output closed, lease revoked"
        );
        return Ok(Term::SteppedDown(term));
    }
    match served {
        Ok(()) => {
            summary(&rx, started);
            eprintln!(
                "surelink recv: group {name}: {} checkpoints committed to etcd in this term",
                rx.store().commits()
            );
            let idle = plan.config.protocol.idle_timeout;
            let _ = tokio::time::timeout(idle, endpoint.wait_idle()).await;
            if plan.once {
                let (_, leadership) = rx.into_parts();
                if let Err(e) = leadership.resign().await {
                    tracing::warn!(error = %e, "cannot resign: the lease will expire instead");
                }
            }
            Ok(Term::Complete)
        }
        Err(SessionError::Deposed(reason)) => {
            // Its own deadline may pass before etcd expires the lease (it
            // owns its term for less than the TTL after a renewal):
            // revoking it lets a standby lead now. Output closed first.
            let (sink, leadership) = rx.into_parts();
            drop(sink);
            drop(endpoint);
            let _ = tokio::time::timeout(plan.group.lease_ttl(), leadership.resign()).await;
            Ok(Term::Deposed(reason))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("group {name}"))),
    }
}

/// Resolves with the suspecting senders once a sender suspects this term
/// in etcd while the endpoint has received nothing for at least
/// `detection` (this member's own failure-detection time). A sender it
/// still hears cannot depose it. The endpoint serves the group's one
/// session, so any datagram counts as hearing from its sender.
async fn unheard_and_suspected(
    endpoint: &Endpoint,
    suspicions: tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>,
    detection: Duration,
) -> Vec<String> {
    let mut received = endpoint.stats().datagrams_received;
    let mut heard = Instant::now();
    loop {
        tokio::time::sleep(SILENCE_SAMPLE).await;
        let now = Instant::now();
        let count = endpoint.stats().datagrams_received;
        if count != received {
            (received, heard) = (count, now);
        }
        let suspected = suspicions.borrow();
        if !suspected.is_empty() && now.duration_since(heard) >= detection {
            return suspected.iter().cloned().collect();
        }
    }
}

/// Binds the listen addresses, retrying briefly while a previous term's
/// endpoint of this process releases them.
async fn bind(listen: &[SocketAddr]) -> anyhow::Result<Vec<UdpSocket>> {
    let mut attempt = 0;
    loop {
        match listen.iter().map(UdpSocket::bind).collect() {
            Ok(sockets) => return Ok(sockets),
            Err(e) if attempt + 1 < BIND_ATTEMPTS => {
                tracing::debug!(error = %e, "cannot listen yet; trying again");
                attempt += 1;
                tokio::time::sleep(BIND_RETRY).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot listen on {listen:?}")))
            }
        }
    }
}
