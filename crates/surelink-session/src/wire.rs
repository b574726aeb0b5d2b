//! The session protocol's messages on the wire: the header of every data
//! message and the control messages on [`CONTROL_CHANNEL`].
//!
//! Everything is little-endian. A data message is the message id (u64)
//! followed by the application's bytes. A control message is a type byte and
//! a body:
//!
//! | type | message | direction | body |
//! |---|---|---|---|
//! | 1 | HELLO | sender → receiver | version u8, session id \[16\], resume token \[32\], n u32, n × (channel u64, first pending id u64, next id u64) |
//! | 2 | WATERMARK | receiver → sender | ended u8, n u32, n × (channel u64, next expected id u64) |
//! | 3 | REFUSE | receiver → sender | reason (UTF-8, the rest) |
//! | 4 | CHECKPOINT | receiver → sender | same body as WATERMARK |
//! | 5 | END | sender → receiver | n u32, n × (channel u64, number of messages u64) |
//!
//! Decoding never panics: a short, long or unknown message is a
//! [`WireError`].

use std::collections::BTreeMap;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// The channel the session protocol's control messages travel on. It is the
/// largest channel number the wire format can carry (2^62 - 1), so
/// applications keep every other channel for their data.
pub const CONTROL_CHANNEL: u64 = (1 << 62) - 1;

/// Bytes in front of the application's data in every data message (the
/// message id).
pub const DATA_HEADER_LEN: usize = 8;

/// Version of the session protocol carried in HELLO.
pub const SESSION_PROTOCOL_VERSION: u8 = 1;

/// Most channels a control message may list.
const MAX_LISTED_CHANNELS: u32 = 1 << 16;

const HELLO: u8 = 1;
const WATERMARK: u8 = 2;
const REFUSE: u8 = 3;
const CHECKPOINT: u8 = 4;
const END: u8 = 5;

/// A session's id: 16 random bytes chosen by the sender when the session
/// starts. Displayed as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What the sender says about one channel in its HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelResume {
    /// The channel.
    pub channel: u64,
    /// The lowest message id the receiver has not confirmed as checkpointed
    /// (the oldest message in the sender's outbox, or the next id to send if
    /// the outbox holds none of this channel).
    pub first_pending: u64,
    /// The id the sender gives its next new message on this channel: every
    /// id below it was sent (or is in the outbox).
    pub next: u64,
}

/// The first message of a session on a connection: who the sender is and
/// what it still holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The session to start or resume.
    pub session_id: SessionId,
    /// The secret that proves the right to resume it.
    pub resume_token: [u8; 32],
    /// The channels the sender has sent on, ascending.
    pub channels: Vec<ChannelResume>,
}

impl Hello {
    /// What the sender says about `channel` (all zero if it never sent on it).
    pub fn channel(&self, channel: u64) -> ChannelResume {
        self.channels
            .iter()
            .find(|c| c.channel == channel)
            .copied()
            .unwrap_or(ChannelResume {
                channel,
                first_pending: 0,
                next: 0,
            })
    }
}

/// The receiver's progress: per channel, the next message id it expects
/// (everything below is checkpointed), and whether the session has ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The sender's END was received and everything it announced is
    /// checkpointed: the session is complete.
    pub ended: bool,
    /// Channel → next expected id.
    pub next: BTreeMap<u64, u64>,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    Hello(Hello),
    /// The reply to HELLO: where the receiver is.
    Watermark(Progress),
    /// The reply to HELLO when the receiver will not serve the session.
    Refuse(String),
    /// The receiver checkpointed everything below these ids.
    Checkpoint(Progress),
    /// The sender's last message: how many messages each channel carried.
    End(BTreeMap<u64, u64>),
}

/// A control message or data header that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message ended before a field.
    #[error("truncated {0} message")]
    Truncated(&'static str),
    /// Bytes left over after the last field.
    #[error("{0} message has trailing bytes")]
    Trailing(&'static str),
    /// An unknown control message type.
    #[error("unknown control message type {0}")]
    UnknownType(u8),
    /// An empty control message.
    #[error("empty control message")]
    Empty,
    /// A HELLO of another protocol version.
    #[error("session protocol version {0} is not supported (this side speaks {SESSION_PROTOCOL_VERSION})")]
    Version(u8),
    /// A channel list longer than allowed or not strictly ascending.
    #[error("bad channel list in a {0} message")]
    Channels(&'static str),
    /// A REFUSE reason that is not UTF-8.
    #[error("REFUSE reason is not UTF-8")]
    Utf8,
}

impl Control {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Control::Hello(_) => "HELLO",
            Control::Watermark(_) => "WATERMARK",
            Control::Refuse(_) => "REFUSE",
            Control::Checkpoint(_) => "CHECKPOINT",
            Control::End(_) => "END",
        }
    }

    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Control::Hello(h) => {
                out.put_u8(HELLO);
                out.put_u8(SESSION_PROTOCOL_VERSION);
                out.put_slice(&h.session_id.0);
                out.put_slice(&h.resume_token);
                out.put_u32_le(h.channels.len() as u32);
                for c in &h.channels {
                    out.put_u64_le(c.channel);
                    out.put_u64_le(c.first_pending);
                    out.put_u64_le(c.next);
                }
            }
            Control::Watermark(p) | Control::Checkpoint(p) => {
                out.put_u8(if matches!(self, Control::Watermark(_)) {
                    WATERMARK
                } else {
                    CHECKPOINT
                });
                out.put_u8(u8::from(p.ended));
                put_pairs(&mut out, &p.next);
            }
            Control::Refuse(reason) => {
                out.put_u8(REFUSE);
                out.put_slice(reason.as_bytes());
            }
            Control::End(counts) => {
                out.put_u8(END);
                put_pairs(&mut out, counts);
            }
        }
        out.freeze()
    }

    pub(crate) fn decode(data: &[u8]) -> Result<Control, WireError> {
        let (&kind, body) = data.split_first().ok_or(WireError::Empty)?;
        let mut r = Reader(body);
        let msg = match kind {
            HELLO => {
                const N: &str = "HELLO";
                let version = r.u8(N)?;
                if version != SESSION_PROTOCOL_VERSION {
                    return Err(WireError::Version(version));
                }
                let session_id = SessionId(r.array(N)?);
                let resume_token = r.array(N)?;
                let n = r.count(N)?;
                let mut channels = Vec::with_capacity(n);
                for _ in 0..n {
                    let channel = r.u64(N)?;
                    if channels
                        .last()
                        .is_some_and(|c: &ChannelResume| c.channel >= channel)
                    {
                        return Err(WireError::Channels(N));
                    }
                    channels.push(ChannelResume {
                        channel,
                        first_pending: r.u64(N)?,
                        next: r.u64(N)?,
                    });
                }
                r.finish(N)?;
                Control::Hello(Hello {
                    session_id,
                    resume_token,
                    channels,
                })
            }
            WATERMARK | CHECKPOINT => {
                let name = if kind == WATERMARK {
                    "WATERMARK"
                } else {
                    "CHECKPOINT"
                };
                let ended = r.u8(name)? != 0;
                let next = r.pairs(name)?;
                r.finish(name)?;
                let p = Progress { ended, next };
                if kind == WATERMARK {
                    Control::Watermark(p)
                } else {
                    Control::Checkpoint(p)
                }
            }
            REFUSE => {
                Control::Refuse(String::from_utf8(body.to_vec()).map_err(|_| WireError::Utf8)?)
            }
            END => {
                let counts = r.pairs("END")?;
                r.finish("END")?;
                Control::End(counts)
            }
            other => return Err(WireError::UnknownType(other)),
        };
        Ok(msg)
    }
}

fn put_pairs(out: &mut BytesMut, pairs: &BTreeMap<u64, u64>) {
    out.put_u32_le(pairs.len() as u32);
    for (&k, &v) in pairs {
        out.put_u64_le(k);
        out.put_u64_le(v);
    }
}

/// Builds a data message: the id, then the application's bytes.
pub(crate) fn data_message(id: u64, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(DATA_HEADER_LEN + data.len());
    out.put_u64_le(id);
    out.put_slice(data);
    out.freeze()
}

/// Splits a data message into its id and the application's bytes.
pub(crate) fn split_data(message: &Bytes) -> Result<(u64, Bytes), WireError> {
    let id = message
        .get(..DATA_HEADER_LEN)
        .ok_or(WireError::Truncated("data"))?;
    let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
    Ok((id, message.slice(DATA_HEADER_LEN..)))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize, name: &'static str) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated(name));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, name: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, name)?[0])
    }

    fn u64(&mut self, name: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8, name)?.try_into().expect("8 bytes"),
        ))
    }

    fn array<const N: usize>(&mut self, name: &'static str) -> Result<[u8; N], WireError> {
        Ok(self.take(N, name)?.try_into().expect("N bytes"))
    }

    fn count(&mut self, name: &'static str) -> Result<usize, WireError> {
        let n = u32::from_le_bytes(self.take(4, name)?.try_into().expect("4 bytes"));
        if n > MAX_LISTED_CHANNELS {
            return Err(WireError::Channels(name));
        }
        Ok(n as usize)
    }

    fn pairs(&mut self, name: &'static str) -> Result<BTreeMap<u64, u64>, WireError> {
        let n = self.count(name)?;
        let mut pairs = BTreeMap::new();
        let mut last = None;
        for _ in 0..n {
            let k = self.u64(name)?;
            if last.is_some_and(|l| l >= k) {
                return Err(WireError::Channels(name));
            }
            last = Some(k);
            pairs.insert(k, self.u64(name)?);
        }
        Ok(pairs)
    }

    fn finish(&self, name: &'static str) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: Control) {
        let bytes = msg.encode();
        assert_eq!(Control::decode(&bytes), Ok(msg.clone()));
        // Every strict prefix fails to decode, never panics.
        for cut in 0..bytes.len() {
            if matches!(msg, Control::Refuse(_)) {
                continue;
            }
            assert!(Control::decode(&bytes[..cut]).is_err(), "{msg:?} cut {cut}");
        }
        let mut long = bytes.to_vec();
        long.push(0);
        if !matches!(msg, Control::Refuse(_)) {
            assert!(Control::decode(&long).is_err());
        }
    }

    #[test]
    fn control_messages_round_trip() {
        round_trip(Control::Hello(Hello {
            session_id: SessionId([7; 16]),
            resume_token: [9; 32],
            channels: vec![
                ChannelResume {
                    channel: 0,
                    first_pending: 3,
                    next: 10,
                },
                ChannelResume {
                    channel: 5,
                    first_pending: 0,
                    next: 0,
                },
            ],
        }));
        let progress = Progress {
            ended: true,
            next: [(0, 5), (9, u64::MAX)].into_iter().collect(),
        };
        round_trip(Control::Watermark(progress.clone()));
        round_trip(Control::Checkpoint(Progress::default()));
        round_trip(Control::Checkpoint(progress));
        round_trip(Control::Refuse("no: because".into()));
        round_trip(Control::End([(0, 42)].into_iter().collect()));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 1u64;
        for len in 0..200 {
            for _ in 0..50 {
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (seed >> 56) as u8 % 7
                    })
                    .collect();
                let _ = Control::decode(&data);
            }
        }
        assert_eq!(Control::decode(&[]), Err(WireError::Empty));
        assert_eq!(Control::decode(&[99]), Err(WireError::UnknownType(99)));
        assert_eq!(Control::decode(&[HELLO, 2]), Err(WireError::Version(2)));
    }

    #[test]
    fn channel_lists_must_ascend() {
        let mut out = BytesMut::new();
        out.put_u8(END);
        out.put_u32_le(2);
        for _ in 0..2 {
            out.put_u64_le(4);
            out.put_u64_le(1);
        }
        assert_eq!(Control::decode(&out), Err(WireError::Channels("END")));
    }

    #[test]
    fn data_header() {
        let msg = data_message(77, b"abc");
        assert_eq!(msg.len(), DATA_HEADER_LEN + 3);
        let (id, data) = split_data(&msg).unwrap();
        assert_eq!((id, &data[..]), (77, &b"abc"[..]));
        assert!(split_data(&Bytes::from_static(b"short")).is_err());
        assert_eq!(
            SessionId([0xab; 16]).to_string(),
            "abababababababababababababababab"
        );
    }
}
