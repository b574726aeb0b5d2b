//! The sending side of message transfer: queued messages, fragments in flight,
//! what must be retransmitted, and what is abandoned.
//!
//! A message gets a per-channel sequence number and a source timestamp when
//! queued. Fragments are cut from the front of the queue as packets are built;
//! each fragment in a packet is remembered by the packet ([`Fragment`]) as a
//! byte range of its message, not as bytes of its own: the bytes stay with the
//! queued message, and [`SendQueue::frame`] encodes a fragment from them, so
//! cutting, acknowledging or losing a fragment touches no reference count. When a
//! packet is acknowledged, its fragments' byte ranges are marked acknowledged;
//! when it is declared lost, the byte ranges not yet acknowledged go to the
//! retransmission queue and are sent again in new packets (possibly split
//! differently). A message leaves the queue once all its bytes are acknowledged.
//!
//! Messages waiting for acknowledgement live per channel in a ring buffer
//! indexed by sequence number ([`ChannelQueue`]), so queueing, sending and
//! acknowledging a message costs no map insertion or removal; a message
//! acknowledged whole by one packet (the common case for small messages)
//! never builds a byte-range set.
//!
//! **Small messages are copied.** The bytes of a message of at most
//! [`SMALL_MESSAGE`] bytes are copied, as it is queued, to the end of its
//! channel's [`CopiedBytes`], one buffer for all of them in queue order;
//! the application's `Bytes` is dropped on the caller's thread at once.
//! Queueing, acknowledging and dropping a small message then touches no
//! reference count (a count shared with the application's thread is an
//! atomic that bounces between cores for every message), and the buffer's
//! front is given back as the channel's oldest messages leave the queue.
//! Larger messages keep the application's buffer, uncopied.
//!
//! **Bundles.** When several whole reliable messages of one channel wait
//! at the front of the queue together (a `send_many` batch, or messages
//! queued behind the congestion window), [`SendQueue::next_bundle`] writes
//! them into one MSG_BUNDLE frame as length-prefixed records and the packet
//! remembers one [`Bundle`] (channel, first sequence, count) instead of a
//! [`Fragment`] per message: acknowledged, it acknowledges each message
//! whole; lost, each message goes to the retransmission queue as a fragment
//! of its own. Only what is already queued is bundled (nothing waits to fill
//! a bundle), and deadline and unreliable messages never are: each keeps its
//! own frame, deadline and fate.
//!
//! Deadline messages are abandoned once a (re)transmission could no longer
//! arrive in time, unreliable ones as soon as a fragment is lost; abandoning a
//! message abandons everything before it on its channel, and a SKIP frame tells
//! the receiver not to wait for them. Retransmissions go by urgency: deadline
//! fragments earliest deadline first, then the rest in the order they were lost.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::reassembly::give_up_margin_us;
use super::recycle::Recycler;
use super::ChannelMap;
use crate::config::MESSAGE_CREDIT_OVERHEAD;
use crate::range_set::RangeSet;
use crate::wire::{varint, BundleWriter, Delivery, MsgFrame};

/// A piece of a message carried by one packet: which bytes of which message
/// (the bytes themselves stay in the [`SendQueue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Channel of the message.
    pub channel: u64,
    /// Sequence number of the message within its channel.
    pub seq: u64,
    /// Offset of the fragment's first byte within the message.
    pub offset: u64,
    /// Bytes of the message the fragment carries, from `offset`.
    pub len: usize,
    /// Total length of the message.
    pub msg_len: u64,
    /// Source time of the message, µs since the connection epoch.
    pub timestamp_us: u64,
    /// Delivery mode of the message.
    pub delivery: Delivery,
    /// A redundant copy of a deadline retransmission that was its message's
    /// last chance (see [`SendQueue::begin_packet`]); never copied again.
    pub copy: bool,
    /// These bytes were sent before and declared lost.
    pub retransmission: bool,
    /// The message is a packed batch (MSG_PACKED frames).
    pub packed: bool,
}

impl Fragment {
    /// A fragment of message `seq` of `channel` from byte `offset` to its end.
    fn rest_of(channel: u64, seq: u64, u: &Unacked, offset: usize) -> Self {
        Self {
            channel,
            seq,
            offset: offset as u64,
            len: u.len() - offset,
            msg_len: u.len() as u64,
            timestamp_us: u.timestamp_us,
            delivery: u.delivery,
            copy: false,
            retransmission: false,
            packed: u.is_packed(),
        }
    }

    /// The frame carrying this fragment, whose bytes are `data`.
    fn frame<'a>(&self, data: &'a [u8]) -> MsgFrame<'a> {
        MsgFrame {
            channel: self.channel,
            seq: self.seq,
            msg_len: self.msg_len,
            offset: self.offset,
            timestamp_us: self.timestamp_us,
            delivery: self.delivery,
            packed: self.packed,
            data,
        }
    }

    /// The most bytes of this fragment that fit, with its frame's header, in
    /// `space` bytes, the header's length field as wide as that part needs.
    /// (Sized for the whole rest of the message, the field was two bytes too
    /// wide while more than 16 KiB were left, so those packets came out two
    /// bytes short of the rest, and GSO sends only runs of equal datagrams.)
    /// `None` if not even one byte fits (for an empty fragment: its header).
    fn fitting_len(&self, space: usize) -> Option<usize> {
        let head = self.frame(&[]).overhead_with_len(0) - varint::size(0);
        [1, 2, 4, 8]
            .into_iter()
            .filter_map(|width| {
                let take = self.len.min(space.checked_sub(head + width)?);
                (varint::size(take as u64) <= width).then_some(take)
            })
            .max()
            .filter(|&take| take > 0 || self.len == 0)
    }

    /// The byte range of the message it carries.
    fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.len as u64
    }

    /// True for a deadline fragment whose next retransmission, should this
    /// one be lost, could not arrive before the receiver gives up on the gap
    /// (see [`give_up_margin_us`]): detecting the loss takes about a round trip
    /// (2 × `slack_us`, half the smoothed RTT), the new attempt half a round
    /// trip more, plus a margin of half a round trip for the ACK delay.
    fn last_chance(&self, now_us: u64, slack_us: u64) -> bool {
        match self.delivery {
            Delivery::Deadline(d) => {
                let gives_up = self.timestamp_us.saturating_add(d - give_up_margin_us(d));
                now_us.saturating_add(slack_us.saturating_mul(4)) > gives_up
            }
            _ => false,
        }
    }

    /// True for a deadline fragment whose loss, found a round trip after it
    /// left, still leaves time for a retransmission to arrive (the opposite
    /// of [`Fragment::last_chance`]): worth a tail probe after it (see
    /// `transmit.rs`).
    pub fn repairable_in_time(&self, now_us: u64, slack_us: u64) -> bool {
        matches!(self.delivery, Delivery::Deadline(_)) && !self.last_chance(now_us, slack_us)
    }

    /// When a deadline fragment is due at the receiver, µs since the
    /// connection epoch (`None` for other delivery modes).
    fn due_us(&self) -> Option<u64> {
        match self.delivery {
            Delivery::Deadline(d) => Some(self.timestamp_us.saturating_add(d)),
            _ => None,
        }
    }

    fn expired(&self, now_us: u64, slack_us: u64) -> bool {
        match self.delivery {
            Delivery::Deadline(d) => {
                now_us.saturating_add(slack_us) > self.timestamp_us.saturating_add(d)
            }
            _ => false,
        }
    }
}

/// Whole reliable messages `first_seq..first_seq + count` of `channel`,
/// carried by one packet in one MSG_BUNDLE frame (the bytes stay in the
/// [`SendQueue`], like a [`Fragment`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundle {
    /// Channel of the messages.
    pub channel: u64,
    /// Sequence number of the first message.
    pub first_seq: u64,
    /// Number of messages.
    pub count: u64,
}

impl Bundle {
    /// The sequence numbers of its messages.
    fn seqs(&self) -> std::ops::Range<u64> {
        self.first_seq..self.first_seq + self.count
    }
}

/// Messages up to this many bytes are copied into the send queue as they
/// are queued (see the module documentation), so the application may hand
/// them over as borrowed slices at no extra cost; larger ones given as
/// [`Bytes`] are kept without a copy. Reliable messages up to this size are
/// not cut across packets either (see [`kept_whole`]).
pub const SMALL_MESSAGE: usize = 256;

/// True for fragments that are not split across packets when a packet can
/// carry them whole: a deadline or unreliable message cut in two needs both
/// packets to arrive, so one lost packet would cost two messages (and leave
/// a partial message at the head of the receiver's channel); a small
/// reliable one (up to [`SMALL_MESSAGE`] bytes) cut in two would cost both
/// ends a byte-range set and the receiver a partial buffer, for a few bytes
/// of packet space. A fragment that does not fit in what is left of a packet
/// that already carries one starts the next packet instead; a message larger
/// than a packet is cut from a packet boundary. Larger reliable messages are
/// packed tightly.
fn kept_whole(delivery: Delivery, len: usize) -> bool {
    !matches!(delivery, Delivery::Reliable) || len <= SMALL_MESSAGE
}

/// The bytes of a message as the application hands them over: shared
/// ([`Bytes`], kept as they are when the message is large) or borrowed
/// (`&[u8]`, copied). Small messages are copied either way (see the module
/// documentation), so a batch of them can come from one buffer of the
/// application's without a `Bytes` per message.
pub trait MessageBytes: AsRef<[u8]> {
    /// The bytes, owned (a copy for borrowed bytes).
    fn into_bytes(self) -> Bytes;
}

impl MessageBytes for Bytes {
    fn into_bytes(self) -> Bytes {
        self
    }
}

impl MessageBytes for &[u8] {
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

/// What [`SendQueue::push_batch`] checks each message against.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Largest message accepted.
    pub max_message: usize,
    /// Bytes the queue may hold; a message that would take it past this
    /// waits, unless the queue is empty.
    pub send_buffer: u64,
}

/// Why [`SendQueue::push_batch`] stopped before the end of its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchRefusal {
    /// The next message is larger than [`BatchLimits::max_message`].
    TooLarge {
        /// Its size.
        size: usize,
        /// The largest accepted.
        max: usize,
    },
    /// The next message does not fit in the send buffer now.
    Blocked,
}

/// What [`SendQueue::push_batch`] queued.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchQueued {
    /// Messages queued.
    pub messages: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Why it stopped early, if it did.
    pub refused: Option<BatchRefusal>,
}

/// Where the bytes of a queued message are.
#[derive(Debug)]
enum Payload {
    /// Copied into its channel's [`CopiedBytes`], from offset `at` of the
    /// channel's copied byte stream (small messages, so `len` ≤
    /// [`SMALL_MESSAGE`]).
    Copied { at: u64, len: u16 },
    /// The application's own buffer (larger messages), boxed so that a
    /// queue entry stays small (see [`Unacked`]).
    Shared(Box<Bytes>),
    /// A packed batch (`send_batch`), whatever its size: its frames are
    /// MSG_PACKED, and it is never bundled.
    Packed(Box<PackedBatch>),
}

/// The records of a packed batch, and how many messages they hold (the
/// application's messages, counted when the batch is acknowledged or
/// abandoned).
#[derive(Debug)]
struct PackedBatch {
    records: Bytes,
    messages: u64,
}

/// A queued message not yet acknowledged or abandoned: 48 bytes. A
/// saturating sender keeps hundreds of thousands of small messages queued,
/// so each new entry is written to a cache line untouched since the entry
/// it reuses left; the smaller the entry, the fewer such misses per
/// message (at 80 bytes, the store of a new entry was two thirds of the
/// time spent queueing a batch of 64-byte messages).
#[derive(Debug)]
struct Unacked {
    /// Byte ranges acknowledged so far, once some but not all are (most
    /// messages are acknowledged whole and never need one).
    acked: Option<Box<RangeSet>>,
    payload: Payload,
    timestamp_us: u64,
    delivery: Delivery,
}

impl Unacked {
    /// Length of the message.
    fn len(&self) -> usize {
        match &self.payload {
            Payload::Copied { len, .. } => usize::from(*len),
            Payload::Shared(data) => data.len(),
            Payload::Packed(p) => p.records.len(),
        }
    }

    /// The application's messages it holds: 1, or a packed batch's count.
    fn messages(&self) -> u64 {
        match &self.payload {
            Payload::Packed(p) => p.messages,
            _ => 1,
        }
    }

    /// True for a packed batch.
    fn is_packed(&self) -> bool {
        matches!(self.payload, Payload::Packed(_))
    }

    /// A packed batch's records, for its buffer to be recycled.
    fn into_packed_records(self) -> Option<Bytes> {
        match self.payload {
            Payload::Packed(p) => Some(p.records),
            _ => None,
        }
    }

    /// Bytes of the message acknowledged so far.
    fn acked_bytes(&self) -> u64 {
        self.acked
            .as_deref()
            .map_or(0, |a| a.iter().map(|r| r.end - r.start).sum())
    }

    /// True if every byte of `range` was acknowledged.
    fn is_acked(&self, range: &std::ops::Range<u64>) -> bool {
        self.acked
            .as_deref()
            .is_some_and(|a| a.contains_range(range))
    }

    /// The parts of `range` not acknowledged yet.
    fn unacked_in(&self, range: std::ops::Range<u64>) -> Vec<std::ops::Range<u64>> {
        match self.acked.as_deref() {
            Some(a) => a.gaps_in(range),
            None if range.is_empty() => Vec::new(),
            None => vec![range],
        }
    }
}

/// Bytes per chunk of [`CopiedBytes`].
const COPIED_CHUNK: usize = 64 << 10;

/// The bytes of one channel's small messages, copied one after another in
/// the order they were queued, as a byte stream kept in chunks of
/// [`COPIED_CHUNK`] bytes: a message that does not fit in what is left of
/// the last chunk starts the next one, so each message lies in one chunk,
/// and the stream offset of a message says which chunk and where. A chunk
/// is given back whole once every message in it has left the queue; no
/// byte is ever moved.
#[derive(Debug, Default)]
struct CopiedBytes {
    /// The chunks still needed, oldest first; only the last one grows.
    chunks: VecDeque<Vec<u8>>,
    /// Chunk number (stream offset ÷ [`COPIED_CHUNK`]) of `chunks[0]`.
    first_chunk: u64,
    /// A chunk given back, kept for the next one so that a steady stream
    /// of messages allocates nothing.
    spare: Option<Vec<u8>>,
}

impl CopiedBytes {
    /// Stream offset of the next byte appended (unless it starts a new chunk).
    fn end(&self) -> u64 {
        let full = (self.first_chunk + self.chunks.len() as u64).saturating_sub(1);
        full * COPIED_CHUNK as u64 + self.chunks.back().map_or(0, |c| c.len() as u64)
    }

    /// Appends `data` (at most [`COPIED_CHUNK`] bytes); returns its stream offset.
    fn append(&mut self, data: &[u8]) -> u64 {
        debug_assert!(data.len() <= COPIED_CHUNK);
        if self
            .chunks
            .back()
            .is_none_or(|c| c.len() + data.len() > COPIED_CHUNK)
        {
            if self.chunks.is_empty() {
                // Everything was given back: the stream goes on in a new chunk.
                self.first_chunk += 1;
            }
            let mut chunk = self
                .spare
                .take()
                .unwrap_or_else(|| Vec::with_capacity(COPIED_CHUNK));
            chunk.clear();
            self.chunks.push_back(chunk);
        }
        let at = self.end();
        self.chunks
            .back_mut()
            .expect("a chunk was just ensured")
            .extend_from_slice(data);
        at
    }

    /// The `len` bytes from stream offset `at` (appended, not yet given back).
    fn get(&self, at: u64, len: usize) -> &[u8] {
        let chunk = (at / COPIED_CHUNK as u64 - self.first_chunk) as usize;
        let start = (at % COPIED_CHUNK as u64) as usize;
        &self.chunks[chunk][start..start + len]
    }

    /// No byte before stream offset `at` is needed any more: the chunks
    /// that end at or before it are given back.
    fn release_before(&mut self, at: u64) {
        while !self.chunks.is_empty() && (self.first_chunk + 1) * COPIED_CHUNK as u64 <= at {
            self.spare = self.chunks.pop_front();
            self.first_chunk += 1;
        }
    }

    /// Gives back every chunk.
    fn clear(&mut self) {
        if let Some(last) = self.chunks.pop_back() {
            self.spare = Some(last);
        }
        self.first_chunk += self.chunks.len() as u64;
        self.chunks.clear();
    }

    /// Chunks held.
    #[cfg(test)]
    fn held_chunks(&self) -> usize {
        self.chunks.len()
    }
}

/// One channel's messages not yet acknowledged or abandoned, indexed by
/// sequence number: slot `i` holds message `base + i`.
#[derive(Debug, Default)]
struct ChannelQueue {
    /// Sequence number of the first slot.
    base: u64,
    /// `None` once the message was acknowledged or abandoned; empty slots at
    /// the front are dropped, so the first slot is the oldest outstanding one.
    messages: VecDeque<Option<Unacked>>,
    /// How many of `messages` are deadline messages, so that asking for the
    /// latest deadline skips a channel without any (every reliable one)
    /// instead of walking its messages.
    deadline_messages: usize,
    /// The bytes of its small messages.
    copied: CopiedBytes,
}

impl ChannelQueue {
    /// The sequence number the next queued message gets.
    fn next_seq(&self) -> u64 {
        self.base + self.messages.len() as u64
    }

    fn index(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.base)?).ok()
    }

    fn get(&self, seq: u64) -> Option<&Unacked> {
        self.messages.get(self.index(seq)?)?.as_ref()
    }

    /// The bytes of message `u` of this channel.
    fn data<'a>(&'a self, u: &'a Unacked) -> &'a [u8] {
        match &u.payload {
            Payload::Copied { at, len } => self.copied.get(*at, usize::from(*len)),
            Payload::Shared(data) => data,
            Payload::Packed(p) => &p.records,
        }
    }

    /// Appends a message (copying it if it is small); it gets sequence
    /// number [`next_seq`](Self::next_seq).
    fn push(&mut self, data: impl MessageBytes, timestamp_us: u64, delivery: Delivery) {
        let len = data.as_ref().len();
        let payload = match u16::try_from(len) {
            Ok(len) if usize::from(len) <= SMALL_MESSAGE => Payload::Copied {
                at: self.copied.append(data.as_ref()),
                len,
            },
            _ => Payload::Shared(Box::new(data.into_bytes())),
        };
        self.push_payload(payload, timestamp_us, delivery);
    }

    /// Appends a message whose bytes are `payload`; it gets sequence number
    /// [`next_seq`](Self::next_seq).
    fn push_payload(&mut self, payload: Payload, timestamp_us: u64, delivery: Delivery) {
        if matches!(delivery, Delivery::Deadline(_)) {
            self.deadline_messages += 1;
        }
        self.messages.push_back(Some(Unacked {
            acked: None,
            payload,
            timestamp_us,
            delivery,
        }));
    }

    /// Empties the queue; the next message keeps the next sequence number.
    fn clear(&mut self) {
        self.base = self.next_seq();
        self.messages.clear();
        self.deadline_messages = 0;
        self.copied.clear();
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Unacked> {
        let i = self.index(seq)?;
        self.messages.get_mut(i)?.as_mut()
    }

    /// Marks bytes `range` of message `seq` acknowledged; the message leaves
    /// the queue once all its bytes are. `None` if it is not queued.
    fn acknowledge(&mut self, seq: u64, range: std::ops::Range<u64>) -> Option<Acknowledged> {
        let u = self.get_mut(seq)?;
        let len = u.len() as u64;
        let messages = u.messages();
        let whole = range == (0..len) && u.acked.is_none();
        let newly_acked = if whole {
            // The whole message at once, nothing acknowledged before.
            len
        } else {
            u.acked.get_or_insert_default().insert(range)
        };
        let complete = whole || u.is_acked(&(0..len));
        let freed = complete
            .then(|| self.remove(seq))
            .flatten()
            .and_then(Unacked::into_packed_records);
        Some(Acknowledged {
            newly_acked,
            complete,
            messages,
            freed,
        })
    }

    /// Takes message `seq` out, dropping the empty slots this leaves at the front.
    fn remove(&mut self, seq: u64) -> Option<Unacked> {
        let i = self.index(seq)?;
        let u = self.messages.get_mut(i)?.take()?;
        if matches!(u.delivery, Delivery::Deadline(_)) {
            self.deadline_messages -= 1;
        }
        self.drop_empty_front();
        Some(u)
    }

    /// Acknowledges every byte of each message `seqs` still queued, and
    /// removes them together: one pass over their slots, one trim of the
    /// front. Returns the bytes newly acknowledged and how many messages
    /// left the queue.
    fn acknowledge_whole(&mut self, seqs: std::ops::Range<u64>) -> (u64, u64) {
        let start = seqs
            .start
            .saturating_sub(self.base)
            .min(self.messages.len() as u64);
        let end = seqs
            .end
            .saturating_sub(self.base)
            .min(self.messages.len() as u64);
        let (mut bytes, mut messages) = (0, 0);
        for slot in self.messages.range_mut(start as usize..end as usize) {
            let Some(u) = slot.take() else {
                continue;
            };
            bytes += u.len() as u64 - u.acked_bytes();
            messages += 1;
            if matches!(u.delivery, Delivery::Deadline(_)) {
                self.deadline_messages -= 1;
            }
        }
        if messages > 0 {
            self.drop_empty_front();
        }
        (bytes, messages)
    }

    /// Drops the empty slots at the front, and the copied bytes of the
    /// messages that held them.
    fn drop_empty_front(&mut self) {
        while matches!(self.messages.front(), Some(None)) {
            self.messages.pop_front();
            self.base += 1;
        }
        match self.messages.front() {
            Some(Some(Unacked {
                payload: Payload::Copied { at, .. },
                ..
            })) => self.copied.release_before(*at),
            Some(_) => {}
            None => self.copied.clear(),
        }
    }
}

/// What acknowledging bytes of a message did.
#[derive(Debug)]
struct Acknowledged {
    /// Bytes acknowledged now that were not before.
    newly_acked: u64,
    /// The message is acknowledged whole and left the queue.
    complete: bool,
    /// The application's messages it holds (see [`Unacked::messages`]).
    messages: u64,
    /// The records of a packed batch that left the queue, for recycling.
    freed: Option<Bytes>,
}

/// Consecutive messages `seq..seq + count` of one channel with bytes never
/// sent, in the order they were queued: a batch queued on one channel is
/// one run, not an entry per message.
#[derive(Debug, Clone, Copy)]
struct FreshRun {
    channel: u64,
    /// The first message of the run.
    seq: u64,
    /// Messages in the run (at least 1).
    count: u64,
    /// Offset of the first byte of message `seq` not sent yet.
    next: usize,
    /// Length of message `seq`.
    len: usize,
}

/// Length of message `seq` of `channel`, 0 if it is not queued (a run whose
/// next message is gone moves past it when it gets to it).
fn message_len(channels: &ChannelMap<ChannelQueue>, channel: u64, seq: u64) -> usize {
    channels
        .get(&channel)
        .and_then(|ch| ch.get(seq))
        .map_or(0, Unacked::len)
}

/// Notes message `seq` of `channel`, `len` bytes, as queued and never sent:
/// it extends the last run if it follows it on the same channel.
fn note_fresh(fresh: &mut VecDeque<FreshRun>, channel: u64, seq: u64, len: usize) {
    match fresh.back_mut() {
        Some(run) if run.channel == channel && run.seq + run.count == seq => run.count += 1,
        _ => fresh.push_back(FreshRun {
            channel,
            seq,
            count: 1,
            next: 0,
            len,
        }),
    }
}

/// Messages waiting to be sent, in flight, or to be retransmitted.
#[derive(Debug, Default)]
pub struct SendQueue {
    /// Messages with bytes never sent, as runs per channel in queue order.
    fresh: VecDeque<FreshRun>,
    retransmit: VecDeque<Fragment>,
    /// Last-chance copies cut for the packet being built, to go in the next.
    deferred: VecDeque<Fragment>,
    /// The packet being built already carries a message fragment.
    packet_has_fragment: bool,
    /// Messages not yet acknowledged or abandoned, per channel.
    channels: ChannelMap<ChannelQueue>,
    /// How many messages `channels` holds.
    unacked: usize,
    /// SKIP frames to send: channel → first sequence still expected.
    skips: BTreeMap<u64, u64>,
    /// SKIP frames sent and not yet acknowledged.
    skips_in_flight: u64,
    /// Payload bytes queued and not yet acknowledged or abandoned.
    buffered: u64,
    /// Flow-control credit consumed by messages whose first byte was sent.
    credit_used: u64,
    messages_acked: u64,
    messages_abandoned: u64,
    messages_recovered_by_retransmission: u64,
    retransmitted: u64,
    retransmitted_bytes: u64,
    last_chance_copies: u64,
    /// Buffers of acknowledged packed batches, for the next batches.
    recycler: Recycler,
}

impl SendQueue {
    /// An empty buffer of at least `capacity` bytes for the application's
    /// next batch: one of an acknowledged batch if one is free.
    pub fn batch_buffer(&self, capacity: usize) -> Vec<u8> {
        self.recycler.buffer(capacity)
    }

    /// A new packet is being built: the last-chance copies cut for the
    /// previous one go first, so that a copy never shares a packet (and its
    /// fate) with its original.
    pub fn begin_packet(&mut self) {
        self.packet_has_fragment = false;
        while let Some(f) = self.deferred.pop_back() {
            self.retransmit.push_front(f);
        }
    }

    /// Redundant copies of last-chance deadline retransmissions sent so far.
    pub fn last_chance_copies(&self) -> u64 {
        self.last_chance_copies
    }

    /// Queues `data` on `channel`; returns its sequence number.
    pub fn push(
        &mut self,
        channel: u64,
        data: Bytes,
        timestamp_us: u64,
        delivery: Delivery,
    ) -> u64 {
        self.queue(channel, data, None, timestamp_us, delivery)
    }

    /// Queues the packed records of a batch of `messages` messages
    /// (`send_batch`) on `channel` as one message, uncopied, sent in
    /// MSG_PACKED frames; returns its sequence number.
    pub fn push_packed(
        &mut self,
        channel: u64,
        records: Bytes,
        messages: u64,
        timestamp_us: u64,
        delivery: Delivery,
    ) -> u64 {
        self.queue(channel, records, Some(messages), timestamp_us, delivery)
    }

    /// Queues one message on `channel`: a packed batch of `packed`
    /// messages, or a plain one.
    fn queue(
        &mut self,
        channel: u64,
        data: Bytes,
        packed: Option<u64>,
        timestamp_us: u64,
        delivery: Delivery,
    ) -> u64 {
        let ch = self.channels.entry(channel).or_default();
        let seq = ch.next_seq();
        let len = data.len();
        self.buffered += len as u64;
        match packed {
            Some(messages) => {
                let batch = PackedBatch {
                    records: data,
                    messages,
                };
                ch.push_payload(Payload::Packed(Box::new(batch)), timestamp_us, delivery);
            }
            None => ch.push(data, timestamp_us, delivery),
        }
        self.unacked += 1;
        note_fresh(&mut self.fresh, channel, seq, len);
        seq
    }

    /// Queues messages from the front of `messages` on `channel`, all with
    /// source time `timestamp_us`, until `messages` runs out or the next one
    /// is refused by `limits`: that one stays at the front, and the refusal
    /// is returned. The channel is looked up once for the whole batch.
    pub fn push_batch<M, I>(
        &mut self,
        channel: u64,
        timestamp_us: u64,
        delivery: Delivery,
        messages: &mut std::iter::Peekable<I>,
        limits: BatchLimits,
    ) -> BatchQueued
    where
        M: MessageBytes,
        I: Iterator<Item = M>,
    {
        let ch = self.channels.entry(channel).or_default();
        let mut queued = BatchQueued::default();
        while let Some(data) = messages.peek() {
            let len = data.as_ref().len();
            if len > limits.max_message {
                queued.refused = Some(BatchRefusal::TooLarge {
                    size: len,
                    max: limits.max_message,
                });
                break;
            }
            if self.buffered > 0 && self.buffered + len as u64 > limits.send_buffer {
                queued.refused = Some(BatchRefusal::Blocked);
                break;
            }
            let data = messages.next().expect("peeked");
            let seq = ch.next_seq();
            ch.push(data, timestamp_us, delivery);
            note_fresh(&mut self.fresh, channel, seq, len);
            self.buffered += len as u64;
            queued.messages += 1;
            queued.bytes += len as u64;
        }
        self.unacked += queued.messages;
        queued
    }

    fn get(&self, channel: u64, seq: u64) -> Option<&Unacked> {
        self.channels.get(&channel)?.get(seq)
    }

    /// The first `sent` messages of the front run were sent whole (or are
    /// gone): the run goes on from the next one.
    fn advance_fresh(&mut self, sent: u64) {
        let Some(run) = self.fresh.front_mut() else {
            return;
        };
        if sent >= run.count {
            self.fresh.pop_front();
            return;
        }
        run.seq += sent;
        run.count -= sent;
        run.next = 0;
        run.len = message_len(&self.channels, run.channel, run.seq);
    }

    /// The frame carrying `f`, made from its message's bytes; `None` once
    /// the message was acknowledged or abandoned (nothing left to send).
    pub fn frame(&self, f: &Fragment) -> Option<MsgFrame<'_>> {
        let ch = self.channels.get(&f.channel)?;
        let u = ch.get(f.seq)?;
        let start = usize::try_from(f.offset).ok()?;
        let data = ch.data(u).get(start..start.checked_add(f.len)?)?;
        Some(f.frame(data))
    }

    /// The latest time a queued or unacknowledged deadline message is due at
    /// the receiver, µs since the connection epoch (`None` without one).
    pub fn latest_deadline_us(&self) -> Option<u64> {
        self.channels
            .values()
            .filter(|ch| ch.deadline_messages > 0)
            .flat_map(|ch| ch.messages.iter().flatten())
            .filter_map(|u| match u.delivery {
                Delivery::Deadline(d) => Some(u.timestamp_us.saturating_add(d)),
                _ => None,
            })
            .max()
    }

    /// Payload bytes queued or in flight and not yet acknowledged.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// True when every queued message is acknowledged (or abandoned) and every
    /// SKIP was acknowledged too.
    pub fn is_empty(&self) -> bool {
        self.unacked == 0 && self.skips.is_empty() && self.skips_in_flight == 0
    }

    /// True when something is ready to go out (ignoring congestion control).
    pub fn has_sendable(&self, credit_limit: u64) -> bool {
        !self.retransmit.is_empty()
            || !self.deferred.is_empty()
            || !self.skips.is_empty()
            || self.fresh_allowed(credit_limit)
    }

    fn fresh_allowed(&self, credit_limit: u64) -> bool {
        self.fresh.front().is_some_and(|m| {
            m.next > 0 || self.credit_used + m.len as u64 + MESSAGE_CREDIT_OVERHEAD <= credit_limit
        })
    }

    /// The free message buffers this end keeps for reuse.
    pub(crate) fn recycler(&self) -> &Recycler {
        &self.recycler
    }

    /// Messages fully acknowledged so far.
    pub fn messages_acked(&self) -> u64 {
        self.messages_acked
    }

    /// Messages given up on (deadline passed, or unreliable and lost).
    pub fn messages_abandoned(&self) -> u64 {
        self.messages_abandoned
    }

    /// Messages whose last missing bytes were acknowledged in a
    /// retransmission (a lost message repaired by sending it again; the
    /// receiver may still have dropped a deadline message that came too late).
    pub fn messages_recovered_by_retransmission(&self) -> u64 {
        self.messages_recovered_by_retransmission
    }

    /// Fragments queued for retransmission so far.
    pub fn retransmitted(&self) -> u64 {
        self.retransmitted
    }

    /// Payload bytes queued for retransmission so far.
    pub fn retransmitted_bytes(&self) -> u64 {
        self.retransmitted_bytes
    }

    /// Gives up on every message of `channel` up to and including `seq`.
    pub fn abandon_through(&mut self, channel: u64, seq: u64) {
        if let Some(ch) = self.channels.get_mut(&channel) {
            let end = seq.saturating_add(1).min(ch.next_seq());
            for s in ch.base..end {
                if let Some(u) = ch.remove(s) {
                    self.buffered -= u.len() as u64 - u.acked_bytes();
                    self.unacked -= 1;
                    self.messages_abandoned += u.messages();
                    if let Some(records) = u.into_packed_records() {
                        self.recycler.reclaim(records);
                    }
                }
            }
        }
        // Runs of the channel lose the messages up to `seq`.
        let channels = &self.channels;
        self.fresh.retain_mut(|run| {
            if run.channel != channel || run.seq > seq {
                return true;
            }
            let end = run.seq + run.count;
            if end <= seq + 1 {
                return false;
            }
            *run = FreshRun {
                seq: seq + 1,
                count: end - (seq + 1),
                next: 0,
                len: message_len(channels, channel, seq + 1),
                ..*run
            };
            true
        });
        let slot = self.skips.entry(channel).or_insert(0);
        *slot = (*slot).max(seq + 1);
    }

    /// Takes a SKIP frame to send: (channel, first sequence still expected).
    /// Report its fate with `on_skip_acked` or `on_skip_lost`.
    pub fn take_skip(&mut self) -> Option<(u64, u64)> {
        let s = self.skips.pop_first()?;
        self.skips_in_flight += 1;
        Some(s)
    }

    /// A copy of a SKIP frame was sent on another path (broadcast): it is
    /// tracked like the original.
    pub fn on_skip_copy(&mut self) {
        self.skips_in_flight += 1;
    }

    /// A SKIP frame was acknowledged.
    pub fn on_skip_acked(&mut self) {
        self.skips_in_flight = self.skips_in_flight.saturating_sub(1);
    }

    /// A SKIP frame was lost (or not sent after all): send it again, unless a
    /// later one supersedes it.
    pub fn on_skip_lost(&mut self, channel: u64, up_to: u64) {
        self.on_skip_acked();
        let slot = self.skips.entry(channel).or_insert(0);
        *slot = (*slot).max(up_to);
    }

    /// Cuts the next fragment that fits in `space` bytes of frame.
    /// Retransmissions go first; new messages only start within `credit_limit`.
    /// Deadline messages that could no longer arrive in time (now + `slack_us`
    /// past their deadline) are abandoned instead.
    pub fn next_fragment(
        &mut self,
        space: usize,
        credit_limit: u64,
        now_us: u64,
        slack_us: u64,
    ) -> Option<Fragment> {
        while let Some(mut f) = self.retransmit.pop_front() {
            let Some(u) = self.get(f.channel, f.seq) else {
                continue;
            };
            if f.msg_len > 0 && u.is_acked(&f.range()) {
                continue;
            }
            if f.expired(now_us, slack_us) {
                self.abandon_through(f.channel, f.seq);
                continue;
            }
            let Some(fit) = f.fitting_len(space) else {
                self.retransmit.push_front(f);
                return None;
            };
            if f.len > fit && self.packet_has_fragment && kept_whole(f.delivery, f.len) {
                self.retransmit.push_front(f);
                return None;
            }
            if f.len > fit {
                let mut rest = f.clone();
                rest.offset += fit as u64;
                rest.len -= fit;
                f.len = fit;
                self.retransmit.push_front(rest);
            }
            if !f.copy && f.last_chance(now_us, slack_us) {
                let mut copy = f.clone();
                copy.copy = true;
                self.deferred.push_back(copy);
                self.last_chance_copies += 1;
            }
            self.packet_has_fragment = true;
            return Some(f);
        }
        loop {
            if !self.fresh_allowed(credit_limit) {
                return None;
            }
            let &FreshRun {
                channel, seq, next, ..
            } = self.fresh.front()?;
            let Some(u) = self.get(channel, seq) else {
                self.advance_fresh(1);
                continue;
            };
            let mut f = Fragment::rest_of(channel, seq, u, next);
            if f.expired(now_us, slack_us) {
                self.abandon_through(channel, seq);
                continue;
            }
            let take = f.fitting_len(space)?;
            if take < f.len && self.packet_has_fragment && kept_whole(f.delivery, f.len) {
                return None;
            }
            f.len = take;
            self.packet_has_fragment = true;
            if next == 0 {
                self.credit_used += f.msg_len + MESSAGE_CREDIT_OVERHEAD;
            }
            let next = next + take;
            if next as u64 == f.msg_len {
                self.advance_fresh(1);
            } else if let Some(front) = self.fresh.front_mut() {
                front.next = next;
            }
            return Some(f);
        }
    }

    /// Writes the next bundle into `out` if the front of the queue holds at
    /// least two whole reliable messages of one channel, never sent, with
    /// consecutive sequence numbers, that fit together in `space` bytes and
    /// within `credit_limit`; as many as fit go in. Retransmissions go
    /// first: nothing is bundled while one waits.
    pub fn next_bundle(
        &mut self,
        space: usize,
        credit_limit: u64,
        out: &mut Vec<u8>,
    ) -> Option<Bundle> {
        if !self.retransmit.is_empty() {
            return None;
        }
        let first = *self.fresh.front()?;
        if first.next != 0 {
            // Partly sent: it is finished as a fragment first.
            return None;
        }
        let ch = self.channels.get(&first.channel)?;
        let timestamp_us = ch.get(first.seq)?.timestamp_us;
        let mut writer = BundleWriter::begin(out, first.channel, first.seq, timestamp_us, space)?;
        let mut credit_used = self.credit_used;
        let mut previous_us = timestamp_us;
        for seq in first.seq..first.seq + first.count {
            let Some(u) = ch.get(seq) else {
                break;
            };
            if u.delivery != Delivery::Reliable || u.is_packed() {
                break;
            }
            let Some(delta_us) = u.timestamp_us.checked_sub(previous_us) else {
                break;
            };
            let credit = credit_used + u.len() as u64 + MESSAGE_CREDIT_OVERHEAD;
            if credit > credit_limit || !writer.push(out, delta_us, ch.data(u)) {
                break;
            }
            credit_used = credit;
            previous_us = u.timestamp_us;
        }
        let count = writer.count();
        if count < 2 {
            writer.abandon(out);
            return None;
        }
        writer.finish(out);
        self.advance_fresh(count);
        self.credit_used = credit_used;
        self.packet_has_fragment = true;
        Some(Bundle {
            channel: first.channel,
            first_seq: first.seq,
            count,
        })
    }

    /// Writes `b` again into `out` (a broadcast copy), in at most `space`
    /// bytes, and returns true, if all its messages are still waiting for
    /// acknowledgement; otherwise writes nothing (the rest travel in the
    /// original or in retransmissions of their own).
    pub fn write_bundle_copy(&self, b: &Bundle, space: usize, out: &mut Vec<u8>) -> bool {
        let Some(ch) = self.channels.get(&b.channel) else {
            return false;
        };
        let Some(first) = ch.get(b.first_seq) else {
            return false;
        };
        let Some(mut writer) =
            BundleWriter::begin(out, b.channel, b.first_seq, first.timestamp_us, space)
        else {
            return false;
        };
        let mut previous_us = first.timestamp_us;
        for seq in b.seqs() {
            let written = ch.get(seq).is_some_and(|u| {
                let delta_us = u.timestamp_us.saturating_sub(previous_us);
                previous_us = previous_us.max(u.timestamp_us);
                writer.push(out, delta_us, ch.data(u))
            });
            if !written {
                writer.abandon(out);
                return false;
            }
        }
        writer.finish(out);
        true
    }

    /// The packet carrying `f` was acknowledged.
    pub fn on_acked(&mut self, f: &Fragment) {
        let Some(ch) = self.channels.get_mut(&f.channel) else {
            return;
        };
        if let Some(acked) = ch.acknowledge(f.seq, f.range()) {
            let complete = u64::from(acked.complete);
            let messages = complete * acked.messages;
            let recovered = messages * u64::from(acked.newly_acked > 0 && f.retransmission);
            self.count_acknowledged(acked.newly_acked, complete, messages, recovered);
            if let Some(records) = acked.freed {
                self.recycler.reclaim(records);
            }
        }
    }

    /// The packet carrying bundle `b` was acknowledged: each of its messages
    /// is, whole, and they leave the queue together.
    pub fn on_bundle_acked(&mut self, b: &Bundle) {
        let Some(ch) = self.channels.get_mut(&b.channel) else {
            return;
        };
        // (Packed batches are never bundled: a message each.)
        let (bytes, messages) = ch.acknowledge_whole(b.seqs());
        self.count_acknowledged(bytes, messages, messages, 0);
    }

    /// Counts `bytes` newly acknowledged and `entries` queue entries
    /// acknowledged whole, holding `messages` of the application's,
    /// `recovered` of them by a retransmission.
    fn count_acknowledged(&mut self, bytes: u64, entries: u64, messages: u64, recovered: u64) {
        self.buffered -= bytes;
        self.unacked -= entries as usize;
        self.messages_acked += messages;
        self.messages_recovered_by_retransmission += recovered;
    }

    /// The packet carrying bundle `b` was declared lost: each message still
    /// waiting for acknowledgement is queued again as a fragment of its own.
    pub fn on_bundle_lost(&mut self, b: &Bundle) {
        for seq in b.seqs() {
            if let Some(f) = self
                .get(b.channel, seq)
                .map(|u| Fragment::rest_of(b.channel, seq, u, 0))
            {
                self.on_lost(f);
            }
        }
    }

    /// The packet carrying `f` was declared lost: queue its unacknowledged
    /// bytes again, or give up on an unreliable message.
    pub fn on_lost(&mut self, mut f: Fragment) {
        // What is re-sent is a retransmission again, whatever `f` was.
        f.copy = false;
        f.retransmission = true;
        let Some(u) = self.get(f.channel, f.seq) else {
            return;
        };
        if f.delivery == Delivery::Unreliable {
            self.abandon_through(f.channel, f.seq);
            return;
        }
        if f.msg_len == 0 {
            self.retransmitted += 1;
            self.queue_retransmission(f);
            return;
        }
        let gaps = u.unacked_in(f.range());
        for gap in gaps {
            self.retransmitted += 1;
            self.retransmitted_bytes += gap.end - gap.start;
            let mut r = f.clone();
            r.offset = gap.start;
            r.len = (gap.end - gap.start) as usize;
            self.queue_retransmission(r);
        }
    }

    /// Queues a retransmission by urgency: deadline fragments first, earliest
    /// deadline first (ties in loss order), then everything else in loss order.
    fn queue_retransmission(&mut self, f: Fragment) {
        let at = match f.due_us() {
            Some(due) => self
                .retransmit
                .iter()
                .position(|q| q.due_us().is_none_or(|q_due| q_due > due))
                .unwrap_or(self.retransmit.len()),
            None => self.retransmit.len(),
        };
        self.retransmit.insert(at, f);
    }

    /// Drops everything (connection aborted).
    pub fn clear(&mut self) {
        self.fresh.clear();
        self.retransmit.clear();
        self.deferred.clear();
        for ch in self.channels.values_mut() {
            ch.clear();
        }
        self.unacked = 0;
        self.skips.clear();
        self.skips_in_flight = 0;
        self.buffered = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::conn::sent::SentFrame;
    use crate::wire::{Frame, FrameIter};

    fn push(q: &mut SendQueue, ch: u64, data: Bytes) -> u64 {
        q.push(ch, data, 0, Delivery::Reliable)
    }

    fn next(q: &mut SendQueue, space: usize) -> Option<Fragment> {
        q.next_fragment(space, u64::MAX, 0, 0)
    }

    #[test]
    fn fragments_acks_and_retransmits() {
        let mut q = SendQueue::default();
        assert_eq!(push(&mut q, 0, Bytes::from(vec![7u8; 10])), 0);
        assert_eq!(push(&mut q, 0, Bytes::from_static(b"xy")), 1);
        assert_eq!(push(&mut q, 3, Bytes::new()), 0);
        assert_eq!(q.buffered(), 12);
        // Frame overhead here is 7 bytes.
        q.begin_packet();
        let a = next(&mut q, 11).unwrap();
        q.begin_packet();
        let b = next(&mut q, 11).unwrap();
        q.begin_packet();
        let c = next(&mut q, 11).unwrap();
        assert_eq!((a.offset, a.len), (0, 4));
        assert_eq!((b.offset, b.len), (4, 4));
        assert_eq!((c.offset, c.len, c.seq), (8, 2, 0));
        q.on_acked(&a);
        q.on_lost(b.clone());
        // Retransmission comes first and is split to fit.
        q.begin_packet();
        let r1 = next(&mut q, 9).unwrap();
        assert_eq!((r1.offset, r1.len), (4, 2));
        q.on_acked(&r1);
        q.on_acked(&b); // late ack of the "lost" packet: counted once
        q.begin_packet();
        let r2 = next(&mut q, 12).unwrap();
        assert_eq!(r2.seq, 1, "rest of the retransmission was acked, skipped");
        q.on_acked(&c);
        assert_eq!(q.messages_acked(), 1);
        q.on_acked(&r2);
        q.begin_packet();
        let e = next(&mut q, 12).unwrap();
        assert_eq!((e.channel, e.msg_len), (3, 0));
        q.on_acked(&e);
        assert!(q.is_empty());
        assert_eq!(q.buffered(), 0);
    }

    /// The bytes the frame of fragment `f` takes when encoded.
    fn encoded_len(q: &SendQueue, f: &Fragment) -> usize {
        let mut out = Vec::new();
        Frame::Msg(q.frame(f).expect("queued")).encode(&mut out);
        out.len()
    }

    #[test]
    fn every_fragment_of_a_large_message_fills_its_space_to_the_byte() {
        // Packets of equal size are what GSO sends in one call: a fragment
        // whose length field were sized for the rest of the message (four
        // bytes above 16 KiB) would leave its packet two bytes short.
        let mut q = SendQueue::default();
        push(&mut q, 0, Bytes::from(vec![1u8; 64 << 10]));
        push(&mut q, 0, Bytes::from(vec![2u8; 64 << 10]));
        let space = 1400;
        let mut fragments = Vec::new();
        let mut packets = Vec::new();
        loop {
            q.begin_packet();
            let mut used = 0;
            while let Some(f) = next(&mut q, space - used) {
                used += encoded_len(&q, &f);
                fragments.push(f);
            }
            if used == 0 {
                break;
            }
            packets.push(used);
        }
        let (last, full) = packets.split_last().unwrap();
        assert!(full.iter().all(|&used| used == space), "{packets:?}");
        assert!(*last < space);
        let carried: usize = fragments.iter().map(|f| f.len).sum();
        assert_eq!(carried, 2 * (64 << 10));
        // A retransmission is cut to fill the space as exactly.
        q.on_lost(fragments[0].clone());
        q.begin_packet();
        let r = next(&mut q, 700).unwrap();
        assert_eq!((r.offset, encoded_len(&q, &r)), (0, 700));
    }

    #[test]
    fn an_empty_message_fits_where_its_header_does() {
        let mut q = SendQueue::default();
        push(&mut q, 0, Bytes::new());
        q.begin_packet();
        let head = MsgFrame {
            channel: 0,
            seq: 0,
            msg_len: 0,
            offset: 0,
            timestamp_us: 0,
            delivery: Delivery::Reliable,
            packed: false,
            data: &[],
        }
        .overhead();
        assert!(next(&mut q, head - 1).is_none());
        let f = next(&mut q, head).unwrap();
        assert_eq!((f.len, encoded_len(&q, &f)), (0, head));
    }

    /// The messages of every MSG_BUNDLE frame in `payload`: (channel, seq, bytes).
    fn bundled(payload: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
        FrameIter::new(payload)
            .flat_map(|f| match f.expect("a well-formed frame") {
                Frame::Bundle(b) => b.messages(),
                other => panic!("a bundle expected, not {other:?}"),
            })
            .map(|m| (m.channel, m.seq, m.data.to_vec()))
            .collect()
    }

    #[test]
    fn queued_reliable_messages_go_as_one_bundle_and_are_acknowledged_together() {
        let mut q = SendQueue::default();
        for i in 0..50u8 {
            q.push(
                4,
                Bytes::from(vec![i; 64]),
                1_000 + u64::from(i),
                Delivery::Reliable,
            );
        }
        q.begin_packet();
        let mut buf = Vec::new();
        let b = q.next_bundle(1_200, u64::MAX, &mut buf).unwrap();
        assert!(buf.len() <= 1_200);
        // 64 bytes and 3 bytes of record each, plus a header of 9 bytes
        // (its count and length 2 bytes each, as a 1,200-byte frame may need).
        assert_eq!((b.channel, b.first_seq, b.count), (4, 0, 17));
        assert_eq!(buf.len(), 9 + 17 * 67);
        let got = bundled(&buf);
        assert_eq!(got.len(), 17);
        for (i, (channel, seq, data)) in got.iter().enumerate() {
            assert_eq!((*channel, *seq), (4, i as u64));
            assert_eq!(data, &vec![i as u8; 64]);
        }
        // The next bundle starts where this one ended.
        let mut second = Vec::new();
        let c = q.next_bundle(1_200, u64::MAX, &mut second).unwrap();
        assert_eq!((c.first_seq, c.count), (17, 17));
        q.on_bundle_acked(&b);
        assert_eq!(q.messages_acked(), 17);
        assert_eq!(q.buffered(), 33 * 64);
        // Acknowledged twice (a broadcast copy): counted once.
        q.on_bundle_acked(&b);
        assert_eq!(q.messages_acked(), 17);
        // A lost bundle: each message is retransmitted on its own, and no
        // new bundle goes before the retransmissions.
        q.on_bundle_lost(&c);
        assert!(q.next_bundle(1_200, u64::MAX, &mut Vec::new()).is_none());
        let retransmitted: Vec<u64> = (0..17)
            .map(|_| next(&mut q, 1_200).unwrap())
            .inspect(|f| assert!(f.retransmission && f.len == 64))
            .map(|f| f.seq)
            .collect();
        assert_eq!(retransmitted, (17..34).collect::<Vec<_>>());
        assert!(next(&mut q, 1_200).is_some_and(|f| f.seq == 34 && !f.retransmission));
    }

    #[test]
    fn only_whole_reliable_fresh_messages_of_one_channel_are_bundled() {
        let mut q = SendQueue::default();
        let mut buf = Vec::new();
        // One message alone is a plain MSG frame.
        q.push(0, Bytes::from_static(b"alone"), 0, Delivery::Reliable);
        assert!(q.next_bundle(1_000, u64::MAX, &mut buf).is_none());
        assert!(buf.is_empty());
        next(&mut q, 1_000).unwrap();
        // Deadline and unreliable messages are never bundled.
        for delivery in [Delivery::Deadline(50_000), Delivery::Unreliable] {
            q.push(1, Bytes::from_static(b"a"), 0, delivery);
            q.push(1, Bytes::from_static(b"b"), 0, delivery);
            assert!(q.next_bundle(1_000, u64::MAX, &mut buf).is_none());
            while next(&mut q, 1_000).is_some() {}
        }
        // A bundle ends where the channel changes.
        q.push(2, Bytes::from_static(b"x"), 0, Delivery::Reliable);
        q.push(2, Bytes::from_static(b"y"), 0, Delivery::Reliable);
        q.push(3, Bytes::from_static(b"z"), 0, Delivery::Reliable);
        let b = q.next_bundle(1_000, u64::MAX, &mut buf).unwrap();
        assert_eq!((b.channel, b.count), (2, 2));
        assert!(q.next_bundle(1_000, u64::MAX, &mut buf).is_none());
        // A message partly sent is finished as a fragment first.
        buf.clear();
        next(&mut q, 1_000).unwrap();
        q.push(5, Bytes::from(vec![9u8; 100]), 0, Delivery::Reliable);
        q.push(5, Bytes::from(vec![8u8; 10]), 0, Delivery::Reliable);
        q.push(5, Bytes::from(vec![7u8; 10]), 0, Delivery::Reliable);
        q.begin_packet();
        // Seven bytes of header, and a one-byte length for the 42 that fit.
        assert_eq!(next(&mut q, 50).unwrap().len, 50 - 8);
        assert!(q.next_bundle(1_000, u64::MAX, &mut buf).is_none());
        assert_eq!(next(&mut q, 1_000).unwrap().seq, 0);
        let b = q.next_bundle(1_000, u64::MAX, &mut buf).unwrap();
        assert_eq!((b.first_seq, b.count), (1, 2));
    }

    #[test]
    fn a_bundle_takes_only_what_fits_in_the_packet_and_the_credit() {
        let mut q = SendQueue::default();
        for _ in 0..10 {
            push(&mut q, 0, Bytes::from(vec![1u8; 10]));
        }
        let mut buf = Vec::new();
        // Credit for three messages.
        let credit = 3 * (10 + MESSAGE_CREDIT_OVERHEAD);
        let b = q.next_bundle(1_000, credit, &mut buf).unwrap();
        assert_eq!(b.count, 3);
        assert!(!q.has_sendable(credit));
        // Room for four records (12 bytes each) and the header (8 bytes:
        // its count and length take the 2 bytes a frame of 64 to 16,383
        // bytes may need).
        buf.clear();
        let b = q.next_bundle(8 + 4 * 12 + 11, u64::MAX, &mut buf).unwrap();
        assert_eq!((b.first_seq, b.count), (3, 4));
        assert_eq!(buf.len(), 8 + 4 * 12);
        // Too little room for two (below 64 bytes the header takes 6):
        // nothing is written.
        buf.clear();
        assert!(q.next_bundle(6 + 12 + 11, u64::MAX, &mut buf).is_none());
        assert!(buf.is_empty());
    }

    #[test]
    fn abandoning_the_front_of_a_run_leaves_its_rest_in_queue_order() {
        let mut q = SendQueue::default();
        let mut push_on = |ch: u64, n: u8| {
            let data = Bytes::from(vec![n; 10]);
            q.push(ch, data, 0, Delivery::Deadline(50_000))
        };
        // Channel 1: 0..5 in one run; then channel 2; then channel 1 again.
        for n in 0..5 {
            push_on(1, n);
        }
        push_on(2, 20);
        push_on(1, 5);
        q.abandon_through(1, 2);
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| next(&mut q, 1_000))
            .map(|f| (f.channel, f.seq))
            .collect();
        assert_eq!(order, [(1, 3), (1, 4), (2, 0), (1, 5)]);
        // Abandoning a whole run and part of the next one.
        for n in 6..9 {
            q.push(1, Bytes::from(vec![n; 10]), 0, Delivery::Deadline(50_000));
        }
        q.push(3, Bytes::from_static(b"x"), 0, Delivery::Reliable);
        q.abandon_through(1, 7);
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| next(&mut q, 1_000))
            .map(|f| (f.channel, f.seq))
            .collect();
        assert_eq!(order, [(1, 8), (3, 0)]);
    }

    #[test]
    fn a_queue_entry_takes_at_most_48_bytes() {
        // Written once per message into a ring of up to hundreds of
        // thousands of entries: see `Unacked`.
        assert!(std::mem::size_of::<Option<Unacked>>() <= 48);
    }

    #[test]
    fn a_bundle_copy_is_written_only_while_all_its_messages_wait() {
        let mut q = SendQueue::default();
        for data in [&b"one"[..], b"two", b"three"] {
            q.push(0, Bytes::from_static(data), 7, Delivery::Reliable);
        }
        let mut original = Vec::new();
        let b = q.next_bundle(1_000, u64::MAX, &mut original).unwrap();
        let mut copy = Vec::new();
        assert!(q.write_bundle_copy(&b, 1_000, &mut copy));
        assert_eq!(copy, original);
        // One of its messages acknowledged by other means: no copy.
        let lost = Bundle { count: 1, ..b };
        q.on_bundle_lost(&lost);
        let again = next(&mut q, 1_000).unwrap();
        q.on_acked(&again);
        copy.clear();
        assert!(!q.write_bundle_copy(&b, 1_000, &mut copy));
        assert!(copy.is_empty());
        q.on_bundle_acked(&b);
        assert_eq!(q.messages_acked(), 3);
        assert!(q.is_empty());
    }

    #[test]
    fn deadline_retransmissions_go_earliest_deadline_first() {
        let mut q = SendQueue::default();
        q.push(0, Bytes::from_static(b"r"), 0, Delivery::Reliable);
        q.push(1, Bytes::from_static(b"a"), 50, Delivery::Deadline(1000));
        q.push(2, Bytes::from_static(b"b"), 0, Delivery::Deadline(500));
        q.push(1, Bytes::from_static(b"c"), 60, Delivery::Deadline(1000));
        let sent: Vec<Fragment> = (0..4).map(|_| next(&mut q, 100).unwrap()).collect();
        // Lost in sending order: the reliable one first, yet it goes last.
        for f in sent {
            q.on_lost(f);
        }
        let order: Vec<(u64, u64)> = (0..4)
            .map(|_| next(&mut q, 100).map(|f| (f.channel, f.seq)).unwrap())
            .collect();
        assert_eq!(order, vec![(2, 0), (1, 0), (1, 1), (0, 0)]);
    }

    #[test]
    fn flow_control_holds_new_messages() {
        let mut q = SendQueue::default();
        push(&mut q, 0, Bytes::from(vec![0u8; 100]));
        assert!(q.next_fragment(1000, 50, 0, 0).is_none());
        assert!(!q.has_sendable(50));
        assert!(q
            .next_fragment(1000, 100 + MESSAGE_CREDIT_OVERHEAD, 0, 0)
            .is_some());
    }

    #[test]
    fn expired_deadline_messages_are_abandoned_with_a_skip() {
        let mut q = SendQueue::default();
        for ts in [0, 10, 20, 1000] {
            q.push(5, Bytes::from_static(b"abc"), ts, Delivery::Deadline(100));
        }
        let f0 = q.next_fragment(100, u64::MAX, 0, 0).unwrap();
        q.on_lost(f0);
        // At t=95 with 30 µs slack, seq 0 (deadline 100) can no longer make it,
        // nor can seq 1 (110) or 2 (120) which were never sent.
        let f = q.next_fragment(100, u64::MAX, 95, 30).unwrap();
        assert_eq!(f.seq, 3);
        assert_eq!(q.take_skip(), Some((5, 3)));
        assert_eq!(q.messages_abandoned(), 3);
        assert_eq!(q.buffered(), 3);
    }

    #[test]
    fn lost_unreliable_messages_are_not_retransmitted() {
        let mut q = SendQueue::default();
        q.push(1, Bytes::from_static(b"once"), 0, Delivery::Unreliable);
        let f = next(&mut q, 100).unwrap();
        q.on_lost(f);
        assert!(next(&mut q, 100).is_none());
        assert_eq!(q.take_skip(), Some((1, 1)));
        assert!(!q.is_empty(), "the SKIP is not acknowledged yet");
        q.on_skip_acked();
        assert!(q.is_empty());
    }

    #[test]
    fn a_message_repaired_by_retransmission_is_counted_once() {
        let mut q = SendQueue::default();
        q.push(0, Bytes::from_static(b"first"), 0, Delivery::Reliable);
        q.push(0, Bytes::from_static(b"second"), 0, Delivery::Reliable);
        let a = q.next_fragment(100, u64::MAX, 0, 1_000).unwrap();
        let b = q.next_fragment(100, u64::MAX, 0, 1_000).unwrap();
        q.on_acked(&a);
        q.on_lost(b);
        let again = q.next_fragment(100, u64::MAX, 0, 1_000).unwrap();
        assert!(again.retransmission);
        q.on_acked(&again);
        q.on_acked(&again);
        assert_eq!(q.messages_acked(), 2);
        assert_eq!(q.messages_recovered_by_retransmission(), 1);
    }

    #[test]
    fn deadline_and_small_messages_are_not_split_across_packets_large_reliable_ones_are() {
        let mut q = SendQueue::default();
        let msg = Bytes::from(vec![7u8; 60]);
        for _ in 0..2 {
            q.push(0, msg.clone(), 0, Delivery::Deadline(50_000));
        }
        q.push(1, msg.clone(), 0, Delivery::Reliable);
        let large = Bytes::from(vec![3u8; SMALL_MESSAGE + 1]);
        q.push(1, large.clone(), 0, Delivery::Reliable);
        // A 100-byte packet holds one deadline message whole; the second
        // starts the next packet instead of being cut in two.
        q.begin_packet();
        let a = q.next_fragment(100, u64::MAX, 0, 1_000).unwrap();
        assert_eq!((a.seq, a.len), (0, 60));
        assert!(q.next_fragment(100 - 75, u64::MAX, 0, 1_000).is_none());
        q.begin_packet();
        let b = q.next_fragment(100, u64::MAX, 0, 1_000).unwrap();
        assert_eq!((b.seq, b.len), (1, 60));
        // Nor is a small reliable message; a larger one fills what is left.
        assert!(q.next_fragment(100 - 75, u64::MAX, 0, 1_000).is_none());
        q.begin_packet();
        let c = q.next_fragment(100, u64::MAX, 0, 1_000).unwrap();
        assert_eq!((c.channel, c.seq, c.len), (1, 0, 60));
        let d = q.next_fragment(100 - 70, u64::MAX, 0, 1_000).unwrap();
        assert_eq!((d.channel, d.seq), (1, 1));
        assert!(d.len < 30);
        // A deadline message larger than a packet is still cut, from the
        // start of a packet.
        q.push(
            2,
            Bytes::from(vec![1u8; 300]),
            0,
            Delivery::Deadline(50_000),
        );
        q.begin_packet();
        let mut pieces = 0;
        while let Some(f) = q.next_fragment(100, u64::MAX, 0, 1_000) {
            if f.channel == 2 {
                pieces += 1;
            }
            q.begin_packet();
        }
        assert_eq!(pieces, 4);
    }

    #[test]
    fn a_last_chance_deadline_retransmission_goes_twice_in_separate_packets() {
        let mut q = SendQueue::default();
        // Deadline 60 ms; the receiver gives up on a gap at 58 ms. RTT 20 ms
        // (slack 10 ms): another attempt after one at t means t + 40 ms.
        q.push(
            0,
            Bytes::from_static(b"early"),
            0,
            Delivery::Deadline(60_000),
        );
        q.push(
            0,
            Bytes::from_static(b"late"),
            0,
            Delivery::Deadline(60_000),
        );
        q.push(1, Bytes::from_static(b"reliable"), 0, Delivery::Reliable);
        let sent: Vec<Fragment> = (0..3)
            .map(|_| q.next_fragment(100, u64::MAX, 0, 10_000).unwrap())
            .collect();
        for f in sent {
            q.on_lost(f);
        }
        // At 5 ms a retransmission still leaves time for another: no copy.
        q.begin_packet();
        let first = q.next_fragment(100, u64::MAX, 5_000, 10_000).unwrap();
        assert_eq!((first.seq, first.copy), (0, false));
        assert_eq!(q.last_chance_copies(), 0);
        // At 23 ms it is the last chance: sent, and copied...
        let last = q.next_fragment(100, u64::MAX, 23_000, 10_000).unwrap();
        assert_eq!((last.channel, last.seq, last.copy), (0, 1, false));
        assert_eq!(q.last_chance_copies(), 1);
        // ...but not into the same packet (a reliable message never is).
        let other = q.next_fragment(100, u64::MAX, 23_000, 10_000).unwrap();
        assert_eq!((other.channel, other.copy), (1, false));
        assert!(q.next_fragment(100, u64::MAX, 23_000, 10_000).is_none());
        assert!(
            q.has_sendable(u64::MAX),
            "the copy waits for the next packet"
        );
        // The next packet carries the copy, which is not copied again.
        q.begin_packet();
        let copy = q.next_fragment(100, u64::MAX, 23_100, 10_000).unwrap();
        assert_eq!(
            (copy.seq, copy.copy, q.frame(&copy).unwrap().data),
            (1, true, &b"late"[..])
        );
        assert!(q.next_fragment(100, u64::MAX, 23_100, 10_000).is_none());
        assert_eq!(q.last_chance_copies(), 1);
        // A lost copy is re-sent as a retransmission again.
        q.on_lost(copy);
        q.begin_packet();
        let again = q.next_fragment(100, u64::MAX, 30_000, 10_000).unwrap();
        assert_eq!((again.seq, again.copy), (1, false));
    }

    #[test]
    fn latest_deadline_counts_only_unacknowledged_deadline_messages() {
        let mut q = SendQueue::default();
        q.push(0, Bytes::from_static(b"r"), 900, Delivery::Reliable);
        assert_eq!(q.latest_deadline_us(), None, "no deadline message");
        q.push(1, Bytes::from_static(b"a"), 100, Delivery::Deadline(1_000));
        q.push(2, Bytes::from_static(b"b"), 50, Delivery::Deadline(2_000));
        q.push(1, Bytes::from_static(b"c"), 200, Delivery::Deadline(1_000));
        assert_eq!(q.latest_deadline_us(), Some(2_050));
        let sent: Vec<Fragment> = (0..4).map(|_| next(&mut q, 100).unwrap()).collect();
        // Channel 2's message acknowledged: channel 1's last one is the latest.
        q.on_acked(&sent[2]);
        assert_eq!(q.latest_deadline_us(), Some(1_200));
        // Abandoned ones count no more either.
        q.abandon_through(1, 1);
        assert_eq!(q.latest_deadline_us(), None);
        q.push(1, Bytes::from_static(b"d"), 300, Delivery::Deadline(1_000));
        assert_eq!(q.latest_deadline_us(), Some(1_300));
        q.clear();
        assert_eq!(q.latest_deadline_us(), None);
    }

    fn push_reliable(ch: &mut ChannelQueue, data: &'static [u8]) {
        ch.push(Bytes::from_static(data), 0, Delivery::Reliable);
    }

    fn data_of(ch: &ChannelQueue, seq: u64) -> &[u8] {
        ch.data(ch.get(seq).unwrap())
    }

    #[test]
    fn channel_queue_indexes_by_sequence_and_drops_the_acknowledged_front() {
        let mut ch = ChannelQueue::default();
        for data in [&b"a"[..], b"b", b"c"] {
            push_reliable(&mut ch, data);
        }
        assert_eq!(ch.next_seq(), 3);
        assert_eq!(data_of(&ch, 1), b"b");
        assert!(ch.get(3).is_none());
        // Out of order: the middle one leaves a hole, the front stays.
        assert!(ch.remove(1).is_some());
        assert!(ch.remove(1).is_none(), "removed once");
        assert_eq!((ch.base, ch.messages.len()), (0, 3));
        // The front goes, and the hole behind it with it.
        assert!(ch.remove(0).is_some());
        assert_eq!((ch.base, ch.messages.len()), (2, 1));
        assert!(ch.get(0).is_none() && ch.get(1).is_none());
        assert_eq!(data_of(&ch, 2), b"c");
        assert!(ch.remove(2).is_some());
        assert_eq!((ch.base, ch.next_seq()), (3, 3));
        push_reliable(&mut ch, b"d");
        assert_eq!(data_of(&ch, 3), b"d");
    }

    #[test]
    fn small_messages_are_copied_and_their_chunks_given_back_as_the_front_leaves() {
        let mut ch = ChannelQueue::default();
        let large = Bytes::from(vec![3u8; SMALL_MESSAGE + 1]);
        // 10-byte messages: 6,553 fill a chunk (6 bytes of it left unused).
        let per_chunk = (COPIED_CHUNK / 10) as u64;
        let message = |seq: u64| vec![(seq % 251) as u8; 10];
        for seq in 0..per_chunk + 10 {
            ch.push(Bytes::from(message(seq)), 0, Delivery::Reliable);
        }
        ch.push(large.clone(), 0, Delivery::Reliable);
        ch.push(Bytes::from_static(b"after"), 0, Delivery::Reliable);
        let last = per_chunk + 11;
        assert_eq!(ch.copied.held_chunks(), 2);
        // The large message is not copied: its bytes are the application's.
        assert_eq!(ch.data(ch.get(last - 1).unwrap()).as_ptr(), large.as_ptr());
        // Every small one reads back, on both sides of the chunk boundary.
        for seq in (0..per_chunk + 10).chain([0, per_chunk - 1, per_chunk]) {
            assert_eq!(data_of(&ch, seq), message(seq), "message {seq}");
        }
        // Acknowledged out of order: nothing is given back while the front stays.
        assert_eq!(
            ch.acknowledge_whole(5..per_chunk),
            ((per_chunk - 5) * 10, per_chunk - 5)
        );
        assert_eq!(ch.copied.held_chunks(), 2);
        // The front leaves the first chunk: it is given back.
        assert_eq!(ch.acknowledge_whole(0..5), (50, 5));
        assert_eq!(ch.base, per_chunk);
        assert_eq!(ch.copied.held_chunks(), 1);
        for seq in per_chunk..per_chunk + 10 {
            assert_eq!(data_of(&ch, seq), message(seq));
        }
        assert_eq!(data_of(&ch, last), b"after");
        // Acknowledged again (a broadcast copy): nothing more is counted.
        assert_eq!(ch.acknowledge_whole(0..per_chunk), (0, 0));
        // A partly acknowledged message counts only its remaining bytes.
        ch.acknowledge(per_chunk, 0..4);
        assert_eq!(
            ch.acknowledge_whole(per_chunk..last + 1),
            (6 + 9 * 10 + 257 + 5, 12)
        );
        assert!(ch.messages.is_empty());
        assert_eq!(ch.copied.held_chunks(), 0);
        // The stream goes on, in the chunk kept aside.
        push_reliable(&mut ch, b"next");
        assert_eq!(data_of(&ch, last + 1), b"next");
        assert_eq!(ch.copied.held_chunks(), 1);
    }

    /// What the queue is asked to do in the property test below.
    #[derive(Debug, Clone)]
    enum Op {
        Push { channel: u64, len: usize },
        Send { space: usize },
        Ack(usize),
        Lose(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // Mostly small messages (copied), some larger than SMALL_MESSAGE.
            (0u64..3, prop_oneof![4 => 0usize..40, 1 => 250usize..270])
                .prop_map(|(channel, len)| Op::Push { channel, len }),
            (8usize..80).prop_map(|space| Op::Send { space }),
            any::<usize>().prop_map(Op::Ack),
            any::<usize>().prop_map(Op::Lose),
        ]
    }

    /// Message `seq` of `channel`, `len` bytes that differ from any other
    /// message's at the same offset, so a byte from the wrong message or
    /// offset shows.
    fn content(channel: u64, seq: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (channel * 31 + seq * 7 + i as u64 * 13) as u8)
            .collect()
    }

    /// One packet of `space` bytes as the transmit path builds it: bundles
    /// where the queue offers them, every other fragment cut encoded as a
    /// MSG frame from the queue's bytes.
    fn packet(q: &mut SendQueue, space: usize) -> (Vec<u8>, Vec<SentFrame>) {
        q.begin_packet();
        let (mut buf, mut carried) = (Vec::new(), Vec::new());
        loop {
            if let Some(b) = q.next_bundle(space - buf.len(), u64::MAX, &mut buf) {
                carried.push(SentFrame::Bundle(b));
                continue;
            }
            let Some(f) = next(q, space - buf.len()) else {
                break;
            };
            let frame = q.frame(&f).expect("a fragment cut now has its bytes");
            Frame::Msg(frame).encode(&mut buf);
            carried.push(SentFrame::Msg(f));
        }
        assert!(
            buf.len() <= space,
            "{} bytes in a {space}-byte packet",
            buf.len()
        );
        (buf, carried)
    }

    /// What the connection does when the packet that carried `f` is acknowledged.
    fn acked(q: &mut SendQueue, f: &SentFrame) {
        match f {
            SentFrame::Msg(frag) => q.on_acked(frag),
            SentFrame::Bundle(b) => q.on_bundle_acked(b),
            other => panic!("not a message: {other:?}"),
        }
    }

    /// What the connection does when the packet that carried `f` is lost.
    fn lost(q: &mut SendQueue, f: SentFrame) {
        match f {
            SentFrame::Msg(frag) => q.on_lost(frag),
            SentFrame::Bundle(b) => q.on_bundle_lost(&b),
            other => panic!("not a message: {other:?}"),
        }
    }

    proptest! {
        /// Messages of random sizes packed many to a packet (several whole
        /// ones of a channel bundled where they wait together), the packets
        /// lost or delivered in any order and what was lost sent again: the
        /// receiver, reading only the packets' bytes, rebuilds every message
        /// exactly (its length and every byte), and no packet overflows.
        #[test]
        fn messages_survive_packing_loss_and_retransmission_byte_for_byte(
            ops in proptest::collection::vec(op(), 1..200)
        ) {
            let mut q = SendQueue::default();
            let mut sent: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
            // What the receiver rebuilt: (channel, seq) -> bytes, or None where missing.
            let mut rebuilt: HashMap<(u64, u64), Vec<Option<u8>>> = HashMap::new();
            let mut in_flight: Vec<(Vec<u8>, Vec<SentFrame>)> = Vec::new();
            let deliver = |rebuilt: &mut HashMap<(u64, u64), Vec<Option<u8>>>, payload: &[u8]| {
                let messages = FrameIter::new(payload).flat_map(|frame| match frame {
                    Ok(Frame::Msg(m)) => vec![m],
                    Ok(Frame::Bundle(b)) => b.messages().collect(),
                    other => panic!("only MSG and MSG_BUNDLE frames were written: {other:?}"),
                });
                for m in messages {
                    let msg = rebuilt
                        .entry((m.channel, m.seq))
                        .or_insert_with(|| vec![None; m.msg_len as usize]);
                    assert_eq!(msg.len() as u64, m.msg_len, "one length per message");
                    for (i, &b) in m.data.iter().enumerate() {
                        msg[m.offset as usize + i] = Some(b);
                    }
                }
            };
            let mut next_seq: HashMap<u64, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Push { channel, len } => {
                        let seq = *next_seq.entry(channel).or_insert(0);
                        let data = content(channel, seq, len);
                        prop_assert_eq!(q.push(channel, Bytes::from(data.clone()), 0, Delivery::Reliable), seq);
                        next_seq.insert(channel, seq + 1);
                        sent.insert((channel, seq), data);
                    }
                    Op::Send { space } => in_flight.push(packet(&mut q, space)),
                    Op::Ack(i) if !in_flight.is_empty() => {
                        let (payload, carried) = in_flight.swap_remove(i % in_flight.len());
                        deliver(&mut rebuilt, &payload);
                        carried.iter().for_each(|f| acked(&mut q, f));
                    }
                    Op::Lose(i) if !in_flight.is_empty() => {
                        let (_, carried) = in_flight.swap_remove(i % in_flight.len());
                        carried.into_iter().for_each(|f| lost(&mut q, f));
                    }
                    Op::Ack(_) | Op::Lose(_) => {}
                }
            }
            for _ in 0..10_000 {
                for (payload, carried) in in_flight.drain(..) {
                    deliver(&mut rebuilt, &payload);
                    carried.iter().for_each(|f| acked(&mut q, f));
                }
                let p = packet(&mut q, 64);
                if p.1.is_empty() {
                    break;
                }
                in_flight.push(p);
            }
            prop_assert!(q.is_empty());
            prop_assert!(
                q.channels.values().all(|ch| ch.copied.held_chunks() == 0),
                "every copied byte is given back once its message is acknowledged"
            );
            prop_assert_eq!(rebuilt.len(), sent.len());
            for (key, data) in &sent {
                let got: Option<Vec<u8>> = rebuilt[key].iter().copied().collect();
                prop_assert_eq!(got.as_ref(), Some(data), "message {:?}", key);
            }
        }
    }

    proptest! {
        /// Whatever is acknowledged or lost in whatever order, the queue's
        /// byte count matches a byte-by-byte model, sequence numbers count up
        /// per channel, and once every packet is acknowledged every message
        /// was acknowledged exactly once.
        #[test]
        fn every_message_is_acknowledged_once_whatever_the_fate_of_packets(
            ops in proptest::collection::vec(op(), 1..200)
        ) {
            let mut q = SendQueue::default();
            // (channel, seq) -> which bytes were acknowledged.
            let mut model: HashMap<(u64, u64), Vec<bool>> = HashMap::new();
            let mut next_seq: HashMap<u64, u64> = HashMap::new();
            let mut in_flight: Vec<Fragment> = Vec::new();
            let ack = |model: &mut HashMap<(u64, u64), Vec<bool>>, f: &Fragment| {
                let bytes = model.get_mut(&(f.channel, f.seq)).expect("sent message");
                for b in &mut bytes[f.offset as usize..f.offset as usize + f.len] {
                    *b = true;
                }
            };
            for op in ops {
                match op {
                    Op::Push { channel, len } => {
                        let seq = q.push(channel, Bytes::from(vec![7; len]), 0, Delivery::Reliable);
                        let expected = next_seq.entry(channel).or_insert(0);
                        prop_assert_eq!(seq, *expected);
                        *expected += 1;
                        model.insert((channel, seq), vec![false; len]);
                    }
                    Op::Send { space } => {
                        q.begin_packet();
                        while let Some(f) = next(&mut q, space) {
                            in_flight.push(f);
                        }
                    }
                    Op::Ack(i) if !in_flight.is_empty() => {
                        let f = in_flight.swap_remove(i % in_flight.len());
                        q.on_acked(&f);
                        ack(&mut model, &f);
                    }
                    Op::Lose(i) if !in_flight.is_empty() => {
                        let f = in_flight.swap_remove(i % in_flight.len());
                        q.on_lost(f);
                    }
                    Op::Ack(_) | Op::Lose(_) => {}
                }
                let unacked: u64 = model
                    .values()
                    .map(|b| b.iter().filter(|&&x| !x).count() as u64)
                    .sum();
                prop_assert_eq!(q.buffered(), unacked);
            }
            // Deliver everything: every packet from now on is acknowledged.
            for _ in 0..10_000 {
                for f in in_flight.drain(..) {
                    q.on_acked(&f);
                    ack(&mut model, &f);
                }
                q.begin_packet();
                while let Some(f) = next(&mut q, 64) {
                    in_flight.push(f);
                }
                if in_flight.is_empty() {
                    break;
                }
            }
            prop_assert!(q.is_empty());
            prop_assert_eq!(q.buffered(), 0);
            prop_assert_eq!(q.messages_acked(), model.len() as u64);
            prop_assert!(model.values().all(|b| b.iter().all(|&x| x)));
        }
    }
}
