//! Parsers for command-line values: durations (`10s`, `500ms`), byte sizes
//! (`64KiB`, `1MiB`, `65536`) and UDP addresses (`udp://HOST:PORT`); and the
//! `--idle-timeout` option `send` and `recv` share.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Args;
use surelink::ProtocolConfig;

/// How long a silent peer is waited for (`send` and `recv`).
#[derive(Debug, Clone, Args)]
pub struct IdleTimeoutArgs {
    /// End the connection when nothing at all was heard from the peer for this long (a
    /// link cut, a dead peer). Raise it on both sides to ride out longer outages.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}

impl IdleTimeoutArgs {
    /// Sets the idle timeout in `config`.
    pub fn apply(&self, config: &mut ProtocolConfig) -> anyhow::Result<()> {
        if self.idle_timeout.is_zero() {
            anyhow::bail!(crate::exit::UsageError(
                "--idle-timeout must be positive".into()
            ));
        }
        config.idle_timeout = self.idle_timeout;
        Ok(())
    }
}

/// How many driver tasks a listening endpoint runs (`recv`, `perf server`).
#[derive(Debug, Clone, Args)]
pub struct DriversArgs {
    /// Driver tasks the endpoint spreads its connections over, each on a core
    /// of its own when the machine has them (default: one per core, at most 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub drivers: Option<u16>,
}

impl DriversArgs {
    /// Sets the number of drivers in `config` if one was given.
    pub fn apply(&self, config: &mut surelink::EndpointConfig) {
        if let Some(drivers) = self.drivers {
            config.drivers = usize::from(drivers);
        }
    }
}

/// Parses a duration: a number followed by `ns`, `us`, `ms`, `s`, `m` or `h`
/// (a bare number means seconds). Fractions are allowed: `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 10s, 500ms, 1.5m"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ns, us, ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale)
        .map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Parses a byte count: a whole number with an optional suffix. `K`, `KiB`
/// = 1024; `M`, `MiB` = 1024²; `G`, `GiB` = 1024³; `KB`, `MB`, `GB` are decimal.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 65536, 64KiB, 1MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("invalid size unit {other:?} in {text:?}")),
    };
    value
        .checked_mul(scale)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// A `HOST:PORT` with an optional `udp://` scheme, resolved when used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort(pub String);

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `HOST:PORT` or `udp://HOST:PORT` (the scheme is optional).
pub fn parse_host_port(text: &str) -> Result<HostPort, String> {
    let rest = text.strip_prefix("udp://").unwrap_or(text);
    if rest.contains("://") {
        return Err(format!(
            "unsupported scheme in {text:?}: use udp://HOST:PORT"
        ));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(HostPort(rest.to_owned()))
        }
        _ => Err(format!("invalid address {text:?}: expected HOST:PORT")),
    }
}

impl HostPort {
    /// Resolves to the first address the name maps to.
    pub async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        tokio::net::lookup_host(self.0.as_str())
            .await
            .with_context(|| format!("cannot resolve {}", self.0))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", self.0))
    }
}

/// The wildcard address of the same family as `remote`, port 0.
pub fn wildcard_for(remote: SocketAddr) -> SocketAddr {
    if remote.is_ipv6() {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0u8; 4], 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct IdleOnly {
        #[command(flatten)]
        idle: IdleTimeoutArgs,
    }

    #[test]
    fn the_documented_idle_timeout_default_is_the_protocols() {
        let parsed = IdleOnly::try_parse_from(["x"]).expect("no arguments");
        assert_eq!(
            parsed.idle.idle_timeout,
            ProtocolConfig::default().idle_timeout
        );
        let parsed = IdleOnly::try_parse_from(["x", "--idle-timeout", "1m"]).expect("1m");
        let mut config = ProtocolConfig::default();
        parsed.idle.apply(&mut config).expect("positive");
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        let zero = IdleOnly::try_parse_from(["x", "--idle-timeout", "0s"]).expect("0s");
        assert!(zero.idle.apply(&mut config).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1XB").is_err());
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            parse_host_port("udp://127.0.0.1:9000"),
            Ok(HostPort("127.0.0.1:9000".into()))
        );
        assert_eq!(
            parse_host_port("localhost:1"),
            Ok(HostPort("localhost:1".into()))
        );
        assert_eq!(parse_host_port("[::1]:5"), Ok(HostPort("[::1]:5".into())));
        assert!(parse_host_port("tcp://a:1").is_err());
        assert!(parse_host_port("nohost").is_err());
        assert!(parse_host_port("a:99999").is_err());
    }
}
