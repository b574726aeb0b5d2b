//! Unit tests of the checkpoint store.

use super::*;
use crate::storage::MemStorage;
use crate::{CorruptReason, Durability};

fn open(storage: &MemStorage) -> CheckpointStore<MemStorage> {
    CheckpointStore::open(storage.clone(), JournalOptions::default()).unwrap()
}

fn pending(store: &CheckpointStore<MemStorage>) -> Vec<(u64, u64, Vec<u8>)> {
    store
        .outbox()
        .pending()
        .map(|e| (e.channel, e.seq, e.payload.clone()))
        .collect()
}

fn session(byte: u8) -> SessionRecord {
    SessionRecord {
        session_id: [byte; 16],
        resume_token: [byte ^ 0xff; 32],
        peer: vec![byte; 3],
    }
}

#[test]
fn outbox_push_confirm_and_order() {
    let storage = MemStorage::new();
    let mut store = open(&storage);
    store.push(1, 10, b"a").unwrap();
    store.push(2, 5, b"bb").unwrap();
    store.push(1, 11, b"ccc").unwrap();
    store.push(1, 15, b"dddd").unwrap();
    assert_eq!(store.outbox().len(), 4);
    assert_eq!(store.outbox().bytes(), 10);
    assert_eq!(
        pending(&store),
        [
            (1, 10, b"a".to_vec()),
            (2, 5, b"bb".to_vec()),
            (1, 11, b"ccc".to_vec()),
            (1, 15, b"dddd".to_vec())
        ]
    );
    let on_1: Vec<u64> = store.outbox().pending_on(1).map(|e| e.seq).collect();
    assert_eq!(on_1, [10, 11, 15]);
    assert_eq!(store.outbox().high_seq(1), Some(15));
    assert!(matches!(
        store.push(1, 15, b"x"),
        Err(JournalError::OutOfOrder {
            channel: 1,
            seq: 15,
            high: 15
        })
    ));

    assert_eq!(store.confirm(1, 11).unwrap(), 2);
    assert_eq!(store.outbox().confirmed(1), Some(11));
    assert_eq!(store.confirm(1, 11).unwrap(), 0, "no-op");
    assert_eq!(store.confirm(1, 3).unwrap(), 0, "no-op");
    assert_eq!(store.outbox().bytes(), 6);
    assert!(store.outbox().get(1, 10).is_none());
    assert_eq!(store.outbox().get(1, 15).unwrap().payload, b"dddd");
    // Confirming past everything pushed raises the floor.
    assert_eq!(store.confirm(2, 100).unwrap(), 1);
    assert!(store.push(2, 100, b"x").is_err());
    store.push(2, 101, b"y").unwrap();
    store.commit().unwrap();
    let before = pending(&store);
    drop(store);

    let store = open(&storage);
    assert_eq!(pending(&store), before);
    assert_eq!(store.outbox().confirmed(1), Some(11));
    assert_eq!(store.outbox().confirmed(2), Some(100));
    assert_eq!(store.outbox().channels().collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn watermarks_only_move_forward() {
    let storage = MemStorage::new();
    let mut store = open(&storage);
    assert!(store.set_watermark(1, 5).unwrap());
    assert!(store.set_watermark(2, 0).unwrap());
    assert!(!store.set_watermark(1, 5).unwrap());
    assert!(matches!(
        store.set_watermark(1, 4),
        Err(JournalError::WatermarkRegressed {
            channel: 1,
            seq: 4,
            current: 5
        })
    ));
    assert!(store.set_watermark(1, 9).unwrap());
    assert_eq!(store.watermarks().get(1), Some(9));
    assert_eq!(store.watermarks().get(3), None);
    store.commit().unwrap();
    // Superseded watermark records are dead: 2 live of 3 written.
    assert_eq!(store.metrics().records_live, 2);
    drop(store);
    let store = open(&storage);
    assert_eq!(
        store.watermarks().iter().collect::<Vec<_>>(),
        [(1, 9), (2, 0)]
    );
    assert_eq!(store.watermarks().len(), 2);
}

#[test]
fn session_is_stored_replaced_and_cleared() {
    let storage = MemStorage::new();
    let mut store = open(&storage);
    assert_eq!(store.session(), None);
    assert!(!store.clear_session().unwrap());
    store.set_session(session(1)).unwrap();
    store.set_session(session(2)).unwrap();
    store.commit().unwrap();
    drop(store);
    let mut store = open(&storage);
    assert_eq!(store.session(), Some(&session(2)));
    assert!(store.clear_session().unwrap());
    store.commit().unwrap();
    assert_eq!(store.metrics().records_live, 0);
    drop(store);
    let mut store = open(&storage);
    assert_eq!(store.session(), None);
    // Compaction drops both the session and its tombstone.
    store.compact().unwrap();
    assert_eq!(store.metrics().records_live, 0);
    drop(store);
    assert_eq!(open(&storage).session(), None);
}

#[test]
fn compaction_keeps_exactly_the_state() {
    let storage = MemStorage::new();
    let options = JournalOptions {
        segment_size: 512,
        compact_min_garbage: 256,
        ..JournalOptions::default()
    };
    let mut store = CheckpointStore::open(storage.clone(), options.clone()).unwrap();
    for seq in 1..=200u64 {
        store.push(seq % 3, seq, seq.to_le_bytes()).unwrap();
        store.set_watermark(9, seq).unwrap();
        if seq % 10 == 0 {
            store.confirm(seq % 3, seq - 5).unwrap();
            store.commit().unwrap();
            store.maybe_compact().unwrap();
        }
    }
    store.set_session(session(7)).unwrap();
    store.commit().unwrap();
    assert!(store.metrics().compactions > 0);
    store.compact().unwrap();
    let expected = pending(&store);
    let confirmed: Vec<_> = (0..3).map(|c| store.outbox().confirmed(c)).collect();
    // Live: the pending pushes, one confirm per channel, one watermark, one session.
    assert_eq!(
        store.metrics().records_live,
        expected.len() as u64 + 3 + 1 + 1
    );
    assert_eq!(storage.files().len(), 1);
    drop(store);
    let store = CheckpointStore::open(storage, options).unwrap();
    assert_eq!(pending(&store), expected);
    assert_eq!(
        (0..3)
            .map(|c| store.outbox().confirmed(c))
            .collect::<Vec<_>>(),
        confirmed
    );
    assert_eq!(store.watermarks().get(9), Some(200));
    assert_eq!(store.session(), Some(&session(7)));
}

#[test]
fn a_bad_typed_record_is_corruption_with_its_location() {
    let storage = MemStorage::new();
    let (mut journal, _) = Journal::open(storage.clone(), JournalOptions::default()).unwrap();
    journal
        .append(&CheckpointRecord::Watermark { channel: 1, seq: 1 }.to_bytes())
        .unwrap();
    journal.append(&[0x77, 1, 2, 3]).unwrap();
    journal.commit().unwrap();
    drop(journal);
    let err = CheckpointStore::open(storage.clone(), JournalOptions::default()).unwrap_err();
    match err {
        JournalError::Corrupt {
            file,
            offset,
            reason: CorruptReason::BadPayload(why),
        } => {
            assert_eq!(file, "00000000000000000001.log");
            assert_eq!(offset, 24 + crate::format::frame_len(17) as u64);
            assert!(why.contains("0x77"), "{why}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_contradicting_record_is_corruption() {
    let storage = MemStorage::new();
    let (mut journal, _) = Journal::open(storage.clone(), JournalOptions::default()).unwrap();
    for seq in [5, 3] {
        let record = CheckpointRecord::Watermark { channel: 1, seq };
        journal.append(&record.to_bytes()).unwrap();
    }
    journal.commit().unwrap();
    drop(journal);
    assert!(matches!(
        CheckpointStore::open(storage, JournalOptions::default()),
        Err(JournalError::Corrupt {
            reason: CorruptReason::BadPayload(_),
            ..
        })
    ));
}

#[test]
fn uncommitted_changes_are_lost_in_a_crash_committed_ones_are_not() {
    let mut storage = MemStorage::new();
    let options = JournalOptions {
        durability: Durability::Always,
        ..JournalOptions::default()
    };
    let mut store = CheckpointStore::open(storage.clone(), options.clone()).unwrap();
    store.push(1, 1, b"kept").unwrap();
    store.commit().unwrap();
    store.push(1, 2, b"lost").unwrap();
    drop(store);
    storage.crash(crate::CrashMode::DropUnsynced);
    let store = CheckpointStore::open(storage, options).unwrap();
    assert_eq!(pending(&store), [(1, 1, b"kept".to_vec())]);
}
