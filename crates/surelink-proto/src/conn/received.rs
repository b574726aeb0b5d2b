//! Received packet numbers and the decision of when to acknowledge them.
//!
//! An ACK goes out at once after `ack_frequency` ack-eliciting packets or when a
//! packet arrives out of order (so the sender learns of a gap quickly), and
//! otherwise within `max_ack_delay`. Ranges the peer has seen acknowledged
//! (an ACK of an ACK) are forgotten, and at most [`MAX_TRACKED_RANGES`] are kept.

use std::time::{Duration, Instant};

use crate::range_set::RangeSet;
use crate::wire::AckFrame;

/// Ranges kept for building ACK frames.
pub const MAX_TRACKED_RANGES: usize = 64;

/// Received packet numbers and pending-ACK state.
#[derive(Debug, Default)]
pub struct ReceivedPackets {
    set: RangeSet,
    largest: Option<(u64, Instant)>,
    unacked_eliciting: u32,
    ack_deadline: Option<Instant>,
    immediate: bool,
}

impl ReceivedPackets {
    /// Records packet `pn`; returns false if it is a known duplicate.
    pub fn on_packet(
        &mut self,
        now: Instant,
        pn: u64,
        ack_eliciting: bool,
        ack_frequency: u32,
        max_ack_delay: Duration,
    ) -> bool {
        if self.set.contains(pn) {
            // A duplicate still deserves an ACK: ours may have been lost.
            if ack_eliciting {
                self.immediate = true;
            }
            return false;
        }
        let in_order = self.set.max().is_none_or(|m| pn == m + 1);
        self.set.insert(pn..pn + 1);
        self.set.keep_highest(MAX_TRACKED_RANGES);
        if self.largest.is_none_or(|(l, _)| pn > l) {
            self.largest = Some((pn, now));
        }
        if ack_eliciting {
            self.unacked_eliciting += 1;
            if !in_order || self.unacked_eliciting >= ack_frequency {
                self.immediate = true;
            } else if self.ack_deadline.is_none() {
                self.ack_deadline = Some(now + max_ack_delay);
            }
        }
        true
    }

    /// True if an ACK should be sent now.
    pub fn wants_ack_now(&self, now: Instant) -> bool {
        self.immediate || self.ack_deadline.is_some_and(|d| d <= now)
    }

    /// When the delayed ACK is due.
    pub fn ack_deadline(&self) -> Option<Instant> {
        if self.immediate {
            None
        } else {
            self.ack_deadline
        }
    }

    /// True if anything could be acknowledged (used to piggyback ACKs).
    pub fn has_unacked(&self) -> bool {
        self.immediate || self.ack_deadline.is_some() || self.unacked_eliciting > 0
    }

    /// Builds an ACK frame and resets the pending state. `None` before any packet.
    pub fn build_ack(&mut self, now: Instant) -> Option<AckFrame> {
        let (_, at) = self.largest?;
        let ranges: Vec<_> = self.set.iter().rev().map(|r| r.start..=r.end - 1).collect();
        if ranges.is_empty() {
            return None;
        }
        self.unacked_eliciting = 0;
        self.ack_deadline = None;
        self.immediate = false;
        Some(AckFrame {
            delay_us: now.saturating_duration_since(at).as_micros() as u64,
            ranges,
        })
    }

    /// The peer has received an ACK whose largest was `largest`: forget below it.
    pub fn on_ack_acked(&mut self, largest: u64) {
        // Keep `largest` itself so the next ACK still reports it.
        self.set.remove_below(largest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_policy() {
        let t = Instant::now();
        let d = Duration::from_millis(5);
        let mut r = ReceivedPackets::default();
        assert!(r.build_ack(t).is_none());
        assert!(r.on_packet(t, 0, true, 2, d));
        assert!(!r.wants_ack_now(t));
        assert_eq!(r.ack_deadline(), Some(t + d));
        assert!(r.on_packet(t, 1, true, 2, d));
        assert!(r.wants_ack_now(t), "second eliciting packet");
        let ack = r.build_ack(t).unwrap();
        assert_eq!(ack.ranges, vec![0..=1]);
        assert!(!r.wants_ack_now(t));
        assert!(r.on_packet(t, 3, true, 2, d), "gap");
        assert!(r.wants_ack_now(t), "out of order: immediate");
        assert_eq!(r.build_ack(t).unwrap().ranges, vec![3..=3, 0..=1]);
        assert!(!r.on_packet(t, 3, true, 2, d), "duplicate");
        assert!(r.wants_ack_now(t));
        r.on_ack_acked(3);
        assert_eq!(r.build_ack(t).unwrap().ranges, vec![3..=3]);
        assert!(r.on_packet(t, 2, false, 2, d), "late, below the floor");
        assert!(!r.wants_ack_now(t), "not ack-eliciting");
    }
}
