//! The sending side of message transfer: queued messages, fragments in flight,
//! and what must be retransmitted.
//!
//! A message gets a per-channel sequence number when queued. Fragments are cut
//! from the front of the queue as packets are built; each fragment in a packet
//! is remembered by the packet ([`Fragment`]). When a packet is acknowledged,
//! its fragments' byte ranges are marked acknowledged; when it is declared lost,
//! the byte ranges not yet acknowledged go to the retransmission queue and are
//! sent again in new packets (possibly split differently). A message leaves the
//! queue once all its bytes are acknowledged.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::config::MESSAGE_CREDIT_OVERHEAD;
use crate::range_set::RangeSet;

/// A piece of a message carried by one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Channel of the message.
    pub channel: u64,
    /// Sequence number of the message within its channel.
    pub seq: u64,
    /// Offset of `data` within the message.
    pub offset: u64,
    /// The fragment bytes (a slice of the message, no copy).
    pub data: Bytes,
    /// Total length of the message.
    pub msg_len: u64,
}

#[derive(Debug)]
struct Queued {
    channel: u64,
    seq: u64,
    data: Bytes,
    next_offset: usize,
}

#[derive(Debug)]
struct Unacked {
    len: u64,
    acked: RangeSet,
    data: Bytes,
}

/// Messages waiting to be sent, in flight, or to be retransmitted.
#[derive(Debug, Default)]
pub struct SendQueue {
    fresh: VecDeque<Queued>,
    retransmit: VecDeque<Fragment>,
    unacked: HashMap<(u64, u64), Unacked>,
    next_seq: HashMap<u64, u64>,
    /// Payload bytes queued and not yet acknowledged.
    buffered: u64,
    /// Flow-control credit consumed by messages whose first byte was sent.
    credit_used: u64,
    /// Messages fully acknowledged.
    messages_acked: u64,
    /// Fragments re-sent after a loss.
    retransmitted: u64,
    /// Payload bytes re-sent after a loss.
    retransmitted_bytes: u64,
}

impl SendQueue {
    /// Queues `data` on `channel`; returns its sequence number.
    pub fn push(&mut self, channel: u64, data: Bytes) -> u64 {
        let seq_slot = self.next_seq.entry(channel).or_insert(0);
        let seq = *seq_slot;
        *seq_slot += 1;
        self.buffered += data.len() as u64;
        self.unacked.insert(
            (channel, seq),
            Unacked {
                len: data.len() as u64,
                acked: RangeSet::new(),
                data: data.clone(),
            },
        );
        self.fresh.push_back(Queued {
            channel,
            seq,
            data,
            next_offset: 0,
        });
        seq
    }

    /// Payload bytes queued or in flight and not yet acknowledged.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// True when every queued message is fully acknowledged.
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// True when something is ready to go out (ignoring congestion control).
    pub fn has_sendable(&self, credit_limit: u64) -> bool {
        !self.retransmit.is_empty() || self.fresh_allowed(credit_limit)
    }

    fn fresh_allowed(&self, credit_limit: u64) -> bool {
        self.fresh.front().is_some_and(|q| {
            q.next_offset > 0
                || self.credit_used + q.data.len() as u64 + MESSAGE_CREDIT_OVERHEAD <= credit_limit
        })
    }

    /// Messages fully acknowledged so far.
    pub fn messages_acked(&self) -> u64 {
        self.messages_acked
    }

    /// Fragments queued for retransmission so far.
    pub fn retransmitted(&self) -> u64 {
        self.retransmitted
    }

    /// Payload bytes queued for retransmission so far.
    pub fn retransmitted_bytes(&self) -> u64 {
        self.retransmitted_bytes
    }

    /// Cuts the next fragment whose data fits in `max_data` bytes, given the
    /// framing overhead function `overhead(fragment without data) -> bytes`.
    /// Retransmissions go first; new messages only start within `credit_limit`.
    pub fn next_fragment(
        &mut self,
        space: usize,
        credit_limit: u64,
        overhead: impl Fn(u64, u64, u64, u64, usize) -> usize,
    ) -> Option<Fragment> {
        while let Some(mut f) = self.retransmit.pop_front() {
            // Skip what was acknowledged since the loss was declared.
            let Some(u) = self.unacked.get(&(f.channel, f.seq)) else {
                continue;
            };
            let range = f.offset..f.offset + f.data.len() as u64;
            if f.msg_len > 0 && u.acked.contains_range(&range) {
                continue;
            }
            let fixed = overhead(f.channel, f.seq, f.msg_len, f.offset, f.data.len());
            if fixed >= space {
                self.retransmit.push_front(f);
                return None;
            }
            let fit = space - fixed;
            if f.data.len() > fit {
                let rest = Fragment {
                    channel: f.channel,
                    seq: f.seq,
                    offset: f.offset + fit as u64,
                    data: f.data.slice(fit..),
                    msg_len: f.msg_len,
                };
                f.data.truncate(fit);
                self.retransmit.push_front(rest);
            }
            return Some(f);
        }
        if !self.fresh_allowed(credit_limit) {
            return None;
        }
        let q = self.fresh.front_mut()?;
        let msg_len = q.data.len() as u64;
        let offset = q.next_offset as u64;
        let left = q.data.len() - q.next_offset;
        let fixed = overhead(q.channel, q.seq, msg_len, offset, left);
        if fixed >= space && left > 0 || fixed > space {
            return None;
        }
        let take = left.min(space - fixed);
        if q.next_offset == 0 {
            self.credit_used += msg_len + MESSAGE_CREDIT_OVERHEAD;
        }
        let f = Fragment {
            channel: q.channel,
            seq: q.seq,
            offset,
            data: q.data.slice(q.next_offset..q.next_offset + take),
            msg_len,
        };
        q.next_offset += take;
        if q.next_offset == q.data.len() {
            self.fresh.pop_front();
        }
        Some(f)
    }

    /// The packet carrying `f` was acknowledged.
    pub fn on_acked(&mut self, f: &Fragment) {
        let key = (f.channel, f.seq);
        let Some(u) = self.unacked.get_mut(&key) else {
            return;
        };
        let newly = u.acked.insert(f.offset..f.offset + f.data.len() as u64);
        self.buffered -= newly;
        if u.acked.contains_range(&(0..u.len)) {
            self.unacked.remove(&key);
            self.messages_acked += 1;
        }
    }

    /// The packet carrying `f` was declared lost: queue its unacknowledged bytes again.
    pub fn on_lost(&mut self, f: Fragment) {
        let Some(u) = self.unacked.get(&(f.channel, f.seq)) else {
            return;
        };
        if f.msg_len == 0 {
            self.retransmitted += 1;
            self.retransmit.push_back(f);
            return;
        }
        for gap in u.acked.gaps_in(f.offset..f.offset + f.data.len() as u64) {
            self.retransmitted += 1;
            self.retransmitted_bytes += gap.end - gap.start;
            self.retransmit.push_back(Fragment {
                channel: f.channel,
                seq: f.seq,
                offset: gap.start,
                data: u.data.slice(gap.start as usize..gap.end as usize),
                msg_len: f.msg_len,
            });
        }
    }

    /// Drops everything (connection aborted).
    pub fn clear(&mut self) {
        self.fresh.clear();
        self.retransmit.clear();
        self.unacked.clear();
        self.buffered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_overhead(_: u64, _: u64, _: u64, _: u64, _: usize) -> usize {
        1
    }

    #[test]
    fn fragments_acks_and_retransmits() {
        let mut q = SendQueue::default();
        assert_eq!(q.push(0, Bytes::from(vec![7u8; 10])), 0);
        assert_eq!(q.push(0, Bytes::from_static(b"xy")), 1);
        assert_eq!(q.push(3, Bytes::new()), 0);
        assert_eq!(q.buffered(), 12);
        let a = q.next_fragment(5, u64::MAX, no_overhead).unwrap();
        let b = q.next_fragment(5, u64::MAX, no_overhead).unwrap();
        let c = q.next_fragment(5, u64::MAX, no_overhead).unwrap();
        assert_eq!((a.offset, a.data.len()), (0, 4));
        assert_eq!((b.offset, b.data.len()), (4, 4));
        assert_eq!((c.offset, c.data.len(), c.seq), (8, 2, 0));
        q.on_acked(&a);
        q.on_lost(b.clone());
        // Retransmission comes first and is split to fit.
        let r1 = q.next_fragment(3, u64::MAX, no_overhead).unwrap();
        assert_eq!((r1.offset, r1.data.len()), (4, 2));
        q.on_acked(&r1);
        q.on_acked(&b); // late ack of the "lost" packet: counted once
        let r2 = q.next_fragment(3, u64::MAX, no_overhead).unwrap();
        assert_eq!(r2.seq, 1, "rest of the retransmission was acked, skipped");
        q.on_acked(&c);
        assert_eq!(q.messages_acked(), 1);
        q.on_acked(&r2);
        let e = q.next_fragment(3, u64::MAX, no_overhead).unwrap();
        assert_eq!((e.channel, e.msg_len), (3, 0));
        q.on_acked(&e);
        assert!(q.is_empty());
        assert_eq!(q.buffered(), 0);
    }

    #[test]
    fn flow_control_holds_new_messages() {
        let mut q = SendQueue::default();
        q.push(0, Bytes::from(vec![0u8; 100]));
        assert!(q.next_fragment(1000, 50, no_overhead).is_none());
        assert!(!q.has_sendable(50));
        assert!(q
            .next_fragment(1000, 100 + MESSAGE_CREDIT_OVERHEAD, no_overhead)
            .is_some());
    }
}
