//! [`MessageBatch`]: many small messages staged in one buffer, to be queued
//! together with [`Connection::send_many`](crate::Connection::send_many).
//!
//! An application that produces many small messages stages them here (one
//! copy each, into one growing buffer) and hands the whole batch over in one
//! call; the connection copies each small message into its send queue under
//! one lock. No [`Bytes`](bytes::Bytes) is made per message, so no reference
//! count is touched per message on either side of the hand-over: the batch
//! form of writing into a stream's buffer.

/// Messages staged one after another in one buffer, in order.
///
/// ```
/// use surelink::MessageBatch;
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
    /// The messages' bytes, back to back.
    data: Vec<u8>,
    /// Where each message ends in `data`.
    ends: Vec<usize>,
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
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(messages),
        }
    }

    /// Appends a copy of `message` as the batch's next message.
    pub fn push(&mut self, message: &[u8]) {
        self.data.extend_from_slice(message);
        self.ends.push(self.data.len());
    }

    /// Number of messages staged.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when no message is staged.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of all messages staged together.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Removes every message, keeping the buffers for the next batch.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    /// The messages, in the order they were pushed.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.ends.len()).map(|i| {
            let start = i.checked_sub(1).map_or(0, |before| self.ends[before]);
            &self.data[start..self.ends[i]]
        })
    }
}
