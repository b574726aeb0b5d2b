//! What an impairer does: [`ImpairConfig`].
//!
//! Plain data, checked by [`ImpairConfig::validate`] when
//! [`Impairer::start`](super::Impairer::start) is called, so a bad
//! configuration is an error and never a panic.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use surelink_netem::{LinkConfig, MAX_DURATION};

use crate::DEFAULT_SOCKET_BUFFER_SIZE;

/// Default bound on the number of client flows tracked at once.
pub const DEFAULT_MAX_FLOWS: usize = 1024;

/// Default time after which a flow with no traffic in either direction (and
/// nothing in flight) is forgotten.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of an [`Impairer`](super::Impairer).
///
/// The struct is `#[non_exhaustive]`: start from [`ImpairConfig::new`] and
/// set fields (they are public) or use the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use surelink::impair::{ImpairConfig, LinkConfig};
///
/// let config = ImpairConfig::new("127.0.0.1:9000".parse().unwrap(), "127.0.0.1:9001".parse().unwrap())
///     .with_upstream("loss=5%,delay=10ms".parse().unwrap())
///     .with_downstream(LinkConfig::clean().with_delay(Duration::from_millis(10)))
///     .with_seed(7);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ImpairConfig {
    /// Where clients send their datagrams (port 0: any free port; see
    /// [`ImpairHandle::local_addr`](super::ImpairHandle::local_addr)).
    pub listen: SocketAddr,
    /// Where datagrams are forwarded to; replies from it go back to the
    /// client that caused them.
    pub target: SocketAddr,
    /// Impairments of the client → target direction.
    pub upstream: LinkConfig,
    /// Impairments of the target → client direction.
    pub downstream: LinkConfig,
    /// Seed of every random decision; each direction of each flow draws from
    /// its own stream derived from it and the flow's index (default 1).
    pub seed: u64,
    /// How many client flows are tracked at once (default
    /// [`DEFAULT_MAX_FLOWS`]); datagrams from further clients are dropped and
    /// counted in [`ImpairStats::flows_refused`](super::ImpairStats::flows_refused).
    pub max_flows: usize,
    /// How long a flow may see no traffic before it is forgotten and its
    /// upstream socket closed (default [`DEFAULT_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Bytes requested for each socket's kernel send and receive buffers
    /// (default [`DEFAULT_SOCKET_BUFFER_SIZE`]; 0 keeps the system default).
    pub socket_buffer_size: usize,
}

impl ImpairConfig {
    /// Forwards from `listen` to `target` without impairment, with seed 1 and
    /// default limits.
    pub fn new(listen: SocketAddr, target: SocketAddr) -> Self {
        Self {
            listen,
            target,
            upstream: LinkConfig::clean(),
            downstream: LinkConfig::clean(),
            seed: 1,
            max_flows: DEFAULT_MAX_FLOWS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            socket_buffer_size: DEFAULT_SOCKET_BUFFER_SIZE,
        }
    }

    /// Sets the client → target impairments.
    pub fn with_upstream(mut self, upstream: LinkConfig) -> Self {
        self.upstream = upstream;
        self
    }

    /// Sets the target → client impairments.
    pub fn with_downstream(mut self, downstream: LinkConfig) -> Self {
        self.downstream = downstream;
        self
    }

    /// Sets the same impairments in both directions (each direction still
    /// draws its own random decisions).
    pub fn with_both(mut self, link: LinkConfig) -> Self {
        self.upstream = link.clone();
        self.downstream = link;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the bound on tracked flows.
    pub fn with_max_flows(mut self, max_flows: usize) -> Self {
        self.max_flows = max_flows;
        self
    }

    /// Sets the idle timeout of flows.
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sets the kernel buffer size requested for each socket.
    pub fn with_socket_buffer_size(mut self, bytes: usize) -> Self {
        self.socket_buffer_size = bytes;
        self
    }

    /// Checks both link configurations, that `max_flows` is not zero and
    /// that `idle_timeout` is in `(0, MAX_DURATION]`. Errors are
    /// [`io::ErrorKind::InvalidInput`] with a message naming the setting.
    pub fn validate(&self) -> io::Result<()> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        self.upstream
            .validate()
            .map_err(|e| invalid(format!("upstream impairment: {e}")))?;
        self.downstream
            .validate()
            .map_err(|e| invalid(format!("downstream impairment: {e}")))?;
        if self.max_flows == 0 {
            return Err(invalid("max_flows must be at least 1".to_owned()));
        }
        if self.idle_timeout.is_zero() || self.idle_timeout > MAX_DURATION {
            return Err(invalid(format!(
                "idle_timeout must be greater than zero and at most {MAX_DURATION:?}, got {:?}",
                self.idle_timeout
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn defaults_and_builders() {
        let c = ImpairConfig::new(addr(1), addr(2));
        assert!(c.validate().is_ok());
        assert_eq!(c.seed, 1);
        assert_eq!(c.max_flows, DEFAULT_MAX_FLOWS);
        let link = LinkConfig::clean().with_loss(0.5);
        let c = c.with_both(link.clone()).with_seed(9).with_max_flows(3);
        assert_eq!(c.upstream, link);
        assert_eq!(c.downstream, link);
        assert_eq!((c.seed, c.max_flows), (9, 3));
    }

    #[test]
    fn validation_names_the_setting() {
        let base = ImpairConfig::new(addr(1), addr(2));
        let err = base
            .clone()
            .with_downstream(LinkConfig::clean().with_loss(2.0))
            .validate()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().starts_with("downstream impairment:"),
            "{err}"
        );
        assert!(base.clone().with_max_flows(0).validate().is_err());
        assert!(base
            .clone()
            .with_idle_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(base.with_idle_timeout(Duration::MAX).validate().is_err());
    }
}
