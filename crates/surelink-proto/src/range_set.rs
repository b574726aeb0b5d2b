//! A set of `u64` values stored as disjoint half-open ranges.
//!
//! Used for received packet numbers (to build ACK frames) and for the byte
//! ranges of a message that have arrived or been acknowledged. Insertion merges
//! adjacent and overlapping ranges and reports how many values were new.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-adjacent half-open ranges, keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the set holds no value.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts `r` and returns how many of its values were not yet present.
    pub fn insert(&mut self, r: Range<u64>) -> u64 {
        if r.start >= r.end {
            return 0;
        }
        let (mut start, mut end) = (r.start, r.end);
        let mut covered = 0;
        // Merge with a range that starts at or before `start` and reaches it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                if e >= end {
                    return 0;
                }
                // The common case (values arriving in order): it extends
                // that range and reaches no later one; the range grows in
                // place, with no removal and reinsertion.
                if self.map.range(start + 1..=end).next().is_none() {
                    self.map.insert(s, end);
                    return end - e;
                }
                covered += e - start;
                start = s;
                self.map.remove(&s);
            }
        }
        // Absorb every range starting inside [start, end].
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            self.map.remove(&s);
            let overlap_end = e.min(end);
            covered += overlap_end.saturating_sub(s.max(r.start));
            end = end.max(e);
        }
        self.map.insert(start, end);
        (r.end - r.start) - covered
    }

    /// True if `v` is in the set.
    pub fn contains(&self, v: u64) -> bool {
        self.map
            .range(..=v)
            .next_back()
            .is_some_and(|(_, &e)| v < e)
    }

    /// True if every value of `r` is in the set.
    pub fn contains_range(&self, r: &Range<u64>) -> bool {
        r.is_empty()
            || self
                .map
                .range(..=r.start)
                .next_back()
                .is_some_and(|(_, &e)| r.end <= e)
    }

    /// The largest value in the set.
    pub fn max(&self) -> Option<u64> {
        self.map.iter().next_back().map(|(_, &e)| e - 1)
    }

    /// The smallest value in the set.
    pub fn min(&self) -> Option<u64> {
        self.map.keys().next().copied()
    }

    /// Removes every value below `floor`.
    pub fn remove_below(&mut self, floor: u64) {
        while let Some((&s, &e)) = self.map.iter().next() {
            if s >= floor {
                break;
            }
            self.map.remove(&s);
            if e > floor {
                self.map.insert(floor, e);
                break;
            }
        }
    }

    /// Drops the lowest ranges until at most `n` remain.
    pub fn keep_highest(&mut self, n: usize) {
        while self.map.len() > n {
            self.map.pop_first();
        }
    }

    /// Ranges in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// The parts of `r` that are not in the set, ascending.
    pub fn gaps_in(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        if r.is_empty() {
            return out;
        }
        let mut cur = r.start;
        let first = self
            .map
            .range(..=r.start)
            .next_back()
            .map(|(&s, &e)| (s, e));
        let rest = self.map.range(r.start.saturating_add(1)..r.end);
        for (s, e) in first.into_iter().chain(rest.map(|(&s, &e)| (s, e))) {
            if e <= cur {
                continue;
            }
            if s > cur {
                out.push(cur..s.min(r.end));
            }
            cur = cur.max(e);
            if cur >= r.end {
                break;
            }
        }
        if cur < r.end {
            out.push(cur..r.end);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn matches_reference_model(ops in proptest::collection::vec((0u64..200, 0u64..20, 0u8..4), 0..60)) {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for (start, len, op) in ops {
                match op {
                    0 | 1 => {
                        let new = (start..start + len).filter(|v| !model.contains(v)).count() as u64;
                        model.extend(start..start + len);
                        prop_assert_eq!(set.insert(start..start + len), new);
                    }
                    2 => {
                        set.remove_below(start);
                        model.retain(|&v| v >= start);
                    }
                    _ => {
                        let gaps: Vec<u64> = set.gaps_in(start..start + len).into_iter().flatten().collect();
                        let expect: Vec<u64> = (start..start + len).filter(|v| !model.contains(v)).collect();
                        prop_assert_eq!(gaps, expect);
                        prop_assert_eq!(set.contains_range(&(start..start + len)), (start..start + len).all(|v| model.contains(&v)));
                    }
                }
                let flat: Vec<u64> = set.iter().flatten().collect();
                let expect: Vec<u64> = model.iter().copied().collect();
                prop_assert_eq!(flat, expect);
                // Ranges stay disjoint and non-adjacent.
                let rs: Vec<_> = set.iter().collect();
                for w in rs.windows(2) { prop_assert!(w[0].end < w[1].start); }
                for v in 0..220 { prop_assert_eq!(set.contains(v), model.contains(&v)); }
                prop_assert_eq!(set.max(), model.iter().next_back().copied());
                prop_assert_eq!(set.min(), model.iter().next().copied());
            }
        }
    }

    #[test]
    fn keep_highest_drops_oldest() {
        let mut s = RangeSet::new();
        for i in 0..10 {
            s.insert(i * 10..i * 10 + 5);
        }
        s.keep_highest(3);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![70..75, 80..85, 90..95]);
    }
}
