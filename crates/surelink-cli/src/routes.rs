//! `recv --to udp://… --route KEY=udp://HOST:PORT`: each sender's datagrams
//! to an address of its own, chosen by the sender's public key.
//!
//! A route names a sender by its full public key (64 hex digits, as
//! `surelink keygen` prints it and `send --key` uses it), never by the short
//! fingerprint, which is for humans to compare. A sender with a route gets its
//! datagrams sent to the route's address; every other sender's go to `--to`.
//! Routes are resolved once at start, each with a socket of its own address
//! family, so a bad address fails before anything is received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::bail;
use surelink::{Connection, PublicKey};
use tokio::net::UdpSocket;

use crate::args::{parse_host_port, wildcard_for, HostPort};
use crate::exit::UsageError;
use crate::keys::parse_public_key;

/// One `--route KEY=udp://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct Route {
    /// The sender's public key.
    pub key: PublicKey,
    /// Where its datagrams go.
    pub to: HostPort,
}

/// Parses `KEY=udp://HOST:PORT` (or `KEY=HOST:PORT`).
pub fn parse_route(text: &str) -> Result<Route, String> {
    let Some((key, to)) = text.split_once('=') else {
        return Err(format!(
            "invalid route {text:?}: expected KEY=udp://HOST:PORT (KEY: the sender's 64-hex public key)"
        ));
    };
    Ok(Route {
        key: parse_public_key(key)?,
        to: parse_host_port(to)?,
    })
}

/// A datagram destination: a socket and the address it sends to.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The socket the datagrams leave from.
    pub socket: Arc<UdpSocket>,
    /// Where they go.
    pub target: SocketAddr,
}

impl Destination {
    /// A destination with a socket of its own, bound to the wildcard address of
    /// `target`'s family.
    pub fn bind(target: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            socket: Arc::new(crate::net::bind_udp(wildcard_for(target))?),
            target,
        })
    }
}

/// Where each sender's datagrams go: its route, or the default.
#[derive(Debug, Clone)]
pub struct Routes {
    default: Destination,
    by_key: HashMap<PublicKey, Destination>,
}

impl Routes {
    /// Resolves `routes` and binds their sockets; two routes for one key are a
    /// usage error.
    pub async fn resolve(default: Destination, routes: &[Route]) -> anyhow::Result<Self> {
        let mut by_key = HashMap::new();
        for route in routes {
            if by_key.contains_key(&route.key) {
                bail!(UsageError(format!(
                    "two --route options for the sender with key {} (fingerprint {})",
                    route.key,
                    route.key.fingerprint()
                )));
            }
            let destination = Destination::bind(route.to.resolve().await?)?;
            by_key.insert(route.key, destination);
        }
        Ok(Self { default, by_key })
    }

    /// Where senders without a route go (`--to`).
    pub fn default_destination(&self) -> &Destination {
        &self.default
    }

    /// The destination of `conn`'s datagrams.
    pub fn for_connection(&self, conn: &Connection) -> &Destination {
        conn.peer_key()
            .and_then(|key| self.by_key.get(&key))
            .unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "1a2b3c4d5e6f7a8b1a2b3c4d5e6f7a8b1a2b3c4d5e6f7a8b1a2b3c4d5e6f7a8b";

    #[test]
    fn routes_parse_with_or_without_the_scheme() {
        let route = parse_route(&format!("{KEY}=udp://127.0.0.1:9000")).unwrap();
        assert_eq!(route.key, KEY.parse().unwrap());
        assert_eq!(route.to.0, "127.0.0.1:9000");
        let route = parse_route(&format!("{KEY}=[::1]:9000")).unwrap();
        assert_eq!(route.to.0, "[::1]:9000");
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        let err = parse_route("127.0.0.1:9000").unwrap_err();
        assert!(err.contains("KEY=udp://HOST:PORT"), "{err}");
        let err = parse_route("1a2b:3c4d:5e6f:7a8b=udp://127.0.0.1:9000").unwrap_err();
        assert!(err.contains("not the short fingerprint"), "{err}");
        let err = parse_route(&format!("{KEY}=srt://127.0.0.1:9000")).unwrap_err();
        assert!(err.contains("unsupported scheme"), "{err}");
    }

    #[tokio::test]
    async fn two_routes_for_one_key_are_refused() {
        let default = Destination::bind("127.0.0.1:9".parse().unwrap()).unwrap();
        let route = parse_route(&format!("{KEY}=udp://127.0.0.1:9000")).unwrap();
        let err = Routes::resolve(default, &[route.clone(), route])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("two --route options"), "{err}");
    }
}
