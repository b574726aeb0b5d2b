//! `--group NAME --etcd URL[,URL…]`: receiver groups coordinated through etcd
//! (built with the `etcd` feature).
//!
//! `recv --group` makes the receiver one member of a group: it campaigns for
//! the group's leadership, and only the leader listens and serves the
//! group's durable session, committing each checkpoint to etcd under its
//! fencing token before confirming it to the sender ([`recv`]). `send
//! --state DIR --group` finds the leader in etcd, watches the leader key,
//! and when its connection fails or a leader of a new term appears, resumes
//! the session with whichever member leads then, replaying from its outbox
//! ([`Leaders`]); when its failure detector gives up on a leader that etcd
//! still names, it records a suspicion of that term in etcd, on which a
//! leader that does not hear it either steps down. `--etcd-ca`,
//! `--etcd-cert`/`--etcd-key` and `--etcd-user` (password in
//! `SURELINK_ETCD_PASSWORD`) protect the etcd connection ([`GroupArgs`]).
//! The design is in `docs/CHECKPOINTS.md`, the library in `surelink_etcd`.

pub mod recv;
mod sink;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use surelink_etcd::{EtcdAccess, Group};

use crate::args::parse_duration;
use crate::exit::UsageError;

/// The environment variable holding the password of `--etcd-user` (never
/// an argument: the process list would show it).
pub const PASSWORD_VAR: &str = "SURELINK_ETCD_PASSWORD";

/// The options that make `recv` a group member, or `send` follow a group.
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Receiver group (etcd): `recv` becomes one member of group NAME (only the leader
    /// serves; the others stand by), `send --state` sends to whichever member leads.
    #[arg(long, value_name = "NAME", requires = "etcd")]
    pub group: Option<String>,
    /// With --group: the etcd cluster's client URLs (http://HOST:PORT, or https:// with
    /// --etcd-ca), comma-separated or repeated; any member will do.
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
    /// With --group (recv): the address(es) senders should use to reach this member,
    /// IP:PORT, comma-separated, published in etcd instead of the --listen addresses
    /// (behind NAT or a proxy). Default: the --listen addresses.
    #[arg(
        long,
        value_name = "ADDR[,ADDR…]",
        value_delimiter = ',',
        requires = "group"
    )]
    pub advertise: Vec<String>,
    /// With --group: the CA certificate (PEM) that signed the etcd members' certificates;
    /// the --etcd URLs must then be https://.
    #[arg(long, value_name = "FILE", requires = "group")]
    pub etcd_ca: Option<PathBuf>,
    /// With --group and --etcd-ca: a client certificate (PEM) for etcd clusters that
    /// require one.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// With --etcd-cert: its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// With --group: authenticate to etcd as this user; the password is read from the
    /// environment variable SURELINK_ETCD_PASSWORD.
    #[arg(long, value_name = "NAME", requires = "group")]
    pub etcd_user: Option<String>,
}

impl GroupArgs {
    /// Connects to etcd for the group, if `--group` was given.
    pub async fn connect(&self) -> anyhow::Result<Option<Group>> {
        let Some(name) = &self.group else {
            return Ok(None);
        };
        let access = self.access()?;
        let group = Group::connect(&access, name, self.lease_ttl)
            .await
            .with_context(|| format!("cannot use etcd at {}", self.etcd.join(",")))?;
        Ok(Some(group))
    }

    /// The etcd access the options describe: URLs, TLS files, user.
    fn access(&self) -> anyhow::Result<EtcdAccess> {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let mut access = EtcdAccess::new(self.etcd.clone());
        if let Some(ca) = &self.etcd_ca {
            access = access.with_ca(read(ca)?);
        }
        if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
            access = access.with_client_identity(read(cert)?, read(key)?);
        }
        if let Some(user) = &self.etcd_user {
            let Ok(password) = std::env::var(PASSWORD_VAR) else {
                bail!(UsageError(format!(
                    "--etcd-user needs the password in the environment variable {PASSWORD_VAR}"
                )));
            };
            access = access.with_user(user.clone(), password);
        }
        Ok(access)
    }

    /// What a member publishes in etcd for senders: `--advertise`, else
    /// the `listen` addresses; each must be an IP:PORT a sender can dial.
    pub fn advertised(&self, listen: &[SocketAddr]) -> anyhow::Result<String> {
        let (addrs, origin) = if self.advertise.is_empty() {
            (listen.to_vec(), "--listen")
        } else {
            let parsed = self
                .advertise
                .iter()
                .map(|a| {
                    a.trim().parse::<SocketAddr>().map_err(|_| {
                        UsageError(format!("--advertise takes IP:PORT addresses, not {a:?}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (parsed, "--advertise")
        };
        for addr in &addrs {
            if addr.port() == 0 || addr.ip().is_unspecified() {
                bail!(UsageError(format!(
                    "{origin} {addr} cannot be dialled by a sender: senders find the leader by \
                     the address it publishes in etcd (give --advertise IP:PORT)"
                )));
            }
        }
        Ok(addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(","))
    }
}

/// Where a sender finds the receiver of a group: the leader in etcd,
/// watched.
pub struct Leaders {
    group: Group,
    /// The last leader connected to, and its term.
    last: Option<(SocketAddr, i64)>,
}

/// Pause after a failed read of the leader key before the next one.
const RETRY_READ: Duration = Duration::from_millis(50);

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
    /// a failure with the previous one, waits (up to `patience`, watching
    /// the leader key) for a leader of another term, else returns the
    /// same one again.
    pub async fn next(&mut self, patience: Duration) -> anyhow::Result<SocketAddr> {
        let deadline = tokio::time::Instant::now() + patience;
        let after = self.last.map(|(_, term)| term);
        loop {
            let within = deadline.saturating_duration_since(tokio::time::Instant::now());
            let found = match self.group.next_leader(after, within).await {
                Ok(Some(leader)) => Some(leader),
                // None of another term in time: the same one, if any.
                Ok(None) => self.group.leader().await.ok().flatten(),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "cannot read the group's leader; trying again");
                    tokio::time::sleep(RETRY_READ).await;
                    continue;
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context("cannot read the group's leader from etcd")
                    )
                }
            };
            let Some(leader) = found else {
                bail!("group {} has no leader", self.group.name());
            };
            let addr = leader_addr(&leader.member)?;
            self.last = Some((addr, leader.term));
            return Ok(addr);
        }
    }

    /// The sender's failure detector gave up on the last leader: records
    /// a suspicion of its term in etcd (if etcd still names it), signed
    /// `who` (the session). The leader steps down on it only if it has not
    /// heard from the sender for its own failure-detection time either; a
    /// standby ends the term early on it only if the leader's lease shows
    /// missed renewals.
    pub async fn suspect_last(&self, who: &str) {
        if let Some((addr, term)) = self.last {
            record_suspicion(&self.group, addr, term, who).await;
        }
    }

    /// Resolves once every path of `conn` (to the last leader) is down by
    /// the failure detector (tens of milliseconds of silence while data
    /// flows), having recorded a suspicion of the leader's term then, as
    /// [`suspect_last`](Self::suspect_last) does: the standbys can judge
    /// a dead leader long before the connection's peer timeout. Sampled
    /// every [`PATHS_SAMPLE`]; never resolves before a leader was chosen.
    pub fn suspect_when_unreachable(
        &self,
        conn: surelink::Connection,
        who: String,
    ) -> impl Future<Output = ()> + Send + 'static {
        let group = self.group.clone();
        let last = self.last;
        async move {
            let Some((addr, term)) = last else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(PATHS_SAMPLE).await;
                let paths = conn.path_stats();
                if !paths.is_empty() && paths.iter().all(|p| p.state == surelink::PathState::Down) {
                    record_suspicion(&group, addr, term, &who).await;
                    return;
                }
            }
        }
    }

    /// Resolves once etcd names a leader of another term than the last one
    /// connected to: the connection to the old one is then worth nothing.
    /// Never resolves before a leader was chosen.
    pub fn superseded(&self) -> impl Future<Output = ()> + Send + 'static {
        let group = self.group.clone();
        let term = self.last.map(|(_, term)| term);
        async move {
            let Some(term) = term else {
                return std::future::pending().await;
            };
            loop {
                match group.next_leader(Some(term), SUPERSEDED_RECHECK).await {
                    Ok(Some(_)) => return,
                    Ok(None) => {}
                    Err(_) => tokio::time::sleep(RETRY_READ).await,
                }
            }
        }
    }
}

/// How often [`Leaders::suspect_when_unreachable`] looks at the paths.
const PATHS_SAMPLE: Duration = Duration::from_millis(10);

/// Records in etcd that sender `who` lost the leader at `addr` of `term`
/// (if etcd still names that term), and says so.
async fn record_suspicion(group: &Group, addr: SocketAddr, term: i64, who: &str) {
    match group.suspect(term, who).await {
        Ok(true) => eprintln!(
            "surelink send: group {}: the leader at {addr} (term {term}) is unreachable; \
             told etcd",
            group.name()
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot record the suspicion in etcd"),
    }
}

/// How long one wait of [`Leaders::superseded`] lasts before it starts
/// over (it watches the key, and re-reads it every second meanwhile).
const SUPERSEDED_RECHECK: Duration = Duration::from_secs(60);

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

    /// Group options as `recv` would parse them, with `--advertise`.
    fn with_advertise(advertise: &[&str]) -> GroupArgs {
        GroupArgs {
            group: Some("g".into()),
            etcd: vec!["http://127.0.0.1:2379".into()],
            lease_ttl: Duration::from_secs(2),
            advertise: advertise.iter().map(|a| (*a).to_owned()).collect(),
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_user: None,
        }
    }

    #[test]
    fn a_member_publishes_its_advertised_addresses_else_its_listen_addresses() {
        let listen: Vec<SocketAddr> = vec!["10.0.0.1:9000".parse().unwrap()];
        assert_eq!(
            with_advertise(&[]).advertised(&listen).unwrap(),
            "10.0.0.1:9000"
        );
        assert_eq!(
            with_advertise(&["203.0.113.7:9000", "[2001:db8::7]:9000"])
                .advertised(&listen)
                .unwrap(),
            "203.0.113.7:9000,[2001:db8::7]:9000"
        );
    }

    #[test]
    fn an_address_no_sender_can_dial_is_refused() {
        let listen: Vec<SocketAddr> = vec!["10.0.0.1:9000".parse().unwrap()];
        for bad in [
            "0.0.0.0:9000",
            "203.0.113.7:0",
            "proxy.example:9000",
            "[::]:9000",
        ] {
            let e = with_advertise(&[bad]).advertised(&listen).unwrap_err();
            assert!(e.downcast_ref::<UsageError>().is_some(), "{bad}: {e:#}");
        }
        let wildcard: Vec<SocketAddr> = vec!["0.0.0.0:9000".parse().unwrap()];
        let e = with_advertise(&[]).advertised(&wildcard).unwrap_err();
        assert!(e.to_string().contains("--advertise"), "{e:#}");
    }

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
