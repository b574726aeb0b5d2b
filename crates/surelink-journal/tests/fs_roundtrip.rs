//! The journal on real files: round trips through a real reopen, rollover,
//! compaction, torn-tail repair and corruption detection in a temp dir.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use surelink_journal::{
    CheckpointStore, Durability, FsStorage, Journal, JournalError, JournalOptions, SessionRecord,
};

fn options() -> JournalOptions {
    JournalOptions {
        segment_size: 4096,
        ..JournalOptions::default()
    }
}

fn logs(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn checkpoint_store_round_trip_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let session = SessionRecord {
        session_id: [9; 16],
        resume_token: [8; 32],
        peer: b"127.0.0.1:4433".to_vec(),
    };
    {
        let mut store = CheckpointStore::open(FsStorage::open(&path).unwrap(), options()).unwrap();
        assert!(store.journal().recovery().created);
        store.set_session(session.clone()).unwrap();
        for seq in 1..=300u64 {
            store
                .push(seq % 4, seq, format!("message {seq}").as_bytes())
                .unwrap();
            if seq % 10 == 0 {
                store.set_watermark(1, seq).unwrap();
                store.confirm(seq % 4, seq.saturating_sub(20)).unwrap();
                store.commit().unwrap();
            }
        }
        store.commit().unwrap();
        let metrics = store.metrics();
        assert!(metrics.segments > 1, "rolled over");
        assert_eq!(metrics.commits, 30, "the last commit had nothing new");
        assert!(metrics.fsyncs >= 31);
        assert!(metrics.fsync_latency.max().is_some());
    }
    let expected: Vec<(u64, u64, Vec<u8>)>;
    {
        let mut store = CheckpointStore::open(FsStorage::open(&path).unwrap(), options()).unwrap();
        expected = store
            .outbox()
            .pending()
            .map(|e| (e.channel, e.seq, e.payload.clone()))
            .collect();
        assert_eq!(store.session(), Some(&session));
        assert_eq!(store.watermarks().get(1), Some(300));
        assert!(!expected.is_empty());
        assert!(expected
            .iter()
            .all(|(c, s, _)| store.outbox().confirmed(*c).is_none_or(|f| *s > f)));
        let report = store.compact().unwrap();
        assert_eq!(logs(&path), std::slice::from_ref(&report.file));
    }
    let store = CheckpointStore::open(FsStorage::open(&path).unwrap(), options()).unwrap();
    let pending: Vec<_> = store
        .outbox()
        .pending()
        .map(|e| (e.channel, e.seq, e.payload.clone()))
        .collect();
    assert_eq!(pending, expected);
    assert_eq!(store.session(), Some(&session));
    assert_eq!(store.watermarks().get(1), Some(300));
}

#[test]
fn torn_tail_on_disk_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut journal, _) =
            Journal::open(FsStorage::open(dir.path()).unwrap(), options()).unwrap();
        for i in 0..10u8 {
            journal.append(&[i; 33]).unwrap();
        }
        journal.commit().unwrap();
    }
    let last = dir.path().join(logs(dir.path()).pop().unwrap());
    let clean_len = fs::metadata(&last).unwrap().len();
    // A record cut short, as a crash mid-write leaves it.
    let mut file = OpenOptions::new().append(true).open(&last).unwrap();
    file.write_all(&[41, 0, 0, 0, 1, 2, 3, 4, 11, 0]).unwrap();
    drop(file);
    let (mut journal, records) =
        Journal::open(FsStorage::open(dir.path()).unwrap(), options()).unwrap();
    assert_eq!(records.len(), 10);
    assert_eq!(journal.recovery().truncated_bytes, 10);
    assert_eq!(fs::metadata(&last).unwrap().len(), clean_len);
    journal.append(b"more").unwrap();
    journal.commit().unwrap();
    drop(journal);
    let (_, records) = Journal::open(FsStorage::open(dir.path()).unwrap(), options()).unwrap();
    assert_eq!(records.len(), 11);
    assert_eq!(records[10].data, b"more");
}

#[test]
fn corruption_on_disk_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut journal, _) =
            Journal::open(FsStorage::open(dir.path()).unwrap(), options()).unwrap();
        for i in 0..5u8 {
            journal.append(&[i; 20]).unwrap();
        }
        journal.commit().unwrap();
    }
    let name = logs(dir.path()).pop().unwrap();
    let path = dir.path().join(&name);
    let mut data = fs::read(&path).unwrap();
    data[24 + 36 + 20] ^= 0x40; // inside the second record
    fs::write(&path, &data).unwrap();
    match Journal::open(FsStorage::open(dir.path()).unwrap(), options()) {
        Err(JournalError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, name);
            assert_eq!(offset, 24 + 36);
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("corruption went unnoticed"),
    }
}

#[test]
fn interval_durability_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        durability: Durability::Interval(Duration::from_millis(50)),
        ..options()
    };
    let t0 = Instant::now();
    let (mut journal, _) =
        Journal::open(FsStorage::open(dir.path()).unwrap(), options.clone()).unwrap();
    journal.append(b"a").unwrap();
    journal.commit().unwrap();
    assert!(journal.tick(t0).unwrap());
    journal.append(b"b").unwrap();
    journal.commit().unwrap();
    assert!(!journal.tick(t0 + Duration::from_millis(10)).unwrap());
    assert!(journal.tick(t0 + Duration::from_millis(60)).unwrap());
    assert_eq!(journal.durable_id().unwrap().get(), 2);
    drop(journal);
    let (_, records) = Journal::open(FsStorage::open(dir.path()).unwrap(), options).unwrap();
    assert_eq!(records.len(), 2);
}
