//! Shards: one endpoint's connections spread over several driver tasks.
//!
//! An endpoint with [`EndpointConfig::drivers`](crate::EndpointConfig::drivers)
//! above one runs that many *shards*. Each shard is a whole endpoint of its
//! own as far as the driver is concerned: a core endpoint, the connections
//! it made or accepted, its lock ([`Shared`](crate::state::Shared)), its
//! driver task, and its own sockets: one per listening address, bound with
//! `SO_REUSEPORT` to the same address as every other shard's, so the kernel
//! spreads incoming datagrams over the shards by a hash of their addresses.
//! Nothing on the data path is shared between shards.
//!
//! The kernel's choice is right for most datagrams (a client's Initial
//! creates its connection on the shard that received it, and the same
//! addresses keep hashing there) but not for all: a peer that migrates or
//! opens another path sends from a new address, and the answers to a
//! client connection land wherever the kernel hashes the server's address.
//! So each shard's core issues connection ids congruent to the shard's
//! index ([`surelink_proto::Endpoint::set_shard`]), and a driver that reads
//! a datagram belonging to another shard ([`surelink_proto::shard_route`])
//! hands it over: the datagram's buffer is moved into that shard's
//! [`Inbox`] and its driver woken. Stateless Resets, addressed to ids the
//! peer issued, go to every shard (a copy to each other shard).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use surelink_proto::ShardRoute;
use tokio::sync::Notify;

use bytes::BytesMut;

use crate::driver::Received;

/// Datagrams other shards' drivers read for this shard, waiting for its driver.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    datagrams: Mutex<Received>,
    /// The owning shard's driver wake-up (also its handles').
    pub(crate) wake: Arc<Notify>,
}

/// A driver's view of its endpoint's shards: which one it is, and every
/// shard's inbox.
#[derive(Debug)]
pub(crate) struct Router {
    index: usize,
    inboxes: Arc<[Inbox]>,
    /// Per shard, what this driver read for it in the current round.
    outgoing: Vec<Received>,
}

impl Router {
    /// The inboxes of `count` shards (at least one).
    pub(crate) fn inboxes(count: usize) -> Arc<[Inbox]> {
        (0..count.max(1)).map(|_| Inbox::default()).collect()
    }

    /// The router of shard `index` among `inboxes`.
    pub(crate) fn new(index: usize, inboxes: Arc<[Inbox]>) -> Self {
        let outgoing = (0..inboxes.len()).map(|_| Received::default()).collect();
        Self {
            index,
            inboxes,
            outgoing,
        }
    }

    /// Sorts one datagram this shard's driver read: into `own` if it belongs
    /// here, else aside for the shard that owns it (or for every shard).
    pub(crate) fn sort(
        &mut self,
        own: &mut Received,
        local: u16,
        from: SocketAddr,
        data: BytesMut,
    ) {
        match surelink_proto::shard_route(&data, self.inboxes.len()) {
            ShardRoute::Receiver => own.push(local, from, data),
            ShardRoute::Shard(shard) if shard == self.index => own.push(local, from, data),
            ShardRoute::Shard(shard) => self.outgoing[shard].push(local, from, data),
            ShardRoute::Every => {
                for (shard, out) in self.outgoing.iter_mut().enumerate() {
                    if shard != self.index {
                        out.push(local, from, data.clone());
                    }
                }
                own.push(local, from, data);
            }
        }
    }

    /// Hands what [`sort`](Router::sort) set aside to the shards it belongs
    /// to and wakes their drivers; returns how many datagrams were handed over.
    pub(crate) fn hand_over(&mut self) -> usize {
        let mut moved = 0;
        for (shard, out) in self.outgoing.iter_mut().enumerate() {
            if out.is_empty() {
                continue;
            }
            moved += out.len();
            let inbox = &self.inboxes[shard];
            inbox
                .datagrams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .append(out);
            inbox.wake.notify_one();
        }
        moved
    }

    /// Moves what other shards handed to this one into `own`.
    pub(crate) fn take_handed(&self, own: &mut Received) {
        if self.inboxes.len() > 1 {
            own.append(
                &mut self.inboxes[self.index]
                    .datagrams
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use surelink_proto::wire::{Header, PacketKind};

    use super::*;

    fn packet(kind: PacketKind, dcid: u64) -> Vec<u8> {
        let mut data = Vec::new();
        Header {
            kind,
            flags: 0,
            dcid,
            pn: 0,
        }
        .encode(&mut data);
        data.extend_from_slice(b"payload");
        data
    }

    fn contents(d: &mut Received) -> Vec<Vec<u8>> {
        d.drain().map(|(_, data)| data.to_vec()).collect()
    }

    #[test]
    fn datagrams_reach_the_shard_that_owns_their_id_and_resets_reach_all() {
        let inboxes = Router::inboxes(3);
        let mut router = Router::new(1, inboxes.clone());
        let from = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut own = Received::default();
        let initial = packet(PacketKind::Initial, 5);
        let mine = packet(PacketKind::Data, 4);
        let theirs = packet(PacketKind::Data, 5);
        let reset = packet(PacketKind::Reset, 6);
        for d in [&initial, &mine, &theirs, &reset] {
            router.sort(&mut own, 0, from, BytesMut::from(&d[..]));
        }
        assert_eq!(
            router.hand_over(),
            3,
            "one to shard 2, the Reset to 0 and 2"
        );
        assert_eq!(contents(&mut own), [initial, mine, reset.clone()]);
        let mut shard0 = Received::default();
        Router::new(0, inboxes.clone()).take_handed(&mut shard0);
        assert_eq!(contents(&mut shard0), std::slice::from_ref(&reset));
        let mut shard2 = Received::default();
        Router::new(2, inboxes.clone()).take_handed(&mut shard2);
        assert_eq!(contents(&mut shard2), [theirs, reset]);
        let mut again = Received::default();
        Router::new(2, inboxes).take_handed(&mut again);
        assert!(again.is_empty(), "taken once");
    }
}
