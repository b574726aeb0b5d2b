//! Packets in flight and loss detection (RFC 9002 §6).
//!
//! Every sent packet is remembered until acknowledged or declared lost. Loss
//! is judged by RACK ([`super::rack`]): a packet sent before the most recently
//! sent packet acknowledged is lost once it is older than that packet's RTT
//! plus the reordering window, or, until reordering is seen, once
//! [`PACKET_THRESHOLD`](super::rack::PACKET_THRESHOLD) later packets were
//! acknowledged. The frames a packet carried are handed back so the
//! connection can retransmit what needs retransmitting; declared losses are
//! remembered for a few round trips so an acknowledgement that comes after
//! all is recognised as a spurious loss.
//!
//! Packets are kept in a deque in the order they were numbered (numbers only
//! grow), so remembering one is a push at the back and finding one a binary
//! search. One acknowledged or lost leaves a hole, which is dropped once
//! every packet before it is gone, or when holes outnumber the packets.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::congestion::DeliveryState;
use super::rack::{Rack, Spurious};
use super::send_queue::{Bundle, Fragment};

/// What a packet carried that may need action when it is acknowledged or lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentFrame {
    /// A message fragment.
    Msg(Fragment),
    /// Whole messages in one MSG_BUNDLE frame.
    Bundle(Bundle),
    /// A MAX_DATA credit update.
    MaxData,
    /// A CLOSE frame.
    Close,
    /// An ACK frame whose largest acknowledged number was this.
    Ack(u64),
    /// A PING.
    Ping,
    /// A SKIP frame.
    Skip {
        /// The channel.
        channel: u64,
        /// First sequence number still expected.
        up_to: u64,
    },
}

/// A packet in flight.
#[derive(Debug, Clone)]
pub struct SentPacket {
    /// When it left.
    pub time: Instant,
    /// Datagram size in bytes.
    pub size: u64,
    /// True if it obliges the peer to acknowledge; only these count in flight.
    pub ack_eliciting: bool,
    /// What it carried.
    pub frames: Vec<SentFrame>,
    /// What the path had delivered when it left (for delivery-rate samples).
    pub delivery: DeliveryState,
}

/// Outcome of processing an ACK frame.
#[derive(Debug, Default)]
pub struct AckOutcome {
    /// Packets newly acknowledged, ascending.
    pub acked: Vec<(u64, SentPacket)>,
    /// RTT sample from the largest newly acknowledged packet, if ack-eliciting.
    pub rtt_sample: Option<Duration>,
    /// Packets acknowledged after they had been declared lost.
    pub spurious: Vec<Spurious>,
    /// Packets among `acked` acknowledged after a later packet was: reordered
    /// on the way, or missing when the later one arrived and rebuilt by the
    /// peer's FEC.
    pub out_of_order: u64,
}

/// Packets declared lost by one call of [`SentPackets::detect_lost`].
#[derive(Debug, Default)]
pub struct LossOutcome {
    /// The lost packets, ascending.
    pub lost: Vec<(u64, SentPacket)>,
    /// True if one of them opens a new loss episode (a congestion event).
    pub new_episode: bool,
    /// When the next not-yet-lost packet would become lost.
    pub next: Option<Instant>,
}

/// Holes allowed in the deque before it is compacted, beyond one per packet.
const SLACK_HOLES: usize = 64;

/// Packets sent and not yet acknowledged or lost.
#[derive(Debug, Default)]
pub struct SentPackets {
    /// By ascending number; `None` for a packet acknowledged or lost.
    packets: VecDeque<(u64, Option<SentPacket>)>,
    /// Packets in `packets` that are not holes.
    live: usize,
    largest_acked: Option<u64>,
    bytes_in_flight: u64,
    eliciting_in_flight: u64,
    last_eliciting_sent: Option<Instant>,
    rack: Rack,
}

impl SentPackets {
    /// Remembers packet `pn`.
    pub fn on_sent(&mut self, pn: u64, p: SentPacket) {
        if p.ack_eliciting {
            self.bytes_in_flight += p.size;
            self.eliciting_in_flight += 1;
            self.last_eliciting_sent = Some(p.time);
        }
        debug_assert!(
            self.packets.back().is_none_or(|&(last, _)| last < pn),
            "packet numbers only grow"
        );
        self.live += 1;
        self.packets.push_back((pn, Some(p)));
    }

    /// Index of the first entry numbered `pn` or above.
    fn index(&self, pn: u64) -> usize {
        self.packets.partition_point(|&(n, _)| n < pn)
    }

    /// Takes the packet at `index` out, leaving a hole.
    fn take(&mut self, index: usize) -> Option<(u64, SentPacket)> {
        let (pn, slot) = self.packets.get_mut(index)?;
        let p = slot.take()?;
        let pn = *pn;
        self.live -= 1;
        self.forget(&p);
        Some((pn, p))
    }

    /// Drops the holes at the front, and all of them once they outnumber
    /// the packets.
    fn tidy(&mut self) {
        while self.packets.front().is_some_and(|(_, p)| p.is_none()) {
            self.packets.pop_front();
        }
        if self.packets.len() > 2 * self.live + SLACK_HOLES {
            self.packets.retain(|(_, p)| p.is_some());
        }
    }

    /// Bytes of ack-eliciting packets in flight.
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight
    }

    /// True if any ack-eliciting packet is unacknowledged.
    pub fn has_eliciting_in_flight(&self) -> bool {
        self.eliciting_in_flight > 0
    }

    /// When the newest ack-eliciting packet was sent.
    pub fn last_eliciting_sent(&self) -> Option<Instant> {
        self.last_eliciting_sent
    }

    /// When the oldest ack-eliciting packet still in flight was sent.
    pub fn oldest_eliciting_in_flight(&self) -> Option<Instant> {
        if self.eliciting_in_flight == 0 {
            return None;
        }
        self.packets
            .iter()
            .filter_map(|(_, p)| p.as_ref())
            .find(|p| p.ack_eliciting)
            .map(|p| p.time)
    }

    fn forget(&mut self, p: &SentPacket) {
        if p.ack_eliciting {
            self.bytes_in_flight -= p.size;
            self.eliciting_in_flight -= 1;
        }
    }

    /// Takes every packet in flight (the path is abandoned).
    pub fn drain(&mut self) -> Vec<(u64, SentPacket)> {
        self.bytes_in_flight = 0;
        self.eliciting_in_flight = 0;
        self.live = 0;
        std::mem::take(&mut self.packets)
            .into_iter()
            .filter_map(|(pn, p)| Some((pn, p?)))
            .collect()
    }

    /// The path's RACK state (reordering seen, reordering window).
    pub fn rack(&self) -> &Rack {
        &self.rack
    }

    /// Applies the ranges of an ACK frame (given highest first).
    pub fn on_ack(&mut self, now: Instant, ranges: &[RangeInclusive<u64>]) -> AckOutcome {
        let mut out = AckOutcome::default();
        for r in ranges.iter().rev() {
            let mut at = self.index(*r.start());
            while self.packets.get(at).is_some_and(|&(pn, _)| pn <= *r.end()) {
                if let Some((pn, p)) = self.take(at) {
                    if self.largest_acked.is_some_and(|l| pn < l) {
                        out.out_of_order += 1;
                    }
                    self.rack.on_acked(now, pn, p.time, self.largest_acked);
                    out.acked.push((pn, p));
                }
                at += 1;
            }
            out.spurious.extend(self.rack.on_spurious_in(r.clone()));
        }
        self.tidy();
        if let Some((pn, p)) = out.acked.last() {
            if self.largest_acked.is_none_or(|l| *pn > l) {
                self.largest_acked = Some(*pn);
                if p.ack_eliciting {
                    out.rtt_sample = Some(now.saturating_duration_since(p.time));
                }
            }
        }
        out
    }

    /// Declares lost what RACK says is lost, given the reordering window
    /// `reo_wnd`, and remembers those losses until `remember_for` has passed.
    pub fn detect_lost(
        &mut self,
        now: Instant,
        reo_wnd: Duration,
        remember_for: Duration,
    ) -> LossOutcome {
        if let Some(before) = now.checked_sub(remember_for) {
            self.rack.forget_losses_before(before);
        }
        let mut out = LossOutcome::default();
        let Some(newest) = self.rack.newest_acked() else {
            return out;
        };
        let mut index = 0;
        while let Some((pn, slot)) = self.packets.get(index) {
            let pn = *pn;
            if pn >= newest {
                break;
            }
            index += 1;
            let Some(p) = slot else { continue };
            let at = self.rack.lost_at(p.time, reo_wnd).expect("an ACK was seen");
            if at <= now || self.rack.lost_by_count(pn) {
                let (_, p) = self.take(index - 1).expect("present");
                if p.ack_eliciting {
                    let messages = p
                        .frames
                        .iter()
                        .filter(|f| matches!(f, SentFrame::Msg(_) | SentFrame::Bundle(_)))
                        .cloned()
                        .collect();
                    out.new_episode |= self.rack.on_declared_lost(now, pn, p.time, messages);
                }
                out.lost.push((pn, p));
            } else {
                out.next = Some(out.next.map_or(at, |n: Instant| n.min(at)));
            }
        }
        self.tidy();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(t: Instant) -> SentPacket {
        SentPacket {
            time: t,
            size: 100,
            ack_eliciting: true,
            frames: vec![SentFrame::Ping],
            delivery: DeliveryState {
                delivered: 0,
                delivered_time: t,
                first_sent_time: t,
                app_limited: false,
            },
        }
    }

    fn pns(lost: &[(u64, SentPacket)]) -> Vec<u64> {
        lost.iter().map(|(pn, _)| *pn).collect()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn packet_threshold_then_time_after_the_newest_acked() {
        let t0 = Instant::now();
        let mut s = SentPackets::default();
        for pn in 0..6 {
            s.on_sent(pn, pkt(t0 + MS * pn as u32));
        }
        assert_eq!(s.bytes_in_flight(), 600);
        let out = s.on_ack(t0 + 20 * MS, &[4..=4]);
        assert_eq!(out.acked.len(), 1);
        assert_eq!(out.rtt_sample, Some(16 * MS));
        let out = s.detect_lost(t0 + 20 * MS, 4 * MS, 100 * MS);
        // 0 and 1 are 3+ below 4; 2 and 3 wait for RACK.rtt (16) + reo_wnd (4).
        assert_eq!(pns(&out.lost), vec![0, 1]);
        assert!(out.new_episode);
        assert_eq!(out.next, Some(t0 + 2 * MS + 20 * MS));
        let out = s.detect_lost(t0 + 23 * MS, 4 * MS, 100 * MS);
        assert_eq!(pns(&out.lost), vec![2, 3]);
        assert!(!out.new_episode, "sent before the episode began");
        assert_eq!(s.bytes_in_flight(), 100);
        // Acking the lost numbers late: every one was a spurious loss, and the
        // episode is undone once the last of them is acknowledged.
        let out = s.on_ack(t0 + 30 * MS, &[0..=4]);
        assert!(out.acked.is_empty());
        let undo: Vec<bool> = out.spurious.iter().map(|s| s.undo).collect();
        assert_eq!(undo, vec![false, false, false, true]);
        assert!(!s.rack().lost_by_count(0), "reordering seen");
        assert!(s.on_ack(t0 + 31 * MS, &[0..=4]).spurious.is_empty());
    }

    #[test]
    fn reordered_acks_within_the_window_are_not_losses() {
        let t0 = Instant::now();
        let mut s = SentPackets::default();
        for pn in 0..10 {
            s.on_sent(pn, pkt(t0 + MS * pn as u32));
        }
        // 0 arrives 4 ms late, after 1: seen as reordering, not loss.
        s.on_ack(t0 + 20 * MS, &[1..=1]);
        s.on_ack(t0 + 24 * MS, &[0..=0, 1..=1]);
        assert_eq!(s.rack().reordering_distance(), 1);
        s.on_ack(t0 + 26 * MS, &[0..=5]);
        // 6 is 3 below 9, but the packet threshold is off after reordering.
        s.on_ack(t0 + 29 * MS, &[9..=9, 0..=5]);
        let out = s.detect_lost(t0 + 29 * MS, 5 * MS, 100 * MS);
        assert!(out.lost.is_empty());
        assert_eq!(out.next, Some(t0 + 6 * MS + 20 * MS + 5 * MS));
    }

    #[test]
    fn holes_behind_an_unacknowledged_packet_are_dropped() {
        let t0 = Instant::now();
        let mut s = SentPackets::default();
        for pn in 0..10_000 {
            s.on_sent(pn, pkt(t0));
            if pn > 0 {
                s.on_ack(t0, &[pn..=pn]);
            }
            assert!(s.packets.len() <= 2 * s.live + SLACK_HOLES + 1);
        }
        assert_eq!(s.bytes_in_flight(), 100, "packet 0 alone is in flight");
        assert_eq!(s.oldest_eliciting_in_flight(), Some(t0));
        let out = s.on_ack(t0, &[0..=0]);
        assert_eq!(pns(&out.acked), vec![0]);
        assert!(s.packets.is_empty());
    }

    proptest::proptest! {
        /// Whatever the numbering gaps and acknowledged ranges, the packets
        /// acknowledged and those left are those of a plain ordered map.
        #[test]
        fn acknowledgements_match_an_ordered_map(
            ops in proptest::collection::vec((1u64..5, 0u64..40, 0u64..8), 1..200)
        ) {
            let t0 = Instant::now();
            let mut s = SentPackets::default();
            let mut model = std::collections::BTreeMap::new();
            let mut next = 0;
            for (gap, back, width) in ops {
                next += gap;
                s.on_sent(next, pkt(t0));
                model.insert(next, ());
                let start = next.saturating_sub(back);
                // Highest first and disjoint, as an ACK frame's.
                let mut ranges = vec![start..=start + width];
                if let Some(low) = start.checked_sub(width + 3) {
                    ranges.push(low..=low + width.min(2));
                }
                let mut expected = Vec::new();
                for r in ranges.iter().rev() {
                    let pns: Vec<u64> = model.range(r.clone()).map(|(&pn, _)| pn).collect();
                    for pn in pns {
                        model.remove(&pn);
                        expected.push(pn);
                    }
                }
                let out = s.on_ack(t0, &ranges);
                proptest::prop_assert_eq!(pns(&out.acked), expected);
                proptest::prop_assert_eq!(s.bytes_in_flight(), 100 * model.len() as u64);
            }
            let left: Vec<u64> = model.keys().copied().collect();
            proptest::prop_assert_eq!(pns(&s.drain()), left);
        }
    }
}
