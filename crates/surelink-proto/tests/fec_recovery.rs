//! FEC recovery across 200 seeds of random and burst loss.
//!
//! A seeded stream of source symbols (random lengths, pauses that make the
//! encoder's timer close groups early) is encoded with one scheme per seed;
//! sources and repairs cross a `surelink-netem` link with independent or
//! Gilbert-Elliott loss and arrive locally reordered at the decoder. An
//! oracle that knows which symbols were lost says exactly which sources the
//! code can rebuild (Reed-Solomon: a group with at least as many symbols as
//! sources; XOR: parity peeling on indices); the decoder must recover exactly
//! those, byte-exact, each once, and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use surelink_netem::{Fate, GilbertElliott, Link, LinkConfig};
use surelink_proto::fec::{
    FecDecoder, FecDecoderLimits, FecEncoder, FecError, FecScheme, RecoveredSymbol, RepairSymbol,
};

const SCHEMES: [FecScheme; 6] = [
    FecScheme::ReedSolomon {
        source: 16,
        repair: 4,
    },
    FecScheme::ReedSolomon {
        source: 8,
        repair: 2,
    },
    FecScheme::ReedSolomon {
        source: 5,
        repair: 3,
    },
    FecScheme::Xor { rows: 4, cols: 4 },
    FecScheme::Xor { rows: 8, cols: 8 },
    FecScheme::Xor { rows: 3, cols: 5 },
];

/// One symbol on the simulated wire.
#[derive(Clone)]
enum Sent {
    Source(u64, Vec<u8>),
    Repair(RepairSymbol),
}

/// A group as the encoder closed it, with what the link did to it.
struct GroupRecord {
    scheme: FecScheme,
    first_seq: u64,
    sources: usize,
    received_repairs: BTreeSet<u8>,
}

/// The sources of `group` the code can rebuild, given the lost sequences.
fn oracle(group: &GroupRecord, lost: &BTreeSet<u64>) -> BTreeSet<u64> {
    let seqs = group.first_seq..group.first_seq + group.sources as u64;
    let mut missing: BTreeSet<usize> = seqs
        .clone()
        .filter(|s| lost.contains(s))
        .map(|s| (s - group.first_seq) as usize)
        .collect();
    let all_missing = missing.clone();
    match group.scheme {
        FecScheme::ReedSolomon { .. } => {
            if group.sources - missing.len() + group.received_repairs.len() >= group.sources {
                missing.clear();
            }
        }
        FecScheme::Xor { cols, .. } => {
            let cols = usize::from(cols);
            loop {
                let before = missing.len();
                for &index in &group.received_repairs {
                    let index = usize::from(index);
                    let members: Vec<usize> = if index < cols {
                        (index..group.sources).step_by(cols).collect()
                    } else {
                        let row = index - cols;
                        (row * cols..((row + 1) * cols).min(group.sources)).collect()
                    };
                    let lost_members: Vec<usize> = members
                        .into_iter()
                        .filter(|m| missing.contains(m))
                        .collect();
                    if let [only] = lost_members[..] {
                        missing.remove(&only);
                    }
                }
                if missing.len() == before {
                    break;
                }
            }
        }
    }
    all_missing
        .difference(&missing)
        .map(|&i| group.first_seq + i as u64)
        .collect()
}

/// The simulated wire: what the link did to each symbol sent.
struct Wire {
    link: Link<Sent>,
    arrived: Vec<Sent>,
    lost: BTreeSet<u64>,
    groups: Vec<GroupRecord>,
}

impl Wire {
    /// Sends one symbol; returns whether it will arrive.
    fn send(&mut self, now: Instant, sent: Sent) -> bool {
        let size = match &sent {
            Sent::Source(_, payload) => payload.len(),
            Sent::Repair(repair) => repair.encoded_len(),
        };
        match self.link.send(now, size, sent.clone()) {
            Fate::Dropped(_) => {
                if let Sent::Source(seq, _) = sent {
                    self.lost.insert(seq);
                }
                false
            }
            Fate::Scheduled { .. } => {
                self.arrived.push(sent);
                true
            }
        }
    }

    /// Sends a closed group's repairs and records the group.
    fn send_repairs(&mut self, now: Instant, repairs: Vec<RepairSymbol>) {
        let Some(first) = repairs.first() else {
            return;
        };
        let mut group = GroupRecord {
            scheme: first.scheme,
            first_seq: first.first_seq,
            sources: usize::from(first.sources),
            received_repairs: BTreeSet::new(),
        };
        for repair in repairs {
            let index = repair.index;
            if self.send(now, Sent::Repair(repair)) {
                group.received_repairs.insert(index);
            }
        }
        self.groups.push(group);
    }
}

fn run_seed(seed: u64, burst: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scheme = SCHEMES[(seed % SCHEMES.len() as u64) as usize];
    let config = if burst {
        // Mean burst 3 packets, about 6 % loss overall.
        LinkConfig::clean().with_burst(GilbertElliott::gilbert(0.02, 1.0 / 3.0))
    } else {
        LinkConfig::clean().with_loss([0.02, 0.05, 0.10][(seed % 3) as usize])
    };
    let start = Instant::now();
    let mut wire = Wire {
        link: Link::new(config, seed, start).unwrap(),
        arrived: Vec::new(),
        lost: BTreeSet::new(),
        groups: Vec::new(),
    };
    let hold = Duration::from_millis(rng.gen_range(5..40));
    let mut encoder = FecEncoder::new(scheme, hold).unwrap();

    let mut now = start;
    let mut originals = BTreeMap::new();
    let first_seq = rng.gen_range(0..1_000_000u64);
    for seq in first_seq..first_seq + 400 {
        now += if rng.gen_bool(0.03) {
            hold * 2
        } else {
            Duration::from_millis(1)
        };
        wire.send_repairs(now, encoder.handle_timeout(now));
        let len = if rng.gen_bool(0.1) {
            rng.gen_range(0..=1472)
        } else {
            rng.gen_range(20..200)
        };
        let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        originals.insert(seq, payload.clone());
        wire.send(now, Sent::Source(seq, payload.clone()));
        let repairs = encoder.push_source(now, seq, &payload).unwrap();
        wire.send_repairs(now, repairs);
    }
    wire.send_repairs(now, encoder.flush());

    // Local reordering: swap neighbours within a distance of 8.
    let mut arrived = wire.arrived;
    for i in 0..arrived.len() {
        let j = (i + rng.gen_range(0..8)).min(arrived.len() - 1);
        arrived.swap(i, j);
    }
    let mut decoder = FecDecoder::new(FecDecoderLimits::default());
    let mut recovered: Vec<RecoveredSymbol> = Vec::new();
    for sent in arrived {
        match sent {
            Sent::Source(seq, payload) => recovered.extend(decoder.push_source(seq, &payload)),
            Sent::Repair(repair) => recovered.extend(decoder.push_repair(repair).unwrap()),
        }
    }

    let lost = wire.lost;
    let expected: BTreeSet<u64> = wire.groups.iter().flat_map(|g| oracle(g, &lost)).collect();
    let mut seen = BTreeSet::new();
    for symbol in &recovered {
        assert!(
            seen.insert(symbol.seq),
            "seed {seed}: {} recovered twice",
            symbol.seq
        );
        assert_eq!(
            Some(&symbol.payload),
            originals.get(&symbol.seq),
            "seed {seed}: wrong bytes for {}",
            symbol.seq
        );
    }
    let recovered_lost: BTreeSet<u64> = seen.intersection(&lost).copied().collect();
    assert_eq!(
        recovered_lost, expected,
        "seed {seed} {scheme} burst={burst}: recovered lost sources differ from the decodable ones"
    );
    assert!(!lost.is_empty() || recovered.is_empty());
    assert_eq!(decoder.stats().recovered, recovered.len() as u64);
}

#[test]
fn recovery_across_200_seeds_of_random_loss() {
    for seed in 0..200 {
        run_seed(seed, false);
    }
}

#[test]
fn recovery_across_200_seeds_of_burst_loss() {
    for seed in 0..200 {
        run_seed(seed, true);
    }
}

fn group(scheme: FecScheme, first_seq: u64, payloads: &[&[u8]]) -> Vec<RepairSymbol> {
    let now = Instant::now();
    let mut encoder = FecEncoder::new(scheme, Duration::from_secs(1)).unwrap();
    let mut repairs = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        repairs.extend(
            encoder
                .push_source(now, first_seq + i as u64, payload)
                .unwrap(),
        );
    }
    repairs.extend(encoder.flush());
    repairs
}

const RS_4_2: FecScheme = FecScheme::ReedSolomon {
    source: 4,
    repair: 2,
};

#[test]
fn duplicates_and_repairs_for_unknown_groups_are_harmless() {
    let payloads: [&[u8]; 4] = [b"zero", b"one", b"", b"three!"];
    let repairs = group(RS_4_2, 50, &payloads);
    let mut decoder = FecDecoder::default();
    assert!(decoder.push_source(50, payloads[0]).is_empty());
    assert!(decoder.push_source(50, payloads[0]).is_empty());
    assert!(decoder.push_source(52, payloads[2]).is_empty());
    assert!(decoder.push_repair(repairs[0].clone()).unwrap().is_empty());
    assert!(decoder.push_repair(repairs[0].clone()).unwrap().is_empty());
    let got = decoder.push_repair(repairs[1].clone()).unwrap();
    assert_eq!(
        got,
        [
            RecoveredSymbol {
                seq: 51,
                payload: b"one".to_vec()
            },
            RecoveredSymbol {
                seq: 53,
                payload: b"three!".to_vec()
            }
        ]
    );
    // The lost sources arriving late, or the repairs again, change nothing.
    assert!(decoder.push_source(51, payloads[1]).is_empty());
    assert!(decoder.push_repair(repairs[1].clone()).unwrap().is_empty());
    let stats = decoder.stats();
    assert_eq!(stats.recovered, 2);
    assert_eq!(stats.duplicates, 3);
    assert_eq!(stats.stale, 1);

    // Repairs for a group no source of which ever arrives: held, nothing made up.
    let orphan = group(RS_4_2, 1000, &[b"a", b"b"]);
    assert!(decoder.push_repair(orphan[0].clone()).unwrap().is_empty());
    // A repair that contradicts its group, or overlaps another, is rejected.
    let mut contradicting = orphan[1].clone();
    contradicting.sources = 1;
    assert_eq!(
        decoder.push_repair(contradicting),
        Err(FecError::Inconsistent)
    );
    let mut overlapping = orphan[1].clone();
    overlapping.first_seq = 999;
    assert_eq!(
        decoder.push_repair(overlapping),
        Err(FecError::Inconsistent)
    );
    let mut misshapen = orphan[1].clone();
    misshapen.block.push(0);
    assert_eq!(decoder.push_repair(misshapen), Err(FecError::Inconsistent));
    assert_eq!(decoder.stats().rejected, 3);
    // An oversized source is dropped.
    assert!(decoder.push_source(1001, &[0; 2000]).is_empty());
    assert_eq!(decoder.stats().rejected, 4);
}

#[test]
fn a_source_too_long_for_its_group_recovers_nothing_wrong() {
    let repairs = group(RS_4_2, 0, &[b"ab", b"cd", b"ef", b"gh"]);
    let mut decoder = FecDecoder::default();
    // Sources that do not match the repairs (one longer than the blocks).
    assert!(decoder.push_source(0, b"a much longer payload").is_empty());
    assert!(decoder.push_source(1, b"cd").is_empty());
    assert!(decoder.push_repair(repairs[0].clone()).unwrap().is_empty());
    assert!(decoder.push_repair(repairs[1].clone()).unwrap().is_empty());
    assert_eq!(decoder.stats().recovered, 0);
}

#[test]
fn memory_stays_bounded_and_old_input_is_stale() {
    let limits = FecDecoderLimits {
        source_window: 64,
        max_groups: 4,
    };
    let mut decoder = FecDecoder::new(limits);
    for first in (0..10_000u64).step_by(8) {
        let payloads: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 100]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let repairs = group(
            FecScheme::ReedSolomon {
                source: 8,
                repair: 2,
            },
            first,
            &refs,
        );
        // Lose the group's first source; only one repair arrives.
        for (i, payload) in refs.iter().enumerate().skip(1) {
            decoder.push_source(first + i as u64, payload);
        }
        decoder.push_repair(repairs[0].clone()).unwrap();
        assert!(decoder.buffered_sources() <= 64);
        assert!(decoder.tracked_groups() <= 4);
    }
    assert_eq!(decoder.stats().recovered, 10_000 / 8);
    assert!(decoder.push_source(3, b"old").is_empty());
    let old = group(RS_4_2, 8, &[b"x"]);
    assert!(decoder.push_repair(old[0].clone()).unwrap().is_empty());
    assert_eq!(decoder.stats().stale, 2);

    // Groups whose repairs arrive but never complete are evicted by count.
    let mut decoder = FecDecoder::new(limits);
    for first in (0..100u64).step_by(4) {
        decoder
            .push_repair(group(RS_4_2, first, &[b"a", b"b", b"c", b"d"])[0].clone())
            .unwrap();
        assert!(decoder.tracked_groups() <= 4);
    }
    assert!(decoder.stats().evicted_groups >= 21);
}

/// Arbitrary decoder input, valid or not.
#[derive(Debug, Clone)]
enum Input {
    Source(u64, Vec<u8>),
    Repair(RepairSymbol),
}

fn input_strategy() -> impl Strategy<Value = Input> {
    let seq = prop_oneof![0u64..300, any::<u64>()];
    let scheme = (any::<bool>(), 0u8..20, 0u8..20).prop_map(|(xor, a, b)| {
        if xor {
            FecScheme::Xor { rows: a, cols: b }
        } else {
            FecScheme::ReedSolomon {
                source: a,
                repair: b,
            }
        }
    });
    prop_oneof![
        (seq.clone(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(seq, payload)| Input::Source(seq, payload)),
        (
            scheme,
            seq,
            0u8..20,
            0u8..30,
            proptest::collection::vec(any::<u8>(), 0..44)
        )
            .prop_map(|(scheme, first_seq, sources, index, block)| {
                Input::Repair(RepairSymbol {
                    scheme,
                    first_seq,
                    sources,
                    index,
                    block,
                })
            }),
    ]
}

proptest! {
    #[test]
    fn garbage_input_never_panics_and_stays_bounded(
        inputs in proptest::collection::vec(input_strategy(), 0..200)
    ) {
        let limits = FecDecoderLimits { source_window: 128, max_groups: 8 };
        let mut decoder = FecDecoder::new(limits);
        let mut produced = 0u64;
        for input in inputs {
            match input {
                Input::Source(seq, payload) => {
                    produced += decoder.push_source(seq, &payload).len() as u64;
                }
                Input::Repair(repair) => {
                    produced += decoder.push_repair(repair).map_or(0, |r| r.len() as u64);
                }
            }
            prop_assert!(decoder.buffered_sources() <= 128);
            prop_assert!(decoder.tracked_groups() <= 8);
        }
        prop_assert_eq!(decoder.stats().recovered, produced);
    }
}
