//! Packets in flight, ordered by delivery time: [`DeliveryQueue`] and
//! [`Delivery`].
//!
//! A [`Link`](crate::Link) pushes every scheduled packet (and duplicate) here
//! with its delivery instant; [`Link::poll_delivery`](crate::Link::poll_delivery)
//! pops those that are due. Packets due at the same instant come out in the
//! order they were pushed, so ties are FIFO by send order.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A packet handed out by a link, with when it became deliverable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<P> {
    /// The instant the packet became deliverable (at or before the `now`
    /// it was polled with).
    pub at: Instant,
    /// The size the packet was sent with.
    pub size_bytes: usize,
    /// The payload.
    pub payload: P,
}

/// One scheduled packet; ordered so that the heap's maximum is the earliest
/// (then first pushed) packet.
#[derive(Debug, Clone)]
struct Entry<P> {
    at: Instant,
    seq: u64,
    size: usize,
    payload: P,
}

impl<P> PartialEq for Entry<P> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}

impl<P> Eq for Entry<P> {}

impl<P> PartialOrd for Entry<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<P> Ord for Entry<P> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: earlier time, then lower sequence number, is "greater".
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A min-queue of packets by (delivery time, push order).
#[derive(Debug, Clone)]
pub(crate) struct DeliveryQueue<P> {
    heap: BinaryHeap<Entry<P>>,
    next_seq: u64,
}

impl<P> Default for DeliveryQueue<P> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<P> DeliveryQueue<P> {
    /// Schedules `payload` for delivery at `at`.
    pub(crate) fn push(&mut self, at: Instant, size: usize, payload: P) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.heap.push(Entry {
            at,
            seq,
            size,
            payload,
        });
    }

    /// The earliest delivery instant, if anything is queued.
    pub(crate) fn next_time(&self) -> Option<Instant> {
        self.heap.peek().map(|entry| entry.at)
    }

    /// Removes and returns the earliest packet if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Delivery<P>> {
        if self.next_time()? > now {
            return None;
        }
        self.heap.pop().map(|entry| Delivery {
            at: entry.at,
            size_bytes: entry.size,
            payload: entry.payload,
        })
    }

    /// Number of queued packets.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn orders_by_time_then_push_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut q = DeliveryQueue::default();
        q.push(t0 + 2 * ms, 1, "c");
        q.push(t0 + ms, 1, "a");
        q.push(t0 + 2 * ms, 1, "d");
        q.push(t0 + ms, 1, "b");
        assert_eq!(q.len(), 4);
        assert_eq!(q.next_time(), Some(t0 + ms));
        assert!(q.pop_due(t0).is_none());
        let order: Vec<_> = std::iter::from_fn(|| q.pop_due(t0 + 5 * ms))
            .map(|d| d.payload)
            .collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
        assert!(q.pop_due(t0 + 5 * ms).is_none());
        assert_eq!(q.next_time(), None);
    }
}
