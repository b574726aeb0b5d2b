//! The on-disk format: segment file names, the segment header and the record
//! frame, and the scanner that validates a segment when it is read back.
//!
//! ```text
//! segment file   {number:020}.log          e.g. 00000000000000000001.log
//! compaction tmp {number:020}.log.tmp      never read; deleted on open
//!
//! segment header (24 bytes, little-endian)
//!   0  magic     8  b"SLJOURNL"
//!   8  version   2  1
//!  10  flags     2  bit 0 = COMPACTED: this segment supersedes every
//!                   segment with a lower number
//!  12  base_id   8  records appended to this segment after its creation
//!                   have ids >= base_id; also a floor for the next id
//!  20  crc       4  CRC-32C of bytes 0..20
//!
//! record frame, repeated to the end of the file
//!   0  len       4  payload length (>= 8, <= 2^30)
//!   4  crc       4  CRC-32C (Castagnoli) of the payload
//!   8  payload   len bytes:  record id (u64 LE) | record data
//! ```
//!
//! Scanning rules (see [`scan_segment`]): a damaged frame in the *last*
//! segment is a torn tail (to be truncated) when every byte from the frame to
//! the end of the file is zero, or when its declared extent reaches the end
//! of the file and no valid frame carrying the next record id follows it (a
//! corrupted length in front of good records is not a tail); anything else
//! is [`JournalError::Corrupt`].

use crate::error::{CorruptReason, JournalError};

/// Magic bytes at the start of every segment.
pub const MAGIC: [u8; 8] = *b"SLJOURNL";
/// Current segment format version.
pub const VERSION: u16 = 1;
/// Length of the segment header.
pub const HEADER_LEN: usize = 24;
/// Length of a record frame header (`len` + `crc`).
pub const FRAME_HEADER_LEN: usize = 8;
/// Length of the record id at the start of a frame payload.
pub const ID_LEN: usize = 8;
/// Largest payload length the format admits (the id plus the data).
pub const MAX_PAYLOAD_LEN: u32 = 1 << 30;
/// Header flag: this segment was written by compaction and supersedes every
/// segment with a lower number.
pub const FLAG_COMPACTED: u16 = 1;

const SEGMENT_SUFFIX: &str = ".log";
const TMP_SUFFIX: &str = ".log.tmp";
const NUMBER_DIGITS: usize = 20;

/// File name of segment `number`.
pub fn segment_name(number: u64) -> String {
    format!("{number:020}{SEGMENT_SUFFIX}")
}

/// File name of the temporary file compaction writes before renaming it to
/// segment `number`.
pub fn tmp_name(number: u64) -> String {
    format!("{number:020}{TMP_SUFFIX}")
}

fn parse_number(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != NUMBER_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment number of a segment file name, `None` for any other name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    parse_number(name, SEGMENT_SUFFIX)
}

/// True for a leftover compaction temporary file.
pub fn is_tmp_name(name: &str) -> bool {
    parse_number(name, TMP_SUFFIX).is_some()
}

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Header flags ([`FLAG_COMPACTED`]).
    pub flags: u16,
    /// Floor for the ids of records appended to the segment.
    pub base_id: u64,
}

impl SegmentHeader {
    /// True if the segment was written by compaction.
    pub fn is_compacted(&self) -> bool {
        self.flags & FLAG_COMPACTED != 0
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&self.flags.to_le_bytes());
        out[12..20].copy_from_slice(&self.base_id.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..20]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates a header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, CorruptReason> {
        if buf.len() < HEADER_LEN {
            return Err(CorruptReason::TruncatedHeader { len: buf.len() });
        }
        if buf[0..8] != MAGIC {
            return Err(CorruptReason::BadMagic);
        }
        let stored = u32::from_le_bytes(buf[20..24].try_into().expect("4 bytes"));
        if crc32c::crc32c(&buf[0..20]) != stored {
            return Err(CorruptReason::HeaderChecksum);
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        if version != VERSION {
            return Err(CorruptReason::UnsupportedVersion(version));
        }
        Ok(SegmentHeader {
            flags: u16::from_le_bytes([buf[10], buf[11]]),
            base_id: u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes")),
        })
    }
}

/// Total frame length of a record carrying `data_len` bytes of data.
pub fn frame_len(data_len: usize) -> usize {
    FRAME_HEADER_LEN + ID_LEN + data_len
}

/// Appends the frame of record `id`, whose data is the concatenation of
/// `parts`, to `out`.
///
/// The caller guarantees `ID_LEN + data length <= MAX_PAYLOAD_LEN`.
pub fn encode_frame(id: u64, parts: &[&[u8]], out: &mut Vec<u8>) {
    let payload_len = ID_LEN + parts.iter().map(|p| p.len()).sum::<usize>();
    debug_assert!(payload_len <= MAX_PAYLOAD_LEN as usize);
    let id_bytes = id.to_le_bytes();
    let crc = parts.iter().fold(crc32c::crc32c(&id_bytes), |crc, p| {
        crc32c::crc32c_append(crc, p)
    });
    out.reserve(FRAME_HEADER_LEN + payload_len);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&id_bytes);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// A record frame decoded in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Record id.
    pub id: u64,
    /// Record data.
    pub data: &'a [u8],
    /// Total length of the frame in bytes.
    pub len: usize,
}

/// A frame that failed to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    /// What is wrong.
    pub reason: CorruptReason,
    /// True if the frame's declared extent reaches (or passes) the end of
    /// the buffer: the signature of a write cut short.
    pub reaches_end: bool,
}

/// Decodes the frame at the start of `buf` (which runs to the end of the
/// file).
pub fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, BadFrame> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(BadFrame {
            reason: CorruptReason::TruncatedFrameHeader {
                available: buf.len(),
            },
            reaches_end: true,
        });
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let stored = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let available = buf.len() - FRAME_HEADER_LEN;
    let reaches_end = len as usize >= available;
    if (len as usize) < ID_LEN || len > MAX_PAYLOAD_LEN {
        return Err(BadFrame {
            reason: CorruptReason::ImpossibleLength(len),
            reaches_end,
        });
    }
    if len as usize > available {
        return Err(BadFrame {
            reason: CorruptReason::TruncatedRecord { len, available },
            reaches_end: true,
        });
    }
    let payload = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len as usize];
    let computed = crc32c::crc32c(payload);
    if computed != stored {
        return Err(BadFrame {
            reason: CorruptReason::ChecksumMismatch { stored, computed },
            reaches_end,
        });
    }
    Ok(Frame {
        id: u64::from_le_bytes(payload[0..ID_LEN].try_into().expect("8 bytes")),
        data: &payload[ID_LEN..],
        len: FRAME_HEADER_LEN + len as usize,
    })
}

/// How the scanner treats damage at the end of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailPolicy {
    /// Any damage is corruption (sealed segments, compaction input).
    Strict,
    /// Damage that looks like a torn write at the end of the last segment is
    /// reported for truncation.
    RepairTorn,
}

/// A record located by the scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedRecord {
    /// Record id.
    pub id: u64,
    /// Offset of the frame in the segment.
    pub offset: usize,
    /// Total frame length.
    pub len: usize,
}

impl ScannedRecord {
    /// The record data within the segment bytes it was scanned from.
    pub fn data<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        &segment[self.offset + FRAME_HEADER_LEN + ID_LEN..self.offset + self.len]
    }

    /// The whole frame within the segment bytes it was scanned from.
    pub fn frame<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        &segment[self.offset..self.offset + self.len]
    }
}

/// The result of scanning one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// The header, `None` if it was torn (only under [`TailPolicy::RepairTorn`]).
    pub header: Option<SegmentHeader>,
    /// Valid records in file order.
    pub records: Vec<ScannedRecord>,
    /// Length of the valid prefix of the file.
    pub valid_len: usize,
    /// Why the tail beyond `valid_len` was judged torn, if it was.
    pub torn: Option<CorruptReason>,
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// True if a checksum-valid frame carrying one of the ids that should come
/// next starts somewhere after the damaged frame at `offset`: then the damage
/// is not a torn tail but a corrupted length in front of good records.
///
/// The ids looked for are `previous + 2` (the damaged frame should be
/// `previous + 1`) and the damaged frame's own id plus one, if readable;
/// appended records have consecutive ids, so this finds the next record
/// wherever appends (not compaction) wrote the log.
fn valid_frame_follows(data: &[u8], offset: usize, previous_id: Option<u64>) -> bool {
    let own_id = data
        .get(offset + FRAME_HEADER_LEN..offset + FRAME_HEADER_LEN + ID_LEN)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let wanted = [
        previous_id.and_then(|p| p.checked_add(2)),
        own_id.and_then(|id| id.checked_add(1)),
    ];
    let first = offset + FRAME_HEADER_LEN;
    let last = data.len().saturating_sub(FRAME_HEADER_LEN + ID_LEN);
    (first..=last).any(|p| {
        let id_at = &data[p + FRAME_HEADER_LEN..p + FRAME_HEADER_LEN + ID_LEN];
        let id = u64::from_le_bytes(id_at.try_into().expect("8 bytes"));
        wanted.contains(&Some(id)) && decode_frame(&data[p..]).is_ok()
    })
}

/// Scans and validates segment `file` whose full contents are `data`.
///
/// `previous_id` is the id of the last record of the preceding segments;
/// ids must strictly increase. Under [`TailPolicy::RepairTorn`] a torn tail
/// (see the module docs) ends the scan with `torn` set; every other defect is
/// [`JournalError::Corrupt`] naming the file and offset.
pub fn scan_segment(
    file: &str,
    data: &[u8],
    mut previous_id: Option<u64>,
    policy: TailPolicy,
) -> Result<SegmentScan, JournalError> {
    let corrupt = |offset: usize, reason: CorruptReason| JournalError::Corrupt {
        file: file.to_owned(),
        offset: offset as u64,
        reason,
    };
    let header = match SegmentHeader::decode(data) {
        Ok(header) => header,
        Err(reason) => {
            let torn =
                policy == TailPolicy::RepairTorn && (data.len() < HEADER_LEN || all_zero(data));
            if torn {
                return Ok(SegmentScan {
                    header: None,
                    records: Vec::new(),
                    valid_len: 0,
                    torn: Some(reason),
                });
            }
            return Err(corrupt(0, reason));
        }
    };
    let mut records = Vec::new();
    let mut offset = HEADER_LEN;
    while offset < data.len() {
        match decode_frame(&data[offset..]) {
            Ok(frame) => {
                if let Some(previous) = previous_id {
                    if frame.id <= previous {
                        return Err(corrupt(
                            offset,
                            CorruptReason::IdNotIncreasing {
                                previous,
                                id: frame.id,
                            },
                        ));
                    }
                }
                previous_id = Some(frame.id);
                records.push(ScannedRecord {
                    id: frame.id,
                    offset,
                    len: frame.len,
                });
                offset += frame.len;
            }
            Err(bad) => {
                let torn = policy == TailPolicy::RepairTorn
                    && (all_zero(&data[offset..])
                        || (bad.reaches_end && !valid_frame_follows(data, offset, previous_id)));
                if torn {
                    return Ok(SegmentScan {
                        header: Some(header),
                        records,
                        valid_len: offset,
                        torn: Some(bad.reason),
                    });
                }
                return Err(corrupt(offset, bad.reason));
            }
        }
    }
    Ok(SegmentScan {
        header: Some(header),
        records,
        valid_len: offset,
        torn: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = SegmentHeader {
            flags: 0,
            base_id: 1,
        }
        .encode()
        .to_vec();
        for (id, data) in records {
            encode_frame(*id, &[data], &mut out);
        }
        out
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(1), "00000000000000000001.log");
        assert_eq!(parse_segment_name("00000000000000000001.log"), Some(1));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("1.log"), None);
        assert_eq!(parse_segment_name("0000000000000000000a.log"), None);
        assert_eq!(parse_segment_name(&tmp_name(3)), None);
        assert!(is_tmp_name(&tmp_name(3)));
        assert!(!is_tmp_name(&segment_name(3)));
    }

    #[test]
    fn header_rejects_damage() {
        let header = SegmentHeader {
            flags: FLAG_COMPACTED,
            base_id: 42,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        assert!(header.is_compacted());
        let mut bad = bytes;
        bad[0] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(CorruptReason::BadMagic));
        let mut bad = bytes;
        bad[13] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(CorruptReason::HeaderChecksum)
        );
        assert_eq!(
            SegmentHeader::decode(&bytes[..10]),
            Err(CorruptReason::TruncatedHeader { len: 10 })
        );
    }

    #[test]
    fn torn_header_in_last_segment_only() {
        let data = segment(&[]);
        let scan = scan_segment("s", &data[..5], None, TailPolicy::RepairTorn).unwrap();
        assert_eq!(scan.header, None);
        assert_eq!(scan.valid_len, 0);
        assert!(scan_segment("s", &data[..5], None, TailPolicy::Strict).is_err());
        let scan = scan_segment("s", &[0; 24], None, TailPolicy::RepairTorn).unwrap();
        assert_eq!(scan.header, None);
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let mut data = segment(&[(1, b"abc")]);
        let valid = data.len();
        data.extend_from_slice(&[0; 40]);
        let scan = scan_segment("s", &data, None, TailPolicy::RepairTorn).unwrap();
        assert_eq!(scan.valid_len, valid);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.torn, Some(CorruptReason::ImpossibleLength(0)));
    }

    #[test]
    fn bad_record_followed_by_data_is_corrupt() {
        let mut data = segment(&[(1, b"abc"), (2, b"def")]);
        data[HEADER_LEN + FRAME_HEADER_LEN + ID_LEN] ^= 0xff; // first record's data
        let err = scan_segment("seg", &data, None, TailPolicy::RepairTorn).unwrap_err();
        match err {
            JournalError::Corrupt {
                file,
                offset,
                reason: CorruptReason::ChecksumMismatch { .. },
            } => {
                assert_eq!(file, "seg");
                assert_eq!(offset, HEADER_LEN as u64);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ids_must_increase() {
        let data = segment(&[(5, b"a"), (5, b"b")]);
        let err = scan_segment("seg", &data, None, TailPolicy::RepairTorn).unwrap_err();
        assert!(matches!(
            err,
            JournalError::Corrupt {
                reason: CorruptReason::IdNotIncreasing { previous: 5, id: 5 },
                ..
            }
        ));
        let data = segment(&[(5, b"a")]);
        assert!(scan_segment("seg", &data, Some(5), TailPolicy::Strict).is_err());
        assert!(scan_segment("seg", &data, Some(4), TailPolicy::Strict).is_ok());
    }

    #[test]
    fn overlong_length_in_front_of_good_records_is_corrupt() {
        let mut data = segment(&[(1, b"abc"), (2, b"def"), (3, b"ghi")]);
        let second = HEADER_LEN + frame_len(3);
        data[second..second + 4].copy_from_slice(&1000u32.to_le_bytes());
        let err = scan_segment("s", &data, None, TailPolicy::RepairTorn).unwrap_err();
        assert!(matches!(
            err,
            JournalError::Corrupt { offset, reason: CorruptReason::TruncatedRecord { .. }, .. }
                if offset == second as u64
        ));
        // The same damage on the last record is a torn tail.
        let mut data = segment(&[(1, b"abc"), (2, b"def")]);
        data[second..second + 4].copy_from_slice(&1000u32.to_le_bytes());
        let scan = scan_segment("s", &data, None, TailPolicy::RepairTorn).unwrap();
        assert_eq!(scan.valid_len, second);
    }

    proptest! {
        #[test]
        fn frame_round_trip(id in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            encode_frame(id, &[&data], &mut out);
            prop_assert_eq!(out.len(), frame_len(data.len()));
            let frame = decode_frame(&out).unwrap();
            prop_assert_eq!(frame.id, id);
            prop_assert_eq!(frame.data, &data[..]);
            prop_assert_eq!(frame.len, out.len());
        }

        #[test]
        fn segment_round_trip(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20)) {
            let with_ids: Vec<(u64, &[u8])> = records.iter().enumerate().map(|(i, r)| (i as u64 * 3 + 1, &r[..])).collect();
            let data = segment(&with_ids);
            let scan = scan_segment("s", &data, None, TailPolicy::Strict).unwrap();
            prop_assert_eq!(scan.valid_len, data.len());
            prop_assert_eq!(scan.records.len(), records.len());
            for (scanned, (id, bytes)) in scan.records.iter().zip(&with_ids) {
                prop_assert_eq!(scanned.id, *id);
                prop_assert_eq!(scanned.data(&data), *bytes);
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_frame(&bytes);
            let _ = scan_segment("s", &bytes, None, TailPolicy::RepairTorn);
            let _ = SegmentHeader::decode(&bytes);
        }
    }
}
