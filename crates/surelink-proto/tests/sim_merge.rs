//! Seeded simulation of the time-ordered merge ([`surelink_proto::merge`]):
//! eight sources whose clocks are off by up to ±5 s and run up to ±100 ppm
//! fast or slow send to one receiver over lossy, jittery, asymmetric links; the receiver
//! merges their messages by send time mapped through each connection's clock
//! estimate. Checked: every message comes out exactly once (also across a
//! receiver restart from a merge checkpoint), and the records not flagged
//! late are ordered within the documented bound (the sum of the two sources'
//! error bounds). The figures (added latency, ordering error, late count)
//! are printed: `cargo test -p surelink-proto --test sim_merge -- --nocapture`.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use harness::Sim;
use surelink_netem::LinkConfig;
use surelink_proto::merge::{Arrival, LatePolicy, Merge, MergeCheckpoint, MergeConfig, Merged};
use surelink_proto::Config;

/// The receiver's clock at the start of every simulation, µs.
const BASE_US: u64 = 100_000_000;
/// Clock offsets of the eight sources (source minus receiver), ms.
const OFFSETS_MS: [i64; 8] = [5_000, -5_000, 3_000, -3_000, 1_000, -1_000, 4_500, -2_500];
/// Clock rates of the eight sources, ppm.
const DRIFTS_PPM: [f64; 8] = [100.0, -100.0, 50.0, -50.0, 75.0, -75.0, 25.0, -25.0];
/// Sending starts once the clock estimates rest on enough samples.
const WARM_UP_US: u64 = 3_000_000;
/// Each source sends for this long.
const SENDING_US: u64 = 5_000_000;
/// Each source sends a message this often (source i at i ms past the period).
const INTERVAL_US: u64 = 10_000;
/// The simulation's time step.
const TICK_US: u64 = 1_000;
/// A restarted receiver is back after this long.
const DOWNTIME_US: u64 = 200_000;

/// A link of `delay_ms` ± 2 ms with 1 % loss.
fn link(delay_ms: u64) -> LinkConfig {
    LinkConfig::clean()
        .with_delay(Duration::from_millis(delay_ms))
        .with_jitter(Duration::from_millis(2))
        .with_loss(0.01)
}

/// Source `index`'s delay towards the receiver, ms: 4 to 18 ms, the way
/// back taking the rest of a 20 ms round trip. A clock estimate cannot see
/// asymmetry, so each source's estimate is off by half its asymmetry (−6 to
/// +8 ms), within its error bound (about half the round trip).
fn delay_to_receiver_ms(index: usize) -> u64 {
    4 + 2 * index as u64
}

/// One source: a two-party simulation whose server is the source (its
/// clock skewed) and whose client is the receiver (every simulation's client
/// clock reads `BASE_US` + the same virtual time).
struct Source {
    sim: Sim,
    next_seq: u64,
    /// What the receiver got from it, in arrival order (for the re-sends
    /// after a restart).
    log: Vec<Arrival<u64>>,
}

impl Source {
    fn new(index: usize, seed: u64) -> Self {
        let to_receiver = delay_to_receiver_ms(index);
        let mut sim = Sim::new(
            Config::default(),
            link(20 - to_receiver),
            link(to_receiver),
            seed * 8 + index as u64,
        );
        sim.server_ppm = DRIFTS_PPM[index];
        let server_start = sim.server_now(sim.start);
        let offset_us = OFFSETS_MS[index] * 1_000;
        sim.server_ep
            .set_clock(server_start, BASE_US.saturating_add_signed(offset_us));
        sim.client.set_clock(sim.start, BASE_US);
        let (client, _) = sim.run_handshake(Duration::from_secs(5));
        assert!(
            client.contains(&surelink_proto::Event::Connected),
            "source {index} did not connect"
        );
        Source {
            sim,
            next_seq: 0,
            log: Vec::new(),
        }
    }

    /// Advances to virtual time `t_us`, sending what is due; returns what
    /// the receiver got.
    fn advance(&mut self, index: usize, t_us: u64) -> Vec<Arrival<u64>> {
        let stagger = index as u64 * TICK_US;
        let due = t_us >= WARM_UP_US + stagger
            && t_us < WARM_UP_US + SENDING_US
            && (t_us - WARM_UP_US - stagger) % INTERVAL_US == 0;
        let limit = self.sim.start + Duration::from_micros(t_us);
        while self.sim.step(limit) {}
        if due {
            let snow = self.sim.server_now(self.sim.now);
            let server = self.sim.server.as_mut().expect("connected");
            let mut payload = vec![0u8; 64];
            payload[..8].copy_from_slice(&t_us.to_be_bytes());
            let seq = server.send(snow, 0, Bytes::from(payload)).expect("send");
            assert_eq!(seq, self.next_seq);
            self.next_seq += 1;
            while self.sim.step(limit) {}
        }
        let mut got = Vec::new();
        while let Some(m) = self.sim.client.recv() {
            let estimate = self
                .sim
                .client
                .clock_estimate(self.sim.now)
                .expect("a clock estimate after the warm-up");
            let sent_us = u64::from_be_bytes(m.data[..8].try_into().unwrap());
            got.push(Arrival {
                source: index as u64,
                seq: m.seq,
                time_us: m.source_time_us,
                error_bound_us: estimate.error_bound_us.ceil() as u64,
                payload: BASE_US + sent_us,
            });
        }
        self.log.extend(got.iter().cloned());
        got
    }
}

/// A released record and when it left, receiver's clock.
struct Released {
    record: Merged<u64>,
    at_us: u64,
}

/// What one run produced.
struct Outcome {
    released: Vec<Released>,
    sent: BTreeMap<u64, u64>,
    late_dropped: u64,
    duplicates: u64,
}

/// Runs the eight sources into one merge; with `restart_at_us`, the merge is
/// dropped there (what it held is lost) and restored from its checkpoint
/// after `DOWNTIME_US`, the sources sending again from it.
fn run(seed: u64, config: MergeConfig, restart_at_us: Option<u64>) -> Outcome {
    let mut sources: Vec<Source> = (0..8).map(|i| Source::new(i, seed)).collect();
    let mut merge = Some(Merge::new(config));
    let mut checkpoint: Option<MergeCheckpoint> = None;
    let mut during_downtime: Vec<Arrival<u64>> = Vec::new();
    let mut released = Vec::new();
    let (mut late_dropped, mut duplicates) = (0, 0);
    let end_us = WARM_UP_US + SENDING_US + 1_000_000;
    let mut t_us = 0;
    while t_us <= end_us {
        let now_us = BASE_US + t_us;
        for (i, source) in sources.iter_mut().enumerate() {
            for arrival in source.advance(i, t_us) {
                match merge.as_mut() {
                    Some(m) => {
                        m.push(now_us, arrival);
                    }
                    None => during_downtime.push(arrival),
                }
            }
        }
        if let Some(m) = merge.as_mut() {
            while let Some(record) = m.poll(now_us) {
                released.push(Released {
                    record,
                    at_us: now_us,
                });
            }
        }
        if Some(t_us) == restart_at_us {
            let m = merge.take().expect("running");
            checkpoint = Some(m.checkpoint());
            late_dropped += m.stats().late_dropped;
            duplicates += m.stats().duplicates;
        }
        if restart_at_us.is_some_and(|r| t_us == r + DOWNTIME_US) {
            let cp = checkpoint.take().expect("a checkpoint");
            let mut m = Merge::restore(config, &cp);
            // The sources re-send from a little before the checkpoint (their
            // outbox may hold more than it covers), then what came meanwhile.
            for source in &sources {
                for arrival in &source.log {
                    let next = cp.next_seq.get(&arrival.source).copied().unwrap_or(0);
                    if arrival.seq + 5 >= next && !during_downtime.contains(arrival) {
                        m.push(now_us, arrival.clone());
                    }
                }
            }
            for arrival in during_downtime.drain(..) {
                m.push(now_us, arrival);
            }
            merge = Some(m);
        }
        t_us += TICK_US;
    }
    let mut m = merge.expect("running at the end");
    while let Some(record) = m.flush() {
        released.push(Released {
            record,
            at_us: BASE_US + end_us,
        });
    }
    late_dropped += m.stats().late_dropped;
    duplicates += m.stats().duplicates;
    let sent = sources
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u64, s.next_seq))
        .collect();
    Outcome {
        released,
        sent,
        late_dropped,
        duplicates,
    }
}

/// Checks exactly-once delivery and the ordering bound; returns the figures.
fn check(out: &Outcome, policy: LatePolicy, ctx: &str) -> Figures {
    let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in &out.released {
        seen.entry(r.record.source).or_default().push(r.record.seq);
    }
    let total_sent: u64 = out.sent.values().sum();
    let mut total_out = 0;
    for (&source, &sent) in &out.sent {
        let mut seqs = seen.remove(&source).unwrap_or_default();
        seqs.sort_unstable();
        let before = seqs.len();
        seqs.dedup();
        assert_eq!(
            before,
            seqs.len(),
            "{ctx}: source {source} repeated a message"
        );
        assert!(seqs.iter().all(|&s| s < sent), "{ctx}: unknown message");
        total_out += seqs.len() as u64;
    }
    match policy {
        LatePolicy::Deliver => assert_eq!(total_out, total_sent, "{ctx}: messages lost"),
        LatePolicy::Drop => assert_eq!(
            total_out + out.late_dropped,
            total_sent,
            "{ctx}: messages lost beyond the late ones"
        ),
    }
    let mut figures = Figures::default();
    // Each corrected time lies within its bound of the true send time.
    for r in &out.released {
        let error = r.record.time_us.abs_diff(r.record.payload);
        assert!(
            error <= r.record.error_bound_us,
            "{ctx}: source {} message {}: corrected time off by {error} µs, bound {} µs",
            r.record.source,
            r.record.seq,
            r.record.error_bound_us
        );
        figures.max_bound_us = figures.max_bound_us.max(r.record.error_bound_us);
        figures.max_error_us = figures.max_error_us.max(error);
    }
    // In order: corrected times never go back, and no pair is misordered by
    // more than the sum of its bounds (running maximum of t − B before each).
    let mut last_time = 0;
    let mut floor: Option<i128> = None;
    let mut newest_true = 0u64;
    for r in out
        .released
        .iter()
        .filter(|r| r.record.late_by_us.is_none())
    {
        let m = &r.record;
        assert!(m.time_us >= last_time, "{ctx}: corrected times went back");
        last_time = m.time_us;
        let (t, b) = (i128::from(m.payload), i128::from(m.error_bound_us));
        if let Some(f) = floor {
            assert!(
                f <= t + b,
                "{ctx}: source {} message {} misordered beyond the bound",
                m.source,
                m.seq
            );
        }
        floor = Some(floor.map_or(t - b, |f| f.max(t - b)));
        figures.max_inversion_us = figures
            .max_inversion_us
            .max(newest_true.saturating_sub(m.payload));
        newest_true = newest_true.max(m.payload);
    }
    for r in &out.released {
        figures.added_us.push(r.at_us - r.record.arrived_us);
        figures.total_us.push(r.at_us - r.record.payload);
    }
    figures.late = out
        .released
        .iter()
        .filter(|r| r.record.late_by_us.is_some())
        .count() as u64
        + out.late_dropped;
    figures.messages = total_sent;
    figures
}

/// Measured figures of one run.
#[derive(Debug, Default)]
struct Figures {
    messages: u64,
    late: u64,
    /// Release minus arrival, µs, per record.
    added_us: Vec<u64>,
    /// Release minus true send time, µs, per record.
    total_us: Vec<u64>,
    /// Largest true-time inversion between in-order records, µs.
    max_inversion_us: u64,
    /// Largest error bound of a record, µs.
    max_bound_us: u64,
    /// Largest error of a record's corrected time, µs.
    max_error_us: u64,
}

impl Figures {
    fn print(&mut self, label: &str) {
        let pct = |v: &mut Vec<u64>, p: f64| {
            v.sort_unstable();
            v[((v.len() - 1) as f64 * p) as usize] as f64 / 1e3
        };
        let (a50, a99) = (pct(&mut self.added_us, 0.5), pct(&mut self.added_us, 0.99));
        let (t50, t99) = (pct(&mut self.total_us, 0.5), pct(&mut self.total_us, 0.99));
        eprintln!(
            "merge {label}: {} messages, {} late; added latency p50 {a50:.1} ms p99 {a99:.1} ms; \
             send→output p50 {t50:.1} ms p99 {t99:.1} ms; largest inversion {:.3} ms; \
             largest clock error {:.3} ms, largest error bound {:.3} ms",
            self.messages,
            self.late,
            self.max_inversion_us as f64 / 1e3,
            self.max_error_us as f64 / 1e3,
            self.max_bound_us as f64 / 1e3
        );
    }
}

const WINDOW: MergeConfig = MergeConfig {
    window_us: 50_000,
    late: LatePolicy::Deliver,
};

#[test]
fn eight_skewed_sources_merge_in_order_within_the_bound() {
    for seed in 0..3 {
        let out = run(seed, WINDOW, None);
        assert!(
            out.duplicates == 0,
            "seed {seed}: duplicates without a restart"
        );
        check(&out, LatePolicy::Deliver, &format!("seed {seed}"))
            .print(&format!("seed {seed}, window 50 ms"));
    }
}

#[test]
fn late_messages_are_dropped_and_counted_with_a_short_window() {
    let config = MergeConfig {
        window_us: 15_000,
        late: LatePolicy::Drop,
    };
    let out = run(7, config, None);
    let mut figures = check(&out, LatePolicy::Drop, "window 15 ms");
    assert!(
        out.late_dropped > 0,
        "a 15 ms window over 10 ± 2 ms links with loss has late messages"
    );
    figures.print("seed 7, window 15 ms, late dropped");
}

#[test]
fn a_restarted_merge_loses_and_repeats_nothing() {
    for seed in 0..3 {
        let restart = WARM_UP_US + SENDING_US / 2 + seed * 7_000;
        let out = run(seed, WINDOW, Some(restart));
        assert!(out.duplicates > 0, "the re-sends overlapped the checkpoint");
        check(&out, LatePolicy::Deliver, &format!("seed {seed} restarted"))
            .print(&format!("seed {seed}, window 50 ms, restarted"));
    }
}
