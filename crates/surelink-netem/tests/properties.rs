//! Property tests: spec `Display`/`FromStr` round trip, and a link that
//! never panics, keeps its books balanced and (without `reorder`) keeps FIFO
//! order, whatever valid configuration and inputs it is given.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use surelink_netem::{
    format_duration, parse_duration, CutSchedule, Flap, GilbertElliott, Link, LinkConfig,
    MAX_DURATION,
};

fn max_nanos() -> u64 {
    MAX_DURATION.as_nanos() as u64
}

fn probability() -> BoxedStrategy<f64> {
    prop_oneof![
        Just(0.0),
        Just(1.0),
        0.0..=1.0f64,
        (0u32..=1000).prop_map(|p| f64::from(p) / 1000.0)
    ]
    .boxed()
}

fn small_probability() -> BoxedStrategy<f64> {
    prop_oneof![Just(0.0), 0.0..=0.3f64].boxed()
}

/// Durations of any size up to the maximum, with bias to round and small ones.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        (0..=max_nanos()).prop_map(Duration::from_nanos),
        (0u64..100_000).prop_map(Duration::from_micros),
        (0u64..10_000).prop_map(Duration::from_millis),
        Just(MAX_DURATION),
    ]
}

/// Durations small enough for many packets to interact.
fn short_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        (0u64..50_000_000).prop_map(Duration::from_nanos)
    ]
}

fn burst(p: BoxedStrategy<f64>) -> impl Strategy<Value = Option<GilbertElliott>> {
    proptest::option::of(
        (p.clone(), p.clone(), p.clone(), p).prop_map(|(a, b, c, d)| GilbertElliott {
            p_good_to_bad: a,
            p_bad_to_good: b,
            loss_good: c,
            loss_bad: d,
        }),
    )
}

fn flap(d: impl Strategy<Value = Duration>) -> impl Strategy<Value = Option<Flap>> {
    proptest::option::of(
        (d, 0.0..=1.0f64).prop_filter_map("zero period", |(period, share)| {
            if period.is_zero() {
                return None;
            }
            let down = Duration::from_nanos((period.as_nanos() as f64 * share) as u64).min(period);
            Some(Flap { period, down })
        }),
    )
}

fn rate() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        (1..=u64::MAX).prop_map(Some),
        (1_000u64..100_000_000).prop_map(Some),
    ]
}

fn queue() -> impl Strategy<Value = usize> {
    prop_oneof![Just(usize::MAX), 1..=usize::MAX, 1usize..100_000]
}

/// Any configuration that validates, with values across their whole range.
fn any_config() -> impl Strategy<Value = LinkConfig> {
    (
        (probability(), burst(probability()), duration(), duration()),
        (probability(), duration(), probability(), rate(), queue()),
        (
            proptest::collection::vec((duration(), duration()), 0..3),
            flap(duration()),
        ),
    )
        .prop_map(
            |(
                (loss, burst, delay, jitter),
                (reorder, reorder_delay, duplicate, rate_bps, queue_bytes),
                (cuts, flap),
            )| {
                LinkConfig {
                    loss,
                    burst,
                    delay,
                    jitter,
                    reorder,
                    reorder_delay,
                    duplicate,
                    rate_bps,
                    queue_bytes,
                    cuts: CutSchedule {
                        cuts: cuts
                            .into_iter()
                            .map(|(start, duration)| surelink_netem::Cut { start, duration })
                            .collect(),
                        flap,
                    },
                }
            },
        )
        .prop_filter("must validate", |c| c.validate().is_ok())
}

/// Valid configurations whose impairments interact over a short run.
fn busy_config() -> impl Strategy<Value = LinkConfig> {
    (
        (
            small_probability(),
            burst(small_probability()),
            short_duration(),
            short_duration(),
        ),
        (
            small_probability(),
            short_duration(),
            small_probability(),
            rate(),
            queue(),
        ),
        (
            proptest::collection::vec((short_duration(), short_duration()), 0..3),
            flap(short_duration()),
        ),
    )
        .prop_map(
            |(
                (loss, burst, delay, jitter),
                (reorder, reorder_delay, duplicate, rate_bps, queue_bytes),
                (cuts, flap),
            )| {
                LinkConfig {
                    loss,
                    burst,
                    delay,
                    jitter,
                    reorder,
                    reorder_delay,
                    duplicate,
                    rate_bps,
                    queue_bytes,
                    cuts: CutSchedule {
                        cuts: cuts
                            .into_iter()
                            .map(|(start, duration)| surelink_netem::Cut { start, duration })
                            .collect(),
                        flap,
                    },
                }
            },
        )
        .prop_filter("must validate", |c| c.validate().is_ok())
}

#[derive(Debug, Clone)]
enum Op {
    Send { at_ns: i64, size: usize },
    Poll { at_ns: i64 },
    SetCut(bool),
    SetConfig(LinkConfig),
}

fn op() -> impl Strategy<Value = Op> {
    let at = prop_oneof![-1_000_000_000i64..100_000_000, Just(i64::MAX), any::<i64>(),];
    let size = prop_oneof![0usize..2000, Just(usize::MAX), any::<usize>()];
    prop_oneof![
        8 => (at.clone(), size).prop_map(|(at_ns, size)| Op::Send { at_ns, size }),
        4 => at.prop_map(|at_ns| Op::Poll { at_ns }),
        1 => any::<bool>().prop_map(Op::SetCut),
        1 => any_config().prop_map(Op::SetConfig),
    ]
}

/// `base` shifted by a signed number of nanoseconds, or `base` if that is
/// not representable.
fn shifted(base: Instant, ns: i64) -> Instant {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        base.checked_add(d).unwrap_or(base)
    } else {
        base.checked_sub(d).unwrap_or(base)
    }
}

proptest! {
    #[test]
    fn spec_display_round_trips(config in any_config()) {
        let text = config.to_string();
        let parsed: LinkConfig = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&parsed, &config, "{}", text);
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn duration_format_round_trips(nanos in any::<u64>(), secs in any::<u64>()) {
        for d in [Duration::from_nanos(nanos), Duration::from_secs(secs)] {
            prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn spec_parser_never_panics(text in "\\PC{0,60}", structured in "[a-z_-]{1,8}=[0-9.%:/a-z]{0,10}(,[a-z-]{1,8}=[0-9.%:/a-z]{0,10}){0,4}") {
        let _ = text.parse::<LinkConfig>();
        let _ = structured.parse::<LinkConfig>();
        let _ = parse_duration(&text);
    }

    #[test]
    fn link_never_panics_and_balances(
        config in prop_oneof![any_config(), busy_config()],
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let start = Instant::now() + Duration::from_secs(3600);
        let mut link = Link::new(config, seed, start).unwrap();
        for op in ops {
            match op {
                Op::Send { at_ns, size } => {
                    let now = shifted(start, at_ns);
                    let fate = link.send(now, size, size);
                    if let Some(at) = fate.deliver_at() {
                        prop_assert!(link.next_delivery().unwrap() <= at);
                    }
                    let _ = link.is_cut(now);
                }
                Op::Poll { at_ns } => {
                    let now = shifted(start, at_ns);
                    while let Some(d) = link.poll_delivery(now) {
                        prop_assert!(d.at <= now);
                        prop_assert_eq!(d.payload, d.size_bytes);
                    }
                }
                Op::SetCut(cut) => link.set_cut(cut),
                Op::SetConfig(config) => link.set_config(config).unwrap(),
            }
        }
        let mut last = None;
        while let Some(at) = link.next_delivery() {
            let d = link.poll_delivery(at).unwrap();
            prop_assert!(last.is_none_or(|l| l <= d.at));
            last = Some(d.at);
        }
        let stats = *link.stats();
        prop_assert_eq!(stats.delivered + stats.dropped(), stats.sent + stats.duplicated);
        prop_assert_eq!(stats.in_flight(), 0);
    }

    #[test]
    fn without_reorder_delivery_is_fifo(
        config in busy_config(),
        seed in any::<u64>(),
        gaps in proptest::collection::vec((0u64..5_000_000, 0usize..1500), 1..300),
    ) {
        let mut config = config;
        config.reorder = 0.0;
        let start = Instant::now();
        let mut link = Link::new(config, seed, start).unwrap();
        let mut now = start;
        for (i, (gap, size)) in gaps.into_iter().enumerate() {
            now += Duration::from_nanos(gap);
            link.send(now, size, i);
        }
        let mut previous = 0;
        while let Some(at) = link.next_delivery() {
            while let Some(i) = link.poll_deliver(at) {
                // Non-decreasing: a duplicate may follow its original.
                prop_assert!(i >= previous);
                previous = i;
            }
        }
    }

    #[test]
    fn same_seed_same_fates(config in busy_config(), seed in any::<u64>()) {
        let start = Instant::now();
        let run = |seed: u64| {
            let mut link = Link::new(config.clone(), seed, start).unwrap();
            (0..200u32)
                .map(|i| link.send(start + Duration::from_micros(u64::from(i) * 300), 100, i))
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(run(seed), run(seed));
    }
}
