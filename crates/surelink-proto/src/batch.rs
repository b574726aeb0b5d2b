//! Batches of small messages: [`MessageBatch`] on the sending side,
//! [`ReceivedBatch`] on the receiving side.
//!
//! An application that produces many small messages stages them in a
//! [`MessageBatch`] (one copy each, into one growing buffer) and hands the
//! whole batch over in one call. The batch's buffer is already in the
//! *packed* form: each message as a varint length and that many bytes,
//! back to back. It can be handed over in two ways:
//!
//! - `send_many(channel, batch.iter())`: every message is queued on its own,
//!   with its own sequence number, source time and (on a deadline channel)
//!   deadline; whole small messages may share a packet (MSG_BUNDLE).
//! - `send_batch(channel, &mut batch)`: the whole batch is queued as **one
//!   packed message**: one sequence number, one source time, one fate. Its
//!   buffer moves into the send queue uncopied, and the connection does no
//!   work per message at all: the batch travels, is acknowledged and is
//!   retransmitted as any message of its size would be (MSG_PACKED frames,
//!   docs/PROTOCOL.md). The receiver checks the records once, when the
//!   batch is complete, and hands its messages over one by one (`recv`,
//!   `recv_many`: each a [`Message`](crate::Message) that shares the
//!   batch's sequence number and times), or the whole batch at once as a
//!   [`ReceivedBatch`] (`recv_batch`), whose messages are borrowed slices of
//!   one buffer: no reference count or allocation per message.
//!
//! A packed batch is the byte stream's trade: the receiver gets none of its
//! messages before it has all of them, and a lost packet holds up the whole
//! batch. Per-message sequence numbers, latencies and deadlines are what
//! `send_many` keeps and `send_batch` gives up.

use bytes::Bytes;

use crate::wire::{varint, Reader};

/// Messages staged one after another in one buffer, in order, in the packed
/// form (see the module documentation).
///
/// ```
/// use surelink_proto::batch::MessageBatch;
///
/// let mut batch = MessageBatch::new();
/// batch.push(b"first");
/// batch.push(b"");
/// batch.push(b"third");
/// assert_eq!(batch.len(), 3);
/// assert_eq!(batch.bytes(), 10);
/// let messages: Vec<&[u8]> = batch.iter().collect();
/// assert_eq!(messages, [&b"first"[..], b"", b"third"]);
/// // After `conn.send_many(0, batch.iter()).await?`: reuse the buffers.
/// batch.clear();
/// assert!(batch.is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct MessageBatch {
    /// The messages as records: a varint length, then the bytes.
    packed: Vec<u8>,
    /// Messages staged.
    len: usize,
    /// Bytes of the messages themselves (the records' lengths not counted).
    bytes: usize,
}

impl MessageBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `messages` messages of `bytes` bytes in
    /// all before it allocates again.
    pub fn with_capacity(messages: usize, bytes: usize) -> Self {
        Self {
            packed: Vec::with_capacity(bytes.saturating_add(messages.saturating_mul(2))),
            len: 0,
            bytes: 0,
        }
    }

    /// Appends a copy of `message` as the batch's next message.
    pub fn push(&mut self, message: &[u8]) {
        varint::write(&mut self.packed, message.len() as u64);
        self.packed.extend_from_slice(message);
        self.len += 1;
        self.bytes += message.len();
    }

    /// Number of messages staged.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no message is staged.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of all messages staged together.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Length of the packed form: what the batch weighs as one packed
    /// message (each message's bytes and its length prefix).
    pub fn packed_len(&self) -> usize {
        self.packed.len()
    }

    /// Removes every message, keeping the buffers for the next batch.
    pub fn clear(&mut self) {
        self.packed.clear();
        self.len = 0;
        self.bytes = 0;
    }

    /// The messages, in the order they were pushed.
    pub fn iter(&self) -> Messages<'_> {
        Messages::packed(&self.packed, self.len)
    }

    /// Capacity of the buffer of the packed form.
    pub(crate) fn capacity(&self) -> usize {
        self.packed.capacity()
    }

    /// Moves the packed form out, uncopied, and leaves the batch empty with
    /// `next` (emptied) as its buffer. Returns the packed bytes and the
    /// number of messages in them.
    pub(crate) fn take_packed(&mut self, mut next: Vec<u8>) -> (Bytes, usize) {
        next.clear();
        let packed = std::mem::replace(&mut self.packed, next);
        let len = std::mem::take(&mut self.len);
        self.bytes = 0;
        (Bytes::from(packed), len)
    }
}

/// The next record of packed bytes and what follows it; `None` if `packed`
/// does not start with a whole record.
#[inline]
fn split_record(packed: &[u8]) -> Option<(&[u8], &[u8])> {
    // Lengths under 16 KiB take one or two bytes: read them directly.
    let (len, rest) = match *packed {
        [first, ref rest @ ..] if first < 0x40 => (usize::from(first), rest),
        [first, second, ref rest @ ..] if first < 0x80 => {
            (usize::from(first & 0x3f) << 8 | usize::from(second), rest)
        }
        _ => {
            let mut r = Reader::new(packed);
            let len = usize::try_from(r.varint().ok()?).ok()?;
            (len, &packed[packed.len() - r.remaining()..])
        }
    };
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// The number of records in `packed`, if it is a whole number of well-formed
/// records and at least one (a packed message with none is malformed: no
/// sender makes one).
pub(crate) fn count_records(packed: &[u8]) -> Option<usize> {
    let mut rest = packed;
    let mut count = 0;
    while !rest.is_empty() {
        rest = split_record(rest)?.1;
        count += 1;
    }
    (count > 0).then_some(count)
}

/// Cuts the first record off checked packed bytes (see [`count_records`]):
/// returns the record as a slice of `packed`, which keeps the rest.
pub(crate) fn cut_record(packed: &mut Bytes) -> Bytes {
    let Some((record, rest)) = split_record(packed) else {
        // Unreachable for checked bytes; the rest is handed over as it is.
        return std::mem::take(packed);
    };
    let end = packed.len() - rest.len();
    let record = packed.slice(end - record.len()..end);
    bytes::Buf::advance(packed, end);
    record
}

/// The messages of a batch, in order, each a slice of the batch's buffer.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
    left: usize,
    /// `rest` is one message, not records.
    whole: bool,
}

impl<'a> Messages<'a> {
    /// The `count` records of checked packed bytes.
    fn packed(packed: &'a [u8], count: usize) -> Self {
        Self {
            rest: packed,
            left: count,
            whole: false,
        }
    }

    /// One message, as it is.
    fn whole(message: &'a [u8]) -> Self {
        Self {
            rest: message,
            left: 1,
            whole: true,
        }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if self.whole {
            return Some(std::mem::take(&mut self.rest));
        }
        let (record, rest) = split_record(self.rest)?;
        self.rest = rest;
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Messages<'_> {}

/// What the receiver hands over whole (`recv_batch`): a batch packed by
/// `send_batch`, or a message sent on its own, as a batch of one.
///
/// Every message in it shares the batch's channel, sequence number, source
/// time and latency. Taken partly by `recv` or `recv_many` before, it holds
/// the messages those left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedBatch {
    /// Channel it was sent on.
    pub channel: u64,
    /// Its sequence number in that channel.
    pub seq: u64,
    /// When it was sent, on our clock (µs), as estimated from the peer's timestamp.
    pub source_time_us: u64,
    /// One-way latency from send to delivery, µs.
    pub latency_us: u64,
    /// The message, or the packed records of the messages left.
    data: Bytes,
    /// Messages left in `data`.
    left: usize,
    /// `data` holds packed records, not one message.
    packed: bool,
}

impl ReceivedBatch {
    /// A unit of delivery: one message (`packed_count` `None`), or checked
    /// packed bytes holding `packed_count` records.
    pub(crate) fn new(
        channel: u64,
        seq: u64,
        data: Bytes,
        packed_count: Option<usize>,
        source_time_us: u64,
        latency_us: u64,
    ) -> Self {
        Self {
            channel,
            seq,
            source_time_us,
            latency_us,
            data,
            left: packed_count.unwrap_or(1),
            packed: packed_count.is_some(),
        }
    }

    /// Number of messages in it.
    pub fn len(&self) -> usize {
        self.left
    }

    /// True when it holds no message (never, for a batch handed over).
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// True if it was sent as a packed batch (`send_batch`), false for a
    /// message sent on its own.
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// Bytes it holds: the messages', and for a packed batch their records'
    /// length prefixes too (what it was charged against the receive window).
    pub(crate) fn data_len(&self) -> usize {
        self.data.len()
    }

    /// The messages, in order, each a slice of the batch's one buffer.
    pub fn iter(&self) -> Messages<'_> {
        if self.packed {
            Messages::packed(&self.data, self.left)
        } else {
            Messages::whole(&self.data)
        }
    }

    /// Takes the first message out as a [`Message`](crate::Message), and
    /// the number of bytes of `data` it took. `None` once it is empty.
    pub(crate) fn cut_first(&mut self) -> Option<(crate::Message, usize)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let before = self.data.len();
        let data = if self.packed {
            cut_record(&mut self.data)
        } else {
            std::mem::take(&mut self.data)
        };
        let message = crate::Message {
            channel: self.channel,
            seq: self.seq,
            data,
            source_time_us: self.source_time_us,
            latency_us: self.latency_us,
        };
        Some((message, before - self.data.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn received(batch: &mut MessageBatch) -> ReceivedBatch {
        let (packed, count) = batch.take_packed(Vec::new());
        assert_eq!(count_records(&packed), Some(count));
        ReceivedBatch::new(0, 7, packed, Some(count), 10, 20)
    }

    proptest! {
        /// Whatever is pushed comes out the same, in order, through
        /// iteration, through the packed form whole, and message by
        /// message, and the message-by-message cuts account for every byte.
        #[test]
        fn a_batch_round_trips_every_way(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..40),
        ) {
            let mut batch = MessageBatch::new();
            for m in &messages {
                batch.push(m);
            }
            prop_assert_eq!(batch.len(), messages.len());
            prop_assert_eq!(batch.bytes(), messages.iter().map(Vec::len).sum::<usize>());
            prop_assert!(batch.iter().eq(messages.iter().map(Vec::as_slice)));
            let packed_len = batch.packed_len();
            let mut whole = received(&mut batch);
            prop_assert!(batch.is_empty());
            prop_assert_eq!(whole.len(), messages.len());
            prop_assert!(whole.iter().eq(messages.iter().map(Vec::as_slice)));
            let mut taken = 0;
            for m in &messages {
                let (cut, bytes) = whole.cut_first().expect("a message left");
                prop_assert_eq!(&cut.data[..], &m[..]);
                prop_assert_eq!((cut.channel, cut.seq), (0, 7));
                taken += bytes;
                prop_assert!(whole.iter().eq(messages[messages.len() - whole.len()..].iter().map(Vec::as_slice)));
            }
            prop_assert!(whole.cut_first().is_none());
            prop_assert_eq!(taken, packed_len);
        }

        /// Any bytes at all are either counted as whole records or refused;
        /// counted ones cut into exactly that many records.
        #[test]
        fn arbitrary_bytes_are_checked_before_they_are_cut(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Some(count) = count_records(&bytes) {
                let mut batch = ReceivedBatch::new(0, 0, Bytes::from(bytes), Some(count), 0, 0);
                for _ in 0..count {
                    prop_assert!(batch.cut_first().is_some());
                }
                prop_assert_eq!(batch.data_len(), 0);
            }
        }
    }

    #[test]
    fn empty_and_truncated_packed_bytes_are_malformed() {
        assert_eq!(count_records(b""), None);
        assert_eq!(count_records(&[3, b'a', b'b']), None);
        assert_eq!(count_records(&[0x40]), None);
        assert_eq!(count_records(&[0, 1, b'x']), Some(2));
    }

    #[test]
    fn a_message_sent_alone_is_a_batch_of_one() {
        let mut one = ReceivedBatch::new(2, 3, Bytes::from_static(b"alone"), None, 0, 0);
        assert!(!one.is_packed());
        assert_eq!(one.iter().collect::<Vec<_>>(), [b"alone"]);
        let (m, bytes) = one.cut_first().expect("one message");
        assert_eq!((&m.data[..], bytes), (&b"alone"[..], 5));
        assert!(one.is_empty());
    }

    #[test]
    fn taking_the_packed_form_leaves_the_batch_empty_in_the_buffer_given() {
        let mut batch = MessageBatch::with_capacity(4, 100);
        batch.push(b"abc");
        let next = Vec::from(*b"left over");
        let at = next.as_ptr();
        let (packed, count) = batch.take_packed(next);
        assert_eq!((&packed[..], count), (&[3, b'a', b'b', b'c'][..], 1));
        assert_eq!(batch.packed.as_ptr(), at);
        assert!(batch.is_empty() && batch.packed.is_empty());
        assert_eq!((batch.bytes(), batch.packed_len()), (0, 0));
    }
}
