//! Model-based test of the checkpoint store.
//!
//! Random sequences of push / confirm / watermark / session changes,
//! commits, compactions, injected I/O faults, full disks, reopenings and
//! crashes run against a [`CheckpointStore`] over [`MemStorage`] and, side by
//! side, against a plain in-memory reference model. After every crash and
//! reopen the recovered state must be one the model allows:
//!
//! * with [`CrashMode::DropUnsynced`] and no uncertainty since the last
//!   successful commit: exactly the model's state as of that commit;
//! * otherwise (torn tails kept by the crash, a failed commit whose data may
//!   or may not have reached the disk, a plain reopen): the committed state
//!   or the state after some prefix of the changes made since: never less
//!   than what was committed, never anything out of order.

use std::collections::BTreeMap;

use proptest::prelude::*;
use surelink_journal::{
    CheckpointStore, CrashMode, Durability, JournalError, JournalOptions, MemStorage,
    SessionRecord, StorageOp,
};

#[derive(Debug, Clone)]
enum Op {
    Push { channel: u64, gap: u64, len: usize },
    Confirm { channel: u64, back: u64 },
    Watermark { channel: u64, delta: u64 },
    Session { byte: u8 },
    ClearSession,
    Commit,
    Compact,
    Crash { torn: bool, seed: u64 },
    Reopen,
    Fault { op: usize, after: u64 },
    DiskFull { extra: u64 },
    FreeSpace,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    pending: Vec<(u64, u64, Vec<u8>)>,
    confirmed: BTreeMap<u64, u64>,
    watermarks: BTreeMap<u64, u64>,
    session: Option<SessionRecord>,
}

impl State {
    fn of(store: &CheckpointStore<MemStorage>) -> State {
        let outbox = store.outbox();
        State {
            pending: outbox
                .pending()
                .map(|e| (e.channel, e.seq, e.payload.clone()))
                .collect(),
            confirmed: outbox
                .channels()
                .filter_map(|c| outbox.confirmed(c).map(|s| (c, s)))
                .collect(),
            watermarks: store.watermarks().iter().collect(),
            session: store.session().cloned(),
        }
    }

    fn high(&self, channel: u64) -> u64 {
        let pending = self
            .pending
            .iter()
            .filter(|e| e.0 == channel)
            .map(|e| e.1)
            .max();
        pending
            .max(self.confirmed.get(&channel).copied())
            .unwrap_or(0)
    }
}

fn session(byte: u8) -> SessionRecord {
    SessionRecord {
        session_id: [byte; 16],
        resume_token: [byte.wrapping_mul(3); 32],
        peer: vec![byte; (byte % 7) as usize],
    }
}

struct Harness {
    storage: MemStorage,
    options: JournalOptions,
    store: Option<CheckpointStore<MemStorage>>,
    /// The model's state now.
    current: State,
    /// The model's state as of the last successful durable commit.
    durable: State,
    /// States after each change since then, in order.
    since: Vec<State>,
    /// Something happened since the last commit that may have made more
    /// than the committed state durable.
    uncertain: bool,
    stats: Stats,
}

/// What a run exercised, to check the test is not vacuous.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    crashes: u64,
    exact_checks: u64,
    torn_repairs: u64,
    poisoned: u64,
    failed_ops: u64,
    compactions: u64,
    full_disk_errors: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.crashes += o.crashes;
        self.exact_checks += o.exact_checks;
        self.torn_repairs += o.torn_repairs;
        self.poisoned += o.poisoned;
        self.failed_ops += o.failed_ops;
        self.compactions += o.compactions;
        self.full_disk_errors += o.full_disk_errors;
    }
}

impl Harness {
    fn new(options: JournalOptions) -> Self {
        let storage = MemStorage::new();
        let store = CheckpointStore::open(storage.clone(), options.clone()).unwrap();
        Harness {
            storage,
            options,
            store: Some(store),
            current: State::default(),
            durable: State::default(),
            since: Vec::new(),
            uncertain: false,
            stats: Stats::default(),
        }
    }

    fn store(&mut self) -> &mut CheckpointStore<MemStorage> {
        self.store.as_mut().expect("open")
    }

    /// Reopens the store and checks the recovered state against the model.
    fn reopen_and_check(&mut self, exact: bool) {
        self.store = None;
        let mut attempts = 0;
        let store = loop {
            match CheckpointStore::open(self.storage.clone(), self.options.clone()) {
                Ok(store) => break store,
                Err(e @ JournalError::Corrupt { .. }) => panic!("recovery found corruption: {e}"),
                Err(e) => {
                    attempts += 1;
                    assert!(attempts < 3, "open keeps failing: {e}");
                    // An injected fault or the full disk hit recovery; the
                    // operator frees space and tries again.
                    self.storage.clear_faults();
                    self.storage.set_capacity(None);
                }
            }
        };
        let recovered = State::of(&store);
        if store.journal().recovery().truncated_bytes > 0 {
            self.stats.torn_repairs += 1;
        }
        if exact {
            self.stats.exact_checks += 1;
            assert_eq!(
                recovered, self.durable,
                "recovered state != committed state"
            );
        } else {
            assert!(
                recovered == self.durable || self.since.contains(&recovered),
                "recovered state is neither the committed state nor a later prefix\n\
                 recovered: {recovered:?}\ncommitted: {:?}\nsince: {:?}",
                self.durable,
                self.since
            );
        }
        self.store = Some(store);
        self.current = recovered.clone();
        self.durable = recovered;
        self.since.clear();
        self.uncertain = false;
    }

    /// Runs a state change on the store and, if it succeeds, on the model.
    fn change(
        &mut self,
        op: impl FnOnce(&mut CheckpointStore<MemStorage>) -> Result<(), JournalError>,
        model: impl FnOnce(&mut State),
    ) {
        let durable_before = self.store().journal().durable_id();
        let result = op(self.store());
        if self.store().journal().durable_id() != durable_before {
            // A write-through rolled a segment over, sealing (fsyncing)
            // records that were not committed yet.
            self.uncertain = true;
        }
        match result {
            Ok(()) => {
                model(&mut self.current);
                self.since.push(self.current.clone());
                assert_eq!(State::of(self.store.as_ref().unwrap()), self.current);
            }
            Err(e) => {
                self.note_failure(&e);
                assert_eq!(
                    State::of(self.store.as_ref().unwrap()),
                    self.current,
                    "a failed change must not change the state"
                );
                if self.store().journal().poisoned().is_some() {
                    self.reopen_and_check(false);
                }
            }
        }
    }

    fn note_failure(&mut self, e: &JournalError) {
        assert!(
            matches!(e, JournalError::Io { .. } | JournalError::Poisoned { .. }),
            "unexpected error {e}"
        );
        self.stats.failed_ops += 1;
        if e.is_storage_full() {
            self.stats.full_disk_errors += 1;
        }
        if self.store.as_ref().unwrap().journal().poisoned().is_some() {
            self.stats.poisoned += 1;
        }
    }

    fn durable_point(&mut self, result: Result<(), JournalError>) {
        match result {
            Ok(()) => {
                self.durable = self.current.clone();
                self.since.clear();
                self.uncertain = false;
            }
            Err(e) => {
                self.note_failure(&e);
                self.uncertain = true;
                assert_eq!(State::of(self.store.as_ref().unwrap()), self.current);
                if self.store().journal().poisoned().is_some() {
                    self.reopen_and_check(false);
                }
            }
        }
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Push { channel, gap, len } => {
                let seq = self.current.high(channel) + gap;
                let payload = vec![(seq as u8) ^ (channel as u8); len];
                let p = payload.clone();
                self.change(
                    |s| s.push(channel, seq, p.as_slice()),
                    |m| m.pending.push((channel, seq, payload)),
                );
            }
            Op::Confirm { channel, back } => {
                let up_to = self.current.high(channel).saturating_sub(back);
                self.change(
                    |s| s.confirm(channel, up_to).map(drop),
                    |m| {
                        if m.confirmed.get(&channel).is_none_or(|&c| up_to > c) {
                            m.pending.retain(|e| e.0 != channel || e.1 > up_to);
                            m.confirmed.insert(channel, up_to);
                        }
                    },
                );
            }
            Op::Watermark { channel, delta } => {
                let seq = self.current.watermarks.get(&channel).copied().unwrap_or(0) + delta;
                self.change(
                    |s| s.set_watermark(channel, seq).map(drop),
                    |m| {
                        m.watermarks.insert(channel, seq);
                    },
                );
            }
            Op::Session { byte } => {
                self.change(
                    |s| s.set_session(session(byte)),
                    |m| m.session = Some(session(byte)),
                );
            }
            Op::ClearSession => {
                self.change(|s| s.clear_session().map(drop), |m| m.session = None);
            }
            Op::Commit => {
                let result = self.store().commit().map(drop);
                self.durable_point(result);
            }
            Op::Compact => {
                let result = self.store().compact().map(drop);
                if result.is_ok() {
                    self.stats.compactions += 1;
                }
                self.durable_point(result);
            }
            Op::Crash { torn, seed } => {
                self.store = None;
                let mode = if torn {
                    CrashMode::KeepRandomPrefix { seed }
                } else {
                    CrashMode::DropUnsynced
                };
                self.storage.crash(mode);
                self.stats.crashes += 1;
                let exact = !torn && !self.uncertain;
                self.reopen_and_check(exact);
            }
            Op::Reopen => self.reopen_and_check(false),
            Op::Fault { op, after } => self
                .storage
                .fail(StorageOp::ALL[op % StorageOp::ALL.len()], after),
            Op::DiskFull { extra } => {
                let used = self.storage.used_bytes();
                self.storage.set_capacity(Some(used + extra));
            }
            Op::FreeSpace => self.storage.set_capacity(None),
        }
    }

    /// Ends a run: heal the storage, commit, crash, and check exactly.
    fn finish(&mut self) {
        self.storage.clear_faults();
        self.storage.set_capacity(None);
        let result = self.store().commit().map(drop);
        self.durable_point(result);
        self.store = None;
        self.storage.crash(CrashMode::DropUnsynced);
        self.reopen_and_check(true);
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..3u64, 1..4u64, 0..40usize).prop_map(|(channel, gap, len)| Op::Push { channel, gap, len }),
        5 => (0..3u64, 0..4u64).prop_map(|(channel, back)| Op::Confirm { channel, back }),
        5 => (0..3u64, 0..3u64).prop_map(|(channel, delta)| Op::Watermark { channel, delta }),
        2 => any::<u8>().prop_map(|byte| Op::Session { byte }),
        1 => Just(Op::ClearSession),
        8 => Just(Op::Commit),
        2 => Just(Op::Compact),
        3 => (any::<bool>(), any::<u64>()).prop_map(|(torn, seed)| Op::Crash { torn, seed }),
        1 => Just(Op::Reopen),
        3 => (0..9usize, 0..4u64).prop_map(|(op, after)| Op::Fault { op, after }),
        1 => (0..200u64).prop_map(|extra| Op::DiskFull { extra }),
        2 => Just(Op::FreeSpace),
    ]
}

fn options(small_buffer: bool) -> JournalOptions {
    JournalOptions {
        durability: Durability::Always,
        segment_size: 256,
        write_buffer: if small_buffer { 96 } else { 1 << 20 },
        ..JournalOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn recovered_state_matches_the_model(
        small_buffer in any::<bool>(),
        ops in proptest::collection::vec(op_strategy(), 1..80),
    ) {
        let mut harness = Harness::new(options(small_buffer));
        for op in &ops {
            harness.run(op);
        }
        harness.finish();
    }
}

/// Long seeded runs: larger logs, many compactions and crashes.
#[test]
fn long_seeded_runs() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut stats = Stats::default();
    for seed in 0..12u8 {
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        let ops = proptest::collection::vec(op_strategy(), 600)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut harness = Harness::new(options(seed % 2 == 0));
        for op in &ops {
            harness.run(op);
        }
        harness.finish();
        stats += harness.stats;
    }
    println!("{stats:?}");
    assert!(stats.crashes > 100, "{stats:?}");
    assert!(stats.exact_checks > 20, "{stats:?}");
    assert!(stats.torn_repairs > 10, "{stats:?}");
    assert!(stats.poisoned > 10, "{stats:?}");
    assert!(stats.full_disk_errors > 10, "{stats:?}");
    assert!(stats.compactions > 50, "{stats:?}");
}
