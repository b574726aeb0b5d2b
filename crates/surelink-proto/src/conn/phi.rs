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
//!
//! What the detector learns is the heartbeat process, not the traffic: the
//! interval samples are the gaps between the peer's heartbeat PINGs on the
//! path (sent every heartbeat interval whatever else flows), while φ measures
//! the silence since the latest packet of any kind (every packet proves the
//! path alive). Learning from every packet instead, a bursty stream (a 30 fps
//! video, ~13 packets per frame) teaches the detector a mean interval of
//! ~2 ms and a tiny deviation, so the normal 33 ms gap between two frames —
//! let alone a lost heartbeat — looks like death, and a stream that stops
//! leaves plain heartbeats looking late. Learning the heartbeats, an idle path
//! is judged exactly as before, a busy one can only look more alive, random
//! loss of heartbeats widens the learned deviation as it should, and a real
//! cut is detected within the same few heartbeat intervals on both.
//!
//! The peer's heartbeat interval is not fixed: an idle, healthy path backs
//! its heartbeats off (up to `Config::heartbeat_max_interval`) and each PING
//! announces the interval to the next one. The detector therefore learns
//! each gap *relative to the interval the peer announced for it* (a ratio,
//! 1.0 for a heartbeat exactly on time) and judges the current silence
//! against the latest announced interval: expected gap = mean ratio ×
//! announced interval, deviation = deviation of the ratios × announced
//! interval, never below the floor (`phi_min_std_dev`, and a tenth of the
//! announced interval). While the interval stays the same this
//! is exactly the absolute model; when it grows, the detector expects the
//! longer gap at once instead of suspecting it. A heartbeat that arrives
//! with a *shorter* announced interval than the previous one (the peer
//! went back to fast heartbeats because data flows) cut its schedule short
//! and is no sample of lateness: it only updates the announced interval.
//!
//! Driven by the connection: `heard` on every authenticated packet on the
//! path, `heartbeat` for each heartbeat PING in one (with the interval it
//! announces), `reset` when a path is (re)validated, `phi`/`crossing` when
//! the path is checked and its check timer is scheduled.

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Inter-arrival samples kept.
const WINDOW: usize = 200;
/// Bounds on an announced heartbeat interval that the detector believes (a
/// peer announcing nonsense only makes its own path judged oddly).
const ANNOUNCED_MS: (f64, f64) = (1.0, 60_000.0);
/// Floor on the deviation relative to the announced interval. A backed-off
/// heartbeat (1 s) from a clean path teaches a deviation far below the
/// absolute floor, so a heartbeat sent 20 ms late, as a driver busy with
/// thousands of sessions sends it, looked like a failing path; the sender's
/// lateness grows with its interval, not with the path. At 20 ms heartbeats
/// (data flowing, fresh connections) the absolute floor is the larger.
const MIN_STD_RATIO: f64 = 0.1;
/// Coefficients of the logistic approximation of the normal tail:
/// P(X > y) ≈ e / (1 + e) with e = exp(−y(A + B y²)).
const A: f64 = 1.5976;
const B: f64 = 0.070_566;

/// Suspicion of one path.
#[derive(Debug, Clone)]
pub struct PhiDetector {
    /// Heartbeat gaps, each divided by the interval announced for it.
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    /// The latest packet heard.
    last: Option<Instant>,
    /// The latest heartbeat, where the next interval sample starts.
    last_heartbeat: Option<Instant>,
    min_std_ms: f64,
    /// The peer's latest announced heartbeat interval, ms (the configured
    /// interval until the first heartbeat).
    announced_ms: f64,
    /// `crossing` results since the last arrival, by threshold: the timer code
    /// asks on every poll, and the answer only changes when a packet arrives.
    crossings: [Cell<Option<(f64, Instant)>>; 2],
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
            last_heartbeat: None,
            min_std_ms: min_std.as_secs_f64() * 1e3,
            announced_ms: initial.as_secs_f64() * 1e3,
            crossings: Default::default(),
        }
    }

    /// A packet was heard at `now`: the silence starts again.
    pub fn heard(&mut self, now: Instant) {
        self.last = Some(now);
        self.forget_crossings();
    }

    /// A heartbeat arrived at `now` (its packet is heard too), announcing
    /// that the next one follows within `interval`: the gap since the
    /// previous heartbeat, relative to the interval announced for it, is a
    /// sample unless the peer shortened its interval.
    pub fn heartbeat(&mut self, now: Instant, interval: Duration) {
        self.heard(now);
        let announced = (interval.as_secs_f64() * 1e3).clamp(ANNOUNCED_MS.0, ANNOUNCED_MS.1);
        if let Some(previous) = self.last_heartbeat {
            if announced >= self.announced_ms {
                let ms = now.saturating_duration_since(previous).as_secs_f64() * 1e3;
                let ratio = ms / self.announced_ms;
                self.intervals.push_back(ratio);
                self.sum += ratio;
                self.sum_sq += ratio * ratio;
                if self.intervals.len() > WINDOW {
                    let old = self.intervals.pop_front().unwrap_or(0.0);
                    self.sum -= old;
                    self.sum_sq -= old * old;
                }
            }
        }
        self.announced_ms = announced;
        self.last_heartbeat = Some(now);
    }

    fn forget_crossings(&self) {
        for c in &self.crossings {
            c.set(None);
        }
    }

    /// Forgets the history (a path that came back starts afresh).
    pub fn reset(&mut self, now: Instant) {
        self.intervals.clear();
        self.sum = 0.0;
        self.sum_sq = 0.0;
        self.last = Some(now);
        // The peer may not be sending heartbeats yet (it is still validating
        // the path): sampling starts with its first heartbeat.
        self.last_heartbeat = None;
        self.forget_crossings();
    }

    /// Expected gap and its deviation, ms, at the announced interval.
    fn mean_std(&self) -> (f64, f64) {
        let n = self.intervals.len() as f64;
        let scale = self.announced_ms;
        if n < 2.0 {
            return (scale, self.min_std_ms.max(scale / 4.0));
        }
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let floor = self.min_std_ms.max(scale * MIN_STD_RATIO);
        (mean * scale, (var.sqrt() * scale).max(floor))
    }

    /// φ for a gap of `elapsed_ms` since the last arrival.
    fn phi_after(&self, elapsed_ms: f64) -> f64 {
        let (mean, std) = self.mean_std();
        let y = (elapsed_ms - mean) / std;
        let e = (-y * (A + B * y * y)).exp();
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
        if let Some(t) = self
            .crossings
            .iter()
            .find_map(|c| c.get().filter(|(th, _)| *th == threshold).map(|(_, t)| t))
        {
            return Some(t);
        }
        let t = self.compute_crossing(threshold)?;
        if let Some(free) = self.crossings.iter().find(|c| c.get().is_none()) {
            free.set(Some((threshold, t)));
        }
        Some(t)
    }

    fn compute_crossing(&self, threshold: f64) -> Option<Instant> {
        let last = self.last?;
        let (mean, std) = self.mean_std();
        // φ(gap) = threshold ⇔ P(later) = p = 10^-threshold. With the logistic
        // approximation, P(later) = e / (1 + e), e = exp(−y(A + B y²)) and
        // y = (gap − mean) / std, so y is the one real root of the monotone
        // cubic B y³ + A y + ln(p / (1 − p)) = 0 (Cardano's formula).
        let p = 10f64.powf(-threshold.min(300.0));
        let ln_odds = p.ln() - (-p).ln_1p();
        let (a, q) = (A / B, ln_odds / B);
        let d = (q * q / 4.0 + a * a * a / 27.0).sqrt();
        let y = (-q / 2.0 + d).cbrt() + (-q / 2.0 - d).cbrt();
        let gap_ms = (mean + y * std).max(0.0);
        // Round up, so that φ at the returned instant really is at the threshold.
        Some(last + Duration::from_secs_f64(gap_ms / 1e3) + Duration::from_micros(1))
    }
}

/// Measures the detector's trade-off on a simulated path: heartbeats every
/// `interval` plus an exponentially distributed queueing delay of mean
/// `jitter` (a heavy enough tail to make false suspicions possible), `beats`
/// of them. Returns
/// (false suspicions per hour: gaps in which phi reached `threshold` although
/// the next heartbeat came, mean time from the last heartbeat to phi reaching
/// `threshold` — the detection time of a failure right after a heartbeat).
/// The minimum standard deviation is the default configuration's.
pub fn phi_trade_off(
    interval: Duration,
    jitter: Duration,
    threshold: f64,
    beats: u32,
    start: Instant,
) -> (f64, Duration) {
    let min_std = crate::Config::default().phi_min_std_dev;
    let mut d = PhiDetector::new(min_std, interval);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut t = start;
    let (mut false_positives, mut detect_sum) = (0u32, Duration::ZERO);
    let mut delay = Duration::ZERO;
    for _ in 0..beats {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Arrival = send time + exponential delay; keep FIFO order.
        let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let new_delay = jitter.mul_f64(-u.ln());
        let next = (t + interval + new_delay).max(t + interval.saturating_sub(delay));
        delay = new_delay;
        if let Some(cross) = d.crossing(threshold) {
            if cross < next {
                false_positives += 1;
            }
            detect_sum += cross.saturating_duration_since(t);
        }
        d.heartbeat(next, interval);
        t = next;
    }
    let hours = t.duration_since(start).as_secs_f64() / 3600.0;
    (
        f64::from(false_positives) / hours.max(1e-9),
        detect_sum / beats.max(1),
    )
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
            d.heartbeat(t0 + 10 * MS * i, 10 * MS);
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
    fn crossing_is_where_phi_reaches_the_threshold() {
        let t0 = Instant::now();
        for (interval_ms, jitter) in [(10u32, 0u32), (20, 3), (5, 11)] {
            let mut d = PhiDetector::new(MS, 10 * MS);
            let mut t = t0;
            for i in 0..100u32 {
                t += MS * interval_ms
                    + Duration::from_micros(u64::from((i * 7919) % (jitter * 1000 + 1)));
                d.heartbeat(t, 10 * MS);
            }
            for threshold in [0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 30.0] {
                let cross = d.crossing(threshold).unwrap();
                assert!(d.phi(cross) >= threshold, "{threshold}: {}", d.phi(cross));
                let before = cross - Duration::from_micros(3);
                assert!(d.phi(before) < threshold, "{threshold}: {}", d.phi(before));
            }
        }
    }

    #[test]
    fn higher_thresholds_trade_detection_time_for_fewer_false_suspicions() {
        let t0 = Instant::now();
        let rows: Vec<_> = [2.0, 4.0, 8.0]
            .iter()
            .map(|&th| phi_trade_off(20 * MS, 5 * MS, th, 20_000, t0))
            .collect();
        for w in rows.windows(2) {
            assert!(w[1].0 <= w[0].0, "false positives must not grow: {rows:?}");
            assert!(w[1].1 > w[0].1, "detection must take longer: {rows:?}");
        }
        // At the default suspicion level (4) a path with 5 ms of mean
        // queueing jitter is suspected within a few heartbeat intervals.
        assert!(rows[1].1 < 100 * MS, "{rows:?}");
    }

    #[test]
    fn bursty_traffic_does_not_teach_the_detector_to_expect_tiny_gaps() {
        // Two seconds of a 30 fps stream of 13-packet frames (100 µs apart)
        // and a heartbeat every 20 ms.
        let t0 = Instant::now();
        let frame = |f: u32, p: u32| t0 + 33 * MS * f + Duration::from_micros(100) * p;
        let beat = |h: u32| t0 + 20 * MS * h + Duration::from_micros(500);
        let mut arrivals: Vec<(Instant, bool)> = (0..60u32)
            .flat_map(|f| (0..13u32).map(move |p| (frame(f, p), false)))
            .chain((0..99u32).map(|h| (beat(h), true)))
            .collect();
        arrivals.sort();
        let last = arrivals.last().unwrap().0;
        let mut d = PhiDetector::new(5 * MS, 20 * MS);
        // The former model: every packet is an interval sample.
        let mut every = PhiDetector::new(5 * MS, 20 * MS);
        for &(t, is_heartbeat) in &arrivals {
            if is_heartbeat {
                d.heartbeat(t, 20 * MS);
            } else {
                d.heard(t);
            }
            every.heartbeat(t, 20 * MS);
        }
        // One frame interval of silence (a heartbeat lost) stays below the
        // suspicion level (half the default threshold of 8)…
        let gap = last + 33 * MS;
        assert!(d.phi(gap) < 4.0, "{}", d.phi(gap));
        assert!(every.phi(gap) > 8.0, "{}", every.phi(gap));
        // …but a long silence is still a failure.
        assert!(d.phi(last + 100 * MS) > 8.0);
    }

    #[test]
    fn jittery_paths_are_judged_more_leniently() {
        let t0 = Instant::now();
        let mut steady = PhiDetector::new(MS, 10 * MS);
        let mut jittery = PhiDetector::new(MS, 10 * MS);
        let mut t = t0;
        for i in 0..200u32 {
            steady.heartbeat(t0 + 10 * MS * i, 10 * MS);
            t += MS * (5 + (i * 7919) % 11);
            jittery.heartbeat(t, 10 * MS);
        }
        let gap = 25 * MS;
        assert!(steady.phi(t0 + 10 * MS * 199 + gap) > jittery.phi(t + gap));
    }
}
