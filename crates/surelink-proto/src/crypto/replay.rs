//! Anti-replay: a sliding window over authenticated packet numbers.
//!
//! Only packets that passed authentication are recorded, so a forger cannot
//! move the window. A packet number seen before, or older than the window
//! (1024 numbers below the highest seen), is rejected.

const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// Which packet numbers were already accepted.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            highest: None,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    fn bit(pn: u64) -> (usize, u64) {
        (((pn / 64) % WORDS as u64) as usize, 1 << (pn % 64))
    }

    /// True if `pn` would be accepted (not seen, not too old).
    pub fn check(&self, pn: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if pn > h => true,
            Some(h) if h - pn >= WINDOW => false,
            Some(_) => {
                let (w, m) = Self::bit(pn);
                self.bits[w] & m == 0
            }
        }
    }

    /// Records an authenticated `pn` (call only after `check` passed).
    pub fn record(&mut self, pn: u64) {
        match self.highest {
            Some(h) if pn <= h => {}
            prev => {
                // Clear the bits of numbers that enter the window afresh.
                let from = prev.map_or(0, |h| h + 1);
                if pn - from >= WINDOW {
                    self.bits = [0; WORDS];
                } else {
                    for n in from..=pn {
                        let (w, m) = Self::bit(n);
                        self.bits[w] &= !m;
                    }
                }
                self.highest = Some(pn);
            }
        }
        let (w, m) = Self::bit(pn);
        self.bits[w] |= m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn matches_a_set_within_the_window(pns in proptest::collection::vec(0u64..5000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = BTreeSet::new();
            let mut highest = None::<u64>;
            for pn in pns {
                let too_old = highest.is_some_and(|h| pn + WINDOW <= h);
                let expect = !too_old && !seen.contains(&pn);
                prop_assert_eq!(w.check(pn), expect, "pn {}", pn);
                if expect {
                    w.record(pn);
                    seen.insert(pn);
                    highest = Some(highest.map_or(pn, |h| h.max(pn)));
                }
            }
        }
    }
}
