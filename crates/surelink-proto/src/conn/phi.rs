//! The phi-accrual failure detector (Hayashibara et al., 2004).
//!
//! Instead of a fixed timeout, the detector learns the distribution of
//! inter-arrival times of packets on a path (mean and standard deviation over a
//! sliding window) and reports φ = −log10(P(a gap at least this long)), the
//! suspicion that the path failed. φ = 1 means a 10% chance that a live path
//! would be this quiet, φ = 8 one in 10^8. Heartbeats keep the arrivals regular
//! on idle paths; data and ACKs count as arrivals too. A minimum standard
//! deviation keeps a very regular path from being declared dead at the first
//! late packet. The normal CDF uses the logistic approximation also used by
//! Akka and Cassandra.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Inter-arrival samples kept.
const WINDOW: usize = 200;

/// Suspicion of one path.
#[derive(Debug, Clone)]
pub struct PhiDetector {
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<Instant>,
    min_std_ms: f64,
    /// Assumed mean before two arrivals were seen, ms.
    initial_ms: f64,
}

impl PhiDetector {
    /// A detector with a floor on the standard deviation and an assumed
    /// interval (the heartbeat interval) until real ones are measured.
    pub fn new(min_std: Duration, initial: Duration) -> Self {
        Self {
            intervals: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
            last: None,
            min_std_ms: min_std.as_secs_f64() * 1e3,
            initial_ms: initial.as_secs_f64() * 1e3,
        }
    }

    /// A packet arrived at `now`.
    pub fn heartbeat(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let ms = now.saturating_duration_since(last).as_secs_f64() * 1e3;
            self.intervals.push_back(ms);
            self.sum += ms;
            self.sum_sq += ms * ms;
            if self.intervals.len() > WINDOW {
                let old = self.intervals.pop_front().unwrap_or(0.0);
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        self.last = Some(now);
    }

    /// Forgets the history (a path that came back starts afresh).
    pub fn reset(&mut self, now: Instant) {
        self.intervals.clear();
        self.sum = 0.0;
        self.sum_sq = 0.0;
        self.last = Some(now);
    }

    fn mean_std(&self) -> (f64, f64) {
        let n = self.intervals.len() as f64;
        if n < 2.0 {
            return (self.initial_ms, self.min_std_ms.max(self.initial_ms / 4.0));
        }
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        (mean, var.sqrt().max(self.min_std_ms))
    }

    /// φ for a gap of `elapsed_ms` since the last arrival.
    fn phi_after(&self, elapsed_ms: f64) -> f64 {
        let (mean, std) = self.mean_std();
        let y = (elapsed_ms - mean) / std;
        let e = (-y * (1.5976 + 0.070_566 * y * y)).exp();
        // P(gap > elapsed) = 1 - F(y); computed stably for both tails.
        let p_later = if elapsed_ms > mean {
            e / (1.0 + e)
        } else {
            1.0 - 1.0 / (1.0 + e)
        };
        -p_later.max(1e-300).log10()
    }

    /// Current suspicion (0 before any arrival).
    pub fn phi(&self, now: Instant) -> f64 {
        match self.last {
            None => 0.0,
            Some(last) => self.phi_after(now.saturating_duration_since(last).as_secs_f64() * 1e3),
        }
    }

    /// When φ will reach `threshold` if nothing arrives.
    pub fn crossing(&self, threshold: f64) -> Option<Instant> {
        let last = self.last?;
        let (mean, std) = self.mean_std();
        // φ is increasing in the gap: bisect between the mean and a far bound.
        let (mut lo, mut hi) = (0.0f64, mean + 60.0 * std);
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if self.phi_after(mid) >= threshold {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        // Round up, so that φ at the returned instant really is at the threshold.
        Some(last + Duration::from_secs_f64(hi / 1e3) + Duration::from_micros(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn phi_grows_with_silence_and_crossing_agrees() {
        let t0 = Instant::now();
        let mut d = PhiDetector::new(2 * MS, 10 * MS);
        for i in 0..100 {
            d.heartbeat(t0 + 10 * MS * i);
        }
        let last = t0 + 990 * MS;
        assert!(d.phi(last + 5 * MS) < 0.5);
        assert!(d.phi(last + 30 * MS) > 8.0);
        let cross = d.crossing(8.0).unwrap();
        assert!(
            cross > last + 10 * MS && cross < last + 30 * MS,
            "{:?}",
            cross - last
        );
        assert!(d.phi(cross) >= 8.0 - 1e-6);
        assert!(d.phi(cross - MS) < 8.0);
    }

    #[test]
    fn jittery_paths_are_judged_more_leniently() {
        let t0 = Instant::now();
        let mut steady = PhiDetector::new(MS, 10 * MS);
        let mut jittery = PhiDetector::new(MS, 10 * MS);
        let mut t = t0;
        for i in 0..200u32 {
            steady.heartbeat(t0 + 10 * MS * i);
            t += MS * (5 + (i * 7919) % 11);
            jittery.heartbeat(t);
        }
        let gap = 25 * MS;
        assert!(steady.phi(t0 + 10 * MS * 199 + gap) > jittery.phi(t + gap));
    }
}
