//! A time-ordered merge of the messages of many sources, sans-IO.
//!
//! Each source (a sender) delivers its messages in its own order; each
//! message carries its send time mapped onto the receiver's clock through the
//! source's clock estimate ([`Message::source_time_us`](crate::Message)) and
//! the estimate's error bound. [`Merge`] turns the sources' streams into one
//! stream ordered by those corrected times, holding each message for a
//! *window*:
//!
//! * [`push`](Merge::push) a message as it arrives, with the receiver's clock
//!   `now_us`;
//! * [`poll`](Merge::poll) at `now_us` releases, in corrected-time order,
//!   every held message whose corrected time plus the window has passed;
//!   [`poll_timeout`](Merge::poll_timeout) says when the next one is due;
//! * a message whose corrected time is *before* the newest time already
//!   released (the output has passed it) is *late*: counted, and dropped or
//!   released at once flagged with how late it is ([`LatePolicy`]);
//! * [`flush`](Merge::flush) releases what is held, in order, when no more
//!   input will come.
//!
//! Nothing here reads a clock: time is an argument, so a run is a function
//! of its inputs (the tests drive it on virtual time).
//!
//! **Ordering guarantee.** Records that are not flagged late come out in
//! non-decreasing corrected time. A corrected time is within its error bound
//! `B` of the true send time (on the receiver's clock), so for two such
//! records `a` released before `b`, the true send times satisfy
//! `t_a ≤ t_b + B_a + B_b`: the merge misorders two messages only when they
//! were sent less than the sum of their sources' error bounds apart. The
//! window does not enter that bound; it decides *which* messages are late: a
//! message is on time when it arrives no later than `window` after its
//! corrected time (transit, retransmissions and clock error included), and
//! every message is held until then, so the merge adds up to `window` minus
//! the transit time to each message's latency.
//!
//! To keep each source's own order, a message's corrected time is raised to
//! its source's previous one when the clock estimate moved back in between;
//! its error bound grows by the same amount, so the bound stays true.
//!
//! **Restarts.** [`checkpoint`](Merge::checkpoint) says, per source, the next
//! sequence number not yet released (or dropped), and the newest time
//! released. Stored together with the output's length, it lets a restarted
//! receiver [`restore`](Merge::restore) the merge and have the sources re-send
//! from there: messages below a source's checkpointed sequence are dropped as
//! duplicates, and a restored source's messages are placed no earlier than
//! the restored output time (their bound widened by the shift), so a restart
//! turns no held message into a late one.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// What happens to a message that arrives after the output passed its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatePolicy {
    /// Count it and drop it (the output stays ordered).
    #[default]
    Drop,
    /// Count it and release it at once, flagged with how late it is.
    Deliver,
}

/// How a [`Merge`] orders and releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeConfig {
    /// How long after its corrected time a message is held, µs.
    pub window_us: u64,
    /// What to do with late messages.
    pub late: LatePolicy,
}

/// A message handed to the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival<T> {
    /// Its source.
    pub source: u64,
    /// Its sequence number within the source (increasing).
    pub seq: u64,
    /// Its send time on the receiver's clock, µs (from the source's clock estimate).
    pub time_us: u64,
    /// Bound on the error of `time_us`, µs (the clock estimate's error bound).
    pub error_bound_us: u64,
    /// The message.
    pub payload: T,
}

/// A message released by the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged<T> {
    /// Its source.
    pub source: u64,
    /// Its sequence number within the source.
    pub seq: u64,
    /// Its corrected send time on the receiver's clock, µs (the order key).
    pub time_us: u64,
    /// Bound on the error of `time_us`, µs.
    pub error_bound_us: u64,
    /// `None` if released in order; else how far the output had passed
    /// `time_us` when it arrived, µs (only with [`LatePolicy::Deliver`]).
    pub late_by_us: Option<u64>,
    /// When it was pushed, on the receiver's clock, µs.
    pub arrived_us: u64,
    /// The message.
    pub payload: T,
}

/// What [`Merge::push`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Held until its time.
    Held,
    /// Late: dropped, or queued for release at once, per the [`LatePolicy`].
    Late {
        /// How far the output had passed its time, µs.
        by_us: u64,
    },
    /// Its sequence number was released (or pushed) before: dropped.
    Duplicate,
}

/// Counters of a [`Merge`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Messages pushed.
    pub pushed: u64,
    /// Messages released in order.
    pub released: u64,
    /// Late messages dropped.
    pub late_dropped: u64,
    /// Late messages released flagged.
    pub late_delivered: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Messages held now.
    pub held: u64,
}

/// Where a merge stands, to resume it after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeCheckpoint {
    /// Per source, the next sequence number not yet released or dropped.
    pub next_seq: BTreeMap<u64, u64>,
    /// The newest corrected time released in order, µs.
    pub released_up_to_us: Option<u64>,
}

/// A held message, ordered by (time, source, seq).
#[derive(Debug)]
struct Held<T>(Merged<T>);

impl<T> Held<T> {
    fn key(&self) -> (u64, u64, u64) {
        (self.0.time_us, self.0.source, self.0.seq)
    }
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Held<T> {}

impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// What the merge knows of one source.
#[derive(Debug, Clone, Copy, Default)]
struct SourceState {
    /// Next sequence number not yet released or dropped.
    next_release: u64,
    /// Next sequence number not yet pushed.
    next_push: u64,
    /// The newest corrected time pushed, µs (its order floor).
    floor_us: u64,
}

/// The time-ordered merge; see the [module docs](self).
#[derive(Debug)]
pub struct Merge<T> {
    config: MergeConfig,
    held: BinaryHeap<Reverse<Held<T>>>,
    late: VecDeque<Merged<T>>,
    sources: BTreeMap<u64, SourceState>,
    released_up_to_us: Option<u64>,
    stats: MergeStats,
}

impl<T> Merge<T> {
    /// An empty merge.
    pub fn new(config: MergeConfig) -> Self {
        Merge {
            config,
            held: BinaryHeap::new(),
            late: VecDeque::new(),
            sources: BTreeMap::new(),
            released_up_to_us: None,
            stats: MergeStats::default(),
        }
    }

    /// A merge resumed from `checkpoint` (see the [module docs](self)).
    pub fn restore(config: MergeConfig, checkpoint: &MergeCheckpoint) -> Self {
        let mut merge = Merge::new(config);
        merge.released_up_to_us = checkpoint.released_up_to_us;
        let floor_us = checkpoint.released_up_to_us.unwrap_or(0);
        for (&source, &next) in &checkpoint.next_seq {
            merge.sources.insert(
                source,
                SourceState {
                    next_release: next,
                    next_push: next,
                    floor_us,
                },
            );
        }
        merge
    }

    /// Takes a message that arrived at `now_us` (receiver's clock).
    pub fn push(&mut self, now_us: u64, arrival: Arrival<T>) -> Pushed {
        let state = self.sources.entry(arrival.source).or_default();
        if arrival.seq < state.next_push {
            self.stats.duplicates += 1;
            return Pushed::Duplicate;
        }
        self.stats.pushed += 1;
        state.next_push = arrival.seq + 1;
        // Keep the source's own order: never before its previous message.
        let shift = state.floor_us.saturating_sub(arrival.time_us);
        let time_us = arrival.time_us + shift;
        state.floor_us = time_us;
        let merged = Merged {
            source: arrival.source,
            seq: arrival.seq,
            time_us,
            error_bound_us: arrival.error_bound_us + shift,
            late_by_us: None,
            arrived_us: now_us,
            payload: arrival.payload,
        };
        match self.released_up_to_us {
            Some(passed) if time_us < passed => {
                let by_us = passed - time_us;
                state.next_release = state.next_release.max(arrival.seq + 1);
                match self.config.late {
                    LatePolicy::Drop => self.stats.late_dropped += 1,
                    LatePolicy::Deliver => self.late.push_back(Merged {
                        late_by_us: Some(by_us),
                        ..merged
                    }),
                }
                Pushed::Late { by_us }
            }
            _ => {
                self.held.push(Reverse(Held(merged)));
                self.stats.held += 1;
                Pushed::Held
            }
        }
    }

    /// When (receiver's clock, µs) the next message is due; `None` if none
    /// is held.
    pub fn poll_timeout(&self) -> Option<u64> {
        if let Some(late) = self.late.front() {
            return Some(late.arrived_us);
        }
        self.held
            .peek()
            .map(|Reverse(h)| h.0.time_us.saturating_add(self.config.window_us))
    }

    /// The next message due at `now_us`: first the late ones to deliver, then
    /// held ones whose time plus the window has passed, in order.
    pub fn poll(&mut self, now_us: u64) -> Option<Merged<T>> {
        if let Some(late) = self.late.pop_front() {
            self.stats.late_delivered += 1;
            return Some(late);
        }
        if self.poll_timeout()? > now_us {
            return None;
        }
        self.release_next()
    }

    /// Releases everything held, in order, regardless of time (no more
    /// input will come); `None` once empty.
    pub fn flush(&mut self) -> Option<Merged<T>> {
        if let Some(late) = self.late.pop_front() {
            self.stats.late_delivered += 1;
            return Some(late);
        }
        self.release_next()
    }

    fn release_next(&mut self) -> Option<Merged<T>> {
        let Reverse(Held(merged)) = self.held.pop()?;
        self.stats.held -= 1;
        self.stats.released += 1;
        self.released_up_to_us = Some(
            self.released_up_to_us
                .map_or(merged.time_us, |t| t.max(merged.time_us)),
        );
        let state = self.sources.entry(merged.source).or_default();
        state.next_release = state.next_release.max(merged.seq + 1);
        Some(merged)
    }

    /// Where the merge stands: what has left it (see [`MergeCheckpoint`]).
    /// Take it after the released messages were written out.
    pub fn checkpoint(&self) -> MergeCheckpoint {
        // A source's held (or late-queued) messages have not left the merge.
        let mut next_seq: BTreeMap<u64, u64> = self
            .sources
            .iter()
            .map(|(&source, s)| (source, s.next_release))
            .collect();
        for m in self.held.iter().map(|Reverse(h)| &h.0).chain(&self.late) {
            if let Some(next) = next_seq.get_mut(&m.source) {
                *next = (*next).min(m.seq);
            }
        }
        MergeCheckpoint {
            next_seq,
            released_up_to_us: self.released_up_to_us,
        }
    }

    /// The counters.
    pub fn stats(&self) -> MergeStats {
        self.stats
    }

    /// The configuration.
    pub fn config(&self) -> MergeConfig {
        self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(source: u64, seq: u64, time_us: u64) -> Arrival<()> {
        Arrival {
            source,
            seq,
            time_us,
            error_bound_us: 10,
            payload: (),
        }
    }

    fn config(late: LatePolicy) -> MergeConfig {
        MergeConfig {
            window_us: 1_000,
            late,
        }
    }

    fn drain(merge: &mut Merge<()>, now_us: u64) -> Vec<(u64, u64, Option<u64>)> {
        std::iter::from_fn(|| merge.poll(now_us))
            .map(|m| (m.source, m.seq, m.late_by_us))
            .collect()
    }

    #[test]
    fn releases_in_time_order_after_the_window() {
        let mut merge = Merge::new(config(LatePolicy::Drop));
        assert_eq!(merge.push(100, arrival(1, 0, 50)), Pushed::Held);
        assert_eq!(merge.push(200, arrival(2, 0, 20)), Pushed::Held);
        assert_eq!(merge.push(300, arrival(1, 1, 60)), Pushed::Held);
        assert_eq!(merge.poll_timeout(), Some(1_020));
        assert!(drain(&mut merge, 1_019).is_empty());
        assert_eq!(drain(&mut merge, 1_050), [(2, 0, None), (1, 0, None)]);
        assert_eq!(drain(&mut merge, 5_000), [(1, 1, None)]);
        assert_eq!(merge.poll_timeout(), None);
    }

    #[test]
    fn late_messages_are_dropped_or_flagged_and_duplicates_dropped() {
        for policy in [LatePolicy::Drop, LatePolicy::Deliver] {
            let mut merge = Merge::new(config(policy));
            merge.push(0, arrival(1, 0, 500));
            assert_eq!(drain(&mut merge, 1_500).len(), 1);
            assert_eq!(
                merge.push(1_600, arrival(2, 0, 400)),
                Pushed::Late { by_us: 100 }
            );
            assert_eq!(merge.push(1_600, arrival(1, 0, 500)), Pushed::Duplicate);
            let out = drain(&mut merge, 1_600);
            let stats = merge.stats();
            assert_eq!(stats.duplicates, 1);
            match policy {
                LatePolicy::Drop => {
                    assert!(out.is_empty());
                    assert_eq!(stats.late_dropped, 1);
                }
                LatePolicy::Deliver => {
                    assert_eq!(out, [(2, 0, Some(100))]);
                    assert_eq!(stats.late_delivered, 1);
                }
            }
            assert_eq!(merge.checkpoint().next_seq[&2], 1);
        }
    }

    #[test]
    fn a_source_keeps_its_order_when_its_estimate_moves_back() {
        let mut merge = Merge::new(config(LatePolicy::Drop));
        merge.push(0, arrival(1, 0, 500));
        merge.push(0, arrival(1, 1, 480));
        let out: Vec<_> = std::iter::from_fn(|| merge.flush()).collect();
        assert_eq!(
            (out[1].seq, out[1].time_us, out[1].error_bound_us),
            (1, 500, 30)
        );
    }

    #[test]
    fn a_restored_merge_drops_what_was_released_and_keeps_what_was_held() {
        let mut merge = Merge::new(config(LatePolicy::Drop));
        merge.push(0, arrival(1, 0, 100));
        merge.push(0, arrival(1, 1, 2_000));
        merge.push(0, arrival(2, 0, 1_500));
        assert_eq!(drain(&mut merge, 1_200), [(1, 0, None)]);
        let checkpoint = merge.checkpoint();
        assert_eq!(checkpoint.next_seq, BTreeMap::from([(1, 1), (2, 0)]));
        assert_eq!(checkpoint.released_up_to_us, Some(100));

        // Restarted: the sources send again from the checkpoint; the
        // estimate now puts source 2's message a little earlier.
        let mut merge = Merge::restore(config(LatePolicy::Drop), &checkpoint);
        assert_eq!(merge.push(5_000, arrival(1, 0, 100)), Pushed::Duplicate);
        assert_eq!(merge.push(5_000, arrival(1, 1, 2_000)), Pushed::Held);
        assert_eq!(merge.push(5_000, arrival(2, 0, 90)), Pushed::Held);
        assert_eq!(drain(&mut merge, 5_000), [(2, 0, None), (1, 1, None)]);
    }
}
