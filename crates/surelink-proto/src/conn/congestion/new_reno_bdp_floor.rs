//! [`NewRenoBdpFloor`]: NewReno congestion control (RFC 9002 §7) over bytes
//! in flight, with a delivery-rate floor. The default controller.
//!
//! Slow start doubles the window each round trip, congestion avoidance adds one
//! datagram per window acknowledged, and a loss halves the window once per
//! recovery period (losses of packets sent before the period began are not
//! punished twice). The window does not grow while the sender is app-limited.
//!
//! Random loss is not congestion: on a lossy path NewReno alone collapses to a
//! few packets and a real-time stream queues up behind it without bound. So
//! the window never falls below twice the bandwidth-delay product actually
//! achieved recently (the maximum delivery rate over the last ten round trips
//! times the minimum RTT), as in BBR. Where a bottleneck limits the rate this
//! floor is at most one BDP of queue; where loss is random, the sender keeps
//! the rate it had.
//!
//! The floor keeps its own delivery-rate measurement (bytes acknowledged over
//! intervals of at least one minimum RTT) rather than the per-packet
//! [`RateSample`](super::RateSample); switching would change its behaviour.
//! As in BBR, a measurement taken while the sender was app-limited is kept
//! only if it is not below the best one kept: a quiet or bursty application
//! (a live stream between frames, a pause) shows how little it sent, not how
//! little the path carries, so it must not wear the floor down.
//! It paces at 5/4 of window ÷ smoothed RTT.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{AckEvent, CongestionController, PacingRate};

/// Delivery-rate samples kept (one per round trip).
const RATE_WINDOW: usize = 10;
/// The floor is this many bandwidth-delay products.
const FLOOR_GAIN: u64 = 2;

/// NewReno with a floor of twice the recently delivered bandwidth-delay product.
#[derive(Debug, Clone)]
pub struct NewRenoBdpFloor {
    window: u64,
    ssthresh: u64,
    recovery_start: Option<Instant>,
    acked_in_avoidance: u64,
    mss: u64,
    min_window: u64,
    /// Current delivery-rate measurement: (start, bytes acknowledged since,
    /// whether any of them was acknowledged while app-limited).
    sample: Option<(Instant, u64, bool)>,
    /// Recent delivery rates, bytes per second (one per round trip).
    rates: VecDeque<u64>,
    min_rtt: Duration,
    /// The floor as of the latest rate and `min_rtt` ([`Self::compute_floor`]):
    /// the window is asked for far more often than they change.
    floor: u64,
    /// Window and threshold before the last reduction, and the recovery
    /// period that preceded it (restored if that loss proves spurious).
    before_reduction: Option<(u64, u64, Option<Instant>)>,
}

impl NewRenoBdpFloor {
    /// A controller for datagrams of `mss` bytes starting at `initial_packets` datagrams.
    pub fn new(mss: u64, initial_packets: u64) -> Self {
        Self {
            window: mss * initial_packets,
            ssthresh: u64::MAX,
            recovery_start: None,
            acked_in_avoidance: 0,
            mss,
            min_window: 2 * mss,
            sample: None,
            rates: VecDeque::new(),
            min_rtt: Duration::MAX,
            floor: 2 * mss,
            before_reduction: None,
        }
    }

    /// Twice the bandwidth-delay product of the best recent delivery rate
    /// and the smallest RTT, at least `min_window`.
    fn compute_floor(&self) -> u64 {
        let Some(&rate) = self.rates.iter().max() else {
            return self.min_window;
        };
        if self.min_rtt == Duration::MAX {
            return self.min_window;
        }
        let bdp = (u128::from(rate) * self.min_rtt.as_micros() / 1_000_000) as u64;
        (FLOOR_GAIN * bdp).max(self.min_window)
    }

    /// Feeds the delivery-rate estimate: `bytes` were acknowledged at `now`
    /// on a path whose smallest RTT is `min_rtt`; `app_limited` says the
    /// sender was not using its window.
    fn on_delivered(&mut self, now: Instant, bytes: u64, min_rtt: Duration, app_limited: bool) {
        self.min_rtt = self.min_rtt.min(min_rtt.max(Duration::from_micros(100)));
        self.floor = self.compute_floor();
        let (start, acked, limited) = self.sample.get_or_insert((now, 0, false));
        *acked += bytes;
        *limited |= app_limited;
        let elapsed = now.saturating_duration_since(*start);
        if elapsed >= self.min_rtt.max(Duration::from_millis(1)) {
            let rate = (u128::from(*acked) * 1_000_000 / elapsed.as_micros().max(1)) as u64;
            let best = self.rates.iter().max().copied().unwrap_or(0);
            if !*limited || rate >= best {
                self.rates.push_back(rate);
                if self.rates.len() > RATE_WINDOW {
                    self.rates.pop_front();
                }
                self.floor = self.compute_floor();
            }
            self.sample = Some((now, 0, false));
        }
    }

    /// A packet of `bytes` sent at `sent` was acknowledged; `app_limited` says the
    /// sender was not using the window, in which case it does not grow.
    fn on_packet_acked(&mut self, sent: Instant, bytes: u64, app_limited: bool) {
        if self.recovery_start.is_some_and(|start| sent <= start) || app_limited {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
        } else {
            self.acked_in_avoidance += bytes;
            if self.acked_in_avoidance >= self.window {
                self.acked_in_avoidance -= self.window;
                self.window += self.mss;
            }
        }
    }
}

impl CongestionController for NewRenoBdpFloor {
    /// NewReno's window, but at least twice the recent bandwidth-delay product.
    fn window(&self) -> u64 {
        self.window.max(self.floor)
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn pacing_rate(&self, smoothed_rtt: Duration) -> PacingRate {
        PacingRate::new(
            5 * self.window(),
            4 * smoothed_rtt.max(Duration::from_nanos(1)),
        )
    }

    fn on_sent(&mut self, _now: Instant, _bytes: u64, _bytes_in_flight: u64) {}

    fn on_ack(&mut self, ack: &AckEvent<'_>) {
        for p in ack.packets {
            self.on_packet_acked(p.sent, p.bytes, ack.app_limited);
            self.on_delivered(ack.now, p.bytes, ack.min_rtt, ack.app_limited);
        }
    }

    /// Halves the window once per recovery period: losses of packets sent
    /// before the period began are not punished twice.
    fn on_congestion_event(&mut self, now: Instant, newest_lost_sent: Instant, _lost_bytes: u64) {
        if self
            .recovery_start
            .is_some_and(|start| newest_lost_sent <= start)
        {
            return;
        }
        self.before_reduction = Some((self.window, self.ssthresh, self.recovery_start));
        self.recovery_start = Some(now);
        self.window = (self.window / 2).max(self.min_window);
        self.ssthresh = self.window;
        self.acked_in_avoidance = 0;
    }

    /// Restores the window and threshold from before the last reduction.
    fn on_spurious_loss(&mut self, _now: Instant) {
        if let Some((window, ssthresh, recovery_start)) = self.before_reduction.take() {
            self.window = self.window.max(window);
            self.ssthresh = ssthresh;
            self.recovery_start = recovery_start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::AckedPacket;
    use super::*;

    fn ack(cc: &mut NewRenoBdpFloor, now: Instant, sent: Instant, app_limited: bool) {
        cc.on_ack(&AckEvent {
            now,
            packets: &[AckedPacket { sent, bytes: 1000 }],
            app_limited,
            min_rtt: Duration::from_millis(20),
            smoothed_rtt: Duration::from_millis(20),
            rate_sample: None,
        });
    }

    #[test]
    fn slow_start_then_halve_once_per_recovery() {
        let t0 = Instant::now();
        let mut cc = NewRenoBdpFloor::new(1000, 10);
        ack(&mut cc, t0, t0, false);
        assert_eq!(cc.window(), 11_000);
        ack(&mut cc, t0, t0, true);
        assert_eq!(cc.window(), 11_000, "app-limited: no growth");
        let t1 = t0 + Duration::from_millis(10);
        cc.on_congestion_event(t1, t0, 1000);
        assert_eq!(cc.window(), 5_500);
        cc.on_congestion_event(t1, t0 + Duration::from_millis(5), 1000);
        assert_eq!(cc.window(), 5_500, "same recovery period");
        ack(&mut cc, t0, t0, false);
        assert_eq!(cc.window(), 5_500, "sent before recovery: no growth");
        // Congestion avoidance: one mss per window acknowledged.
        let t2 = t1 + Duration::from_millis(1);
        for _ in 0..6 {
            ack(&mut cc, t2, t2, false);
        }
        assert_eq!(cc.window(), 6_500);
    }

    #[test]
    fn the_window_keeps_twice_the_delivered_bdp_through_random_loss() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut cc = NewRenoBdpFloor::new(1000, 10);
        // 1 MB/s delivered on a 20 ms path: BDP 20 kB.
        for i in 0..100u32 {
            cc.on_delivered(t0 + ms * i, 1000, 20 * ms, false);
        }
        for i in 0..10u32 {
            let t = t0 + 100 * ms + 30 * ms * i;
            cc.on_congestion_event(t, t, 1000);
        }
        let w = cc.window();
        assert!(
            (40_000..=42_000).contains(&w),
            "2 x BDP despite ten halvings: {w}"
        );
    }

    #[test]
    fn app_limited_measurements_below_the_best_do_not_wear_the_floor_down() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut cc = NewRenoBdpFloor::new(1000, 2);
        // 1 MB/s delivered on a 20 ms path: floor 2 x 20 kB.
        for i in 0..100u32 {
            cc.on_delivered(t0 + ms * i, 1000, 20 * ms, false);
        }
        let floor = cc.window();
        assert!((40_000..=42_000).contains(&floor), "{floor}");
        // A second of an application sending a tenth of that: the floor stays.
        let t1 = t0 + 100 * ms;
        for i in 0..100u32 {
            cc.on_delivered(t1 + 10 * ms * i, 1000, 20 * ms, true);
        }
        assert_eq!(cc.window(), floor);
        // The same rate while the sender used its window: the path got slower.
        let t2 = t1 + 1000 * ms;
        for i in 0..100u32 {
            cc.on_delivered(t2 + 10 * ms * i, 1000, 20 * ms, false);
        }
        assert!(cc.window() < 10_000, "{}", cc.window());
    }

    #[test]
    fn a_spurious_loss_restores_the_window() {
        let t0 = Instant::now();
        let mut cc = NewRenoBdpFloor::new(1000, 10);
        let t1 = t0 + Duration::from_millis(10);
        cc.on_congestion_event(t1, t0, 1000);
        assert_eq!((cc.window(), cc.ssthresh()), (5_000, 5_000));
        cc.on_spurious_loss(t1);
        assert_eq!((cc.window(), cc.ssthresh()), (10_000, u64::MAX));
        // Back in slow start: the next ACK grows the window again.
        ack(&mut cc, t1, t1, false);
        assert_eq!(cc.window(), 11_000);
    }

    #[test]
    fn paces_at_five_quarters_of_the_window_per_rtt() {
        let cc = NewRenoBdpFloor::new(1000, 10);
        let rate = cc.pacing_rate(Duration::from_millis(100));
        assert_eq!(rate, PacingRate::new(50_000, Duration::from_millis(400)));
    }
}
