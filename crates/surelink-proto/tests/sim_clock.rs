//! Seeded simulations of clock synchronisation, deadline delivery and playout,
//! with injected clock offset, drift and steps.

mod harness;

use std::time::Duration;

use harness::{ms, Sim};
use surelink_netem::{GilbertElliott, LinkConfig};
use surelink_proto::wire::Delivery;
use surelink_proto::{Config, Event};

fn link(delay_ms: u64, jitter_ms: u64) -> LinkConfig {
    LinkConfig::clean()
        .with_delay(ms(delay_ms))
        .with_jitter(ms(jitter_ms))
}

/// A sim whose server clock is `offset_s` seconds ahead and `ppm` fast, with
/// heartbeats every 20 ms throughout: the sampling rate the estimator is
/// built for, as on any connection carrying data. (An idle connection backs
/// its heartbeats off: see
/// `an_idle_connection_with_backed_off_heartbeats_keeps_an_honest_bound`.)
fn skewed(c2s: LinkConfig, s2c: LinkConfig, seed: u64, offset_s: u64, ppm: f64) -> Sim {
    let mut config = Config::default();
    config.heartbeat_max_interval = config.heartbeat_interval;
    skewed_with(config, c2s, s2c, seed, offset_s, ppm)
}

/// [`skewed`] with the given configuration on both sides.
fn skewed_with(
    config: Config,
    c2s: LinkConfig,
    s2c: LinkConfig,
    seed: u64,
    offset_s: u64,
    ppm: f64,
) -> Sim {
    let mut sim = Sim::new(config, c2s, s2c, seed);
    sim.server_ppm = ppm;
    let snow = sim.server_now(sim.start);
    sim.server_ep.set_clock(snow, offset_s * 1_000_000);
    sim.client_ep.set_clock(sim.start, 0);
    sim
}

/// Peer (server) clock minus client clock, µs, at true time `t_us` since start.
fn true_offset(offset_s: u64, ppm: f64, t_us: f64) -> f64 {
    offset_s as f64 * 1e6 + t_us * ppm * 1e-6
}

/// Runs an idle connection for `secs`, sampling the client's estimate each 100 ms.
fn observe(sim: &mut Sim, secs: u64) -> Vec<(f64, surelink_proto::clock::ClockEstimate)> {
    let mut out = Vec::new();
    sim.run_handshake(Duration::from_secs(5));
    let end = sim.start + Duration::from_secs(secs);
    let mut tick = sim.now;
    while sim.now < end {
        tick += ms(100);
        while sim.step(tick) {}
        let t_us = (sim.now - sim.start).as_micros() as f64;
        if let Some(e) = sim.client.clock_estimate(sim.now) {
            out.push((t_us, e));
        }
    }
    out
}

/// An idle connection with the default configuration backs its heartbeats
/// off to one a second: its estimate rests on far fewer samples (the drift
/// is not learned within 30 s and the error grows to about a millisecond),
/// but the error bound must still cover the true error at every instant.
#[test]
fn an_idle_connection_with_backed_off_heartbeats_keeps_an_honest_bound() {
    for seed in 0..10u64 {
        for ppm in [100.0, -100.0] {
            let mut sim = skewed_with(Config::default(), link(10, 1), link(10, 1), seed, 5, ppm);
            let samples = observe(&mut sim, 30);
            assert!(samples.len() > 250, "seed {seed}: {}", samples.len());
            for (t, e) in &samples {
                let err = (e.offset_us - true_offset(5, ppm, *t)).abs();
                assert!(
                    err <= e.error_bound_us,
                    "seed {seed} ppm {ppm} t {t}: error {err} µs outside {e:?}"
                );
            }
        }
    }
}

#[test]
fn offset_and_drift_converge_within_two_seconds() {
    for seed in 0..20u64 {
        for ppm in [100.0, -100.0] {
            let mut sim = skewed(link(10, 1), link(10, 1), seed, 5, ppm);
            let samples = observe(&mut sim, 30);
            for (t, e) in &samples {
                if *t >= 2e6 {
                    let err = (e.offset_us - true_offset(5, ppm, *t)).abs();
                    assert!(
                        err <= 200.0,
                        "seed {seed} ppm {ppm} t {t}: error {err} µs ({e:?})"
                    );
                    assert!(err <= e.error_bound_us, "bound does not cover: {e:?}");
                }
            }
            let (_, last) = samples.last().unwrap();
            assert!(
                (last.drift_ppm - ppm).abs() < 20.0,
                "seed {seed}: drift {} vs {ppm}",
                last.drift_ppm
            );
        }
    }
}

#[test]
fn asymmetric_delay_stays_within_the_error_bound() {
    for seed in 0..20u64 {
        let mut sim = skewed(link(2, 0), link(30, 2), seed, 1, 0.0);
        for (t, e) in observe(&mut sim, 5) {
            let err = (e.offset_us - true_offset(1, 0.0, t)).abs();
            assert!(err > 5000.0, "asymmetry must show as an error");
            assert!(
                err <= e.error_bound_us,
                "seed {seed}: error {err} > bound {e:?}"
            );
        }
    }
}

#[test]
fn a_clock_step_is_detected_and_tracked() {
    let mut sim = skewed(link(10, 1), link(10, 1), 3, 0, 0.0);
    observe(&mut sim, 3);
    // The server's clock jumps 2 s ahead.
    let snow = sim.server_now(sim.now);
    let server = sim.server.as_mut().unwrap();
    let t = (sim.now - sim.start).as_micros() as u64;
    server.set_clock(snow, t + 2_000_000);
    let mut steps = 0;
    let end = sim.now + Duration::from_secs(5);
    while sim.step(end) {
        while let Some(e) = sim.client.poll_event() {
            steps += u32::from(e == Event::ClockStep);
        }
    }
    assert_eq!(steps, 1);
    let e = sim.client.clock_estimate(sim.now).unwrap();
    assert!((e.offset_us - 2e6).abs() < 200.0, "{e:?}");
    assert_eq!(e.steps, 1);
}

fn lossy(seed: u64) -> LinkConfig {
    LinkConfig::clean()
        .with_delay(ms(10))
        .with_jitter(ms(1))
        .with_loss(0.10)
        .with_burst(GilbertElliott {
            p_good_to_bad: 0.01 + (seed % 5) as f64 / 200.0,
            p_bad_to_good: 0.3,
            loss_good: 0.0,
            loss_bad: 0.7,
        })
}

#[test]
fn deadline_channel_never_delivers_late_and_never_stalls() {
    let d = 60_000u64; // 60 ms = 3 x RTT
    let mut skipped_total = 0;
    for seed in 0..50u64 {
        let mut sim = skewed(lossy(seed), lossy(seed + 1000), seed, 7, 50.0);
        let count = 1000;
        let out = sim.run_realtime(
            count,
            200,
            ms(1),
            Delivery::Deadline(d),
            Duration::from_secs(30),
        );
        let stats = out.server_stats.as_ref().unwrap();
        // Every message is accounted for: delivered or skipped, never both, in order.
        let mut all: Vec<u64> = out.delivered.iter().map(|m| m.seq).collect();
        assert!(
            all.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: out of order"
        );
        all.extend(&out.skipped);
        all.sort_unstable();
        let expected: Vec<u64> = (0..count).collect();
        if all != expected {
            eprintln!(
                "client {:?}\nserver {:?}\nnow {:?}",
                out.client_stats,
                out.server_stats,
                sim.now - sim.start
            );
            eprintln!(
                "client err {:?} drained {} server err {:?}",
                sim.client.error(),
                sim.client.is_drained(),
                sim.server.as_ref().map(|s| s.error())
            );
            let first = all.iter().zip(&expected).position(|(a, b)| a != b);
            panic!("seed {seed}: stalled or duplicated: {} of {count} accounted, first mismatch at {first:?}", all.len());
        }
        assert_eq!(stats.messages_skipped, out.skipped.len() as u64);
        for m in &out.delivered {
            // True latency (send to the application taking it) within the deadline,
            // allowing for the clock estimate's error (a few hundred µs here).
            let true_latency = m.delivered_us - m.sent_us;
            assert!(
                true_latency <= d + 1_000,
                "seed {seed}: seq {} late by {} µs",
                m.seq,
                true_latency - d
            );
            assert!(
                m.reported_latency_us <= d,
                "seed {seed}: reported {}",
                m.reported_latency_us
            );
        }
        skipped_total += out.skipped.len();
    }
    assert!(skipped_total > 0, "the loss must have caused skips");
}

#[test]
fn deadline_channel_without_loss_skips_nothing() {
    for seed in 0..20u64 {
        let mut sim = skewed(link(10, 1), link(10, 1), seed, 7, -30.0);
        let out = sim.run_realtime(
            500,
            200,
            ms(1),
            Delivery::Deadline(60_000),
            Duration::from_secs(30),
        );
        assert!(
            out.skipped.is_empty(),
            "seed {seed}: {:?}",
            &out.skipped[..5.min(out.skipped.len())]
        );
        assert_eq!(out.server_stats.unwrap().messages_skipped, 0);
        assert_eq!(out.delivered.len(), 500);
    }
}

#[test]
fn unreliable_channel_skips_losses_and_delivers_the_rest() {
    let mut sim = skewed(lossy(1), lossy(2), 1, 0, 0.0);
    let out = sim.run_realtime(
        1000,
        200,
        ms(1),
        Delivery::Unreliable,
        Duration::from_secs(30),
    );
    let stats = out.client_stats.unwrap();
    assert_eq!(stats.retransmissions, 0, "unreliable data is never re-sent");
    assert!(!out.skipped.is_empty());
    assert_eq!(out.delivered.len() + out.skipped.len(), 1000);
}

#[test]
fn playout_delivers_at_source_time_plus_delay_despite_jitter() {
    for seed in 0..20u64 {
        let config = Config {
            playout_delay: Some(ms(100)),
            ..Config::default()
        };
        // 20 ms one way with up to 10 ms of jitter: arrival spreads over 10 ms.
        let jittery = LinkConfig::clean().with_delay(ms(20)).with_jitter(ms(10));
        let mut sim = Sim::with_configs(Config::default(), config, jittery.clone(), jittery, seed);
        let snow = sim.server_now(sim.start);
        sim.server_ep.set_clock(snow, 3_000_000);
        let out = sim.run_realtime(
            1000,
            200,
            ms(2),
            Delivery::Reliable,
            Duration::from_secs(30),
        );
        assert_eq!(out.delivered.len(), 1000);
        // From 0.5 s on (the handshake is over and the clock filter has samples),
        // every message is played out at its source time + 100 ms, within the
        // clock estimate's error (the jitter's asymmetry in the best sample).
        let held: Vec<i64> = out.delivered[250..]
            .iter()
            .map(|m| m.delivered_us as i64 - m.sent_us as i64)
            .collect();
        for h in &held {
            assert!((h - 100_000).abs() <= 5_000, "seed {seed}: held {h} µs");
        }
        let arrival_spread = 10_000;
        let spread = held.iter().max().unwrap() - held.iter().min().unwrap();
        assert!(
            spread * 10 <= arrival_spread * 6,
            "seed {seed}: playout spread {spread} µs"
        );
    }
}

/// Heavy jitter: 5 ms of uniform queueing jitter each way, on symmetric and
/// asymmetric paths (5 ms one way, 15 ms the other).
fn heavy_jitter_paths() -> [(&'static str, LinkConfig, LinkConfig); 2] {
    [
        ("10 ms + 5 ms jitter each way", link(10, 5), link(10, 5)),
        ("5 ms / 15 ms + 5 ms jitter", link(5, 5), link(15, 5)),
    ]
}

/// Observations of one scenario over seeds.
#[derive(Default)]
struct Accuracy {
    /// |estimated − true offset| from 2 s on, µs.
    errors: Vec<f64>,
    /// Estimates (from the start) whose error exceeded the reported bound.
    uncovered: usize,
    /// Estimates observed (from the start).
    observed: usize,
    /// Worst |reported − true drift| over all estimates with a drift, ppm.
    drift_error: f64,
    /// Per run: when the drift was first reported, s (None: never).
    drift_known_s: Vec<Option<f64>>,
}

impl Accuracy {
    /// Observes an idle connection for `secs` with the server clock 5 s ahead
    /// and `ppm` fast.
    fn run(&mut self, c2s: &LinkConfig, s2c: &LinkConfig, seed: u64, ppm: f64, secs: u64) {
        let mut sim = skewed(c2s.clone(), s2c.clone(), seed, 5, ppm);
        let samples = observe(&mut sim, secs);
        for (t, e) in &samples {
            let err = (e.offset_us - true_offset(5, ppm, *t)).abs();
            if *t >= 2e6 {
                self.errors.push(err);
            }
            self.observed += 1;
            self.uncovered += usize::from(err > e.error_bound_us);
            if e.drift_ppm != 0.0 {
                self.drift_error = self.drift_error.max((e.drift_ppm - ppm).abs());
            }
        }
        self.drift_known_s.push(
            samples
                .iter()
                .find(|(_, e)| e.drift_ppm != 0.0)
                .map(|(t, _)| t / 1e6),
        );
    }

    /// The `p` quantile of the errors.
    fn pct(&mut self, p: f64) -> f64 {
        self.errors.sort_by(f64::total_cmp);
        self.errors[((self.errors.len() - 1) as f64 * p) as usize]
    }

    /// The latest time any run first reported its drift, s (None: some run never did).
    fn drift_known_by(&self) -> Option<f64> {
        self.drift_known_s
            .iter()
            .try_fold(0.0f64, |m, t| t.map(|t| m.max(t)))
    }

    fn report(&mut self, label: &str) {
        let runs = self.drift_known_s.len();
        let reported = self.drift_known_s.iter().flatten().count();
        let by = self
            .drift_known_s
            .iter()
            .flatten()
            .fold(0.0f64, |a, b| a.max(*b));
        eprintln!(
            "{label}: |error| over {} estimates from 2 s: p50 {:.0} us, p99 {:.0} us, max {:.0} us; \
             drift reported in {reported} of {runs} runs (by {by:.1} s), then within {:.1} ppm; \
             bound covered {} of {} estimates",
            self.errors.len(),
            self.pct(0.5),
            self.pct(0.99),
            self.pct(1.0),
            self.drift_error,
            self.observed - self.uncovered,
            self.observed,
        );
    }
}

/// Heavy jitter, ±100 ppm, 30 seeds each: the error bound covers the true
/// error at every estimate, the drift is reported within 40 s in every run
/// and, once reported, is within 20 ppm.
fn heavy_jitter_bound_covers_the_error_and_drift_converges(path: usize) {
    let (label, c2s, s2c) = &heavy_jitter_paths()[path];
    let mut acc = Accuracy::default();
    for seed in 0..30u64 {
        for ppm in [100.0, -100.0] {
            acc.run(c2s, s2c, seed, ppm, 40);
        }
    }
    acc.report(label);
    assert_eq!(acc.uncovered, 0, "{label}: bound exceeded");
    assert!(
        acc.drift_known_by().is_some(),
        "{label}: drift not reported in every run"
    );
    assert!(
        acc.drift_error <= 20.0,
        "{label}: drift error {}",
        acc.drift_error
    );
}

#[test]
fn heavy_symmetric_jitter_bound_covers_the_error_and_drift_converges() {
    heavy_jitter_bound_covers_the_error_and_drift_converges(0);
}

#[test]
fn heavy_asymmetric_jitter_bound_covers_the_error_and_drift_converges() {
    heavy_jitter_bound_covers_the_error_and_drift_converges(1);
}

/// Clock-estimate accuracy over seeds (printed with `--nocapture` for
/// docs/BENCHMARKS.md): 10 ms ± 1 ms paths, 10 s, server clock 5 s ahead and
/// 100 ppm fast; then heavy jitter (both paths of
/// [`heavy_jitter_paths`]), 40 s, ±100 ppm.
#[test]
fn clock_accuracy_report() {
    let mut acc = Accuracy::default();
    for seed in 0..10u64 {
        acc.run(&link(10, 1), &link(10, 1), seed, 100.0, 10);
    }
    acc.report("10 ms + 1 ms jitter each way, 10 s");
    assert!(acc.pct(1.0) <= 200.0);
    for (label, c2s, s2c) in heavy_jitter_paths() {
        let mut acc = Accuracy::default();
        for seed in 0..10u64 {
            for ppm in [100.0, -100.0] {
                acc.run(&c2s, &s2c, seed, ppm, 40);
            }
        }
        acc.report(&format!("{label}, 40 s"));
    }
}
