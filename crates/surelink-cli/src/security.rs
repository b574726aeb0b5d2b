//! The security options of `send` and `recv`, and what the two commands tell
//! the user about keys: our own key, the peer's fingerprint (trust on first
//! use), refused handshakes, and errors that name the refusal instead of a
//! generic failure.
//!
//! ```text
//! recv: --key FILE  --allow FILE  --psk HEX|@FILE  --insecure-plaintext
//! send: --key FILE  --peer-key HEX  --psk HEX|@FILE  --insecure-plaintext
//! ```
//!
//! With no keys, each side makes an ephemeral identity: the connection is
//! still encrypted, and each side prints the other's fingerprint so that a
//! person can compare them (the receiver prints its own key when it starts).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use surelink::{
    ConnectError, Connection, ConnectionError, CryptoConfig, Endpoint, HandshakeEvent, PublicKey,
    Security,
};

use crate::keys::{parse_psk, parse_public_key, read_allow_list, read_identity, PskSource};

/// Printed on stderr whenever a command runs with `--insecure-plaintext`.
pub const PLAINTEXT_WARNING: &str = "\
surelink: WARNING: --insecure-plaintext: encryption and authentication are OFF.
surelink: WARNING: anyone on the network path can read, change and inject this traffic,
surelink: WARNING: and the peer is not authenticated. Use it for debugging only.";

/// Options both commands share.
#[derive(Debug, Clone, Args)]
pub struct CommonSecurityArgs {
    /// Our identity: a private key file written by `surelink keygen` (must not be
    /// accessible by group or others). Default: a new ephemeral key per run.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// A 32-byte pre-shared key both sides must hold, as 64 hex digits or @FILE
    /// (prefer @FILE: command lines are visible to other local users).
    #[arg(long, value_name = "HEX|@FILE", value_parser = parse_psk)]
    pub psk: Option<PskSource>,
    /// Turn off encryption and authentication entirely (debugging only; both
    /// sides must use it, and a warning is printed every time).
    #[arg(long, conflicts_with_all = ["key", "psk"])]
    pub insecure_plaintext: bool,
}

/// Security options of `surelink send`.
#[derive(Debug, Clone, Args)]
pub struct SendSecurityArgs {
    #[command(flatten)]
    pub common: CommonSecurityArgs,
    /// The receiver's public key (64 hex digits, from `surelink keygen` or the
    /// receiver's startup line): the handshake fails unless the receiver holds it.
    #[arg(long, value_name = "HEX", value_parser = parse_public_key, conflicts_with = "insecure_plaintext")]
    pub peer_key: Option<PublicKey>,
}

/// Security options of `surelink recv`.
#[derive(Debug, Clone, Args)]
pub struct RecvSecurityArgs {
    #[command(flatten)]
    pub common: CommonSecurityArgs,
    /// Accept only senders whose public key is in this file (one 64-hex key per
    /// line, `#` comments). Default: any sender (its fingerprint is printed).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure_plaintext")]
    pub allow: Option<PathBuf>,
}

impl CommonSecurityArgs {
    /// The security mode, loading key files; prints the plaintext warning.
    fn security(
        &self,
        peer_key: Option<PublicKey>,
        allow: Option<Vec<PublicKey>>,
    ) -> anyhow::Result<Security> {
        if self.insecure_plaintext {
            eprintln!("{PLAINTEXT_WARNING}");
            return Ok(Security::InsecurePlaintext);
        }
        Ok(Security::Encrypted(CryptoConfig {
            identity: self.key.as_deref().map(read_identity).transpose()?,
            psk: self.psk.as_ref().map(PskSource::load).transpose()?,
            peer_key,
            allow,
            ..CryptoConfig::default()
        }))
    }
}

impl SendSecurityArgs {
    /// The sender's security mode; a key file that cannot be used is a usage error.
    pub fn security(&self) -> anyhow::Result<Security> {
        self.common.security(self.peer_key, None).map_err(usage)
    }
}

impl RecvSecurityArgs {
    /// The receiver's security mode; a key or allow-list file that cannot be
    /// used is a usage error.
    pub fn security(&self) -> anyhow::Result<Security> {
        let allow = self
            .allow
            .as_deref()
            .map(read_allow_list)
            .transpose()
            .map_err(usage)?;
        self.common.security(None, allow).map_err(usage)
    }
}

/// A key file named on the command line that cannot be used: the error, as a
/// usage error (exit status 2).
fn usage(error: anyhow::Error) -> anyhow::Error {
    crate::exit::UsageError(crate::exit::render(&error)).into()
}

/// The receiver's startup line about its key, so senders can pin it.
pub fn announce_receiver(endpoint: &Endpoint) {
    match endpoint.public_key() {
        Some(key) => eprintln!(
            "surelink recv: public key {key} (fingerprint {})",
            key.fingerprint()
        ),
        None => eprintln!("surelink recv: insecure plaintext mode: no key"),
    }
}

/// Most refusal lines printed per second; a flood of refused handshakes
/// (e.g. from spoofed addresses) is summarised instead of flooding the log.
const REFUSAL_LINES_PER_SECOND: u32 = 20;

/// Prints every handshake outcome of the receiver's endpoint on stderr:
/// accepted connections with the sender's fingerprint, and refusals (at most
/// [`REFUSAL_LINES_PER_SECOND`]; the rest are counted in a summary line).
/// The task holds the endpoint open until it is aborted (the handle) or the
/// process exits.
pub fn spawn_handshake_log(endpoint: &Endpoint) -> tokio::task::JoinHandle<()> {
    let endpoint = endpoint.clone();
    tokio::spawn(async move {
        let mut window = Instant::now();
        let mut shown = 0u32;
        let mut hidden = 0u64;
        let mut dropped = 0;
        while let Some(event) = endpoint.next_handshake_event().await {
            if window.elapsed() >= Duration::from_secs(1) {
                window = Instant::now();
                shown = 0;
            }
            let now_dropped = endpoint.stats().handshake_events_dropped;
            hidden += now_dropped - dropped;
            dropped = now_dropped;
            if matches!(event, HandshakeEvent::Accepted { .. }) {
                eprintln!("surelink recv: {event}");
                continue;
            }
            if shown >= REFUSAL_LINES_PER_SECOND {
                hidden += 1;
                continue;
            }
            if hidden > 0 {
                eprintln!("surelink recv: ({hidden} more refused connection attempts not shown)");
                hidden = 0;
            }
            shown += 1;
            eprintln!("surelink recv: {event}");
        }
    })
}

/// The sender's line about the receiver's key once connected.
pub fn announce_server(conn: &Connection, pinned: bool) {
    let remote = conn.remote_addr();
    match conn.peer_key() {
        Some(key) if pinned => eprintln!(
            "surelink send: receiver {remote}: server key fingerprint {} (matches --peer-key)",
            key.fingerprint()
        ),
        Some(key) => eprintln!(
            "surelink send: receiver {remote}: server key fingerprint {} \
             (not verified: compare it with the receiver's, or pin it with --peer-key {key})",
            key.fingerprint()
        ),
        None => eprintln!(
            "surelink send: receiver {remote}: insecure plaintext mode (not authenticated)"
        ),
    }
}

/// A clear error for a failed `connect`: the refusal itself, not a generic failure.
pub fn connect_error(target: &impl std::fmt::Display, error: ConnectError) -> anyhow::Error {
    match &error {
        ConnectError::Failed { error: e, .. } => match handshake_error(e) {
            Some(message) => crate::exit::Refused(message).into(),
            None => anyhow::Error::new(error).context(format!("cannot connect to {target}")),
        },
        _ => anyhow::Error::new(error).context(format!("cannot connect to {target}")),
    }
}

/// The message for an error that ended the handshake, if it is one.
pub fn handshake_error(error: &ConnectionError) -> Option<String> {
    match error {
        ConnectionError::PeerKeyMismatch { expected, got } => Some(format!(
            "server key mismatch: expected {}, got {} (the receiver's key is {got})",
            expected.fingerprint(),
            got.fingerprint()
        )),
        ConnectionError::Rejected { code, reason } => Some(format!(
            "the receiver refused the connection: {reason} (code {code})"
        )),
        ConnectionError::HandshakeFailed(reason) => {
            Some(format!("the handshake with the receiver failed: {reason}"))
        }
        _ => None,
    }
}
