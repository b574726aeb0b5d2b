//! The sans-IO protocol core of surelink.
//!
//! Nothing here opens a socket, reads a clock or draws OS randomness: time
//! (`now: Instant`) and seeds are inputs. An [`Endpoint`] routes datagrams and
//! creates [`Connection`]s; a connection is fed datagrams and timeouts and
//! polled for datagrams to send, messages received and events. The tokio
//! runtime in the `surelink` crate drives it over real sockets; the tests drive
//! it over a simulated, impaired network on a virtual clock.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod batch;
pub mod clock;
pub mod config;
pub mod conn;
pub mod crypto;
pub mod endpoint;
pub mod fec;
pub mod merge;
pub mod range_set;
pub mod stats_schema;
pub mod wire;

pub use batch::{MessageBatch, ReceivedBatch};
pub use config::{Config, ConfigError};
pub use conn::{
    close_code, Connection, ConnectionError, ConnectionStats, Event, Message, MessageBytes,
    SendError, Side, Transmit,
};
pub use crypto::{CryptoConfig, Identity, PublicKey, Security};
pub use endpoint::{
    shard_route, ConnectionHandle, DatagramEvent, DropReason, Endpoint, EndpointStats, Response,
    Seed, ShardRoute, RESET_PACKET_LEN,
};
