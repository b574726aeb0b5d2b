//! surelink: fault-tolerant, low-latency, reliable messaging over UDP.
//!
//! This crate is the tokio runtime around the sans-IO protocol core
//! ([`surelink_proto`], re-exported as [`proto`]). An [`Endpoint`] owns a UDP
//! socket and a driver task that feeds the core datagrams and timeouts and sends
//! what it produces (or several, one per core, each with its share of the
//! connections: [`EndpointConfig::drivers`]); [`Connection`] handles let the application send and receive
//! whole messages, in order, exactly once, with back-pressure.
//!
//! ```no_run
//! use surelink::{Endpoint, EndpointConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Server: accept a connection and print what arrives.
//! let server = Endpoint::bind("127.0.0.1:0".parse()?, EndpointConfig::default())?;
//! let addr = server.local_addr();
//! tokio::spawn(async move {
//!     while let Some(conn) = server.accept().await {
//!         while let Ok(Some(msg)) = conn.recv().await {
//!             println!("{} bytes", msg.len());
//!         }
//!     }
//! });
//!
//! // Client: connect, send, close gracefully (returns once everything was acknowledged).
//! let client = Endpoint::client("127.0.0.1:0".parse()?)?;
//! let conn = client.connect(addr).await?;
//! conn.send(bytes::Bytes::from_static(b"hello")).await?;
//! conn.close().await?;
//! # Ok(()) }
//! ```
//!
//! To test an application over surelink deterministically, on virtual time and
//! without sockets, run its endpoints on a simulated network: see [`sim`].
//!
//! See `docs/RUNTIME.md` in the repository for how the driver works and why.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod connection;
mod driver;
mod endpoint;
mod error;
mod handshake_event;
pub mod impair;
mod precise_timer;
mod shard;
pub mod sim;
mod socket;
mod state;
mod util;

pub use bytes::Bytes;
pub use surelink_proto as proto;
pub use surelink_proto::clock::ClockEstimate;
pub use surelink_proto::conn::congestion::{CongestionControl, LiveParams};
pub use surelink_proto::conn::{PathId, PathMode, PathState, PathStats, SMALL_MESSAGE};
pub use surelink_proto::stats_schema;
pub use surelink_proto::wire::Delivery;
pub use surelink_proto::Event as ConnectionEvent;
pub use surelink_proto::{
    Config as ProtocolConfig, ConfigError, ConnectionError, ConnectionStats, CryptoConfig,
    Identity, Message, MessageBatch, MessageBytes, PublicKey, ReceivedBatch, Security,
};

pub use config::{
    EndpointConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_SOCKET_BUFFER_SIZE, MAX_AUTOMATIC_DRIVERS,
    MAX_DRIVERS,
};
pub use connection::Connection;
pub use endpoint::{Endpoint, EndpointStats};
pub use error::{BindError, CloseError, ConnectError, RecvError, SendError};
pub use handshake_event::{HandshakeEvent, HandshakeFailures, HANDSHAKE_EVENT_CAPACITY};
pub use state::EVENT_CAPACITY;
