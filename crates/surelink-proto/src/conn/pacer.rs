//! A token-bucket pacer that releases bytes at the congestion controller's
//! pacing rate.
//!
//! Tokens refill at the [`PacingRate`] the path's controller reports (5/4 of
//! window ÷ RTT for window-based controllers); the bucket holds what that rate
//! releases in its burst allowance (1.6 ms by default, 2 ms at window ÷ RTT;
//! a live-stream controller asks for about one video frame), at least 10
//! datagrams and at most one congestion window, so bursts stay short while
//! the timer rate stays low. [`Pacer::delay`] says when the next datagram may
//! leave.

use std::time::{Duration, Instant};

use super::congestion::PacingRate;

const MIN_BURST_PACKETS: u64 = 10;

/// Token-bucket pacer state.
#[derive(Debug, Clone)]
pub struct Pacer {
    tokens: u64,
    last: Instant,
}

impl Pacer {
    /// A full-ish pacer at `now`.
    pub fn new(now: Instant, mtu: u64) -> Self {
        Self {
            tokens: MIN_BURST_PACKETS * mtu,
            last: now,
        }
    }

    fn capacity(rate: PacingRate, window: u64, mtu: u64) -> u64 {
        let burst = (u128::from(rate.bytes) * rate.burst.as_nanos() / rate.per.as_nanos())
            .min(u128::from(u64::MAX)) as u64;
        burst.clamp(MIN_BURST_PACKETS * mtu, window.max(MIN_BURST_PACKETS * mtu))
    }

    /// When a datagram of `bytes` may be sent at `rate` with a congestion
    /// window of `window` bytes: `None` means now.
    pub fn delay(
        &mut self,
        now: Instant,
        bytes: u64,
        rate: PacingRate,
        window: u64,
        mtu: u64,
    ) -> Option<Instant> {
        let capacity = Self::capacity(rate, window, mtu);
        let per_ns = rate.per.as_nanos();
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let refill = elapsed * u128::from(rate.bytes) / per_ns;
        self.tokens = (u128::from(self.tokens) + refill).min(u128::from(capacity)) as u64;
        self.last = now;
        if self.tokens >= bytes {
            return None;
        }
        let missing = u128::from(bytes - self.tokens);
        let wait_ns = (missing * per_ns).div_ceil(u128::from(rate.bytes.max(1)));
        Some(now + Duration::from_nanos(wait_ns.min(u128::from(u64::MAX)) as u64))
    }

    /// Spends the tokens of a datagram that was sent.
    pub fn on_sent(&mut self, bytes: u64) {
        self.tokens = self.tokens.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_after_the_burst() {
        let t0 = Instant::now();
        let mtu = 1000;
        let mut p = Pacer::new(t0, mtu);
        let window = 100_000;
        // 1.25 MB/s: 5/4 of a 100 kB window per 100 ms.
        let rate = PacingRate::new(5 * window, Duration::from_millis(400));
        let mut sent = 0;
        while p.delay(t0, mtu, rate, window, mtu).is_none() {
            p.on_sent(mtu);
            sent += 1;
            assert!(sent < 1000);
        }
        assert_eq!(sent, 10);
        let wake = p.delay(t0, mtu, rate, window, mtu).unwrap();
        // 1000 bytes at 1.25 bytes/µs = 800 µs
        assert_eq!(wake - t0, Duration::from_micros(800));
        assert!(p.delay(wake, mtu, rate, window, mtu).is_none());
    }

    #[test]
    fn a_burst_allowance_lets_a_whole_frame_leave_after_a_quiet_period() {
        let t0 = Instant::now();
        let mtu = 1000;
        let mut p = Pacer::new(t0, mtu);
        // 600 kB/s with a 50 ms allowance: 30 datagrams may leave at once.
        let rate =
            PacingRate::new(600_000, Duration::from_secs(1)).with_burst(Duration::from_millis(50));
        let window = 1_000_000;
        let later = t0 + Duration::from_millis(100);
        let mut sent = 0;
        while p.delay(later, mtu, rate, window, mtu).is_none() {
            p.on_sent(mtu);
            sent += 1;
            assert!(sent < 1000);
        }
        assert_eq!(sent, 30);
    }
}
