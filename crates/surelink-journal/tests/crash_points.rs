//! Crash at every point: the storage "process" is halted after each possible
//! number of mutating operations inside a compaction, a commit (with
//! rollovers) and a recovery, then crashed (dropping unsynced data, or
//! keeping random prefixes of it). Every such crash must reopen to an
//! allowed state.

use surelink_journal::{
    CheckpointStore, CrashMode, JournalError, JournalOptions, MemStorage, SessionRecord,
};

#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    pending: Vec<(u64, u64, Vec<u8>)>,
    confirmed: Vec<Option<u64>>,
    watermarks: Vec<(u64, u64)>,
    session: Option<SessionRecord>,
}

fn state(store: &CheckpointStore<MemStorage>) -> State {
    State {
        pending: store
            .outbox()
            .pending()
            .map(|e| (e.channel, e.seq, e.payload.clone()))
            .collect(),
        confirmed: (0..3).map(|c| store.outbox().confirmed(c)).collect(),
        watermarks: store.watermarks().iter().collect(),
        session: store.session().cloned(),
    }
}

fn options() -> JournalOptions {
    JournalOptions {
        segment_size: 200,
        ..JournalOptions::default()
    }
}

fn crash_modes() -> Vec<CrashMode> {
    let mut modes = vec![CrashMode::DropUnsynced];
    modes.extend((0..4).map(|seed| CrashMode::KeepRandomPrefix { seed }));
    modes
}

/// A committed store spread over several segments with plenty of garbage.
fn setup() -> MemStorage {
    let storage = MemStorage::new();
    let mut store = CheckpointStore::open(storage.clone(), options()).unwrap();
    store
        .set_session(SessionRecord {
            session_id: [1; 16],
            resume_token: [2; 32],
            peer: b"peer".to_vec(),
        })
        .unwrap();
    for seq in 1..=30u64 {
        store.push(seq % 3, seq, [seq as u8; 12]).unwrap();
        store.set_watermark(7, seq).unwrap();
        if seq % 5 == 0 {
            store.confirm(seq % 3, seq - 2).unwrap();
            store.commit().unwrap();
        }
    }
    store.commit().unwrap();
    assert!(storage.files().len() > 3);
    storage
}

fn reopen(storage: &MemStorage) -> CheckpointStore<MemStorage> {
    match CheckpointStore::open(storage.clone(), options()) {
        Ok(store) => store,
        Err(e) => panic!("reopen failed: {e}"),
    }
}

#[test]
fn crash_at_every_point_of_a_compaction() {
    let base = setup();
    let expected = state(&reopen(&base.fork()));
    let mut completed = false;
    for budget in 0.. {
        for mode in crash_modes() {
            let mut storage = base.fork();
            let mut store = reopen(&storage);
            storage.halt_after(budget);
            let result = store.compact();
            let halted = storage.is_halted();
            if let Err(e) = &result {
                assert!(halted, "only the halt may fail it: {e}");
                assert!(matches!(e, JournalError::Io { .. }));
            }
            drop(store);
            storage.crash(mode);
            let recovered = reopen(&storage);
            assert_eq!(state(&recovered), expected, "budget {budget}, {mode:?}");
            if result.is_ok() && !halted {
                completed = true;
            }
            // Reopening is stable, and the journal works after the crash.
            drop(recovered);
            let mut again = reopen(&storage);
            assert_eq!(state(&again), expected);
            again.push(1, 1000, b"after").unwrap();
            again.compact().unwrap();
            assert_eq!(storage.files().len(), 1);
        }
        if completed {
            assert!(budget > 3, "compaction takes several steps");
            break;
        }
    }
}

#[test]
fn crash_at_every_point_of_a_commit() {
    let base = setup();
    let before = state(&reopen(&base.fork()));
    // The changes one commit carries: enough to roll segments over.
    let change = |store: &mut CheckpointStore<MemStorage>, states: &mut Vec<State>| {
        for seq in 31..=45u64 {
            store.push(seq % 3, seq, [seq as u8; 12]).unwrap();
            states.push(state(store));
            if seq % 4 == 0 {
                store.confirm(seq % 3, seq - 1).unwrap();
                states.push(state(store));
            }
        }
        store.clear_session().unwrap();
        states.push(state(store));
    };
    let mut completed = false;
    for budget in 0.. {
        for mode in crash_modes() {
            let mut storage = base.fork();
            let mut store = reopen(&storage);
            let mut states = vec![before.clone()];
            change(&mut store, &mut states);
            let after = states.last().unwrap().clone();
            storage.halt_after(budget);
            let result = store.commit();
            let committed = result.is_ok() && !storage.is_halted();
            drop(store);
            storage.crash(mode);
            let recovered = state(&reopen(&storage));
            if committed {
                assert_eq!(recovered, after, "budget {budget}, {mode:?}");
                completed = true;
            } else {
                // Before, or after a prefix of the changes (a rollover seals
                // and fsyncs what precedes it; a torn crash keeps a prefix).
                assert!(states.contains(&recovered), "budget {budget}, {mode:?}");
            }
        }
        if completed {
            assert!(budget > 3, "the commit spans segments");
            break;
        }
    }
}

#[test]
fn crash_at_every_point_of_a_recovery() {
    // A log with a torn tail, a leftover compaction file and superseded
    // segments: recovery has work to do, and may itself crash anywhere.
    let base = setup();
    let stale_first_segment = base.file("00000000000000000001.log").unwrap();
    let torn = {
        let storage = base.fork();
        let mut store = reopen(&storage);
        store.compact().unwrap();
        store.push(2, 500, b"tail").unwrap();
        store.commit().unwrap();
        store.push(2, 501, b"torn away").unwrap();
        store.commit().unwrap();
        drop(store);
        let last = storage.files().pop().unwrap();
        let data = storage.file(&last).unwrap();
        storage.put_file(&last, &data[..data.len() - 3]);
        storage.put_file("00000000000000000099.log.tmp", b"half a compaction");
        // A superseded segment whose removal was lost in a crash.
        storage.put_file("00000000000000000001.log", &stale_first_segment);
        storage
    };
    let expected = {
        let mut store = reopen(&base.fork());
        store.push(2, 500, b"tail").unwrap();
        state(&store)
    };
    {
        let storage = torn.fork();
        let store = reopen(&storage);
        let report = store.journal().recovery();
        assert_eq!(report.removed_files.len(), 2, "{report:?}");
        // The PUSH of "torn away": 17 + 9 bytes of data in a frame, 3 cut off.
        assert_eq!(
            report.truncated_bytes,
            surelink_journal::format::frame_len(17 + 9) as u64 - 3
        );
    }
    for budget in 0..12 {
        for mode in crash_modes() {
            let mut storage = torn.fork();
            storage.halt_after(budget);
            let _ = CheckpointStore::open(storage.clone(), options());
            storage.crash(mode);
            let recovered = reopen(&storage);
            assert_eq!(state(&recovered), expected, "budget {budget}, {mode:?}");
            assert!(!storage.files().iter().any(|f| f.ends_with(".tmp")));
        }
    }
}
