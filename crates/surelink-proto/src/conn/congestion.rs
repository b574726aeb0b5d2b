//! NewReno congestion control (RFC 9002 §7) over bytes in flight.
//!
//! Slow start doubles the window each round trip, congestion avoidance adds one
//! datagram per window acknowledged, and a loss halves the window once per
//! recovery period (losses of packets sent before the period began are not
//! punished twice). The window does not grow while the sender is app-limited.

use std::time::Instant;

/// NewReno state.
#[derive(Debug, Clone)]
pub struct NewReno {
    window: u64,
    ssthresh: u64,
    recovery_start: Option<Instant>,
    acked_in_avoidance: u64,
    mss: u64,
    min_window: u64,
}

impl NewReno {
    /// A controller for datagrams of `mss` bytes starting at `initial_packets` datagrams.
    pub fn new(mss: u64, initial_packets: u64) -> Self {
        Self {
            window: mss * initial_packets,
            ssthresh: u64::MAX,
            recovery_start: None,
            acked_in_avoidance: 0,
            mss,
            min_window: 2 * mss,
        }
    }

    /// Current congestion window in bytes.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Slow-start threshold in bytes (`u64::MAX` until the first loss).
    pub fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    /// A packet of `bytes` sent at `sent` was acknowledged; `app_limited` says the
    /// sender was not using the window, in which case it does not grow.
    pub fn on_ack(&mut self, sent: Instant, bytes: u64, app_limited: bool) {
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

    /// Packets were declared lost; the newest of them was sent at `largest_lost_sent`.
    pub fn on_congestion_event(&mut self, now: Instant, largest_lost_sent: Instant) {
        if self
            .recovery_start
            .is_some_and(|start| largest_lost_sent <= start)
        {
            return;
        }
        self.recovery_start = Some(now);
        self.window = (self.window / 2).max(self.min_window);
        self.ssthresh = self.window;
        self.acked_in_avoidance = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slow_start_then_halve_once_per_recovery() {
        let t0 = Instant::now();
        let mut cc = NewReno::new(1000, 10);
        cc.on_ack(t0, 1000, false);
        assert_eq!(cc.window(), 11_000);
        cc.on_ack(t0, 1000, true);
        assert_eq!(cc.window(), 11_000, "app-limited: no growth");
        let t1 = t0 + Duration::from_millis(10);
        cc.on_congestion_event(t1, t0);
        assert_eq!(cc.window(), 5_500);
        cc.on_congestion_event(t1, t0 + Duration::from_millis(5));
        assert_eq!(cc.window(), 5_500, "same recovery period");
        cc.on_ack(t0, 1000, false);
        assert_eq!(cc.window(), 5_500, "sent before recovery: no growth");
        // Congestion avoidance: one mss per window acknowledged.
        let t2 = t1 + Duration::from_millis(1);
        for _ in 0..6 {
            cc.on_ack(t2, 1000, false);
        }
        assert_eq!(cc.window(), 6_500);
    }
}
