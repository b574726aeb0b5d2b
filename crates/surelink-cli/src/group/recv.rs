//! `surelink recv --group NAME --etcd URL --listen ADDR (--out PATH | --to udp://…)`:
//! one member of a receiver group.
//!
//! The member campaigns for the group's leadership (a lease of
//! `--lease-ttl`, and a transaction that creates the leader key only if no
//! member holds it); meanwhile it stands by, neither listening nor writing,
//! and says who leads. Once leader, it opens the output (a file is cut back
//! to the length in the group's last checkpoint; the file must be on
//! storage every member reaches), listens on `--listen` and serves the
//! group's durable session, with every checkpoint committed to etcd under
//! its fencing token before the sender hears of it. If it loses the lease
//! (paused, or cut off from etcd, for longer than the TTL) it stops at once
//! (no more output, no more confirmations), closes its endpoint and
//! campaigns again. With `--once` it exits after the session is complete,
//! resigning so that no member waits for the lease to expire.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use surelink::{Endpoint, EndpointConfig};
use surelink_etcd::{Group, Leadership};
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
    /// The addresses to listen on once leader (fixed ports: senders read them from etcd).
    pub listen: Vec<SocketAddr>,
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

/// Runs `surelink recv --group`.
pub async fn run(plan: GroupRecv) -> anyhow::Result<()> {
    if plan.listen.iter().any(|a| a.port() == 0) {
        bail!(crate::exit::UsageError(
            "--group needs --listen with a fixed port: senders find the leader by it".into()
        ));
    }
    let name = plan.group.name().to_owned();
    let member = plan
        .listen
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    loop {
        eprintln!("surelink recv: group {name}: campaigning as {member}");
        let leadership = plan
            .group
            .campaign(
                &member,
                |leader| {
                    eprintln!(
                        "surelink recv: group {name}: standing by; the leader is {} (term {})",
                        leader.member, leader.term
                    )
                },
                |e| eprintln!("surelink recv: group {name}: {e}; trying again"),
            )
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
                lead(&plan, leadership, sink).await?
            }
            GroupOutput::Datagrams(target) => {
                let socket = std::net::UdpSocket::bind(crate::args::wildcard_for(*target))
                    .context("cannot bind the datagram output's socket")?;
                lead(&plan, leadership, DatagramSink::new(socket, *target)).await?
            }
        };
        match outcome {
            Term::Complete if plan.once => return Ok(()),
            Term::Complete => {}
            Term::Deposed(reason) => eprintln!(
                "surelink recv: group {name}: deposed ({reason}): output stopped, \
                 nothing more confirmed"
            ),
        }
    }
}

/// How a term as leader ended.
enum Term {
    /// The session is complete.
    Complete,
    /// The lease was lost: output stopped.
    Deposed(String),
}

/// Serves the group's session as its leader until it is complete or the
/// lease is lost.
async fn lead<K: DurableSink>(
    plan: &GroupRecv,
    leadership: Leadership,
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
    let endpoint = bind(&plan.listen, &plan.config).await?;
    for addr in endpoint.local_addrs() {
        eprintln!("surelink recv: listening on {addr}");
    }
    crate::security::announce_receiver(&endpoint);
    // Aborted when the term ends, so the endpoint (and its port) is released.
    let handshake_log = crate::security::spawn_handshake_log(&endpoint);
    let mut started = None;
    let served = rx
        .run(&endpoint, |event| {
            if let surelink_session::ReceiverEvent::Accepted { .. } = event {
                started.get_or_insert_with(Instant::now);
            }
            report(&event, &output);
        })
        .await;
    handshake_log.abort();
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
        Err(SessionError::Deposed(reason)) => Ok(Term::Deposed(reason)),
        Err(e) => Err(anyhow::Error::new(e).context(format!("group {name}"))),
    }
}

/// Binds the listen addresses, retrying briefly while a previous term's
/// endpoint of this process releases them.
async fn bind(listen: &[SocketAddr], config: &EndpointConfig) -> anyhow::Result<Endpoint> {
    let mut attempt = 0;
    loop {
        match Endpoint::bind_many(listen, config.clone()) {
            Ok(endpoint) => return Ok(endpoint),
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
