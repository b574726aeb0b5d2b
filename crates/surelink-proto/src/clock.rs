//! Peer clock estimation from NTP-style four-timestamp exchanges.
//!
//! Every PING carries the sender's clock (t1); the PONG returns t1 with the
//! peer's receive (t2) and send (t3) times; the PONG's arrival is t4. Each
//! exchange gives an offset sample θ = ((t2−t1)+(t3−t4))/2 (peer clock minus
//! ours) and a round-trip delay δ = (t4−t1)−(t3−t2). As in NTP's clock filter
//! (Mills), the sample with the lowest delay among the last eight is the best
//! estimate of the offset: it was least disturbed by queueing. Its error is at
//! most δ/2 (the unknown path asymmetry), plus the drift accumulated since it
//! was taken (dispersion). The recent samples whose delay is at most the
//! median (but within 1 ms of the best) are averaged: the lower half is least
//! disturbed by queueing, and averaging shrinks the share of symmetric jitter. The frequency difference (drift) between the clocks is
//! the least-squares slope over the best sample of each successive window of
//! eight; once known, samples are corrected along it and four seconds are used.
//!
//! A peer clock step (a sample far outside the current estimate, repeated) is
//! detected: the filter restarts instead of averaging across the step.
//!
//! All times are microseconds on each side's clock; the estimator is fed and
//! never reads a clock.

use std::collections::VecDeque;

/// Samples in each drift window (its best one feeds the drift regression), and
/// the fewest samples the filter considers.
const FILTER_LEN: usize = 8;
/// Most samples kept.
const MAX_SAMPLES: usize = 512;
/// Span of samples the estimate rests on before the drift is known (µs): short,
/// so an unknown drift cannot bias it much.
const SHORT_SPAN_US: u64 = 500_000;
/// Span once the drift is known (older samples are drift-corrected).
const LONG_SPAN_US: u64 = 4_000_000;
/// Samples whose delay is within this of the best one are always averaged, µs.
const GOOD_MARGIN_US: f64 = 250.0;
/// Samples more than this above the best one are never averaged (queueing), µs.
const BAD_MARGIN_US: f64 = 1_000.0;
/// Filtered offsets kept for the drift regression.
const DRIFT_LEN: usize = 256;
/// Span of history needed before the drift is measured, µs.
const MIN_DRIFT_SPAN_US: f64 = 3_000_000.0;
/// Assumed worst-case frequency error when no drift is measured yet (ppm).
const DEFAULT_DISPERSION_PPM: f64 = 100.0;
/// Consecutive outliers that make a step.
const STEP_OUTLIERS: u32 = 3;
/// A sample whose offset differs from the estimate by more than this many
/// error bounds (and at least `STEP_MIN_US`) is an outlier.
const STEP_FACTOR: f64 = 8.0;
const STEP_MIN_US: f64 = 5_000.0;

/// One four-timestamp exchange, µs on the respective clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// Our clock when the PING left.
    pub t1: u64,
    /// Peer clock when the PING arrived.
    pub t2: u64,
    /// Peer clock when the PONG left.
    pub t3: u64,
    /// Our clock when the PONG arrived.
    pub t4: u64,
}

impl ClockSample {
    /// θ: how far the peer's clock is ahead of ours, µs.
    pub fn offset(&self) -> f64 {
        ((self.t2 as f64 - self.t1 as f64) + (self.t3 as f64 - self.t4 as f64)) / 2.0
    }

    /// δ: round-trip delay without the peer's processing time, µs (≥ 0).
    pub fn delay(&self) -> f64 {
        ((self.t4 as f64 - self.t1 as f64) - (self.t3 as f64 - self.t2 as f64)).max(0.0)
    }
}

/// What is known about the peer's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockEstimate {
    /// Peer clock minus our clock, µs (positive: the peer is ahead).
    pub offset_us: f64,
    /// Bound on |true offset − `offset_us`|, µs.
    pub error_bound_us: f64,
    /// Peer clock frequency minus ours, parts per million.
    pub drift_ppm: f64,
    /// Round-trip delay of the sample the estimate rests on, µs.
    pub delay_us: f64,
    /// Samples taken since the last restart.
    pub samples: u64,
    /// Clock steps detected so far.
    pub steps: u64,
}

/// The estimator state.
#[derive(Debug, Clone, Default)]
pub struct ClockEstimator {
    filter: VecDeque<(u64, ClockSample)>,
    /// Best sample of the current window of `FILTER_LEN`, and the window's size so far.
    window: Option<ClockSample>,
    window_len: usize,
    history: VecDeque<(f64, f64)>,
    /// The estimate as of the newest sample: (our clock then, estimate).
    cached: Option<(u64, ClockEstimate)>,
    samples: u64,
    steps: u64,
    outliers: u32,
}

impl ClockEstimator {
    /// An estimator with no samples.
    pub fn new() -> Self {
        Self::default()
    }

    /// The samples the estimate rests on: the last second (four once the
    /// drift is known), and at least the last eight.
    fn window(&self, drift: Option<f64>) -> Vec<&ClockSample> {
        let span = if drift.is_some() {
            LONG_SPAN_US
        } else {
            SHORT_SPAN_US
        };
        let newest = self.filter.back().map_or(0, |(t, _)| *t);
        let n = self.filter.len();
        self.filter
            .iter()
            .enumerate()
            .filter(|(i, (t, _))| n - i <= FILTER_LEN || newest.saturating_sub(*t) <= span)
            .map(|(_, (_, s))| s)
            .collect()
    }

    /// Drift estimate from the filtered history: least-squares slope, ppm.
    fn drift_ppm(&self) -> Option<f64> {
        if self.history.len() < 3 {
            return None;
        }
        let n = self.history.len() as f64;
        let (mx, my) = self
            .history
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (x, y) in &self.history {
            sxy += (x - mx) * (y - my);
            sxx += (x - mx) * (x - mx);
        }
        // Only a long span gives a slope precise enough to extrapolate with.
        (sxx > 0.0 && self.history.back()?.0 - self.history.front()?.0 >= MIN_DRIFT_SPAN_US)
            .then(|| sxy / sxx * 1e6)
    }

    /// Adds a sample; `now` is our clock (µs) when it was taken (t4).
    /// Returns true if a peer clock step was detected (the filter restarted).
    pub fn add(&mut self, s: ClockSample) -> bool {
        if s.t4 < s.t1 || s.t3 < s.t2 {
            return false; // nonsense (or a step mid-exchange): ignore
        }
        if let Some(est) = self.estimate(s.t4) {
            let dev = (s.offset() - est.offset_us).abs();
            let limit = (est.error_bound_us + s.delay() / 2.0) * STEP_FACTOR;
            if dev > limit.max(STEP_MIN_US) {
                self.outliers += 1;
                if self.outliers < STEP_OUTLIERS {
                    return false;
                }
                // Consistent outliers: the peer's clock stepped.
                self.filter.clear();
                self.history.clear();
                self.window = None;
                self.window_len = 0;
                self.cached = None;
                self.samples = 0;
                self.steps += 1;
                self.outliers = 0;
                self.push(s);
                return true;
            }
        }
        self.outliers = 0;
        self.push(s);
        false
    }

    fn push(&mut self, s: ClockSample) {
        self.samples += 1;
        self.filter.push_back((s.t4, s));
        if self.filter.len() > MAX_SAMPLES {
            self.filter.pop_front();
        }
        self.update_drift_history(s);
        // The estimate changes only with a sample: compute it once, here.
        self.cached = self.compute(s.t4).map(|e| (s.t4, e));
    }

    fn update_drift_history(&mut self, s: ClockSample) {
        if self.window.is_none_or(|w| s.delay() < w.delay()) {
            self.window = Some(s);
        }
        self.window_len += 1;
        if self.window_len == FILTER_LEN {
            if let Some(best) = self.window.take() {
                self.history.push_back((best.t4 as f64, best.offset()));
                if self.history.len() > DRIFT_LEN {
                    self.history.pop_front();
                }
            }
            self.window_len = 0;
        }
    }

    /// The estimate at our clock time `now_us`, if any sample was taken.
    pub fn estimate(&self, now_us: u64) -> Option<ClockEstimate> {
        let (at, e) = self.cached?;
        let age = now_us.saturating_sub(at) as f64;
        let dispersion_ppm = if e.drift_ppm == 0.0 {
            DEFAULT_DISPERSION_PPM
        } else {
            5.0
        };
        Some(ClockEstimate {
            offset_us: e.offset_us + e.drift_ppm * age / 1e6,
            error_bound_us: e.error_bound_us + age * dispersion_ppm / 1e6,
            ..e
        })
    }

    /// Computes the estimate at our clock time `now_us` from the samples.
    fn compute(&self, now_us: u64) -> Option<ClockEstimate> {
        let drift = self.drift_ppm();
        let window = self.window(drift);
        let best = *window
            .iter()
            .min_by(|a, b| a.delay().total_cmp(&b.delay()))?;
        let mut delays: Vec<f64> = window.iter().map(|s| s.delay()).collect();
        delays.sort_by(f64::total_cmp);
        let limit = delays[(delays.len() - 1) / 2]
            .min(best.delay() + BAD_MARGIN_US)
            .max(best.delay() + GOOD_MARGIN_US);
        let at_now = |s: &ClockSample| {
            let age = now_us.saturating_sub(s.t4) as f64;
            s.offset() + drift.unwrap_or(0.0) * age / 1e6
        };
        // Average the lower half by delay (drift-corrected to now).
        let (sum, n) = window
            .iter()
            .filter(|s| s.delay() <= limit)
            .fold((0.0, 0.0), |(sum, n), s| (sum + at_now(s), n + 1.0));
        let offset = sum / n;
        let age = now_us.saturating_sub(best.t4) as f64;
        let dispersion = match drift {
            Some(_) => age * 5.0 / 1e6,
            None => age * DEFAULT_DISPERSION_PPM / 1e6,
        };
        Some(ClockEstimate {
            offset_us: offset,
            error_bound_us: best.delay() / 2.0 + dispersion,
            drift_ppm: drift.unwrap_or(0.0),
            delay_us: best.delay(),
            samples: self.samples,
            steps: self.steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer clock `offset` µs ahead with `ppm` drift; path delays `fwd`/`back` µs.
    fn exchange(t1: u64, offset: f64, ppm: f64, fwd: u64, back: u64) -> ClockSample {
        let peer = |t: u64| (t as f64 * (1.0 + ppm / 1e6) + offset) as u64;
        let t2 = peer(t1 + fwd);
        let t3 = peer(t1 + fwd + 50);
        ClockSample {
            t1,
            t2,
            t3,
            t4: t1 + fwd + 50 + back,
        }
    }

    #[test]
    fn symmetric_paths_give_the_true_offset() {
        let mut e = ClockEstimator::new();
        for i in 0..20 {
            e.add(exchange(
                1_000_000 + i * 100_000,
                2_500_000.0,
                0.0,
                5_000,
                5_000,
            ));
        }
        let est = e.estimate(3_000_000).unwrap();
        assert!((est.offset_us - 2_500_000.0).abs() < 2.0, "{est:?}");
        assert!(est.error_bound_us >= 5_000.0 - 1.0);
    }

    #[test]
    fn min_delay_sample_wins_and_bound_covers_asymmetry() {
        let mut e = ClockEstimator::new();
        // Queueing delay on the way back inflates some samples.
        for (i, extra) in [9000u64, 0, 4000, 7000, 2000, 8000, 6000, 3000]
            .iter()
            .enumerate()
        {
            e.add(exchange(
                1_000_000 + i as u64 * 10_000,
                -700.0,
                0.0,
                3_000,
                3_000 + extra,
            ));
        }
        let est = e.estimate(1_100_000).unwrap();
        assert!((est.offset_us + 700.0).abs() < 2.0, "{est:?}");
        // Asymmetric path: the true offset must lie within the bound.
        let mut e = ClockEstimator::new();
        for i in 0..10 {
            e.add(exchange(1_000_000 + i * 10_000, 1_000.0, 0.0, 1_000, 9_000));
        }
        let est = e.estimate(1_100_000).unwrap();
        assert!(
            (est.offset_us - 1_000.0).abs() <= est.error_bound_us,
            "{est:?}"
        );
    }

    #[test]
    fn drift_is_measured() {
        let mut e = ClockEstimator::new();
        for i in 0..400 {
            e.add(exchange(1_000_000 + i * 50_000, 0.0, 100.0, 2_000, 2_000));
        }
        let est = e.estimate(21_000_000).unwrap();
        assert!((est.drift_ppm - 100.0).abs() < 5.0, "{est:?}");
    }

    #[test]
    fn a_step_is_detected_and_the_filter_restarts() {
        let mut e = ClockEstimator::new();
        for i in 0..20 {
            assert!(!e.add(exchange(1_000_000 + i * 100_000, 0.0, 0.0, 1_000, 1_000)));
        }
        let mut stepped = false;
        for i in 20..30 {
            stepped |= e.add(exchange(
                1_000_000 + i * 100_000,
                3_000_000.0,
                0.0,
                1_000,
                1_000,
            ));
        }
        assert!(stepped);
        let est = e.estimate(4_000_000).unwrap();
        assert_eq!(est.steps, 1);
        assert!((est.offset_us - 3_000_000.0).abs() < 2.0);
        // A single wild sample is not a step.
        assert!(!e.add(exchange(4_100_000, 0.0, 0.0, 1_000, 1_000)));
        assert_eq!(e.estimate(4_100_000).unwrap().steps, 1);
    }

    #[test]
    fn nonsense_samples_are_ignored() {
        let mut e = ClockEstimator::new();
        assert!(!e.add(ClockSample {
            t1: 10,
            t2: 5,
            t3: 4,
            t4: 20
        }));
        assert!(!e.add(ClockSample {
            t1: 10,
            t2: 5,
            t3: 6,
            t4: 9
        }));
        assert!(e.estimate(100).is_none());
    }
}
