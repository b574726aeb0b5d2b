//! Time-based loss detection with an adaptive reordering window (RACK,
//! RFC 8985) and detection of spurious losses, for one path.
//!
//! [`Rack`] is owned by a path's [`SentPackets`](super::sent::SentPackets)
//! and driven by it:
//!
//! - every newly acknowledged packet is offered to [`Rack::on_acked`], which
//!   keeps the send time and RTT of the most recently *sent* packet
//!   acknowledged (RACK.xmit_ts, RACK.rtt) and notes reordering (a packet
//!   acknowledged below the largest acknowledged number);
//! - a packet sent before that one is lost once it is older than RACK.rtt
//!   plus the reordering window ([`Rack::reo_wnd`]: a quarter of the minimum
//!   RTT, times a multiplier, at most the smoothed RTT). Until reordering is
//!   seen, three later packets acknowledged declare it lost at once too (the
//!   packet threshold);
//! - every packet declared lost is remembered for a few round trips
//!   ([`Rack::on_declared_lost`]). An acknowledgement of one of them shows
//!   that loss was spurious ([`Rack::on_spurious`]): the multiplier grows (up
//!   to the smoothed RTT), and when every packet of the loss episode that
//!   reduced the congestion window proves delivered, the caller undoes the
//!   reduction. After [`REO_WND_PERSIST`] loss episodes without a spurious
//!   loss the multiplier returns to one.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::sent::SentFrame;

/// Reordering tolerance in packets, used until reordering has been seen.
pub const PACKET_THRESHOLD: u64 = 3;

/// Loss episodes after which a widened reordering window returns to its base.
pub const REO_WND_PERSIST: u32 = 16;

/// How many declared-lost packets are remembered at most (the oldest go first).
pub const MAX_REMEMBERED_LOSSES: usize = 4096;

/// A packet declared lost, remembered in case it is acknowledged after all.
#[derive(Debug, Clone)]
pub struct LostPacket {
    /// When it was declared lost.
    pub declared: Instant,
    /// The message fragments and bundles it carried (`SentFrame::Msg` and
    /// `SentFrame::Bundle`; acknowledged after all if it was).
    pub messages: Vec<SentFrame>,
    /// The loss episode it belonged to.
    episode: u64,
}

/// A run of losses that the congestion controller answered with one reduction.
#[derive(Debug, Clone, Copy)]
struct Episode {
    id: u64,
    /// When it began: losses of packets sent before this join it.
    start: Instant,
    /// Its packets declared lost and not (yet) acknowledged after all.
    outstanding: u64,
}

/// Outcome of one spurious loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spurious {
    /// Every packet of the newest loss episode proved delivered: undo the
    /// congestion reaction to it.
    pub undo: bool,
    /// The message fragments and bundles the packet carried.
    pub messages: Vec<SentFrame>,
}

/// RACK state and the memory of recent losses for one path.
#[derive(Debug, Default)]
pub struct Rack {
    /// Send time, packet number and RTT of the most recently sent packet acknowledged.
    newest_acked: Option<(Instant, u64, Duration)>,
    reordering_seen: bool,
    /// Largest reordering seen, in packets (acknowledged this far below the largest).
    reordering_distance: u64,
    reo_wnd_mult: u32,
    reo_wnd_persist: u32,
    lost: BTreeMap<u64, LostPacket>,
    episode: Option<Episode>,
    next_episode: u64,
}

impl Rack {
    /// Packet `pn`, sent at `sent`, was acknowledged at `now`; `largest_acked`
    /// is the largest number acknowledged before this ACK.
    pub fn on_acked(&mut self, now: Instant, pn: u64, sent: Instant, largest_acked: Option<u64>) {
        if let Some(largest) = largest_acked.filter(|&l| pn < l) {
            self.reordering_seen = true;
            self.reordering_distance = self.reordering_distance.max(largest - pn);
        }
        if self.newest_acked.is_none_or(|(_, newest, _)| pn > newest) {
            self.newest_acked = Some((sent, pn, now.saturating_duration_since(sent)));
        }
    }

    /// The packet number of the most recently sent packet acknowledged.
    pub fn newest_acked(&self) -> Option<u64> {
        self.newest_acked.map(|(_, pn, _)| pn)
    }

    /// The largest reordering seen, in packets.
    pub fn reordering_distance(&self) -> u64 {
        self.reordering_distance
    }

    /// The reordering window: a quarter of `min_rtt` times the multiplier, at
    /// most `smoothed_rtt`.
    pub fn reo_wnd(&self, min_rtt: Duration, smoothed_rtt: Duration) -> Duration {
        (min_rtt / 4 * self.reo_wnd_mult.max(1)).min(smoothed_rtt)
    }

    /// When a packet sent at `sent` becomes lost by time (`None` before any ACK).
    pub fn lost_at(&self, sent: Instant, reo_wnd: Duration) -> Option<Instant> {
        self.newest_acked
            .map(|(_, _, rtt)| sent + rtt + reo_wnd.max(super::rtt::GRANULARITY))
    }

    /// True if packet `pn` is lost because enough later packets were
    /// acknowledged (only until reordering is seen).
    pub fn lost_by_count(&self, pn: u64) -> bool {
        !self.reordering_seen
            && self
                .newest_acked()
                .is_some_and(|newest| newest >= pn + PACKET_THRESHOLD)
    }

    /// Remembers packet `pn` (sent at `sent`, carrying `messages`) as declared
    /// lost at `now`; returns true if it opens a new loss episode (the caller
    /// reports a congestion event for it).
    pub fn on_declared_lost(
        &mut self,
        now: Instant,
        pn: u64,
        sent: Instant,
        messages: Vec<SentFrame>,
    ) -> bool {
        let new_episode = self.episode.is_none_or(|e| sent > e.start);
        if new_episode {
            self.episode = Some(Episode {
                id: self.next_episode,
                start: now,
                outstanding: 0,
            });
            self.next_episode += 1;
            self.reo_wnd_persist = self.reo_wnd_persist.saturating_sub(1);
            if self.reo_wnd_persist == 0 {
                self.reo_wnd_mult = 1;
            }
        }
        let episode = self.episode.as_mut().expect("just set");
        episode.outstanding += 1;
        let id = episode.id;
        self.lost.insert(
            pn,
            LostPacket {
                declared: now,
                messages,
                episode: id,
            },
        );
        while self.lost.len() > MAX_REMEMBERED_LOSSES {
            self.lost.pop_first();
        }
        new_episode
    }

    /// Forgets losses declared before `before` (no longer worth remembering),
    /// from the lowest packet number up (losses are declared roughly in
    /// packet-number order; a straggler waits for the ones below it).
    pub fn forget_losses_before(&mut self, before: Instant) {
        while self
            .lost
            .first_key_value()
            .is_some_and(|(_, l)| l.declared < before)
        {
            self.lost.pop_first();
        }
    }

    /// The packets `pns` were acknowledged: those declared lost were lost
    /// spuriously (see [`Rack::on_spurious`]).
    pub fn on_spurious_in(&mut self, pns: RangeInclusive<u64>) -> Vec<Spurious> {
        let remembered: Vec<u64> = self.lost.range(pns).map(|(&pn, _)| pn).collect();
        remembered
            .into_iter()
            .filter_map(|pn| self.on_spurious(pn))
            .collect()
    }

    /// Packet `pn` was acknowledged: if it had been declared lost, the loss was
    /// spurious. Widens the reordering window and says whether to undo.
    pub fn on_spurious(&mut self, pn: u64) -> Option<Spurious> {
        let lost = self.lost.remove(&pn)?;
        self.reordering_seen = true;
        self.reo_wnd_mult = self.reo_wnd_mult.max(1) + 1;
        self.reo_wnd_persist = REO_WND_PERSIST;
        let mut undo = false;
        if let Some(e) = self.episode.as_mut().filter(|e| e.id == lost.episode) {
            e.outstanding -= 1;
            undo = e.outstanding == 0;
        }
        Some(Spurious {
            undo,
            messages: lost.messages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_window_widens_on_spurious_losses_up_to_the_smoothed_rtt() {
        let t0 = Instant::now();
        let mut r = Rack::default();
        assert_eq!(r.reo_wnd(20 * MS, 22 * MS), 5 * MS);
        assert!(r.on_declared_lost(t0, 1, t0, Vec::new()));
        let s = r.on_spurious(1).expect("remembered");
        assert!(s.undo, "the only loss of the episode was spurious");
        assert!(r.reordering_seen);
        assert_eq!(r.reo_wnd(20 * MS, 22 * MS), 10 * MS);
        assert!(r.on_spurious(1).is_none(), "counted once");
        for pn in 2..10 {
            r.on_declared_lost(t0 + MS * pn as u32, pn, t0 + MS * pn as u32, Vec::new());
            r.on_spurious(pn);
        }
        assert_eq!(r.reo_wnd(20 * MS, 22 * MS), 22 * MS, "capped at srtt");
    }

    #[test]
    fn undo_only_when_the_whole_episode_was_spurious() {
        let t0 = Instant::now();
        let mut r = Rack::default();
        assert!(r.on_declared_lost(t0 + 30 * MS, 1, t0, Vec::new()));
        // Sent before the episode began: same episode, no new reaction.
        assert!(!r.on_declared_lost(t0 + 31 * MS, 2, t0 + MS, Vec::new()));
        assert!(
            !r.on_spurious(1).unwrap().undo,
            "packet 2 may be really lost"
        );
        assert!(r.on_spurious(2).unwrap().undo);
        // A loss of a packet sent after the episode began opens a new one.
        assert!(r.on_declared_lost(t0 + 60 * MS, 3, t0 + 40 * MS, Vec::new()));
    }

    #[test]
    fn the_window_returns_to_its_base_after_clean_episodes() {
        let t0 = Instant::now();
        let mut r = Rack::default();
        r.on_declared_lost(t0, 0, t0, Vec::new());
        r.on_spurious(0);
        assert_eq!(r.reo_wnd(20 * MS, 40 * MS), 10 * MS);
        for i in 1..=REO_WND_PERSIST {
            let t = t0 + MS * (10 * i);
            r.on_declared_lost(t, u64::from(i), t, Vec::new());
        }
        assert_eq!(r.reo_wnd(20 * MS, 40 * MS), 5 * MS);
        r.forget_losses_before(t0 + MS * 1000);
        assert!(r.on_spurious(REO_WND_PERSIST.into()).is_none(), "forgotten");
    }

    #[test]
    fn reordering_disables_the_packet_threshold() {
        let t0 = Instant::now();
        let mut r = Rack::default();
        r.on_acked(t0 + 20 * MS, 5, t0, None);
        assert!(r.lost_by_count(2));
        assert_eq!(r.lost_at(t0, 5 * MS), Some(t0 + 25 * MS));
        r.on_acked(t0 + 21 * MS, 3, t0, Some(5));
        assert_eq!(r.reordering_distance(), 2);
        assert!(!r.lost_by_count(2));
        assert_eq!(r.newest_acked(), Some(5));
    }
}
