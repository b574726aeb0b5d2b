//! The receiving side of message transfer: reassembly, ordering, exactly-once
//! delivery and flow-control accounting.
//!
//! Fragments arrive in any order and any number of times. Each message is
//! rebuilt in a buffer sized from its announced length; its arrived byte ranges
//! are tracked so duplicates are recognised. Complete messages are released in
//! sequence order per channel, once each. Every message held (partial or ready)
//! is charged against the flow-control window; credit returns when the
//! application takes the message.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use crate::config::MESSAGE_CREDIT_OVERHEAD;
use crate::range_set::RangeSet;
use crate::wire::MsgFrame;

/// Most channels a peer may open (bounds per-channel state).
pub const MAX_CHANNELS: usize = 1 << 16;

/// A message delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Channel it was sent on.
    pub channel: u64,
    /// Its sequence number in that channel.
    pub seq: u64,
    /// The message bytes.
    pub data: Bytes,
}

/// What a fragment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentOutcome {
    /// It carried bytes not seen before.
    New,
    /// Every byte of it had arrived before (or the message was already delivered).
    Duplicate,
}

/// Why a fragment breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReassemblyError {
    /// The message is larger than this side accepts.
    #[error("message of {0} bytes exceeds the maximum")]
    TooLarge(u64),
    /// The peer sent beyond the flow-control window.
    #[error("flow control window exceeded")]
    FlowControl,
    /// Two fragments of one message disagree on its length.
    #[error("inconsistent message length")]
    LengthMismatch,
    /// The peer opened more channels than allowed.
    #[error("too many channels")]
    TooManyChannels,
}

#[derive(Debug)]
struct Partial {
    buf: Vec<u8>,
    have: RangeSet,
}

#[derive(Debug, Default)]
struct Channel {
    next_seq: u64,
    /// Messages at or after `next_seq` that arrived (partially or fully).
    pending: BTreeMap<u64, Partial>,
}

/// Per-connection reassembly and delivery state.
#[derive(Debug)]
pub struct Reassembly {
    channels: HashMap<u64, Channel>,
    ready: VecDeque<Message>,
    /// Credit charged for messages held (partial or ready).
    held: u64,
    /// Credit returned by the application taking messages.
    consumed: u64,
    window: u64,
    max_message: u64,
    delivered: u64,
}

impl Reassembly {
    /// State for a connection with flow-control `window` and `max_message` size.
    pub fn new(window: u64, max_message: u64) -> Self {
        Self {
            channels: HashMap::new(),
            ready: VecDeque::new(),
            held: 0,
            consumed: 0,
            window,
            max_message,
            delivered: 0,
        }
    }

    /// The cumulative credit limit to advertise: consumed + window.
    pub fn max_data(&self) -> u64 {
        self.consumed + self.window
    }

    /// Messages released to the ready queue so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// True if a message is waiting for the application.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Takes the next in-order message.
    pub fn pop(&mut self) -> Option<Message> {
        let m = self.ready.pop_front()?;
        let cost = m.data.len() as u64 + MESSAGE_CREDIT_OVERHEAD;
        self.held -= cost;
        self.consumed += cost;
        Some(m)
    }

    /// Handles one fragment.
    pub fn on_fragment(&mut self, f: &MsgFrame<'_>) -> Result<FragmentOutcome, ReassemblyError> {
        if f.msg_len > self.max_message {
            return Err(ReassemblyError::TooLarge(f.msg_len));
        }
        if !self.channels.contains_key(&f.channel) && self.channels.len() >= MAX_CHANNELS {
            return Err(ReassemblyError::TooManyChannels);
        }
        let ch = self.channels.entry(f.channel).or_default();
        if f.seq < ch.next_seq {
            return Ok(FragmentOutcome::Duplicate);
        }
        let whole = f.offset == 0 && f.data.len() as u64 == f.msg_len;
        let partial = match ch.pending.get_mut(&f.seq) {
            Some(p) => {
                if p.buf.len() as u64 != f.msg_len {
                    return Err(ReassemblyError::LengthMismatch);
                }
                p
            }
            None => {
                let cost = f.msg_len + MESSAGE_CREDIT_OVERHEAD;
                if self.held + cost > self.window {
                    return Err(ReassemblyError::FlowControl);
                }
                self.held += cost;
                if whole && f.seq == ch.next_seq && ch.pending.is_empty() {
                    // Fast path: an in-order, unfragmented message.
                    ch.next_seq += 1;
                    self.delivered += 1;
                    self.ready.push_back(Message {
                        channel: f.channel,
                        seq: f.seq,
                        data: Bytes::copy_from_slice(f.data),
                    });
                    return Ok(FragmentOutcome::New);
                }
                ch.pending.entry(f.seq).or_insert(Partial {
                    buf: vec![0; f.msg_len as usize],
                    have: RangeSet::new(),
                })
            }
        };
        let end = f.offset + f.data.len() as u64;
        let new = partial.have.insert(f.offset..end);
        if new == 0 && f.msg_len > 0 {
            return Ok(FragmentOutcome::Duplicate);
        }
        partial.buf[f.offset as usize..end as usize].copy_from_slice(f.data);
        // Release every complete message at the head of the channel.
        while let Some(head) = ch.pending.first_entry() {
            if *head.key() != ch.next_seq
                || !head
                    .get()
                    .have
                    .contains_range(&(0..head.get().buf.len() as u64))
            {
                break;
            }
            let (seq, p) = head.remove_entry();
            ch.next_seq += 1;
            self.delivered += 1;
            self.ready.push_back(Message {
                channel: f.channel,
                seq,
                data: Bytes::from(p.buf),
            });
        }
        Ok(FragmentOutcome::New)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(channel: u64, seq: u64, msg: &[u8], off: usize, len: usize) -> MsgFrame<'_> {
        MsgFrame {
            channel,
            seq,
            msg_len: msg.len() as u64,
            offset: off as u64,
            data: &msg[off..off + len],
        }
    }

    #[test]
    fn reorders_reassembles_and_dedups() {
        let mut r = Reassembly::new(1 << 20, 1 << 16);
        let m0 = b"hello world";
        let m1 = b"second";
        assert_eq!(
            r.on_fragment(&frag(0, 1, m1, 0, 6)),
            Ok(FragmentOutcome::New)
        );
        assert_eq!(
            r.on_fragment(&frag(0, 0, m0, 6, 5)),
            Ok(FragmentOutcome::New)
        );
        assert!(!r.has_ready());
        assert_eq!(
            r.on_fragment(&frag(0, 0, m0, 6, 5)),
            Ok(FragmentOutcome::Duplicate)
        );
        assert_eq!(
            r.on_fragment(&frag(0, 0, m0, 0, 6)),
            Ok(FragmentOutcome::New)
        );
        assert_eq!(r.pop().unwrap().data, &m0[..]);
        assert_eq!(r.pop().unwrap().data, &m1[..]);
        assert!(r.pop().is_none());
        assert_eq!(
            r.on_fragment(&frag(0, 1, m1, 0, 6)),
            Ok(FragmentOutcome::Duplicate)
        );
        // Channels are independent.
        assert_eq!(
            r.on_fragment(&frag(9, 0, b"", 0, 0)),
            Ok(FragmentOutcome::New)
        );
        assert_eq!(r.pop().unwrap().channel, 9);
    }

    #[test]
    fn flow_control_and_limits() {
        let mut r = Reassembly::new(100 + 2 * MESSAGE_CREDIT_OVERHEAD, 80);
        let big = [1u8; 90];
        assert_eq!(
            r.on_fragment(&frag(0, 0, &big, 0, 10)),
            Err(ReassemblyError::TooLarge(90))
        );
        let m = [2u8; 60];
        r.on_fragment(&frag(0, 1, &m, 0, 10)).unwrap();
        assert_eq!(
            r.on_fragment(&frag(0, 2, &m, 0, 10)),
            Err(ReassemblyError::FlowControl)
        );
        let other = [3u8; 61];
        assert_eq!(
            r.on_fragment(&frag(0, 1, &other, 0, 10)),
            Err(ReassemblyError::LengthMismatch)
        );
        let before = r.max_data();
        r.on_fragment(&frag(0, 0, &m[..30], 0, 30)).unwrap();
        r.pop().unwrap();
        assert_eq!(r.max_data(), before + 30 + MESSAGE_CREDIT_OVERHEAD);
    }
}
