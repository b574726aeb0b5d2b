//! Demultiplexing datagrams to connections, and creating connections.
//!
//! An [`Endpoint`] owns no socket either. The caller hands it each datagram
//! that arrived on its socket; the endpoint says which connection it belongs to
//! ([`DatagramEvent::Known`]), hands over a newly accepted connection
//! ([`DatagramEvent::New`]), or drops it with a reason. Client Initial packets
//! are routed by (source address, client connection id); every other packet by
//! the destination connection id the endpoint issued.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Config, ConfigError, MIN_DATAGRAM_SIZE};
use crate::conn::Connection;
use crate::wire::{Frame, FrameIter, Header, PacketKind, Reader};

/// Identifies a connection within its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub u64);

/// What to do with a datagram.
#[derive(Debug)]
#[non_exhaustive]
pub enum DatagramEvent {
    /// It belongs to this existing connection: pass it to `handle_datagram`.
    Known(ConnectionHandle),
    /// A new connection was accepted; pass the datagram to its `handle_datagram`.
    New(ConnectionHandle, Box<Connection>),
    /// Dropped, for this reason.
    Dropped(DropReason),
}

/// Why the endpoint dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a surelink packet of a version we speak.
    Malformed,
    /// No connection has this id.
    UnknownConnection,
    /// An Initial that is too small or lacks CONNECT.
    BadInitial,
    /// The endpoint does not accept connections, or is at its limit.
    Refused,
}

/// Endpoint-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Datagrams that were not surelink packets.
    pub malformed: u64,
    /// Datagrams for unknown connection ids.
    pub unknown_connection: u64,
    /// Initials that were refused or invalid.
    pub refused: u64,
    /// Connections accepted.
    pub accepted: u64,
}

/// Routes datagrams and mints connections.
#[derive(Debug)]
pub struct Endpoint {
    config: Arc<Config>,
    rng: ChaCha8Rng,
    accept: bool,
    by_cid: HashMap<u64, ConnectionHandle>,
    initials: HashMap<(SocketAddr, u64), ConnectionHandle>,
    cids: HashMap<ConnectionHandle, (u64, Option<(SocketAddr, u64)>)>,
    next_handle: u64,
    stats: EndpointStats,
}

impl Endpoint {
    /// An endpoint with `config`, connection ids drawn from a generator seeded with
    /// `seed`; it accepts incoming connections when `accept` is true.
    pub fn new(config: Config, seed: u64, accept: bool) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config: Arc::new(config),
            rng: ChaCha8Rng::seed_from_u64(seed),
            accept,
            by_cid: HashMap::new(),
            initials: HashMap::new(),
            cids: HashMap::new(),
            next_handle: 0,
            stats: EndpointStats::default(),
        })
    }

    /// The endpoint's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.cids.len()
    }

    fn fresh_cid(&mut self) -> u64 {
        loop {
            let cid = self.rng.next_u64();
            if cid != 0 && !self.by_cid.contains_key(&cid) {
                return cid;
            }
        }
    }

    fn register(&mut self, cid: u64, initial: Option<(SocketAddr, u64)>) -> ConnectionHandle {
        let h = ConnectionHandle(self.next_handle);
        self.next_handle += 1;
        self.by_cid.insert(cid, h);
        if let Some(key) = initial {
            self.initials.insert(key, h);
        }
        self.cids.insert(h, (cid, initial));
        h
    }

    /// Starts a connection to `remote`.
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> (ConnectionHandle, Connection) {
        let cid = self.fresh_cid();
        let h = self.register(cid, None);
        (h, Connection::client(self.config.clone(), cid, remote, now))
    }

    /// Routes one datagram from `remote`.
    pub fn handle(&mut self, now: Instant, remote: SocketAddr, datagram: &[u8]) -> DatagramEvent {
        let mut r = Reader::new(datagram);
        let Ok(header) = Header::decode(&mut r) else {
            self.stats.malformed += 1;
            return DatagramEvent::Dropped(DropReason::Malformed);
        };
        if header.kind != PacketKind::Initial {
            return match self.by_cid.get(&header.dcid) {
                Some(&h) => DatagramEvent::Known(h),
                None => {
                    self.stats.unknown_connection += 1;
                    DatagramEvent::Dropped(DropReason::UnknownConnection)
                }
            };
        }
        if let Some(&h) = self.initials.get(&(remote, header.dcid)) {
            return DatagramEvent::Known(h);
        }
        if !self.accept || self.cids.len() >= self.config.max_connections {
            self.stats.refused += 1;
            return DatagramEvent::Dropped(DropReason::Refused);
        }
        let payload = &datagram[datagram.len() - r.remaining()..];
        let has_connect = FrameIter::new(payload)
            .map_while(Result::ok)
            .any(|f| matches!(f, Frame::Connect(_)));
        if datagram.len() < MIN_DATAGRAM_SIZE || !has_connect {
            self.stats.refused += 1;
            return DatagramEvent::Dropped(DropReason::BadInitial);
        }
        let cid = self.fresh_cid();
        let h = self.register(cid, Some((remote, header.dcid)));
        self.stats.accepted += 1;
        let conn = Connection::server(self.config.clone(), cid, header.dcid, remote, now);
        DatagramEvent::New(h, Box::new(conn))
    }

    /// Forgets a connection that is drained (or abandoned).
    pub fn forget(&mut self, h: ConnectionHandle) {
        if let Some((cid, initial)) = self.cids.remove(&h) {
            self.by_cid.remove(&cid);
            if let Some(key) = initial {
                self.initials.remove(&key);
            }
        }
    }
}
