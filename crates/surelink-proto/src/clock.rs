//! Peer clock estimation from NTP-style four-timestamp exchanges.
//!
//! Every PING carries the sender's clock (t1); the PONG returns t1 with the
//! peer's receive (t2) and send (t3) times; the PONG's arrival is t4. Each
//! exchange gives an offset sample θ = ((t2−t1)+(t3−t4))/2 (peer clock minus
//! ours) and a round-trip delay δ = (t4−t1)−(t3−t2). Whatever the split of δ
//! between the two directions, a sample's error is at most δ/2 (the unknown
//! path asymmetry): that is the hard part of the error bound.
//!
//! **Offset.** As in NTP's clock filter (Mills), the samples least disturbed by
//! queueing are the ones with the lowest delay. The recent samples whose delay
//! is at most the median (but within 1 ms of the best, and always those within
//! 250 µs of it) are averaged: averaging shrinks the share of symmetric jitter.
//! Each is corrected along the measured drift to the present. The span of
//! samples averaged is chosen so that the drift's uncertainty × the span stays
//! within 100 µs: half a second while the drift is unknown (assumed within
//! ±100 ppm), growing to four seconds as the drift estimate sharpens.
//!
//! **Drift.** The frequency difference between the clocks is a weighted
//! least-squares slope over the best (lowest-delay) sample of each successive
//! window of eight. A point's error is at most half its queueing delay, so its
//! weight is 1 / (delay above the best point's + 300 µs)². Outliers are
//! rejected: after a first fit, points whose weighted residual exceeds three
//! robust standard deviations (1.4826 × the median absolute weighted residual)
//! are dropped and the line is fitted again. The slope's standard
//! error comes from the residual scatter of that fit. A fit needs three seconds
//! of history; it is used to correct samples as soon as its uncertainty (4
//! standard errors + 1 ppm) is below the ±100 ppm assumed without it, and it is
//! reported (`drift_ppm`, otherwise 0) once the standard error is at most 5 ppm.
//!
//! **Error bound.** The bound is the mean δ/2 of the averaged samples, plus the
//! drift's uncertainty (4 standard errors + 1 ppm once used, 100 ppm before)
//! times the mean time elapsed since those samples were taken, plus 2 µs of
//! timestamp rounding. Between samples the estimate is extrapolated along the
//! drift and the bound grows by the drift's uncertainty × the time since.
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
/// Shortest span of samples the estimate rests on, µs.
const SHORT_SPAN_US: f64 = 500_000.0;
/// Longest span (older samples are drift-corrected).
const LONG_SPAN_US: f64 = 4_000_000.0;
/// The span is chosen so that the drift's uncertainty × the span stays within
/// this (µs): at most 50 µs of bias on average.
const SPAN_BIAS_US: f64 = 100.0;
/// Samples whose delay is within this of the best one are always averaged, µs.
const GOOD_MARGIN_US: f64 = 250.0;
/// Samples more than this above the best one are never averaged (queueing), µs.
const BAD_MARGIN_US: f64 = 1_000.0;
/// Window minima kept for the drift regression.
const DRIFT_LEN: usize = 256;
/// Fewest window minima a drift fit rests on.
const MIN_DRIFT_POINTS: usize = 8;
/// Span of history needed before the drift is measured, µs.
const MIN_DRIFT_SPAN_US: f64 = 3_000_000.0;
/// The drift is reported once its standard error is at most this (ppm).
const REPORT_DRIFT_SE_PPM: f64 = 5.0;
/// The drift's uncertainty is this many standard errors...
const DRIFT_SE_FACTOR: f64 = 4.0;
/// ...plus this (ppm).
const DRIFT_FLOOR_PPM: f64 = 1.0;
/// Assumed bound on the frequency difference while the drift is not measured
/// more precisely than this (ppm).
const DEFAULT_DISPERSION_PPM: f64 = 100.0;
/// A window minimum's error scale is its delay above the best one plus this, µs.
const WEIGHT_FLOOR_US: f64 = 300.0;
/// Residuals beyond this many robust standard deviations are outliers.
const OUTLIER_SIGMAS: f64 = 3.0;
/// Timestamps are whole microseconds: rounding on both sides, µs.
const ROUNDING_US: f64 = 2.0;
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
    /// Peer clock frequency minus ours, parts per million (0 until measured
    /// precisely enough).
    pub drift_ppm: f64,
    /// Round-trip delay of the best sample the estimate rests on, µs.
    pub delay_us: f64,
    /// Samples taken since the last restart.
    pub samples: u64,
    /// Clock steps detected so far.
    pub steps: u64,
}

/// A sample as the filter keeps it.
#[derive(Debug, Clone, Copy)]
struct Point {
    /// Our clock at the middle of the exchange, µs.
    t: f64,
    /// θ, µs.
    offset: f64,
    /// δ, µs.
    delay: f64,
}

impl From<ClockSample> for Point {
    fn from(s: ClockSample) -> Self {
        Self {
            t: (s.t1 as f64 + s.t4 as f64) / 2.0,
            offset: s.offset(),
            delay: s.delay(),
        }
    }
}

/// A measured drift.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Drift {
    /// Slope, ppm.
    ppm: f64,
    /// Its standard error, ppm.
    se_ppm: f64,
}

/// The estimate as of the newest sample.
#[derive(Debug, Clone, Copy)]
struct Cached {
    /// Our clock at the newest sample (t4), µs.
    at: u64,
    estimate: ClockEstimate,
    /// The drift the estimate is extrapolated along (measured, even if not
    /// yet precise enough to report), ppm.
    drift_ppm: f64,
    /// Bound on the error of `drift_ppm`, ppm.
    drift_error_ppm: f64,
}

/// The estimator state.
#[derive(Debug, Clone, Default)]
pub struct ClockEstimator {
    points: VecDeque<Point>,
    /// Best sample of the current window of `FILTER_LEN`, and the window's size so far.
    window: Option<Point>,
    window_len: usize,
    /// The best sample of each past window, oldest first.
    minima: VecDeque<Point>,
    /// The drift, once measured.
    drift: Option<Drift>,
    cached: Option<Cached>,
    /// Reused buffer for medians.
    scratch: Vec<f64>,
    samples: u64,
    steps: u64,
    outliers: u32,
}

/// The median of `v` (reordered), 0 if empty.
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = (v.len() - 1) / 2;
    *v.select_nth_unstable_by(mid, f64::total_cmp).1
}

/// Weighted least-squares line through `(x, y, weight)` points: (slope,
/// intercept, weighted residual sum of squares, weighted Σ(x − x̄)², points),
/// or None for fewer than three points or no spread.
fn fit(points: impl Iterator<Item = (f64, f64, f64)> + Clone) -> Option<(f64, f64, f64, f64, f64)> {
    let (mut n, mut sw, mut sx, mut sy) = (0.0, 0.0, 0.0, 0.0);
    for (x, y, w) in points.clone() {
        n += 1.0;
        sw += w;
        sx += w * x;
        sy += w * y;
    }
    if n < 3.0 || sw <= 0.0 {
        return None;
    }
    let (mx, my) = (sx / sw, sy / sw);
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (x, y, w) in points {
        sxx += w * (x - mx) * (x - mx);
        sxy += w * (x - mx) * (y - my);
        syy += w * (y - my) * (y - my);
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let rss = (syy - slope * sxy).max(0.0);
    Some((slope, my - slope * mx, rss, sxx, n))
}

impl ClockEstimator {
    /// An estimator with no samples.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fits the drift over the window minima, rejecting outliers; None until
    /// the history is long enough.
    fn fit_drift(&mut self) -> Option<Drift> {
        let (first, last) = (self.minima.front()?, self.minima.back()?);
        if self.minima.len() < MIN_DRIFT_POINTS || last.t - first.t < MIN_DRIFT_SPAN_US {
            return None;
        }
        // Relative to the first point: absolute clocks do not fit in f64
        // squares. A point's error is at most its queueing delay over the
        // best one's / 2: weight by the inverse square of that excess.
        let (x0, y0) = (first.t, first.offset);
        let best = self
            .minima
            .iter()
            .map(|p| p.delay)
            .fold(f64::INFINITY, f64::min);
        let xyw = |p: &Point| {
            let sigma = p.delay - best + WEIGHT_FLOOR_US;
            (p.t - x0, p.offset - y0, 1.0 / (sigma * sigma))
        };
        let (slope, icept, _, _, _) = fit(self.minima.iter().map(xyw))?;
        // Residuals in units of each point's own scale.
        let residual = |p: &Point| {
            let (x, y, w) = xyw(p);
            (y - (icept + slope * x)) * w.sqrt()
        };
        self.scratch.clear();
        self.scratch
            .extend(self.minima.iter().map(|p| residual(p).abs()));
        // (Never below timestamp rounding at the best point's scale.)
        let limit = (OUTLIER_SIGMAS * 1.4826 * median(&mut self.scratch))
            .max(ROUNDING_US / WEIGHT_FLOOR_US);
        let kept = self
            .minima
            .iter()
            .filter(|p| residual(p).abs() <= limit)
            .map(xyw);
        let (slope, _, rss, sxx, n) = fit(kept)?;
        let se = (rss / (n - 2.0).max(1.0) / sxx).sqrt();
        Some(Drift {
            ppm: slope * 1e6,
            se_ppm: se * 1e6,
        })
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
                *self = Self {
                    steps: self.steps + 1,
                    scratch: std::mem::take(&mut self.scratch),
                    ..Self::default()
                };
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
        let p = Point::from(s);
        // Only the last `LONG_SPAN_US` (and at least the last `FILTER_LEN`
        // samples) can ever be averaged: older ones are dropped, and room is
        // made before pushing, so the buffer never grows past what it holds.
        while self.points.len() > FILTER_LEN
            && self
                .points
                .front()
                .is_some_and(|old| p.t - old.t > LONG_SPAN_US)
        {
            self.points.pop_front();
        }
        if self.points.len() == MAX_SAMPLES {
            self.points.pop_front();
        }
        self.points.push_back(p);
        if self.window.is_none_or(|w| p.delay < w.delay) {
            self.window = Some(p);
        }
        self.window_len += 1;
        if self.window_len == FILTER_LEN {
            if let Some(best) = self.window.take() {
                if self.minima.len() == DRIFT_LEN {
                    self.minima.pop_front();
                }
                self.minima.push_back(best);
            }
            self.window_len = 0;
            self.drift = self.fit_drift();
        }
        // The estimate changes only with a sample: compute it once, here.
        self.cached = self.compute(s.t4);
    }

    /// The estimate at our clock time `now_us`, if any sample was taken.
    pub fn estimate(&self, now_us: u64) -> Option<ClockEstimate> {
        let c = self.cached?;
        let age = now_us.saturating_sub(c.at) as f64;
        let e = c.estimate;
        Some(ClockEstimate {
            offset_us: e.offset_us + c.drift_ppm * age / 1e6,
            error_bound_us: e.error_bound_us + age * c.drift_error_ppm / 1e6,
            ..e
        })
    }

    /// Computes the estimate at our clock time `now_us` from the samples.
    fn compute(&mut self, now_us: u64) -> Option<Cached> {
        // A measured drift is used once its uncertainty is below the default
        // assumption; the span grows as the uncertainty shrinks.
        let (drift_ppm, drift_error_ppm) = self
            .drift
            .map(|d| (d.ppm, DRIFT_SE_FACTOR * d.se_ppm + DRIFT_FLOOR_PPM))
            .filter(|(_, err)| *err < DEFAULT_DISPERSION_PPM)
            .unwrap_or((0.0, DEFAULT_DISPERSION_PPM));
        let span = (SPAN_BIAS_US * 1e6 / drift_error_ppm).clamp(SHORT_SPAN_US, LONG_SPAN_US);
        let reported = self
            .drift
            .filter(|d| d.se_ppm <= REPORT_DRIFT_SE_PPM)
            .map_or(0.0, |d| d.ppm);
        // The samples of the last span, and at least the last `FILTER_LEN`.
        let newest = self.points.back()?.t;
        let first = self
            .points
            .partition_point(|p| newest - p.t > span)
            .min(self.points.len().saturating_sub(FILTER_LEN));
        let recent = self.points.range(first..);
        let (best, worst) = recent.clone().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
            (lo.min(p.delay), hi.max(p.delay))
        });
        let limit = if worst <= best + GOOD_MARGIN_US {
            // Every sample is within the good margin, the median too: the
            // limit is the margin, and the median need not be found.
            best + GOOD_MARGIN_US
        } else {
            self.scratch.clear();
            self.scratch.extend(recent.clone().map(|p| p.delay));
            median(&mut self.scratch)
                .min(best + BAD_MARGIN_US)
                .max(best + GOOD_MARGIN_US)
        };
        // Average the lower half by delay, drift-corrected to now.
        let now = now_us as f64;
        let (mut n, mut offset, mut asymmetry, mut age) = (0.0, 0.0, 0.0, 0.0);
        for p in recent.filter(|p| p.delay <= limit) {
            let a = (now - p.t).max(0.0);
            n += 1.0;
            offset += p.offset + drift_ppm * a / 1e6;
            asymmetry += p.delay / 2.0;
            age += a;
        }
        Some(Cached {
            at: now_us,
            estimate: ClockEstimate {
                offset_us: offset / n,
                error_bound_us: asymmetry / n + drift_error_ppm * age / n / 1e6 + ROUNDING_US,
                drift_ppm: reported,
                delay_us: best,
                samples: self.samples,
                steps: self.steps,
            },
            drift_ppm,
            drift_error_ppm,
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
    fn the_bound_covers_heavy_jitter_and_extrapolation() {
        // 200 µs each way plus up to 5 ms of queueing each way, 80 ppm fast:
        // the best samples have a small delay, so the bound is tight, and a
        // drift taken from noise would soon leave it behind.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut queueing = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 5_000
        };
        let (offset, ppm) = (3_000.0, 80.0);
        let truth = |t: u64| offset + ppm * t as f64 / 1e6;
        let mut e = ClockEstimator::new();
        let mut t1 = 1_000_000;
        for _ in 0..1_000 {
            e.add(exchange(
                t1,
                offset,
                ppm,
                200 + queueing(),
                200 + queueing(),
            ));
            let est = e.estimate(t1 + 20_000).unwrap();
            assert!(
                (est.offset_us - truth(t1 + 20_000)).abs() <= est.error_bound_us,
                "{est:?}"
            );
            if est.drift_ppm != 0.0 {
                assert!((est.drift_ppm - ppm).abs() <= 20.0, "{est:?}");
            }
            t1 += 20_000;
        }
        // No samples for up to a minute: the bound grows with the drift's uncertainty.
        for later in [1_000_000, 10_000_000, 60_000_000] {
            let est = e.estimate(t1 + later).unwrap();
            let err = (est.offset_us - truth(t1 + later)).abs();
            assert!(err <= est.error_bound_us, "{later}: {err} {est:?}");
        }
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
