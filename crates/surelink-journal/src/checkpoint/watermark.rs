//! [`Watermark`]: the receiver's delivered watermark per channel.
//!
//! The watermark of a channel is the highest sequence number delivered to
//! the application *and* committed; it only moves forward. Each change is
//! one journal record that supersedes (makes dead) the previous one of the
//! channel, so the log keeps one live record per channel.

use std::collections::BTreeMap;

use crate::error::JournalError;
use crate::record::RecordId;

/// Delivered watermarks by channel, as recovered and kept by a
/// [`CheckpointStore`](crate::CheckpointStore).
#[derive(Debug, Clone, Default)]
pub struct Watermark {
    channels: BTreeMap<u64, (u64, RecordId)>,
}

impl Watermark {
    /// The watermark of `channel`, `None` if none was set.
    pub fn get(&self, channel: u64) -> Option<u64> {
        self.channels.get(&channel).map(|&(seq, _)| seq)
    }

    /// Every channel and its watermark, by channel.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.channels
            .iter()
            .map(|(&channel, &(seq, _))| (channel, seq))
    }

    /// Number of channels with a watermark.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// True if no watermark is set.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Ok(true) if setting `seq` advances the watermark, Ok(false) if it is
    /// already there, Err if it would move back.
    pub(crate) fn check_set(&self, channel: u64, seq: u64) -> Result<bool, JournalError> {
        match self.get(channel) {
            Some(current) if seq < current => Err(JournalError::WatermarkRegressed {
                channel,
                seq,
                current,
            }),
            Some(current) => Ok(seq > current),
            None => Ok(true),
        }
    }

    /// Records a new watermark (already checked); returns the superseded
    /// record.
    pub(crate) fn apply_set(&mut self, id: RecordId, channel: u64, seq: u64) -> Option<RecordId> {
        self.channels
            .insert(channel, (seq, id))
            .map(|(_, previous)| previous)
    }
}
