//! Packets in flight and loss detection (RFC 9002 §6).
//!
//! Every sent packet is remembered until acknowledged or declared lost. A packet
//! is lost when a packet sent at least [`PACKET_THRESHOLD`] later was
//! acknowledged, or when it is older than the loss delay (9/8 RTT) relative to
//! an acknowledged later packet. The frames a packet carried are handed back so
//! the connection can retransmit what needs retransmitting.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::congestion::DeliveryState;
use super::send_queue::Fragment;

/// Reordering tolerance in packets.
pub const PACKET_THRESHOLD: u64 = 3;

/// What a packet carried that may need action when it is acknowledged or lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentFrame {
    /// A message fragment.
    Msg(Fragment),
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
}

/// Packets sent and not yet acknowledged or lost.
#[derive(Debug, Default)]
pub struct SentPackets {
    packets: BTreeMap<u64, SentPacket>,
    largest_acked: Option<u64>,
    bytes_in_flight: u64,
    eliciting_in_flight: u64,
    last_eliciting_sent: Option<Instant>,
}

impl SentPackets {
    /// Remembers packet `pn`.
    pub fn on_sent(&mut self, pn: u64, p: SentPacket) {
        if p.ack_eliciting {
            self.bytes_in_flight += p.size;
            self.eliciting_in_flight += 1;
            self.last_eliciting_sent = Some(p.time);
        }
        self.packets.insert(pn, p);
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
        std::mem::take(&mut self.packets).into_iter().collect()
    }

    /// Applies the ranges of an ACK frame, highest first.
    pub fn on_ack(&mut self, now: Instant, ranges: &[RangeInclusive<u64>]) -> AckOutcome {
        let mut out = AckOutcome::default();
        for r in ranges.iter().rev() {
            let pns: Vec<u64> = self.packets.range(r.clone()).map(|(&pn, _)| pn).collect();
            for pn in pns {
                if let Some(p) = self.packets.remove(&pn) {
                    self.forget(&p);
                    out.acked.push((pn, p));
                }
            }
        }
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

    /// Declares lost what the thresholds say is lost. Returns the lost packets and
    /// the time at which the next not-yet-lost packet would become lost.
    pub fn detect_lost(
        &mut self,
        now: Instant,
        loss_delay: Duration,
    ) -> (Vec<(u64, SentPacket)>, Option<Instant>) {
        let Some(largest) = self.largest_acked else {
            return (Vec::new(), None);
        };
        let mut lost = Vec::new();
        let mut next = None;
        let lost_before = now.checked_sub(loss_delay);
        let candidates: Vec<u64> = self.packets.range(..largest).map(|(&pn, _)| pn).collect();
        for pn in candidates {
            let p = &self.packets[&pn];
            let by_time = lost_before.is_some_and(|t| p.time <= t);
            if by_time || largest >= pn + PACKET_THRESHOLD {
                let p = self.packets.remove(&pn).expect("present");
                self.forget(&p);
                lost.push((pn, p));
            } else {
                let at = p.time + loss_delay;
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
            }
        }
        (lost, next)
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

    #[test]
    fn packet_and_time_thresholds() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut s = SentPackets::default();
        for pn in 0..6 {
            s.on_sent(pn, pkt(t0 + ms * pn as u32));
        }
        assert_eq!(s.bytes_in_flight(), 600);
        let out = s.on_ack(t0 + 20 * ms, &[4..=4]);
        assert_eq!(out.acked.len(), 1);
        assert_eq!(out.rtt_sample, Some(16 * ms));
        let (lost, next) = s.detect_lost(t0 + 20 * ms, 100 * ms);
        // 0 and 1 are 3+ below 4; 2 and 3 wait for the timer.
        assert_eq!(
            lost.iter().map(|(pn, _)| *pn).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(next, Some(t0 + 2 * ms + 100 * ms));
        let (lost, _) = s.detect_lost(t0 + 103 * ms, 100 * ms);
        assert_eq!(
            lost.iter().map(|(pn, _)| *pn).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(s.bytes_in_flight(), 100);
        // Acking an old number again changes nothing.
        assert!(s.on_ack(t0, &[0..=4]).acked.is_empty());
    }
}
