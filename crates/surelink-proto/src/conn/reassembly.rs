//! The receiving side of message transfer: reassembly, ordering, exactly-once
//! delivery, deadlines, playout and flow-control accounting.
//!
//! Fragments arrive in any order and any number of times. Each message is
//! rebuilt in a buffer sized from its announced length; its arrived byte ranges
//! are tracked so duplicates are recognised. Complete messages are released in
//! sequence order per channel, once each.
//!
//! Per message the caller supplies its source time on our clock (µs). A
//! deadline message is never released after `source + deadline`: a late one is
//! dropped, and a gap at the head of its channel is skipped when waiting longer
//! would make the next message late too (or when the sender says it gave up,
//! via SKIP). An unreliable channel skips a gap as soon as a later message is
//! complete. With a playout delay L, each message is released at `source + L`.
//! Every message held is charged against the flow-control window; credit
//! returns when the application takes it or when it is skipped.
//!
//! A message that arrives whole in one fragment, as the next one its channel
//! expects, is released at once: no partial buffer, no byte-range set, no
//! map entry (the common case for small messages in order). Given the
//! packet it came in as shared bytes, such a message is a slice of it: no
//! copy, no allocation, and the packet's buffer lives as long as one of its
//! messages does.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::recycle::Recycler;
use super::ChannelMap;
use crate::batch::{count_records, ReceivedBatch};
use crate::config::MESSAGE_CREDIT_OVERHEAD;
use crate::range_set::RangeSet;
use crate::wire::{Delivery, MsgFrame};

/// Most channels a peer may open (bounds per-channel state).
pub const MAX_CHANNELS: usize = 1 << 16;

/// The longest margin kept between giving up on a head gap and the deadline
/// of the message waiting behind it, µs.
const MAX_GIVE_UP_MARGIN_US: u64 = 2_000;

/// How long before the deadline `d` (µs) of the oldest message waiting behind
/// a gap the receiver gives up on the gap: an eighth of the deadline, at most
/// [`MAX_GIVE_UP_MARGIN_US`]. The margin absorbs a late wake-up of whoever
/// drives the connection; a longer one would skip retransmissions that are
/// still on their way in time (with a budget below two round trips, the
/// retransmission of a loss found by the next acknowledgement arrives about
/// 1.5 round trips after the original was sent).
pub(crate) fn give_up_margin_us(d: u64) -> u64 {
    (d / 8).min(MAX_GIVE_UP_MARGIN_US)
}

/// A message delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Channel it was sent on.
    pub channel: u64,
    /// Its sequence number in that channel.
    pub seq: u64,
    /// The message bytes.
    pub data: Bytes,
    /// When it was sent, on our clock (µs), as estimated from the peer's timestamp.
    pub source_time_us: u64,
    /// One-way latency from send to delivery, µs.
    pub latency_us: u64,
}

/// What a fragment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentOutcome {
    /// It carried bytes not seen before.
    New,
    /// Every byte of it had arrived before (or the message was already delivered or skipped).
    Duplicate,
}

/// A run of messages given up on: `from..to` on `channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedRange {
    /// The channel.
    pub channel: u64,
    /// First skipped sequence number.
    pub from: u64,
    /// One past the last skipped sequence number.
    pub to: u64,
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
    /// Fragments of one message disagree about whether it is a packed batch.
    #[error("fragments disagree about a message being packed")]
    PackedMismatch,
    /// A packed batch does not split into whole records (at least one).
    #[error("packed message is not a sequence of records")]
    MalformedPacked,
}

#[derive(Debug)]
struct Partial {
    /// The message's bytes, up to the furthest byte arrived: fragments in
    /// order are appended (no zero-filling of a buffer they then
    /// overwrite); one beyond the end fills the gap with zeros first.
    buf: Vec<u8>,
    /// Length of the whole message.
    len: u64,
    /// Byte ranges arrived.
    have: RangeSet,
    /// Bytes arrived (the size of `have`).
    got: u64,
    source_us: u64,
    delivery: Delivery,
    /// A packed batch: the number of its records once it is complete
    /// (checked then), 0 before. `None` for a plain message.
    packed: Option<usize>,
}

impl Partial {
    fn complete(&self) -> bool {
        self.got == self.len
    }

    fn deadline_us(&self) -> Option<u64> {
        match self.delivery {
            Delivery::Deadline(d) => Some(self.source_us.saturating_add(d)),
            _ => None,
        }
    }
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
    channels: ChannelMap<Channel>,
    /// Released in order, waiting for their playout time.
    playout: VecDeque<ReceivedBatch>,
    /// Released, waiting for the application: each a message or a packed
    /// batch, cut into messages as the application takes them.
    ready: VecDeque<ReceivedBatch>,
    /// Buffers of messages that span packets, reused once the application
    /// lets go of them.
    recycler: Recycler,
    /// Credit charged for messages held (partial, playout or ready).
    held: u64,
    /// Credit returned by the application taking messages, or by skips.
    consumed: u64,
    window: u64,
    max_message: u64,
    /// The playout delay, until [`Reassembly::release_held`] lifts it.
    playout_delay_us: Option<u64>,
    delivered: u64,
    /// Messages handed over before their playout time by `release_held`.
    released_early: u64,
    skipped: u64,
    late: u64,
    skips: Vec<SkippedRange>,
}

fn cost(len: u64) -> u64 {
    len + MESSAGE_CREDIT_OVERHEAD
}

impl Reassembly {
    /// State for a connection with flow-control `window`, `max_message` size and
    /// an optional playout delay.
    pub fn new(window: u64, max_message: u64, playout_delay_us: Option<u64>) -> Self {
        Self {
            channels: ChannelMap::default(),
            playout: VecDeque::new(),
            ready: VecDeque::new(),
            held: 0,
            consumed: 0,
            window,
            max_message,
            playout_delay_us,
            delivered: 0,
            released_early: 0,
            skipped: 0,
            late: 0,
            skips: Vec::new(),
            recycler: Recycler::default(),
        }
    }

    /// The cumulative credit limit to advertise: consumed + window.
    pub fn max_data(&self) -> u64 {
        self.consumed + self.window
    }

    /// The free message buffers this end keeps for reuse.
    pub(crate) fn recycler(&self) -> &Recycler {
        &self.recycler
    }

    /// Messages released to the application so far (each message of a
    /// packed batch counted).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Messages skipped (never delivered) so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Messages that completed after their deadline and were dropped.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Messages handed over before their playout time by
    /// [`release_held`](Self::release_held) so far.
    pub fn released_early(&self) -> u64 {
        self.released_early
    }

    /// Lifts the playout hold for good at `now_us`: every message waiting
    /// for its playout time is released now, in order, and later messages
    /// are released as soon as they are in order. Returns how many were
    /// released early.
    pub fn release_held(&mut self, now_us: u64) -> u64 {
        self.playout_delay_us = None;
        let mut released = 0;
        while let Some(b) = self.playout.pop_front() {
            released += b.len() as u64;
            self.hand_over(now_us, b);
        }
        self.released_early += released;
        released
    }

    /// Puts `b`, released at `now_us`, in the ready queue.
    fn hand_over(&mut self, now_us: u64, mut b: ReceivedBatch) {
        b.latency_us = now_us.saturating_sub(b.source_time_us);
        self.delivered += b.len() as u64;
        self.ready.push_back(b);
    }

    /// Takes the ranges skipped since the last call.
    pub fn take_skips(&mut self) -> Vec<SkippedRange> {
        std::mem::take(&mut self.skips)
    }

    /// True if a message is waiting for the application.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Takes the next in-order message (the next one of a packed batch,
    /// cut from it).
    pub fn pop(&mut self) -> Option<Message> {
        let front = self.ready.front_mut()?;
        let (m, bytes) = front.cut_first()?;
        let mut c = bytes as u64;
        if front.is_empty() {
            self.ready.pop_front();
            c += MESSAGE_CREDIT_OVERHEAD;
        }
        self.held -= c;
        self.consumed += c;
        Some(m)
    }

    /// Takes the next in-order message or packed batch whole (what is left
    /// of it, if [`pop`](Self::pop) took some of its messages).
    pub fn pop_batch(&mut self) -> Option<ReceivedBatch> {
        let b = self.ready.pop_front()?;
        let c = cost(b.data_len() as u64);
        self.held -= c;
        self.consumed += c;
        Some(b)
    }

    /// Releases message `seq` of `channel`, whole: a plain message, or a
    /// packed batch of `packed` checked records.
    fn release(
        &mut self,
        now_us: u64,
        channel: u64,
        seq: u64,
        data: Bytes,
        packed: Option<usize>,
        source_us: u64,
    ) {
        let b = ReceivedBatch::new(channel, seq, data, packed, source_us, 0);
        match self.playout_delay_us {
            Some(l) if now_us < source_us.saturating_add(l) => self.playout.push_back(b),
            _ => self.hand_over(now_us, b),
        }
    }

    fn drop_message(&mut self, len: u64) {
        let c = cost(len);
        self.held -= c;
        self.consumed += c;
    }

    fn note_skip(&mut self, channel: u64, from: u64, to: u64) {
        if to <= from {
            return;
        }
        self.skipped = self.skipped.saturating_add(to - from);
        match self.skips.last_mut() {
            Some(s) if s.channel == channel && s.to == from => s.to = to,
            _ => self.skips.push(SkippedRange { channel, from, to }),
        }
    }

    /// Handles one fragment whose message was sent at `source_us` (our clock),
    /// arriving at `now_us`. If given, `packet` holds the fragment's data: a
    /// message that arrives whole is then released as a slice of it instead
    /// of a copy.
    pub fn on_fragment(
        &mut self,
        f: &MsgFrame<'_>,
        source_us: u64,
        now_us: u64,
        packet: Option<&Bytes>,
    ) -> Result<FragmentOutcome, ReassemblyError> {
        if f.msg_len > self.max_message {
            return Err(ReassemblyError::TooLarge(f.msg_len));
        }
        let full = self.channels.len() >= MAX_CHANNELS;
        let ch = match self.channels.entry(f.channel) {
            Entry::Occupied(ch) => ch.into_mut(),
            Entry::Vacant(_) if full => return Err(ReassemblyError::TooManyChannels),
            Entry::Vacant(slot) => slot.insert(Channel::default()),
        };
        if f.seq < ch.next_seq {
            return Ok(FragmentOutcome::Duplicate);
        }
        if f.seq == ch.next_seq
            && f.offset == 0
            && f.data.len() as u64 == f.msg_len
            && ch
                .pending
                .first_key_value()
                .is_none_or(|(&k, _)| k != f.seq)
        {
            // The whole message, next in order, and no part of it held.
            if self.held + cost(f.msg_len) > self.window {
                return Err(ReassemblyError::FlowControl);
            }
            let packed = match f.packed {
                true => Some(count_records(f.data).ok_or(ReassemblyError::MalformedPacked)?),
                false => None,
            };
            self.held += cost(f.msg_len);
            ch.next_seq += 1;
            let more = !ch.pending.is_empty();
            let late = match f.delivery {
                Delivery::Deadline(d) => now_us > source_us.saturating_add(d),
                _ => false,
            };
            if late {
                self.late += 1;
                self.note_skip(f.channel, f.seq, f.seq + 1);
                self.drop_message(f.msg_len);
            } else {
                let data = match packet {
                    Some(p) => p.slice_ref(f.data),
                    None => Bytes::copy_from_slice(f.data),
                };
                self.release(now_us, f.channel, f.seq, data, packed, source_us);
            }
            if more {
                self.advance(f.channel, now_us);
            }
            return Ok(FragmentOutcome::New);
        }
        let partial = match ch.pending.get_mut(&f.seq) {
            Some(p) => {
                if p.len != f.msg_len {
                    return Err(ReassemblyError::LengthMismatch);
                }
                if p.packed.is_some() != f.packed {
                    return Err(ReassemblyError::PackedMismatch);
                }
                p
            }
            None => {
                if self.held + cost(f.msg_len) > self.window {
                    return Err(ReassemblyError::FlowControl);
                }
                self.held += cost(f.msg_len);
                ch.pending.entry(f.seq).or_insert(Partial {
                    buf: self.recycler.buffer(f.msg_len as usize),
                    len: f.msg_len,
                    have: RangeSet::new(),
                    got: 0,
                    source_us,
                    delivery: f.delivery,
                    packed: f.packed.then_some(0),
                })
            }
        };
        let end = f.offset + f.data.len() as u64;
        let new = partial.have.insert(f.offset..end);
        partial.got += new;
        if new == 0 && f.msg_len > 0 {
            return Ok(FragmentOutcome::Duplicate);
        }
        let (start, end) = (f.offset as usize, end as usize);
        if start == partial.buf.len() {
            partial.buf.extend_from_slice(f.data);
        } else {
            if end > partial.buf.len() {
                partial.buf.resize(end, 0);
            }
            partial.buf[start..end].copy_from_slice(f.data);
        }
        if partial.packed.is_some() && partial.complete() {
            let records = count_records(&partial.buf).ok_or(ReassemblyError::MalformedPacked)?;
            partial.packed = Some(records);
        }
        self.advance(f.channel, now_us);
        Ok(FragmentOutcome::New)
    }

    /// The sender gave up on every message of `channel` below `up_to`.
    pub fn on_skip(&mut self, channel: u64, up_to: u64, now_us: u64) {
        if !self.channels.contains_key(&channel) {
            if self.channels.len() >= MAX_CHANNELS {
                return;
            }
            self.channels.insert(channel, Channel::default());
        }
        if up_to <= self.channels[&channel].next_seq {
            return;
        }
        // Complete messages below `up_to` arrived in time: still deliver them.
        self.advance_until(channel, now_us, Some(up_to));
        let ch = self.channels.get_mut(&channel).expect("present");
        let from = ch.next_seq;
        let keys: Vec<u64> = ch.pending.range(..up_to).map(|(&k, _)| k).collect();
        let lens: Vec<u64> = keys
            .iter()
            .filter_map(|k| ch.pending.remove(k))
            .map(|p| p.len)
            .collect();
        ch.next_seq = up_to;
        for l in lens {
            self.drop_message(l);
        }
        self.note_skip(channel, from, up_to);
        self.advance(channel, now_us);
    }

    fn advance(&mut self, channel: u64, now_us: u64) {
        self.advance_until(channel, now_us, None);
    }

    /// Releases (or drops, if late) the complete messages at the head of `channel`.
    fn advance_until(&mut self, channel: u64, now_us: u64, limit: Option<u64>) {
        loop {
            let Some(ch) = self.channels.get_mut(&channel) else {
                return;
            };
            let Some(head) = ch.pending.first_entry() else {
                return;
            };
            if *head.key() != ch.next_seq
                || !head.get().complete()
                || limit.is_some_and(|l| *head.key() >= l)
            {
                return;
            }
            let (seq, p) = head.remove_entry();
            ch.next_seq += 1;
            if p.deadline_us().is_some_and(|d| now_us > d) {
                self.late += 1;
                self.note_skip(channel, seq, seq + 1);
                self.drop_message(p.len);
            } else {
                self.release(
                    now_us,
                    channel,
                    seq,
                    self.recycler.share(p.buf),
                    p.packed,
                    p.source_us,
                );
            }
        }
    }

    /// When the head of a deadline or unreliable channel must be given up:
    /// `Some(time)` (µs, our clock) or `None` if it may wait.
    fn head_give_up_at(ch: &Channel) -> Option<u64> {
        let (&first_seq, first) = ch.pending.iter().next()?;
        match first.delivery {
            Delivery::Reliable => None,
            Delivery::Unreliable => {
                // Skip at once to a later complete message.
                let later_complete = ch.pending.values().any(|p| p.complete());
                (later_complete && (first_seq != ch.next_seq || !first.complete())).then_some(0)
            }
            Delivery::Deadline(d) => {
                // The head gap (a message that never arrived, or the partial
                // head itself) is given up early enough that the oldest
                // message waiting behind it is still delivered, with a margin
                // for a late wake-up (the head is older, so its own deadline
                // comes first).
                let behind = if first_seq == ch.next_seq {
                    ch.pending.iter().nth(1).map(|(_, p)| p)
                } else {
                    Some(first)
                };
                let for_behind =
                    behind.map(|p| p.source_us.saturating_add(d - give_up_margin_us(d)));
                let own = (first_seq == ch.next_seq)
                    .then(|| first.deadline_us().map(|t| t.saturating_add(1)))
                    .flatten();
                own.into_iter().chain(for_behind).min()
            }
        }
    }

    /// Runs deadline skipping and playout release at `now_us`.
    pub fn poll(&mut self, now_us: u64) {
        let due: Vec<u64> = self
            .channels
            .iter()
            .filter(|(_, ch)| Self::head_give_up_at(ch).is_some_and(|t| now_us >= t))
            .map(|(&c, _)| c)
            .collect();
        for channel in due {
            // Give up on the head gap (or partial head), then release what follows.
            for _ in 0..MAX_CHANNELS {
                let Some(ch) = self.channels.get_mut(&channel) else {
                    break;
                };
                if Self::head_give_up_at(ch).is_none_or(|t| now_us < t) {
                    break;
                }
                let from = ch.next_seq;
                let first = *ch.pending.keys().next().expect("pending");
                // Either the head is partial (drop it) or missing (jump to `first`).
                let to = if first == from { from + 1 } else { first };
                let dropped = (first == from)
                    .then(|| ch.pending.remove(&from))
                    .flatten()
                    .map(|p| p.len);
                ch.next_seq = to;
                if let Some(l) = dropped {
                    self.drop_message(l);
                }
                self.note_skip(channel, from, to);
                self.advance(channel, now_us);
            }
        }
        while self
            .playout
            .front()
            .is_some_and(|m| now_us >= m.source_time_us + self.playout_delay_us.unwrap_or(0))
        {
            let b = self.playout.pop_front().expect("front");
            self.hand_over(now_us, b);
        }
    }

    /// The next time (µs, our clock) `poll` has work, if any.
    pub fn next_wake(&self) -> Option<u64> {
        let skip = self
            .channels
            .values()
            .filter_map(Self::head_give_up_at)
            .min();
        let play = self
            .playout
            .front()
            .map(|m| m.source_time_us + self.playout_delay_us.unwrap_or(0));
        skip.into_iter().chain(play).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag<'a>(channel: u64, seq: u64, msg: &'a [u8], off: usize, len: usize) -> MsgFrame<'a> {
        MsgFrame {
            channel,
            seq,
            msg_len: msg.len() as u64,
            offset: off as u64,
            timestamp_us: 0,
            delivery: Delivery::Reliable,
            packed: false,
            data: &msg[off..off + len],
        }
    }

    fn deadline<'a>(seq: u64, msg: &'a [u8], d: u64) -> MsgFrame<'a> {
        MsgFrame {
            delivery: Delivery::Deadline(d),
            ..frag(0, seq, msg, 0, msg.len())
        }
    }

    #[test]
    fn reorders_reassembles_and_dedups() {
        let mut r = Reassembly::new(1 << 20, 1 << 16, None);
        let m0 = b"hello world";
        let m1 = b"second";
        assert_eq!(
            r.on_fragment(&frag(0, 1, m1, 0, 6), 0, 0, None),
            Ok(FragmentOutcome::New)
        );
        assert_eq!(
            r.on_fragment(&frag(0, 0, m0, 6, 5), 0, 0, None),
            Ok(FragmentOutcome::New)
        );
        assert!(!r.has_ready());
        assert_eq!(
            r.on_fragment(&frag(0, 0, m0, 6, 5), 0, 0, None),
            Ok(FragmentOutcome::Duplicate)
        );
        assert_eq!(
            r.on_fragment(&frag(0, 0, m0, 0, 6), 0, 0, None),
            Ok(FragmentOutcome::New)
        );
        assert_eq!(r.pop().unwrap().data, &m0[..]);
        assert_eq!(r.pop().unwrap().data, &m1[..]);
        assert!(r.pop().is_none());
        assert_eq!(
            r.on_fragment(&frag(0, 1, m1, 0, 6), 0, 0, None),
            Ok(FragmentOutcome::Duplicate)
        );
        // Channels are independent.
        assert_eq!(
            r.on_fragment(&frag(9, 0, b"", 0, 0), 0, 0, None),
            Ok(FragmentOutcome::New)
        );
        assert_eq!(r.pop().unwrap().channel, 9);
    }

    #[test]
    fn whole_messages_in_order_are_released_at_once_and_pull_the_held_ones() {
        let mut r = Reassembly::new(3 * (5 + MESSAGE_CREDIT_OVERHEAD), 1 << 16, None);
        // Seq 2 arrives first and is held; seq 0 whole, in order, goes at once.
        r.on_fragment(&frag(0, 2, b"three", 0, 5), 0, 0, None)
            .unwrap();
        assert_eq!(
            r.on_fragment(&frag(0, 0, b"one..", 0, 5), 0, 0, None),
            Ok(FragmentOutcome::New)
        );
        assert_eq!(r.pop().unwrap().seq, 0);
        assert!(r.pop().is_none(), "seq 2 waits for seq 1");
        // Seq 1 whole releases itself and the held seq 2 behind it.
        r.on_fragment(&frag(0, 1, b"two..", 0, 5), 0, 0, None)
            .unwrap();
        let seqs: Vec<u64> = std::iter::from_fn(|| r.pop()).map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(
            r.on_fragment(&frag(0, 1, b"two..", 0, 5), 0, 0, None),
            Ok(FragmentOutcome::Duplicate)
        );
        // The whole-message path is charged against the window like any other.
        for seq in 3..6 {
            r.on_fragment(&frag(0, seq, b"more.", 0, 5), 0, 0, None)
                .unwrap();
        }
        assert_eq!(
            r.on_fragment(&frag(0, 6, b"over.", 0, 5), 0, 0, None),
            Err(ReassemblyError::FlowControl)
        );
        // A whole deadline message that is already late is dropped, not released.
        let mut r = Reassembly::new(1 << 20, 1 << 16, None);
        r.on_fragment(&deadline(0, b"late", 100), 0, 101, None)
            .unwrap();
        assert!(r.pop().is_none());
        assert_eq!(r.late(), 1);
        assert_eq!(
            r.take_skips(),
            vec![SkippedRange {
                channel: 0,
                from: 0,
                to: 1
            }]
        );
        r.on_fragment(&deadline(1, b"in time", 100), 0, 100, None)
            .unwrap();
        assert_eq!(r.pop().unwrap().data, &b"in time"[..]);
    }

    #[test]
    fn a_whole_message_given_its_packet_is_a_slice_of_it_a_partial_one_a_copy() {
        let packet = Bytes::from_static(b"..first..second-part");
        let mut r = Reassembly::new(1 << 20, 1 << 16, None);
        r.on_fragment(&frag(0, 0, &packet[2..7], 0, 5), 0, 0, Some(&packet))
            .unwrap();
        let m = r.pop().unwrap();
        assert_eq!(m.data, &b"first"[..]);
        assert_eq!(m.data.as_ptr(), packet[2..].as_ptr(), "no copy");
        // Only part of seq 1 in this packet: it is held in a buffer of its own.
        let msg = b"second-part-and-more";
        r.on_fragment(&frag(0, 1, msg, 0, 11), 0, 0, Some(&packet))
            .unwrap();
        r.on_fragment(&frag(0, 1, msg, 11, 9), 0, 0, None).unwrap();
        let m = r.pop().unwrap();
        assert_eq!(m.data, &msg[..]);
        assert_ne!(m.data.as_ptr(), packet[9..].as_ptr());
    }

    #[test]
    fn flow_control_and_limits() {
        let mut r = Reassembly::new(100 + 2 * MESSAGE_CREDIT_OVERHEAD, 80, None);
        let big = [1u8; 90];
        assert_eq!(
            r.on_fragment(&frag(0, 0, &big, 0, 10), 0, 0, None),
            Err(ReassemblyError::TooLarge(90))
        );
        let m = [2u8; 60];
        r.on_fragment(&frag(0, 1, &m, 0, 10), 0, 0, None).unwrap();
        assert_eq!(
            r.on_fragment(&frag(0, 2, &m, 0, 10), 0, 0, None),
            Err(ReassemblyError::FlowControl)
        );
        let other = [3u8; 61];
        assert_eq!(
            r.on_fragment(&frag(0, 1, &other, 0, 10), 0, 0, None),
            Err(ReassemblyError::LengthMismatch)
        );
        let before = r.max_data();
        r.on_fragment(&frag(0, 0, &m[..30], 0, 30), 0, 0, None)
            .unwrap();
        r.pop().unwrap();
        assert_eq!(r.max_data(), before + 30 + MESSAGE_CREDIT_OVERHEAD);
    }

    /// A fragment of packed message `seq` (records `packed`) on channel 0.
    fn packed<'a>(seq: u64, packed: &'a [u8], off: usize, len: usize) -> MsgFrame<'a> {
        MsgFrame {
            packed: true,
            ..frag(0, seq, packed, off, len)
        }
    }

    /// The packed form of `messages`.
    fn records(messages: &[&[u8]]) -> Vec<u8> {
        let mut batch = crate::batch::MessageBatch::new();
        messages.iter().for_each(|m| batch.push(m));
        batch.take_packed(Vec::new()).0.to_vec()
    }

    #[test]
    fn a_packed_message_is_handed_over_message_by_message_or_whole_and_returns_its_credit() {
        let mut r = Reassembly::new(1 << 20, 1 << 20, None);
        let start = r.max_data();
        let first = records(&[b"ab", b"", b"cde"]);
        let second = records(&[&[9u8; 100], b"z"]);
        // The first whole in one fragment; the second in three, out of order.
        r.on_fragment(&packed(0, &first, 0, first.len()), 5, 7, None)
            .unwrap();
        for (off, len) in [(60, second.len() - 60), (0, 30), (30, 30)] {
            r.on_fragment(&packed(1, &second, off, len), 5, 7, None)
                .unwrap();
        }
        assert_eq!(r.delivered(), 5, "each message of a batch counts");
        let taken: Vec<(u64, Vec<u8>)> = (0..2)
            .map(|_| r.pop().expect("ready"))
            .map(|m| (m.seq, m.data.to_vec()))
            .collect();
        assert_eq!(taken, [(0, b"ab".to_vec()), (0, Vec::new())]);
        // The rest of the first batch, whole, then the second.
        let rest = r.pop_batch().expect("the rest of the first batch");
        assert_eq!((rest.seq, rest.len()), (0, 1));
        assert_eq!(rest.iter().collect::<Vec<_>>(), [b"cde"]);
        let whole = r.pop_batch().expect("the second batch");
        assert!(whole.is_packed());
        assert_eq!(whole.iter().collect::<Vec<_>>(), [&[9u8; 100][..], b"z"]);
        assert!(r.pop().is_none());
        assert_eq!(
            r.max_data(),
            start + (first.len() + second.len()) as u64 + 2 * MESSAGE_CREDIT_OVERHEAD,
            "every byte of both batches is credited back, once"
        );
    }

    #[test]
    fn a_packed_message_that_is_not_records_breaks_the_protocol() {
        let mut r = Reassembly::new(1 << 20, 1 << 20, None);
        // A record claiming 5 bytes with 2 behind it, whole or in parts.
        let bad = [5u8, 1, 2];
        assert_eq!(
            r.on_fragment(&packed(0, &bad, 0, 3), 0, 0, None),
            Err(ReassemblyError::MalformedPacked)
        );
        let mut r = Reassembly::new(1 << 20, 1 << 20, None);
        r.on_fragment(&packed(0, &bad, 1, 2), 0, 0, None).unwrap();
        assert_eq!(
            r.on_fragment(&packed(0, &bad, 0, 1), 0, 0, None),
            Err(ReassemblyError::MalformedPacked)
        );
        // An empty packed message holds no record: malformed too.
        let mut r = Reassembly::new(1 << 20, 1 << 20, None);
        assert_eq!(
            r.on_fragment(&packed(0, &[], 0, 0), 0, 0, None),
            Err(ReassemblyError::MalformedPacked)
        );
        assert!(!r.has_ready());
    }

    #[test]
    fn fragments_that_disagree_about_packing_break_the_protocol() {
        let mut r = Reassembly::new(1 << 20, 1 << 20, None);
        let m = records(&[b"abcdef"]);
        r.on_fragment(&packed(0, &m, 0, 3), 0, 0, None).unwrap();
        assert_eq!(
            r.on_fragment(&frag(0, 0, &m, 3, 4), 0, 0, None),
            Err(ReassemblyError::PackedMismatch)
        );
    }

    #[test]
    fn deadline_gap_is_skipped_in_time_and_late_messages_dropped() {
        let mut r = Reassembly::new(1 << 20, 1 << 16, None);
        // seq 0 missing; seq 1 sent at 1000 with deadline 800 arrives at 1100.
        r.on_fragment(&deadline(1, b"one", 800), 1000, 1100, None)
            .unwrap();
        assert!(!r.has_ready());
        let wake = r.next_wake().unwrap();
        assert_eq!(wake, 1000 + 800 - 100);
        r.poll(wake - 1);
        assert!(!r.has_ready());
        r.poll(wake);
        let m = r.pop().unwrap();
        assert_eq!((m.seq, m.latency_us), (1, 700));
        assert_eq!(
            r.take_skips(),
            vec![SkippedRange {
                channel: 0,
                from: 0,
                to: 1
            }]
        );
        // seq 0 arriving now is a duplicate; seq 2 arriving after its deadline is dropped.
        assert_eq!(
            r.on_fragment(&deadline(0, b"zero", 800), 900, 1800, None),
            Ok(FragmentOutcome::Duplicate)
        );
        r.on_fragment(&deadline(2, b"two", 800), 1000, 1801, None)
            .unwrap();
        assert!(r.pop().is_none());
        assert_eq!((r.skipped(), r.late()), (2, 1));
        // Credit came back for everything.
        assert_eq!(r.max_data(), (1 << 20) + 2 * MESSAGE_CREDIT_OVERHEAD + 6);
    }

    #[test]
    fn a_partial_head_is_given_up_in_time_for_the_message_behind_it() {
        let mut r = Reassembly::new(1 << 20, 1 << 16, None);
        // seq 0 arrived in part; seq 1 is complete; both sent at 1000 with a
        // 35 ms deadline.
        let head = [0u8; 100];
        r.on_fragment(
            &MsgFrame {
                delivery: Delivery::Deadline(35_000),
                ..frag(0, 0, &head, 0, 50)
            },
            1000,
            1100,
            None,
        )
        .unwrap();
        r.on_fragment(&deadline(1, b"one", 35_000), 1000, 1100, None)
            .unwrap();
        // Not at the head's own deadline (seq 1 would be late by then), but
        // the margin before seq 1's.
        let wake = r.next_wake().unwrap();
        assert_eq!(wake, 1000 + 35_000 - give_up_margin_us(35_000));
        r.poll(wake);
        let m = r.pop().unwrap();
        assert_eq!(m.seq, 1);
        assert_eq!((r.skipped(), r.late()), (1, 0));
    }

    #[test]
    fn sender_skip_unblocks_a_reliable_wait() {
        let mut r = Reassembly::new(1 << 20, 1 << 16, None);
        r.on_fragment(&deadline(3, b"three", 10_000), 0, 10, None)
            .unwrap();
        r.on_skip(0, 3, 20);
        assert_eq!(r.pop().unwrap().seq, 3);
        assert_eq!(r.skipped(), 3);
    }

    #[test]
    fn unreliable_skips_at_once_and_playout_waits() {
        let mut r = Reassembly::new(1 << 20, 1 << 16, Some(500));
        let m = MsgFrame {
            delivery: Delivery::Unreliable,
            ..frag(0, 2, b"x", 0, 1)
        };
        r.on_fragment(&m, 1000, 1050, None).unwrap();
        r.poll(1050);
        assert!(r.pop().is_none(), "held for playout");
        assert_eq!(r.next_wake(), Some(1500));
        r.poll(1500);
        let got = r.pop().unwrap();
        assert_eq!((got.seq, got.latency_us), (2, 500));
        assert_eq!(r.skipped(), 2);
    }

    #[test]
    fn releasing_the_held_messages_hands_them_over_in_order_and_lifts_the_hold() {
        let mut r = Reassembly::new(1 << 20, 1 << 16, Some(5_000_000));
        for seq in 0..3 {
            r.on_fragment(&frag(0, seq, b"held", 0, 4), 1_000, 2_000, None)
                .unwrap();
        }
        r.poll(2_000);
        assert!(r.pop().is_none(), "held for playout");
        assert_eq!(r.release_held(3_000), 3);
        assert_eq!(r.released_early(), 3);
        assert_eq!(r.delivered(), 3);
        let got: Vec<(u64, u64)> = std::iter::from_fn(|| r.pop())
            .map(|m| (m.seq, m.latency_us))
            .collect();
        assert_eq!(got, [(0, 2_000), (1, 2_000), (2, 2_000)]);
        assert_eq!(r.next_wake(), None, "nothing waits for a playout time");
        // The hold stays lifted: a later message goes straight through.
        r.on_fragment(&frag(0, 3, b"late", 0, 4), 4_000, 4_100, None)
            .unwrap();
        assert_eq!(r.pop().map(|m| m.seq), Some(3));
        assert_eq!(r.release_held(5_000), 0);
        assert_eq!(r.released_early(), 3);
    }
}
