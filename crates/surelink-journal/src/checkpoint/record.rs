//! The typed checkpoint records and their encoding inside journal records.
//!
//! Each journal record carries one tagged checkpoint record; integers are
//! little-endian, "rest" runs to the end of the journal record:
//!
//! ```text
//! tag 0x01 PUSH             channel u64 | seq u64 | payload (rest)
//! tag 0x02 CONFIRM          channel u64 | up_to u64
//! tag 0x03 WATERMARK        channel u64 | seq u64
//! tag 0x04 SESSION          session_id [16] | resume_token [32] | peer (rest)
//! tag 0x05 SESSION_CLEARED  (nothing)
//! ```
//!
//! A record with an unknown tag, or of the wrong length for its tag, is
//! rejected by [`CheckpointRecord::decode`]; the store turns that into
//! [`JournalError::Corrupt`](crate::JournalError::Corrupt).

use super::session::SessionRecord;

const TAG_PUSH: u8 = 0x01;
const TAG_CONFIRM: u8 = 0x02;
const TAG_WATERMARK: u8 = 0x03;
const TAG_SESSION: u8 = 0x04;
const TAG_SESSION_CLEARED: u8 = 0x05;

/// One typed checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointRecord {
    /// The sender queued message `seq` on `channel`.
    Push {
        /// Channel.
        channel: u64,
        /// Sequence number on the channel.
        seq: u64,
        /// The message.
        payload: Vec<u8>,
    },
    /// The receiver confirmed every message `<= up_to` on `channel` as
    /// checkpointed.
    Confirm {
        /// Channel.
        channel: u64,
        /// Highest confirmed sequence number.
        up_to: u64,
    },
    /// The receiver delivered and committed everything `<= seq` on `channel`.
    Watermark {
        /// Channel.
        channel: u64,
        /// The delivered watermark.
        seq: u64,
    },
    /// The session metadata.
    Session(SessionRecord),
    /// The session ended; there is nothing to resume.
    SessionCleared,
}

/// Why a journal record is not a valid checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordDecodeError {
    /// The record is empty.
    #[error("empty checkpoint record")]
    Empty,
    /// The tag is not one this version knows.
    #[error("unknown checkpoint record tag {0:#04x}")]
    UnknownTag(u8),
    /// The record is too short or too long for its tag.
    #[error("checkpoint record with tag {tag:#04x} has a bad length ({len} bytes)")]
    BadLength {
        /// The tag.
        tag: u8,
        /// The record length, tag included.
        len: usize,
    },
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Encodes a PUSH record without building a [`CheckpointRecord`].
pub(crate) fn encode_push(out: &mut Vec<u8>, channel: u64, seq: u64, payload: &[u8]) {
    out.reserve(PUSH_HEADER_LEN + payload.len());
    out.extend_from_slice(&push_header(channel, seq));
    out.extend_from_slice(payload);
}

/// Length of a PUSH record before its payload.
pub(crate) const PUSH_HEADER_LEN: usize = 17;

/// The bytes of a PUSH record before its payload.
pub(crate) fn push_header(channel: u64, seq: u64) -> [u8; PUSH_HEADER_LEN] {
    let mut h = [0u8; PUSH_HEADER_LEN];
    h[0] = TAG_PUSH;
    h[1..9].copy_from_slice(&channel.to_le_bytes());
    h[9..].copy_from_slice(&seq.to_le_bytes());
    h
}

impl CheckpointRecord {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            CheckpointRecord::Push {
                channel,
                seq,
                payload,
            } => encode_push(out, *channel, *seq, payload),
            CheckpointRecord::Confirm { channel, up_to } => {
                out.push(TAG_CONFIRM);
                out.extend_from_slice(&channel.to_le_bytes());
                out.extend_from_slice(&up_to.to_le_bytes());
            }
            CheckpointRecord::Watermark { channel, seq } => {
                out.push(TAG_WATERMARK);
                out.extend_from_slice(&channel.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
            }
            CheckpointRecord::Session(session) => {
                out.push(TAG_SESSION);
                out.extend_from_slice(&session.session_id);
                out.extend_from_slice(&session.resume_token);
                out.extend_from_slice(&session.peer);
            }
            CheckpointRecord::SessionCleared => out.push(TAG_SESSION_CLEARED),
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes one record.
    pub fn decode(buf: &[u8]) -> Result<Self, RecordDecodeError> {
        let (&tag, _) = buf.split_first().ok_or(RecordDecodeError::Empty)?;
        let bad = || RecordDecodeError::BadLength {
            tag,
            len: buf.len(),
        };
        match tag {
            TAG_PUSH => {
                if buf.len() < 17 {
                    return Err(bad());
                }
                Ok(CheckpointRecord::Push {
                    channel: u64_at(buf, 1),
                    seq: u64_at(buf, 9),
                    payload: buf[17..].to_vec(),
                })
            }
            TAG_CONFIRM | TAG_WATERMARK => {
                if buf.len() != 17 {
                    return Err(bad());
                }
                let (channel, value) = (u64_at(buf, 1), u64_at(buf, 9));
                Ok(if tag == TAG_CONFIRM {
                    CheckpointRecord::Confirm {
                        channel,
                        up_to: value,
                    }
                } else {
                    CheckpointRecord::Watermark {
                        channel,
                        seq: value,
                    }
                })
            }
            TAG_SESSION => {
                if buf.len() < 49 {
                    return Err(bad());
                }
                Ok(CheckpointRecord::Session(SessionRecord {
                    session_id: buf[1..17].try_into().expect("16 bytes"),
                    resume_token: buf[17..49].try_into().expect("32 bytes"),
                    peer: buf[49..].to_vec(),
                }))
            }
            TAG_SESSION_CLEARED => {
                if buf.len() != 1 {
                    return Err(bad());
                }
                Ok(CheckpointRecord::SessionCleared)
            }
            other => Err(RecordDecodeError::UnknownTag(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_record() -> impl Strategy<Value = CheckpointRecord> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            (any::<u64>(), any::<u64>(), bytes()).prop_map(|(channel, seq, payload)| {
                CheckpointRecord::Push {
                    channel,
                    seq,
                    payload,
                }
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(channel, up_to)| CheckpointRecord::Confirm { channel, up_to }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(channel, seq)| CheckpointRecord::Watermark { channel, seq }),
            (any::<[u8; 16]>(), any::<[u8; 32]>(), bytes()).prop_map(
                |(session_id, resume_token, peer)| CheckpointRecord::Session(SessionRecord {
                    session_id,
                    resume_token,
                    peer,
                })
            ),
            Just(CheckpointRecord::SessionCleared),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(record in any_record()) {
            let bytes = record.to_bytes();
            prop_assert_eq!(CheckpointRecord::decode(&bytes), Ok(record));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = CheckpointRecord::decode(&bytes);
        }
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(CheckpointRecord::decode(&[]), Err(RecordDecodeError::Empty));
        assert_eq!(
            CheckpointRecord::decode(&[0x99]),
            Err(RecordDecodeError::UnknownTag(0x99))
        );
        assert_eq!(
            CheckpointRecord::decode(&[TAG_CONFIRM, 1, 2]),
            Err(RecordDecodeError::BadLength {
                tag: TAG_CONFIRM,
                len: 3
            })
        );
        assert!(CheckpointRecord::decode(&[TAG_SESSION_CLEARED, 0]).is_err());
        let mut watermark = CheckpointRecord::Watermark { channel: 1, seq: 2 }.to_bytes();
        watermark.push(0);
        assert!(CheckpointRecord::decode(&watermark).is_err());
    }
}
