//! A full disk (or any write error) surfaces as `Err` from append / commit /
//! compact; nothing durable is lost, the journal stays usable (not
//! poisoned) and carries on once space is freed, without reopening.

use surelink_journal::format::{scan_segment, segment_name, TailPolicy};
use surelink_journal::{
    CheckpointStore, CrashMode, Journal, JournalOptions, MemStorage, StorageOp,
};

fn options() -> JournalOptions {
    JournalOptions {
        segment_size: 128,
        ..JournalOptions::default()
    }
}

/// Records as they are on the storage now (a second reader, no repair).
fn on_disk(storage: &MemStorage) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut previous = None;
    for name in storage.files() {
        let data = storage.file(&name).unwrap();
        let scan = scan_segment(&name, &data, previous, TailPolicy::Strict).unwrap();
        previous = scan.records.last().map(|r| r.id).or(previous);
        out.extend(scan.records.iter().map(|r| r.data(&data).to_vec()));
    }
    out
}

#[test]
fn commit_on_a_full_disk_fails_cleanly_and_resumes() {
    let mut storage = MemStorage::new();
    let (mut journal, _) = Journal::open(storage.clone(), options()).unwrap();
    journal.append(b"durable-1").unwrap();
    journal.append(b"durable-2").unwrap();
    journal.commit().unwrap();

    for extra in [0u64, 7, 30, 120] {
        storage.set_capacity(Some(storage.used_bytes() + extra));
        journal.append(&[b'x'; 20]).unwrap();
        journal.append(&[b'y'; 20]).unwrap();
        journal.append(&[b'z'; 20]).unwrap();
        let err = journal.commit().unwrap_err();
        assert!(err.is_storage_full(), "{err}");
        assert!(journal.poisoned().is_none());
        // Nothing half-written is left behind: every segment ends on a frame.
        let disk = on_disk(&storage);
        assert_eq!(disk[..2], [b"durable-1".to_vec(), b"durable-2".to_vec()]);
        storage.set_capacity(None);
        journal.commit().unwrap();
    }
    assert_eq!(journal.durable_id().unwrap().get(), 14);
    drop(journal);
    storage.crash(CrashMode::DropUnsynced);
    let (_, records) = Journal::open(storage.clone(), options()).unwrap();
    assert_eq!(records.len(), 14);
    assert_eq!(records[13].data, [b'z'; 20]);
}

#[test]
fn rollover_on_a_full_disk() {
    let storage = MemStorage::new();
    let (mut journal, _) = Journal::open(storage.clone(), options()).unwrap();
    journal.append(&[1; 90]).unwrap();
    journal.commit().unwrap();
    // The next record needs a new segment; creating it hits the full disk.
    storage.set_capacity(Some(storage.used_bytes() + 10));
    journal.append(&[2; 90]).unwrap();
    assert!(journal.commit().unwrap_err().is_storage_full());
    assert!(journal.poisoned().is_none());
    storage.set_capacity(None);
    journal.commit().unwrap();
    assert_eq!(journal.metrics().segments, 2);
    drop(journal);
    let (_, records) = Journal::open(storage, options()).unwrap();
    assert_eq!(records.len(), 2);
}

#[test]
fn append_write_through_on_a_full_disk() {
    let storage = MemStorage::new();
    let opts = JournalOptions {
        write_buffer: 64,
        ..options()
    };
    let (mut journal, _) = Journal::open(storage.clone(), opts.clone()).unwrap();
    journal.append(&[1; 40]).unwrap();
    storage.set_capacity(Some(storage.used_bytes()));
    // The buffer must be written through first, and cannot be.
    let err = journal.append(&[2; 40]).unwrap_err();
    assert!(err.is_storage_full());
    assert_eq!(
        journal.next_id().get(),
        2,
        "the failed append added nothing"
    );
    storage.set_capacity(None);
    journal.append(&[3; 40]).unwrap();
    journal.commit().unwrap();
    drop(journal);
    let (_, records) = Journal::open(storage, opts).unwrap();
    let data: Vec<_> = records.into_iter().map(|r| r.data).collect();
    assert_eq!(data, [vec![1; 40], vec![3; 40]]);
}

#[test]
fn compaction_on_a_full_disk_keeps_the_old_segments() {
    let mut storage = MemStorage::new();
    let mut store = CheckpointStore::open(storage.clone(), options()).unwrap();
    for seq in 1..=20 {
        store.push(1, seq, [seq as u8; 8]).unwrap();
    }
    store.confirm(1, 10).unwrap();
    store.commit().unwrap();
    let files = storage.files();
    storage.set_capacity(Some(storage.used_bytes() + 50));
    assert!(store.compact().unwrap_err().is_storage_full());
    assert!(store.journal().poisoned().is_none());
    assert_eq!(
        storage.files(),
        files,
        "tmp file removed, old segments kept"
    );
    storage.set_capacity(None);
    store.compact().unwrap();
    assert_eq!(storage.files().len(), 1);
    drop(store);
    storage.crash(CrashMode::DropUnsynced);
    let store = CheckpointStore::open(storage, options()).unwrap();
    let seqs: Vec<u64> = store.outbox().pending().map(|e| e.seq).collect();
    assert_eq!(seqs, (11..=20).collect::<Vec<_>>());
}

#[test]
fn checkpoint_changes_survive_a_failed_commit() {
    let mut storage = MemStorage::new();
    let mut store = CheckpointStore::open(storage.clone(), options()).unwrap();
    store.push(1, 1, b"a").unwrap();
    store.commit().unwrap();
    storage.set_capacity(Some(storage.used_bytes()));
    store.push(1, 2, b"b").unwrap();
    store.set_watermark(4, 9).unwrap();
    assert!(store.commit().is_err());
    // The in-memory state still has the changes; they are retried.
    assert_eq!(store.outbox().len(), 2);
    storage.set_capacity(None);
    store.commit().unwrap();
    drop(store);
    storage.crash(CrashMode::DropUnsynced);
    let store = CheckpointStore::open(storage, options()).unwrap();
    assert_eq!(store.outbox().len(), 2);
    assert_eq!(store.watermarks().get(4), Some(9));
}

#[test]
fn open_on_a_full_disk_needing_repair() {
    let storage = MemStorage::new();
    let (mut journal, _) = Journal::open(storage.clone(), options()).unwrap();
    journal.append(b"kept").unwrap();
    journal.commit().unwrap();
    drop(journal);
    // A new segment whose header was torn by a crash: repair must write.
    storage.put_file(&segment_name(2), b"SLJ");
    storage.set_capacity(Some(storage.used_bytes()));
    let err = Journal::open(storage.clone(), options()).unwrap_err();
    assert!(err.is_storage_full(), "{err}");
    storage.set_capacity(None);
    let (_, records) = Journal::open(storage, options()).unwrap();
    assert_eq!(records.len(), 1);
}

#[test]
fn injected_write_error_is_like_a_full_disk() {
    let storage = MemStorage::new();
    let (mut journal, _) = Journal::open(storage.clone(), options()).unwrap();
    journal.append(b"one").unwrap();
    storage.fail(StorageOp::Append, 0);
    assert!(journal.commit().is_err());
    assert!(journal.poisoned().is_none());
    journal.commit().unwrap();
    // But if the rollback of the short write fails too, it is poisoned.
    journal.append(b"two").unwrap();
    storage.fail(StorageOp::Append, 0);
    storage.fail(StorageOp::Truncate, 0);
    assert!(journal.commit().is_err());
    assert!(journal.poisoned().is_some());
    drop(journal);
    let (_, records) = Journal::open(storage, options()).unwrap();
    assert_eq!(records.len(), 1, "the half-written record is a torn tail");
}
