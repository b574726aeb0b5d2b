//! The receiving side of FEC: rebuilds lost source symbols from repairs.
//!
//! Driven by the receiver: every protected packet payload that arrives goes
//! in through [`FecDecoder::push_source`] with its sequence number, every
//! repair symbol through [`FecDecoder::push_repair`]; either call returns the
//! source symbols it made recoverable, each once, byte-exact with its length.
//! Arrival order does not matter. Group boundaries are learnt from the repair
//! symbols, since a group closed early by the sender's timer is short.
//!
//! Memory is bounded by [`FecDecoderLimits`]: source symbols are kept for a
//! window of sequence numbers below the highest seen, groups up to a count;
//! anything older is evicted and later input for it is ignored as stale.
//! Duplicates, repairs that contradict their group and repairs for groups
//! that overlap another are dropped and counted; nothing panics. Sequence
//! numbers come from authenticated packets: a jump far ahead moves the
//! window and evicts everything older.

use std::collections::BTreeMap;

use super::codec::{block_len, from_block, recover, to_block};
use super::{FecError, FecScheme, RepairSymbol, MAX_SOURCE_LEN};

/// Memory bounds of a [`FecDecoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecDecoderLimits {
    /// Width of the window of sequence numbers, below the highest seen, for
    /// which source symbols are kept (and so the most kept at once).
    pub source_window: u64,
    /// Most groups tracked at once; the oldest is evicted first.
    pub max_groups: usize,
}

impl Default for FecDecoderLimits {
    /// 1,024 source symbols and 32 groups: at 1,472 bytes, 1.5 MB of sources
    /// and, with the largest shape, 3 MB of repairs.
    fn default() -> Self {
        Self {
            source_window: 1024,
            max_groups: 32,
        }
    }
}

/// Counters of a [`FecDecoder`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FecDecoderStats {
    /// Source symbols recovered from repairs.
    pub recovered: u64,
    /// Source or repair symbols received twice (or a source that was
    /// already recovered), ignored.
    pub duplicates: u64,
    /// Symbols older than the window, or repairs for a group already whole,
    /// ignored.
    pub stale: u64,
    /// Symbols rejected as inconsistent (oversized source, repair that
    /// contradicts its group or overlaps another group).
    pub rejected: u64,
    /// Groups evicted before they were whole.
    pub evicted_groups: u64,
}

/// A source symbol rebuilt by the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSymbol {
    /// Its sequence number in the FEC source stream.
    pub seq: u64,
    /// Its payload, at its original length.
    pub payload: Vec<u8>,
}

/// What the decoder knows about one group, from its repair symbols.
#[derive(Debug)]
struct Group {
    scheme: FecScheme,
    sources: u8,
    block_len: usize,
    /// Repair blocks received, by repair index (emptied once whole).
    repairs: BTreeMap<u8, Vec<u8>>,
    /// Every source symbol is present or recovered, or the group proved
    /// inconsistent: nothing more to do.
    done: bool,
}

/// Rebuilds lost source symbols from the symbols that arrived.
#[derive(Debug, Default)]
pub struct FecDecoder {
    limits: FecDecoderLimits,
    /// Received and recovered payloads by sequence number.
    sources: BTreeMap<u64, Vec<u8>>,
    /// Known groups by first sequence number.
    groups: BTreeMap<u64, Group>,
    /// Highest sequence number seen in a source or a repair's group.
    highest: Option<u64>,
    stats: FecDecoderStats,
}

impl FecDecoder {
    /// A decoder bounded by `limits` (a zero window or group count is taken
    /// as one).
    pub fn new(limits: FecDecoderLimits) -> Self {
        Self {
            limits: FecDecoderLimits {
                source_window: limits.source_window.max(1),
                max_groups: limits.max_groups.max(1),
            },
            ..Self::default()
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> FecDecoderStats {
        self.stats
    }

    /// Source symbols held.
    pub fn buffered_sources(&self) -> usize {
        self.sources.len()
    }

    /// Groups tracked.
    pub fn tracked_groups(&self) -> usize {
        self.groups.len()
    }

    /// Feeds a source symbol that arrived; returns the symbols it made
    /// recoverable.
    pub fn push_source(&mut self, seq: u64, payload: &[u8]) -> Vec<RecoveredSymbol> {
        if payload.len() > MAX_SOURCE_LEN {
            self.stats.rejected += 1;
            return Vec::new();
        }
        if seq < self.floor() {
            self.stats.stale += 1;
            return Vec::new();
        }
        if self.sources.contains_key(&seq) {
            self.stats.duplicates += 1;
            return Vec::new();
        }
        self.sources.insert(seq, payload.to_vec());
        self.advance(seq);
        match self.group_of(seq) {
            Some(first_seq) => self.try_recover(first_seq),
            None => Vec::new(),
        }
    }

    /// Feeds a repair symbol that arrived; returns the symbols it made
    /// recoverable. A repair whose fields are out of range (as
    /// [`RepairSymbol::decode`] would reject), that contradicts the repairs
    /// already held for its group, or whose group overlaps another, is an
    /// error (and counted).
    pub fn push_repair(&mut self, repair: RepairSymbol) -> Result<Vec<RecoveredSymbol>, FecError> {
        let range = repair.source_range();
        let shaped = repair.scheme.validate().is_ok()
            && repair.sources >= 1
            && repair
                .first_seq
                .checked_add(u64::from(repair.sources))
                .is_some()
            && usize::from(repair.sources) <= repair.scheme.group_capacity()
            && repair.block.len() >= 2
            && repair.block.len() % 2 == 0
            && repair.block.len() <= block_len(MAX_SOURCE_LEN)
            && repair
                .scheme
                .repair_indices(usize::from(repair.sources))
                .contains(&repair.index);
        if !shaped {
            self.stats.rejected += 1;
            return Err(FecError::Inconsistent);
        }
        if range.start < self.floor() {
            self.stats.stale += 1;
            return Ok(Vec::new());
        }
        if let Some(group) = self.groups.get_mut(&range.start) {
            if group.scheme != repair.scheme
                || group.sources != repair.sources
                || group.block_len != repair.block.len()
            {
                self.stats.rejected += 1;
                return Err(FecError::Inconsistent);
            }
            if group.done {
                self.stats.stale += 1;
                return Ok(Vec::new());
            }
            if group.repairs.contains_key(&repair.index) {
                self.stats.duplicates += 1;
                return Ok(Vec::new());
            }
            group.repairs.insert(repair.index, repair.block);
        } else {
            let overlaps_previous = self
                .groups
                .range(..range.start)
                .next_back()
                .is_some_and(|(&first, g)| first + u64::from(g.sources) > range.start);
            let overlaps_next = self
                .groups
                .range(range.start..)
                .next()
                .is_some_and(|(&first, _)| first < range.end);
            if overlaps_previous || overlaps_next {
                self.stats.rejected += 1;
                return Err(FecError::Inconsistent);
            }
            self.groups.insert(
                range.start,
                Group {
                    scheme: repair.scheme,
                    sources: repair.sources,
                    block_len: repair.block.len(),
                    repairs: BTreeMap::from([(repair.index, repair.block)]),
                    done: false,
                },
            );
            while self.groups.len() > self.limits.max_groups {
                if let Some((_, evicted)) = self.groups.pop_first() {
                    self.stats.evicted_groups += u64::from(!evicted.done);
                }
            }
        }
        self.advance(range.end - 1);
        if !self.groups.contains_key(&range.start) {
            // Evicted at once: older than everything else held.
            return Ok(Vec::new());
        }
        Ok(self.try_recover(range.start))
    }

    /// Lowest sequence number still accepted.
    fn floor(&self) -> u64 {
        self.highest
            .map_or(0, |h| h.saturating_sub(self.limits.source_window - 1))
    }

    /// Records `seq` as seen and evicts what fell out of the window.
    fn advance(&mut self, seq: u64) {
        if self.highest.is_some_and(|h| h >= seq) {
            return;
        }
        self.highest = Some(seq);
        let floor = self.floor();
        self.sources = self.sources.split_off(&floor);
        while let Some(entry) = self.groups.first_entry() {
            if *entry.key() >= floor {
                break;
            }
            self.stats.evicted_groups += u64::from(!entry.get().done);
            entry.remove();
        }
    }

    /// The first sequence number of the known group holding `seq`.
    fn group_of(&self, seq: u64) -> Option<u64> {
        let (&first, group) = self.groups.range(..=seq).next_back()?;
        (seq < first + u64::from(group.sources)).then_some(first)
    }

    /// Recovers what the group starting at `first_seq` now allows.
    fn try_recover(&mut self, first_seq: u64) -> Vec<RecoveredSymbol> {
        let Some(group) = self.groups.get_mut(&first_seq) else {
            return Vec::new();
        };
        if group.done {
            return Vec::new();
        }
        let seqs = first_seq..first_seq + u64::from(group.sources);
        let present = self.sources.range(seqs.clone()).count();
        if present == usize::from(group.sources) {
            group.done = true;
            group.repairs.clear();
            return Vec::new();
        }
        let decodable = match group.scheme {
            FecScheme::ReedSolomon { .. } => {
                present + group.repairs.len() >= usize::from(group.sources)
            }
            FecScheme::Xor { .. } => true,
        };
        if !decodable {
            return Vec::new();
        }
        let mut blocks = Vec::with_capacity(usize::from(group.sources));
        for seq in seqs.clone() {
            match self.sources.get(&seq) {
                Some(payload) if payload.len() + 2 > group.block_len => {
                    // A source longer than the group's blocks: the repairs
                    // do not belong to these sources.
                    group.done = true;
                    group.repairs.clear();
                    self.stats.rejected += 1;
                    return Vec::new();
                }
                Some(payload) => blocks.push(Some(to_block(payload, group.block_len))),
                None => blocks.push(None),
            }
        }
        let mut recovered = Vec::new();
        for index in recover(group.scheme, &mut blocks, &group.repairs) {
            let Some(payload) = blocks[index].as_deref().and_then(from_block) else {
                continue;
            };
            let seq = first_seq + index as u64;
            self.sources.insert(seq, payload.to_vec());
            recovered.push(RecoveredSymbol {
                seq,
                payload: payload.to_vec(),
            });
        }
        if seqs.clone().all(|seq| self.sources.contains_key(&seq)) {
            group.done = true;
            group.repairs.clear();
        }
        self.stats.recovered += recovered.len() as u64;
        recovered.sort_unstable_by_key(|r| r.seq);
        recovered
    }
}
