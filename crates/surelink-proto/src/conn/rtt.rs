//! Round-trip time estimation (RFC 6298 / RFC 9002 §5).
//!
//! Fed one sample per newly acknowledged largest packet; yields the smoothed RTT,
//! its variance and the probe timeout base.

use std::time::Duration;

/// Timer granularity assumed for loss and probe timers.
pub const GRANULARITY: Duration = Duration::from_millis(1);

/// Smoothed RTT, variance and minimum.
#[derive(Debug, Clone, Copy)]
pub struct RttEstimator {
    latest: Duration,
    smoothed: Option<Duration>,
    var: Duration,
    min: Duration,
    initial: Duration,
}

impl RttEstimator {
    /// An estimator that assumes `initial` until the first sample.
    pub fn new(initial: Duration) -> Self {
        Self {
            latest: initial,
            smoothed: None,
            var: initial / 2,
            min: Duration::MAX,
            initial,
        }
    }

    /// Records a sample: `rtt` measured, of which `ack_delay` was spent at the peer.
    pub fn update(&mut self, rtt: Duration, ack_delay: Duration) {
        self.latest = rtt;
        self.min = self.min.min(rtt);
        // Subtract the peer's ack delay unless that would go below the minimum.
        let adjusted = if rtt >= self.min + ack_delay {
            rtt - ack_delay
        } else {
            rtt
        };
        match self.smoothed {
            None => {
                self.smoothed = Some(adjusted);
                self.var = adjusted / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(adjusted);
                self.var = (self.var * 3 + diff) / 4;
                self.smoothed = Some((srtt * 7 + adjusted) / 8);
            }
        }
    }

    /// Smoothed RTT (the initial guess before any sample).
    pub fn smoothed(&self) -> Duration {
        self.smoothed.unwrap_or(self.initial)
    }

    /// RTT variance.
    pub fn var(&self) -> Duration {
        self.var
    }

    /// Most recent sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// Smallest sample seen (the initial guess before any sample).
    pub fn min(&self) -> Duration {
        if self.min == Duration::MAX {
            self.initial
        } else {
            self.min
        }
    }

    /// Probe timeout before backoff and before adding the peer's max ack delay.
    pub fn pto_base(&self) -> Duration {
        self.smoothed() + (self.var * 4).max(GRANULARITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn converges_to_a_steady_rtt() {
        let mut r = RttEstimator::new(100 * MS);
        for _ in 0..50 {
            r.update(20 * MS, Duration::ZERO);
        }
        assert_eq!(r.smoothed(), 20 * MS);
        assert!(r.var() < MS);
        assert_eq!(r.min(), 20 * MS);
        assert_eq!(r.pto_base(), 21 * MS);
    }

    #[test]
    fn ack_delay_is_subtracted_only_above_min() {
        let mut r = RttEstimator::new(100 * MS);
        r.update(10 * MS, Duration::ZERO);
        r.update(30 * MS, 5 * MS);
        // 25 ms adjusted sample: 7/8*10 + 1/8*25
        assert_eq!(r.smoothed(), (10 * MS * 7 + 25 * MS) / 8);
        r.update(11 * MS, 5 * MS); // 11 < 10 + 5: not adjusted
        assert_eq!(r.latest(), 11 * MS);
    }
}
