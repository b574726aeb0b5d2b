//! The spec syntax: parsing the documented example, `Display`, and clear
//! errors naming the bad key or value.

use std::time::Duration;

use surelink_netem::{parse_duration, Cut, Flap, GilbertElliott, LinkConfig, NetemError};

const MS: Duration = Duration::from_millis(1);

const EXAMPLE: &str = "loss=2%,burst=0.01:0.3:0.5,delay=10ms,jitter=1ms,reorder=1%,\
reorder-delay=5ms,dup=0.5%,rate=10mbit,queue=64kb,cut-at=5s,cut-for=2s,flap=500ms/100ms";

fn parse(s: &str) -> Result<LinkConfig, NetemError> {
    s.parse()
}

#[test]
fn parses_the_documented_example() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(config.loss, 0.02);
    assert_eq!(
        config.burst,
        Some(GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.3,
            loss_good: 0.0,
            loss_bad: 0.5,
        })
    );
    assert_eq!(config.delay, 10 * MS);
    assert_eq!(config.jitter, MS);
    assert_eq!(config.reorder, 0.01);
    assert_eq!(config.reorder_delay, 5 * MS);
    assert_eq!(config.duplicate, 0.005);
    assert_eq!(config.rate_bps, Some(10_000_000));
    assert_eq!(config.queue_bytes, 64 * 1024);
    assert_eq!(
        config.cuts.cuts,
        vec![Cut {
            start: Duration::from_secs(5),
            duration: Duration::from_secs(2)
        }]
    );
    assert_eq!(
        config.cuts.flap,
        Some(Flap {
            period: 500 * MS,
            down: 100 * MS
        })
    );
    // Display is canonical: probabilities as percentages where exact.
    assert_eq!(
        config.to_string(),
        "loss=2%,burst=1%:30%:50%,delay=10ms,jitter=1ms,reorder=1%,reorder-delay=5ms,\
dup=0.5%,rate=10mbit,queue=64kb,cut-at=5s,cut-for=2s,flap=500ms/100ms"
    );
    assert_eq!(parse(&config.to_string()).unwrap(), config);
}

#[test]
fn lenient_forms() {
    let a = parse(" LOSS = 0.02 , Delay=10MS, duplicate=0.005, reorder_delay=5ms, ").unwrap();
    let b = parse("loss=2%,delay=10ms,dup=0.5%,reorder-delay=5ms").unwrap();
    assert_eq!(a, b);
    // Burst defaults: loss in bad state 1, in good state 0.
    let g = parse("burst=1%:25%").unwrap();
    assert_eq!(g.burst, Some(GilbertElliott::gilbert(0.01, 0.25)));
    assert_eq!(g.to_string(), "burst=1%:25%");
    let four = parse("burst=0.01:0.3:0.5:0.001").unwrap();
    assert_eq!(four.burst.unwrap().loss_good, 0.001);
    assert_eq!(parse(&four.to_string()).unwrap(), four);
    // Several cuts, in pairs, either order within a pair.
    let cuts = parse("cut-for=1s,cut-at=2s,cut-at=10s,cut-for=500ms").unwrap();
    assert_eq!(
        cuts.cuts.cuts,
        vec![
            Cut {
                start: Duration::from_secs(2),
                duration: Duration::from_secs(1)
            },
            Cut {
                start: Duration::from_secs(10),
                duration: 500 * MS
            }
        ]
    );
    assert_eq!(
        cuts.to_string(),
        "cut-at=2s,cut-for=1s,cut-at=10s,cut-for=500ms"
    );
}

#[test]
fn clean_spec() {
    assert_eq!(parse("").unwrap(), LinkConfig::clean());
    assert_eq!(parse("  ").unwrap(), LinkConfig::clean());
    assert_eq!(parse("clean").unwrap(), LinkConfig::clean());
    assert_eq!(LinkConfig::clean().to_string(), "clean");
}

#[test]
fn errors_name_the_bad_key_or_value() {
    let err = |s: &str| parse(s).unwrap_err();

    assert_eq!(
        err("loss=2%,latency=5ms"),
        NetemError::UnknownKey {
            key: "latency".into()
        }
    );
    assert!(err("latency=5ms").to_string().contains("latency"));
    assert_eq!(
        err("loss"),
        NetemError::MissingValue {
            item: "loss".into()
        }
    );
    assert_eq!(
        err("loss=1%,loss=2%"),
        NetemError::DuplicateKey { key: "loss".into() }
    );
    assert_eq!(
        err("dup=1%,duplicate=2%"),
        NetemError::DuplicateKey { key: "dup".into() }
    );

    for (spec, key, value) in [
        ("loss=150%", "loss", "150%"),
        ("loss=1.5", "loss", "1.5"),
        ("loss=-1%", "loss", "-1%"),
        ("loss=lots", "loss", "lots"),
        ("loss=", "loss", ""),
        ("delay=10", "delay", "10"),
        ("delay=-5ms", "delay", "-5ms"),
        ("jitter=1h", "jitter", "1h"),
        ("reorder-delay=1.5ns", "reorder-delay", "1.5ns"),
        ("rate=10mbps", "rate", "10mbps"),
        ("rate=fast", "rate", "fast"),
        ("queue=64", "queue", "64"),
        ("burst=0.1", "burst", "0.1"),
        ("burst=0.1:0.2:0.3:0.4:0.5", "burst", "0.1:0.2:0.3:0.4:0.5"),
        ("burst=0.1:2", "burst", "0.1:2"),
        ("flap=500ms", "flap", "500ms"),
        ("flap=500ms/x", "flap", "500ms/x"),
        ("cut-at=soon,cut-for=1s", "cut-at", "soon"),
    ] {
        match err(spec) {
            NetemError::InvalidValue {
                key: k,
                value: v,
                reason,
            } => {
                assert_eq!((k.as_str(), v.as_str()), (key, value), "{spec}");
                assert!(!reason.is_empty());
                let message = err(spec).to_string();
                assert!(
                    message.contains(key) && message.contains(value),
                    "{message}"
                );
            }
            other => panic!("{spec}: unexpected error {other:?}"),
        }
    }

    // Values that parse but make no sense are rejected by validation.
    assert_eq!(err("rate=0bit"), NetemError::ZeroRate);
    assert_eq!(err("rate=1mbit,queue=0kb"), NetemError::ZeroQueue);
    assert!(matches!(
        err("reorder=1%"),
        NetemError::ReorderWithoutDelay { .. }
    ));
    assert!(matches!(
        err("flap=100ms/500ms"),
        NetemError::FlapDownExceedsPeriod { .. }
    ));
    assert_eq!(err("flap=0s/0s"), NetemError::ZeroFlapPeriod);
    assert!(matches!(
        err("delay=1000000000s"),
        NetemError::DurationTooLong { name: "delay", .. }
    ));

    // Cuts must come in pairs.
    for spec in [
        "cut-at=5s",
        "cut-for=2s",
        "cut-at=1s,cut-at=2s,cut-for=1s",
        "cut-for=1s,cut-for=2s,cut-at=1s",
    ] {
        assert!(
            matches!(err(spec), NetemError::UnpairedCut { .. }),
            "{spec}"
        );
    }
}

#[test]
fn parse_duration_is_public() {
    assert_eq!(parse_duration("250ms").unwrap(), 250 * MS);
    assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
    assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
    let e = parse_duration("ten seconds").unwrap_err();
    assert!(matches!(e, NetemError::InvalidDuration { .. }));
    assert!(e.to_string().contains("ten seconds"));
}
