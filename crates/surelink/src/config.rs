//! Settings of an [`Endpoint`](crate::Endpoint): the protocol core's
//! [`ProtocolConfig`] plus what only the runtime knows about (connect timeout,
//! socket buffer sizes, batched I/O, driver tasks).
//!
//! ```
//! use std::time::Duration;
//! let config = surelink::EndpointConfig::default()
//!     .with_connect_timeout(Duration::from_secs(3));
//! assert_eq!(config.connect_timeout, Duration::from_secs(3));
//! ```

use std::time::Duration;

use crate::ProtocolConfig;

/// Default time [`Endpoint::connect`](crate::Endpoint::connect) waits for the handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default size requested for the socket's kernel send and receive buffers (8 MiB).
pub const DEFAULT_SOCKET_BUFFER_SIZE: usize = 8 << 20;

/// Most driver tasks [`EndpointConfig::drivers`] = 0 picks (one per core up to this).
pub const MAX_AUTOMATIC_DRIVERS: usize = 4;

/// Most driver tasks an endpoint runs, whatever [`EndpointConfig::drivers`] asks.
pub const MAX_DRIVERS: usize = 64;

/// Settings of an endpoint and of every connection it makes or accepts.
///
/// The struct is `#[non_exhaustive]`: start from [`EndpointConfig::default`] and
/// set fields (they are public) or use the `with_*` methods.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Settings of the protocol core (message and window sizes, timers).
    pub protocol: ProtocolConfig,
    /// How long [`Endpoint::connect`](crate::Endpoint::connect) waits for the
    /// handshake before failing with [`ConnectError::TimedOut`](crate::ConnectError::TimedOut)
    /// (default 10 s).
    pub connect_timeout: Duration,
    /// Bytes requested for the socket's `SO_RCVBUF` and `SO_SNDBUF` (default 8 MiB).
    /// The kernel may grant less (on Linux, up to `net.core.rmem_max` /
    /// `net.core.wmem_max`); a refusal is logged, not an error.
    pub socket_buffer_size: usize,
    /// Send and receive several datagrams per system call where the
    /// operating system allows it (default on): on Linux UDP GSO for runs of
    /// equal-size datagrams to one destination, GRO and `recvmmsg` on
    /// receive (through the `quinn-udp` crate). If the kernel refuses
    /// segmentation offload the endpoint falls back to one datagram per
    /// call by itself; off, it always makes one call per datagram. The
    /// simulated network ignores it.
    pub batched_io: bool,
    /// Microseconds added to the host's wall clock for the timestamps this
    /// endpoint's connections send (default 0): its peers' clock estimates
    /// then see a host whose clock is that far ahead (or behind, negative).
    /// For demonstrations and tests of clock synchronisation on one host.
    pub clock_offset_us: i64,
    /// Driver tasks (shards) the endpoint spreads its connections over, each
    /// with its own sockets bound to the same addresses (`SO_REUSEPORT`; the
    /// kernel spreads peers over them), its own lock and its own
    /// connections, so an endpoint can use that many cores. 0 (the default)
    /// picks one per available core, at most [`MAX_AUTOMATIC_DRIVERS`], on
    /// an endpoint that accepts connections, and one on a client endpoint
    /// (whose few connections gain nothing from more). Linux only: elsewhere,
    /// on the simulated network and over sockets the caller made
    /// ([`Endpoint::from_std_socket`](crate::Endpoint::from_std_socket)),
    /// an endpoint has one driver. The connection limits of the protocol
    /// settings (`max_connections`, `retry_threshold`) are split evenly
    /// over the drivers.
    pub drivers: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            protocol: ProtocolConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            socket_buffer_size: DEFAULT_SOCKET_BUFFER_SIZE,
            batched_io: true,
            clock_offset_us: 0,
            drivers: 0,
        }
    }
}

impl EndpointConfig {
    /// Replaces the protocol settings.
    pub fn with_protocol(mut self, protocol: ProtocolConfig) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the requested socket buffer size.
    pub fn with_socket_buffer_size(mut self, bytes: usize) -> Self {
        self.socket_buffer_size = bytes;
        self
    }

    /// Sets the offset of this endpoint's clock from the host's wall clock,
    /// µs (see [`clock_offset_us`](Self::clock_offset_us)).
    pub fn with_clock_offset_us(mut self, offset_us: i64) -> Self {
        self.clock_offset_us = offset_us;
        self
    }

    /// Sets the number of driver tasks (0: automatic; see [`drivers`](Self::drivers)).
    pub fn with_drivers(mut self, drivers: usize) -> Self {
        self.drivers = drivers;
        self
    }

    /// The number of driver tasks an endpoint with these settings runs over
    /// UDP sockets: [`drivers`](Self::drivers), or when 0 one per available
    /// core up to [`MAX_AUTOMATIC_DRIVERS`] if it `accepts` connections and
    /// one otherwise; always one outside Linux, at most [`MAX_DRIVERS`].
    pub fn driver_count(&self, accepts: bool) -> usize {
        if !cfg!(target_os = "linux") {
            return 1;
        }
        match self.drivers {
            0 if accepts => std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(MAX_AUTOMATIC_DRIVERS),
            0 => 1,
            n => n.min(MAX_DRIVERS),
        }
    }

    /// Turns batched I/O (GSO/GRO, `recvmmsg`) on or off.
    pub fn with_batched_io(mut self, batched: bool) -> Self {
        self.batched_io = batched;
        self
    }
}
