//! What a durable sender or receiver keeps in the `peer` field of the
//! journal's [`SessionRecord`](surelink_journal::SessionRecord).
//!
//! The journal does not make several records of one commit atomic (a crash
//! can keep a prefix of them), so whatever must change together lives in
//! one record. The receiver's delivered watermarks and its sink position
//! are exactly such a pair: they are one SESSION record, rewritten at every
//! checkpoint (the previous one becomes dead and is compacted away).
//!
//! Encoding (little-endian), after a role byte and a version byte (`1`):
//!
//! * sender (`S`): flags u8 (bit 0: complete, bit 1: the outbox refers to
//!   a replayable input), confirmed cursor u64, label length u32, label
//!   bytes, then with bit 1 the input's identity (length u64, modification
//!   time u64, first and last block CRC-32C u32 each);
//! * receiver (`R`): flags u8 (bit 0: ended), sink position u64,
//!   n u32, n × (channel u64, next expected id u64), ascending.

use std::collections::BTreeMap;

use crate::replay::SourceIdentity;

const VERSION: u8 = 1;
const SENDER: u8 = b'S';
const RECEIVER: u8 = b'R';

/// A sender's session metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SenderMeta {
    /// The receiver confirmed the END: nothing more to do.
    pub complete: bool,
    /// The highest cursor of any message the receiver confirmed. Written
    /// before the CONFIRM records that release those messages, so a log
    /// whose outbox is empty still says where the input stood.
    pub confirmed_cursor: u64,
    /// What this session sends (the application's description of its
    /// input), to refuse resuming it with different input.
    pub label: Vec<u8>,
    /// With a replayable outbox ([`crate::replay`]): the input's identity
    /// when the session started. `None`: the outbox holds copies of the
    /// messages.
    pub source: Option<SourceIdentity>,
}

/// A receiver's session metadata: the checkpoint itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReceiverMeta {
    /// The session is complete (END received and checkpointed).
    pub ended: bool,
    /// The sink's position at the checkpoint.
    pub position: u64,
    /// Channel → next expected id (everything below was delivered to the
    /// sink before `position`).
    pub next: BTreeMap<u64, u64>,
}

/// Either role's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Meta {
    Sender(SenderMeta),
    Receiver(ReceiverMeta),
}

impl Meta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Meta::Sender(s) => {
                out.push(SENDER);
                out.push(VERSION);
                out.push(u8::from(s.complete) | u8::from(s.source.is_some()) << 1);
                out.extend_from_slice(&s.confirmed_cursor.to_le_bytes());
                out.extend_from_slice(&(s.label.len() as u32).to_le_bytes());
                out.extend_from_slice(&s.label);
                if let Some(source) = &s.source {
                    source.encode(&mut out);
                }
            }
            Meta::Receiver(r) => {
                out.push(RECEIVER);
                out.push(VERSION);
                out.push(u8::from(r.ended));
                out.extend_from_slice(&r.position.to_le_bytes());
                out.extend_from_slice(&(r.next.len() as u32).to_le_bytes());
                for (&channel, &next) in &r.next {
                    out.extend_from_slice(&channel.to_le_bytes());
                    out.extend_from_slice(&next.to_le_bytes());
                }
            }
        }
        out
    }

    /// Decodes; `Err` says what is wrong.
    pub(crate) fn decode(data: &[u8]) -> Result<Meta, String> {
        let mut r = Cursor(data);
        let role = r.take(1)?[0];
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(format!("unknown session record version {version}"));
        }
        let flags = r.take(1)?[0];
        let meta = match role {
            SENDER => {
                let confirmed_cursor = r.u64()?;
                let len = r.u32()? as usize;
                let label = r.take(len)?.to_vec();
                let source = if flags & 2 != 0 {
                    let identity = r.take(SourceIdentity::LEN)?;
                    Some(SourceIdentity::decode(
                        identity.try_into().expect("taken at its length"),
                    ))
                } else {
                    None
                };
                Meta::Sender(SenderMeta {
                    complete: flags & 1 != 0,
                    confirmed_cursor,
                    label,
                    source,
                })
            }
            RECEIVER => {
                let position = r.u64()?;
                let n = r.u32()?;
                let mut next = BTreeMap::new();
                let mut last = None;
                for _ in 0..n {
                    let channel = r.u64()?;
                    if last.is_some_and(|l| l >= channel) {
                        return Err("channels out of order in a session record".into());
                    }
                    last = Some(channel);
                    next.insert(channel, r.u64()?);
                }
                Meta::Receiver(ReceiverMeta {
                    ended: flags & 1 != 0,
                    position,
                    next,
                })
            }
            other => return Err(format!("unknown session role {other:#x}")),
        };
        if !r.0.is_empty() {
            return Err("trailing bytes in a session record".into());
        }
        Ok(meta)
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("truncated session record".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let metas = [
            Meta::Sender(SenderMeta {
                complete: true,
                confirmed_cursor: 12345,
                label: b"in.bin (3 bytes)".to_vec(),
                source: None,
            }),
            Meta::Sender(SenderMeta {
                complete: false,
                confirmed_cursor: 7,
                label: b"/data/in.bin".to_vec(),
                source: Some(SourceIdentity {
                    len: 3 << 30,
                    modified_ns: 42,
                    head_crc: 1,
                    tail_crc: u32::MAX,
                }),
            }),
            Meta::Receiver(ReceiverMeta {
                ended: false,
                position: 99,
                next: [(0, 4), (7, 1)].into_iter().collect(),
            }),
            Meta::Receiver(ReceiverMeta::default()),
        ];
        for meta in metas {
            let bytes = meta.encode();
            assert_eq!(Meta::decode(&bytes), Ok(meta.clone()));
            for cut in 0..bytes.len() {
                assert!(Meta::decode(&bytes[..cut]).is_err());
            }
            let mut long = bytes.clone();
            long.push(1);
            assert!(Meta::decode(&long).is_err());
        }
    }
}
