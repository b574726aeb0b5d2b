//! A token-bucket pacer that spreads a congestion window over a round trip.
//!
//! Tokens refill at 1.25 × window / RTT; the bucket holds enough for about 2 ms
//! of sending (at least 10 datagrams), so bursts stay short while the timer rate
//! stays low. [`Pacer::delay`] says when the next datagram may leave.

use std::time::{Duration, Instant};

const BURST_INTERVAL: Duration = Duration::from_millis(2);
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

    fn capacity(window: u64, rtt: Duration, mtu: u64) -> u64 {
        let rtt_ns = rtt.as_nanos().max(1);
        let burst = (u128::from(window) * BURST_INTERVAL.as_nanos() / rtt_ns) as u64;
        burst.clamp(MIN_BURST_PACKETS * mtu, window.max(MIN_BURST_PACKETS * mtu))
    }

    /// When a datagram of `bytes` may be sent: `None` means now.
    pub fn delay(
        &mut self,
        now: Instant,
        bytes: u64,
        window: u64,
        rtt: Duration,
        mtu: u64,
    ) -> Option<Instant> {
        let capacity = Self::capacity(window, rtt, mtu);
        let rtt_ns = rtt.as_nanos().max(1);
        // rate = 5/4 * window / rtt  bytes per ns
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let refill = elapsed * 5 * u128::from(window) / (4 * rtt_ns);
        self.tokens = (u128::from(self.tokens) + refill).min(u128::from(capacity)) as u64;
        self.last = now;
        if self.tokens >= bytes {
            return None;
        }
        let missing = u128::from(bytes - self.tokens);
        let wait_ns = (missing * 4 * rtt_ns).div_ceil(5 * u128::from(window.max(1)));
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
        let rtt = Duration::from_millis(100);
        let window = 100_000; // 1.25 MB/s paced
        let mut sent = 0;
        while p.delay(t0, mtu, window, rtt, mtu).is_none() {
            p.on_sent(mtu);
            sent += 1;
            assert!(sent < 1000);
        }
        assert_eq!(sent, 10);
        let wake = p.delay(t0, mtu, window, rtt, mtu).unwrap();
        // 1000 bytes at 1.25 bytes/µs = 800 µs
        assert_eq!(wake - t0, Duration::from_micros(800));
        assert!(p.delay(wake, mtu, window, rtt, mtu).is_none());
    }
}
