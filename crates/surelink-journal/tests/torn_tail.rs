//! Torn tails: a crash can cut the last record of the last segment at any
//! byte. Opening must truncate exactly that record, keep every record before
//! it, report what it cut, and leave a journal that appends and reopens
//! normally.

use surelink_journal::format::{frame_len, segment_name, HEADER_LEN};
use surelink_journal::{CorruptReason, Journal, JournalError, JournalOptions, MemStorage};

fn options() -> JournalOptions {
    JournalOptions {
        segment_size: 160, // two segments; the last holds two records
        ..JournalOptions::default()
    }
}

fn payloads() -> Vec<Vec<u8>> {
    (0..6u8).map(|i| vec![i + 1; 5 + i as usize * 3]).collect()
}

/// A journal with `payloads()` committed; returns the storage, the last
/// segment's name and the offset of its last record.
fn build() -> (MemStorage, String, usize) {
    let storage = MemStorage::new();
    let (mut journal, _) = Journal::open(storage.clone(), options()).unwrap();
    for p in payloads() {
        journal.append(&p).unwrap();
        journal.commit().unwrap();
    }
    assert!(journal.metrics().segments >= 2, "spans segments");
    let last = segment_name(journal.metrics().segments);
    drop(journal);
    let data = storage.file(&last).unwrap();
    let last_len = frame_len(payloads().last().unwrap().len());
    (storage, last, data.len() - last_len)
}

fn reopen(storage: &MemStorage) -> (Journal<MemStorage>, Vec<Vec<u8>>) {
    let (journal, records) = Journal::open(storage.clone(), options()).unwrap();
    (journal, records.into_iter().map(|r| r.data).collect())
}

#[test]
fn cut_at_every_byte_of_the_last_record() {
    let (base, last, start) = build();
    let full = base.file(&last).unwrap();
    let all = payloads();
    for cut in start..full.len() {
        let storage = base.fork();
        storage.put_file(&last, &full[..cut]);
        let (mut journal, records) = reopen(&storage);
        assert_eq!(records, all[..all.len() - 1], "cut at {cut}");
        let report = journal.recovery().clone();
        assert_eq!(report.truncated_bytes, (cut - start) as u64, "cut at {cut}");
        if cut > start {
            let torn = report.torn_tail.expect("reported");
            assert_eq!(
                (torn.file.as_str(), torn.offset),
                (last.as_str(), start as u64)
            );
        } else {
            assert!(report.torn_tail.is_none());
        }
        assert_eq!(storage.file(&last).unwrap(), full[..start]);
        // The journal carries on, and the id of the lost record is reused.
        let id = journal.append(b"after").unwrap();
        assert_eq!(id.get(), all.len() as u64);
        journal.commit().unwrap();
        drop(journal);
        let (_, records) = reopen(&storage);
        assert_eq!(records.len(), all.len());
        assert_eq!(records.last().unwrap(), b"after");
    }
}

#[test]
fn garbage_at_every_byte_of_the_last_record_checksum() {
    let (base, last, start) = build();
    let full = base.file(&last).unwrap();
    let all = payloads();
    // Bytes 4.. of the frame (crc, id, data) are covered by the CRC: damage
    // there, with the record running to the end of the file, is torn.
    for at in start + 4..full.len() {
        let storage = base.fork();
        let mut data = full.clone();
        data[at] ^= 0x5a;
        storage.put_file(&last, &data);
        let (journal, records) = reopen(&storage);
        assert_eq!(records, all[..all.len() - 1], "damage at {at}");
        let torn = journal.recovery().torn_tail.clone().expect("reported");
        assert!(matches!(
            torn.reason,
            CorruptReason::ChecksumMismatch { .. }
        ));
        assert_eq!(torn.offset, start as u64);
    }
    // Damage to the length field either makes the record run past the end
    // (torn) or leaves data after it (corrupt): never a silent misread.
    for at in start..start + 4 {
        for mask in [0x01u8, 0x80, 0xff] {
            let storage = base.fork();
            let mut data = full.clone();
            data[at] ^= mask;
            storage.put_file(&last, &data);
            match Journal::open(storage.clone(), options()) {
                Ok((_, records)) => {
                    let records: Vec<_> = records.into_iter().map(|r| r.data).collect();
                    assert_eq!(records, all[..all.len() - 1]);
                }
                Err(JournalError::Corrupt { file, offset, .. }) => {
                    assert_eq!((file.as_str(), offset), (last.as_str(), start as u64));
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }
}

#[test]
fn zero_filled_tail_is_truncated() {
    let (storage, last, _) = build();
    let mut data = storage.file(&last).unwrap();
    let valid = data.len();
    data.extend_from_slice(&[0; 4096]);
    storage.put_file(&last, &data);
    let (journal, records) = reopen(&storage);
    assert_eq!(records, payloads());
    assert_eq!(journal.recovery().truncated_bytes, 4096);
    assert_eq!(storage.file(&last).unwrap().len(), valid);
}

#[test]
fn torn_header_of_a_new_segment_is_rewritten() {
    let (base, last, _) = build();
    let next = segment_name(surelink_journal::format::parse_segment_name(&last).unwrap() + 1);
    let header = surelink_journal::format::SegmentHeader {
        flags: 0,
        base_id: 7,
    }
    .encode();
    for cut in 0..HEADER_LEN {
        let storage = base.fork();
        storage.put_file(&next, &header[..cut]);
        let (mut journal, records) = reopen(&storage);
        assert_eq!(records, payloads(), "cut at {cut}");
        assert_eq!(journal.recovery().truncated_bytes, cut as u64);
        assert_eq!(storage.file(&next).unwrap().len(), HEADER_LEN);
        assert_eq!(journal.append(b"x").unwrap().get(), 7);
        journal.commit().unwrap();
        drop(journal);
        let (_, records) = reopen(&storage);
        assert_eq!(records.len(), payloads().len() + 1);
    }
}

#[test]
fn clean_log_reports_nothing() {
    let (storage, _, _) = build();
    let (journal, records) = reopen(&storage);
    assert_eq!(records, payloads());
    let report = journal.recovery();
    assert_eq!(report.truncated_bytes, 0);
    assert!(report.torn_tail.is_none());
    assert!(report.removed_files.is_empty());
    assert_eq!(report.records, payloads().len() as u64);
}
