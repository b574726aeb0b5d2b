//! Compares the FEC codes at equal overhead: the fraction of lost source
//! symbols each recovers under random and Gilbert-Elliott burst loss, and
//! what encoding and decoding cost.
//!
//! `cargo run --release -p surelink-proto --example fec_compare`
//!
//! 100,000 source symbols of 100–1,200 bytes per cell, sources and repairs
//! crossing a `surelink-netem` link with the given loss (repairs are lost
//! too); deterministic (seed 1). The costs are wall-clock times on this
//! machine, one core, per source symbol of 1,200 bytes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use surelink_netem::{Fate, GilbertElliott, Link, LinkConfig};
use surelink_proto::fec::{FecDecoder, FecDecoderLimits, FecEncoder, FecScheme, RepairSymbol};

const SYMBOLS: u64 = 100_000;

/// A symbol on the simulated link.
#[derive(Clone)]
enum Sent {
    Source(u64, Vec<u8>),
    Repair(RepairSymbol),
}

/// The schemes compared, by overhead tier.
fn schemes() -> Vec<FecScheme> {
    vec![
        FecScheme::Xor { rows: 8, cols: 8 },
        FecScheme::ReedSolomon {
            source: 4,
            repair: 1,
        },
        FecScheme::ReedSolomon {
            source: 8,
            repair: 2,
        },
        FecScheme::ReedSolomon {
            source: 16,
            repair: 4,
        },
        FecScheme::ReedSolomon {
            source: 32,
            repair: 8,
        },
        FecScheme::Xor { rows: 4, cols: 4 },
        FecScheme::ReedSolomon {
            source: 8,
            repair: 4,
        },
        FecScheme::ReedSolomon {
            source: 16,
            repair: 8,
        },
    ]
}

/// The loss models compared, with their names.
fn losses() -> Vec<(&'static str, LinkConfig)> {
    let burst = |mean_loss: f64, mean_burst: f64| {
        let r = 1.0 / mean_burst;
        let p = mean_loss * r / (1.0 - mean_loss);
        LinkConfig::clean().with_burst(GilbertElliott::gilbert(p, r))
    };
    vec![
        ("random 2 %", LinkConfig::clean().with_loss(0.02)),
        ("random 5 %", LinkConfig::clean().with_loss(0.05)),
        ("random 10 %", LinkConfig::clean().with_loss(0.10)),
        ("GE 5 %, bursts of 3", burst(0.05, 3.0)),
        ("GE 5 %, bursts of 8", burst(0.05, 8.0)),
    ]
}

/// Sends `SYMBOLS` sources protected by `scheme` across a link with
/// `config`; returns (sources lost, of those recovered).
fn recovery(scheme: FecScheme, config: &LinkConfig) -> (u64, u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let now = Instant::now();
    let mut link: Link<Sent> = Link::new(config.clone(), 1, now).unwrap();
    let mut encoder = FecEncoder::new(scheme, Duration::from_secs(1)).unwrap();
    let mut decoder = FecDecoder::new(FecDecoderLimits::default());
    let mut lost = 0;
    let mut recovered = 0;
    let mut deliver = |sent: Sent, decoder: &mut FecDecoder, lost: &mut u64| {
        let size = match &sent {
            Sent::Source(_, payload) => payload.len(),
            Sent::Repair(repair) => repair.encoded_len(),
        };
        match (link.send(now, size, sent.clone()), sent) {
            (Fate::Dropped(_), Sent::Source(..)) => {
                *lost += 1;
                0
            }
            (Fate::Dropped(_), Sent::Repair(_)) => 0,
            (_, Sent::Source(seq, payload)) => decoder.push_source(seq, &payload).len() as u64,
            (_, Sent::Repair(repair)) => decoder.push_repair(repair).unwrap().len() as u64,
        }
    };
    for seq in 0..SYMBOLS {
        let len = rng.gen_range(100..=1200);
        let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let repairs = encoder.push_source(now, seq, &payload).unwrap();
        recovered += deliver(Sent::Source(seq, payload), &mut decoder, &mut lost);
        for repair in repairs {
            recovered += deliver(Sent::Repair(repair), &mut decoder, &mut lost);
        }
    }
    (lost, recovered)
}

/// Nanoseconds per 1,200-byte source symbol to encode, and to decode with
/// every group losing as many sources as it has repairs (the worst case the
/// code still repairs for Reed-Solomon; one per row and column for XOR).
fn cost(scheme: FecScheme) -> (f64, f64) {
    let now = Instant::now();
    let groups = 2_000u64;
    let capacity = scheme.group_capacity() as u64;
    let payloads: Vec<Vec<u8>> = (0..capacity).map(|i| vec![i as u8; 1200]).collect();
    let mut encoder = FecEncoder::new(scheme, Duration::from_secs(1)).unwrap();
    let mut all_repairs = Vec::with_capacity(groups as usize);
    let started = Instant::now();
    for group in 0..groups {
        for (i, payload) in payloads.iter().enumerate() {
            let repairs = encoder
                .push_source(now, group * capacity + i as u64, payload)
                .unwrap();
            if !repairs.is_empty() {
                all_repairs.push(black_box(repairs));
            }
        }
    }
    let encode = started.elapsed().as_nanos() as f64 / (groups * capacity) as f64;

    let drop_every = match scheme {
        // One loss per row and column: the diagonal.
        FecScheme::Xor { cols, .. } => usize::from(cols) + 1,
        FecScheme::ReedSolomon { source, repair } => usize::from(source / repair).max(1),
    };
    let mut decoder = FecDecoder::new(FecDecoderLimits::default());
    let started = Instant::now();
    let mut recovered = 0;
    for (group, repairs) in all_repairs.into_iter().enumerate() {
        let first = group as u64 * capacity;
        for (i, payload) in payloads.iter().enumerate() {
            if i % drop_every != 0 {
                decoder.push_source(first + i as u64, payload);
            }
        }
        for repair in repairs {
            recovered += decoder.push_repair(repair).unwrap().len();
        }
    }
    black_box(recovered);
    let decode = started.elapsed().as_nanos() as f64 / (groups * capacity) as f64;
    (encode, decode)
}

fn main() {
    let losses = losses();
    print!("| scheme | overhead | group |");
    for (name, _) in &losses {
        print!(" {name} |");
    }
    println!(" encode ns/symbol | decode ns/symbol |");
    println!("|{}", "---|".repeat(5 + losses.len()));
    for scheme in schemes() {
        let name = match scheme {
            FecScheme::Xor { .. } => format!("XOR {scheme}"),
            FecScheme::ReedSolomon { .. } => format!("RS {scheme}"),
        };
        print!(
            "| {name} | {:.0} % | {} |",
            scheme.overhead() * 100.0,
            scheme.group_capacity()
        );
        for (_, config) in &losses {
            let (lost, recovered) = recovery(scheme, config);
            print!(
                " {:.1} % ({:.2} % left) |",
                100.0 * recovered as f64 / lost.max(1) as f64,
                100.0 * (lost - recovered) as f64 / SYMBOLS as f64
            );
        }
        let (encode, decode) = cost(scheme);
        println!(" {encode:.0} | {decode:.0} |");
    }
}
