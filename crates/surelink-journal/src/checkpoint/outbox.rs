//! [`Outbox`]: the sender's messages not yet confirmed as checkpointed by the
//! receiver.
//!
//! Each pushed message is one live journal record. When the receiver
//! confirms a channel up to a sequence number, the pushes it covers become
//! dead and the previous confirmation of that channel is superseded; the
//! latest confirmation stays live, so the channel's floor survives
//! compaction. Per channel, sequence numbers pushed must be strictly above
//! everything pushed or confirmed before ([`Outbox::high_seq`]).

use std::collections::BTreeMap;

use crate::error::JournalError;
use crate::record::RecordId;

/// One pending (unconfirmed) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Channel.
    pub channel: u64,
    /// Sequence number on the channel.
    pub seq: u64,
    /// The message.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct OutboxChannel {
    /// seq → record of the pending push.
    pending: BTreeMap<u64, RecordId>,
    /// The latest confirmation and its record.
    confirmed: Option<(u64, RecordId)>,
}

/// The sender's pending messages, as recovered and kept by a
/// [`CheckpointStore`](crate::CheckpointStore).
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    /// In push order (record ids increase with each push).
    entries: BTreeMap<RecordId, OutboxEntry>,
    channels: BTreeMap<u64, OutboxChannel>,
    bytes: usize,
}

impl Outbox {
    /// Number of pending messages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes pending.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Pending messages of every channel, in the order they were pushed.
    pub fn pending(&self) -> impl Iterator<Item = &OutboxEntry> + '_ {
        self.entries.values()
    }

    /// Pending messages of one channel, by sequence number.
    pub fn pending_on(&self, channel: u64) -> impl Iterator<Item = &OutboxEntry> + '_ {
        self.channels
            .get(&channel)
            .into_iter()
            .flat_map(|c| c.pending.values())
            .map(|id| &self.entries[id])
    }

    /// The pending message `seq` of `channel`.
    pub fn get(&self, channel: u64, seq: u64) -> Option<&OutboxEntry> {
        let id = self.channels.get(&channel)?.pending.get(&seq)?;
        self.entries.get(id)
    }

    /// The highest sequence number confirmed on `channel`.
    pub fn confirmed(&self, channel: u64) -> Option<u64> {
        self.channels.get(&channel)?.confirmed.map(|(seq, _)| seq)
    }

    /// The highest sequence number pushed or confirmed on `channel`: the
    /// next push must be above it.
    pub fn high_seq(&self, channel: u64) -> Option<u64> {
        let channel = self.channels.get(&channel)?;
        let pending = channel.pending.keys().next_back().copied();
        let confirmed = channel.confirmed.map(|(seq, _)| seq);
        pending.max(confirmed)
    }

    /// Channels with pending messages or a confirmation, ascending.
    pub fn channels(&self) -> impl Iterator<Item = u64> + '_ {
        self.channels.keys().copied()
    }

    pub(crate) fn check_push(&self, channel: u64, seq: u64) -> Result<(), JournalError> {
        match self.high_seq(channel) {
            Some(high) if seq <= high => Err(JournalError::OutOfOrder { channel, seq, high }),
            _ => Ok(()),
        }
    }

    /// True if confirming `up_to` would change anything.
    pub(crate) fn confirm_advances(&self, channel: u64, up_to: u64) -> bool {
        self.confirmed(channel).is_none_or(|c| up_to > c)
    }

    /// Records a push (already checked with [`check_push`](Self::check_push)).
    pub(crate) fn apply_push(&mut self, id: RecordId, entry: OutboxEntry) {
        let channel = self.channels.entry(entry.channel).or_default();
        channel.pending.insert(entry.seq, id);
        self.bytes += entry.payload.len();
        self.entries.insert(id, entry);
    }

    /// Records a confirmation (already checked with
    /// [`confirm_advances`](Self::confirm_advances)); pushes the records it
    /// makes dead onto `dead` and returns how many messages it released.
    pub(crate) fn apply_confirm(
        &mut self,
        id: RecordId,
        channel: u64,
        up_to: u64,
        dead: &mut Vec<RecordId>,
    ) -> usize {
        let state = self.channels.entry(channel).or_default();
        let kept = match up_to.checked_add(1) {
            Some(next) => state.pending.split_off(&next),
            None => BTreeMap::new(),
        };
        let released = std::mem::replace(&mut state.pending, kept);
        if let Some((_, previous)) = state.confirmed.replace((up_to, id)) {
            dead.push(previous);
        }
        for record in released.values() {
            let entry = self.entries.remove(record).expect("indexed entries exist");
            self.bytes -= entry.payload.len();
            dead.push(*record);
        }
        released.len()
    }
}
