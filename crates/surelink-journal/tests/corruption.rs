//! Corruption inside the log is an error naming the file and offset, never a
//! silent skip; only a torn tail at the very end of the last segment is
//! repaired.

use surelink_journal::format::{frame_len, segment_name, HEADER_LEN};
use surelink_journal::{CorruptReason, Journal, JournalError, JournalOptions, MemStorage};

fn options() -> JournalOptions {
    JournalOptions {
        segment_size: 100,
        ..JournalOptions::default()
    }
}

/// Six 10-byte records, two per segment (frames of 26 bytes).
fn build() -> MemStorage {
    let storage = MemStorage::new();
    let (mut journal, _) = Journal::open(storage.clone(), options()).unwrap();
    for i in 0..6u8 {
        journal.append(&[i; 10]).unwrap();
    }
    journal.commit().unwrap();
    assert_eq!(journal.metrics().segments, 3);
    storage
}

const FRAME: usize = 26;

fn expect_corrupt(storage: &MemStorage) -> (String, u64, CorruptReason) {
    match Journal::open(storage.clone(), options()) {
        Err(JournalError::Corrupt {
            file,
            offset,
            reason,
        }) => (file, offset, reason),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok((_, records)) => panic!("expected Corrupt, opened with {} records", records.len()),
    }
}

fn damage(storage: &MemStorage, name: &str, at: usize, f: impl FnOnce(&mut [u8])) {
    let mut data = storage.file(name).unwrap();
    f(&mut data[at..]);
    storage.put_file(name, &data);
}

#[test]
fn checksum_mismatch_inside_the_last_segment() {
    let storage = build();
    let last = segment_name(3);
    // The first of the two records: more data follows it.
    damage(&storage, &last, HEADER_LEN + 20, |b| b[0] ^= 1);
    let (file, offset, reason) = expect_corrupt(&storage);
    assert_eq!((file.as_str(), offset), (last.as_str(), HEADER_LEN as u64));
    assert!(matches!(reason, CorruptReason::ChecksumMismatch { .. }));
}

#[test]
fn impossible_length_followed_by_data() {
    let storage = build();
    let last = segment_name(3);
    damage(&storage, &last, HEADER_LEN, |b| {
        b[..4].copy_from_slice(&3u32.to_le_bytes())
    });
    let (file, offset, reason) = expect_corrupt(&storage);
    assert_eq!((file.as_str(), offset), (last.as_str(), HEADER_LEN as u64));
    assert_eq!(reason, CorruptReason::ImpossibleLength(3));
}

#[test]
fn damage_at_the_end_of_a_sealed_segment_is_not_a_torn_tail() {
    let storage = build();
    let first = segment_name(1);
    let end = HEADER_LEN + 2 * FRAME;
    damage(&storage, &first, end - 1, |b| b[0] ^= 1);
    let (file, offset, reason) = expect_corrupt(&storage);
    assert_eq!(
        (file.as_str(), offset),
        (first.as_str(), (HEADER_LEN + FRAME) as u64)
    );
    assert!(matches!(reason, CorruptReason::ChecksumMismatch { .. }));

    // A sealed segment cut short is corrupt too.
    let storage = build();
    let data = storage.file(&first).unwrap();
    storage.put_file(&first, &data[..end - 3]);
    let (file, offset, reason) = expect_corrupt(&storage);
    assert_eq!(
        (file.as_str(), offset),
        (first.as_str(), (HEADER_LEN + FRAME) as u64)
    );
    assert!(matches!(reason, CorruptReason::TruncatedRecord { .. }));
}

#[test]
fn bad_segment_headers() {
    let storage = build();
    damage(&storage, &segment_name(2), 0, |b| b[0] = b'X');
    let (file, offset, reason) = expect_corrupt(&storage);
    assert_eq!((file.as_str(), offset), (segment_name(2).as_str(), 0));
    assert_eq!(reason, CorruptReason::BadMagic);

    // Garbage (not zeros, not short) in the last segment's header.
    let storage = build();
    damage(&storage, &segment_name(3), 12, |b| b[0] ^= 0xff);
    let (file, _, reason) = expect_corrupt(&storage);
    assert_eq!(file, segment_name(3));
    assert_eq!(reason, CorruptReason::HeaderChecksum);
}

#[test]
fn duplicated_segment_is_caught_by_record_ids() {
    let storage = build();
    storage.put_file(&segment_name(4), &storage.file(&segment_name(2)).unwrap());
    let (file, offset, reason) = expect_corrupt(&storage);
    assert_eq!(
        (file.as_str(), offset),
        (segment_name(4).as_str(), HEADER_LEN as u64)
    );
    assert_eq!(
        reason,
        CorruptReason::IdNotIncreasing { previous: 6, id: 3 }
    );
}

#[test]
fn error_message_names_file_and_offset() {
    let storage = build();
    damage(&storage, &segment_name(1), HEADER_LEN + 12, |b| b[0] ^= 1);
    let err = Journal::open(storage, options()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("00000000000000000001.log"), "{message}");
    assert!(message.contains("offset 24"), "{message}");
    assert!(message.contains("checksum"), "{message}");
}

/// Any single damaged byte is either detected as corruption or, only when
/// it lies in the very last record, repaired as a torn tail: the journal
/// never hands back altered or out-of-order data.
#[test]
fn every_single_byte_flip_is_detected_or_repaired() {
    let clean = build();
    let originals: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 10]).collect();
    let last_record_start = HEADER_LEN + FRAME;
    for segment in 1..=3u64 {
        let name = segment_name(segment);
        let len = clean.file(&name).unwrap().len();
        for at in 0..len {
            for mask in [0x01u8, 0x10, 0xff] {
                let storage = clean.fork();
                damage(&storage, &name, at, |b| b[0] ^= mask);
                match Journal::open(storage.clone(), options()) {
                    Ok((_, records)) => {
                        let data: Vec<Vec<u8>> = records.into_iter().map(|r| r.data).collect();
                        assert!(
                            segment == 3 && at >= last_record_start,
                            "flip at {name}:{at} went unnoticed"
                        );
                        assert_eq!(data, originals[..5], "flip at {name}:{at}");
                    }
                    Err(JournalError::Corrupt { file, .. }) => assert_eq!(file, name),
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }
    }
    assert_eq!(frame_len(10), FRAME);
}
