//! `--group NAME --etcd URL[,URL…]`: receiver groups coordinated through etcd
//! (built with the `etcd` feature).
//!
//! `recv --group` makes the receiver one member of a group: it campaigns for
//! the group's leadership, and only the leader listens and serves the
//! group's durable session, committing each checkpoint to etcd under its
//! fencing token before confirming it to the sender ([`recv`]). `send
//! --state DIR --group` finds the leader in etcd and, when its connection
//! fails, resumes the session with whichever member leads then, replaying
//! from its outbox ([`Leaders`]). The design is in `docs/CHECKPOINTS.md`,
//! the library in `surelink_etcd`.

pub mod recv;
mod sink;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use surelink_etcd::Group;

use crate::args::parse_duration;

/// The options that make `recv` a group member, or `send` follow a group.
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Receiver group (etcd): `recv` becomes one member of group NAME (only the leader
    /// serves; the others stand by), `send --state` sends to whichever member leads.
    #[arg(long, value_name = "NAME", requires = "etcd")]
    pub group: Option<String>,
    /// With --group: the etcd cluster's client URLs (http://HOST:PORT), comma-separated
    /// or repeated; any member will do.
    #[arg(
        long,
        value_name = "URL[,URL…]",
        value_delimiter = ',',
        requires = "group"
    )]
    pub etcd: Vec<String>,
    /// With --group (recv): the TTL of the leader's etcd lease, in whole seconds. A dead
    /// leader is replaced after at most about this long; a leader that cannot renew its
    /// lease for this long (paused, cut off from etcd) stops writing and confirming.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, requires = "group")]
    pub lease_ttl: Duration,
}

impl GroupArgs {
    /// Connects to etcd for the group, if `--group` was given.
    pub async fn connect(&self) -> anyhow::Result<Option<Group>> {
        let Some(name) = &self.group else {
            return Ok(None);
        };
        let group = Group::connect(&self.etcd, name, self.lease_ttl)
            .await
            .with_context(|| format!("cannot reach etcd at {}", self.etcd.join(",")))?;
        Ok(Some(group))
    }
}

/// Where a sender finds the receiver of a group: the leader in etcd.
pub struct Leaders {
    group: Group,
    /// The last leader connected to, and its term.
    last: Option<(SocketAddr, i64)>,
}

/// How often a sender looks for a new leader while the old one's key is
/// still there (its lease not yet expired).
const LEADER_POLL: Duration = Duration::from_millis(50);

impl Leaders {
    /// Follows the leaders of `group`.
    pub fn new(group: Group) -> Self {
        Leaders { group, last: None }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        self.group.name()
    }

    /// The address of the member to connect to: the current leader. After
    /// a failure with the previous one, waits (up to `patience`) for a
    /// leader of another term, else returns the same one again.
    pub async fn next(&mut self, patience: Duration) -> anyhow::Result<SocketAddr> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let leader = self
                .group
                .leader()
                .await
                .context("cannot read the group's leader from etcd");
            match leader {
                Ok(Some(leader)) => {
                    let addr = leader_addr(&leader.member)?;
                    let same_term = self.last.is_some_and(|(_, term)| term == leader.term);
                    if !same_term || tokio::time::Instant::now() >= deadline {
                        self.last = Some((addr, leader.term));
                        return Ok(addr);
                    }
                }
                Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {}
                Ok(None) => bail!("group {} has no leader", self.group.name()),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }
}

/// The first address a leader announced.
fn leader_addr(member: &str) -> anyhow::Result<SocketAddr> {
    member
        .split(',')
        .next()
        .and_then(|a| a.trim().parse().ok())
        .with_context(|| format!("the group's leader announced no address: {member:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_is_reached_at_the_first_address_it_announced() {
        assert_eq!(
            leader_addr("127.0.0.1:7000,[::1]:7000").unwrap(),
            "127.0.0.1:7000".parse::<SocketAddr>().unwrap()
        );
        assert!(leader_addr("").is_err());
        assert!(leader_addr("nowhere").is_err());
    }
}
