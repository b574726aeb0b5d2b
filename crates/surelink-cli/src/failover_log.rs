//! Which "data moved to another path" events reach the log.
//!
//! During a switchover a receiver can see its data path flip back and forth
//! many times within a few milliseconds (packets still in flight on the old
//! path interleave with those on the new one, and the receiver follows each).
//! One line per flip buries the news, so [`FailoverLog`] logs the first move
//! at once, folds the moves that follow within [`SETTLE`] into one, and, once
//! the moves have stopped for that long, logs where the data settled if that
//! is not where the first line said. The caller feeds it the events and the
//! time (so the policy runs on any clock) and calls [`FailoverLog::settle`]
//! at [`FailoverLog::deadline`].

use std::time::{Duration, Instant};

/// How long the path must stay put before a burst of moves is over.
pub const SETTLE: Duration = Duration::from_secs(1);

/// A line to log about the data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverLine {
    /// The data moved (the first move of a burst).
    Moved {
        /// The path it left.
        from: usize,
        /// The path it took.
        to: usize,
    },
    /// A burst of moves ended on a path other than the one first logged.
    Settled {
        /// Where the data is now.
        on: usize,
        /// Moves folded into this line.
        moves: u64,
    },
}

/// The state of the fold: the last logged path and the burst in progress.
#[derive(Debug, Default)]
pub struct FailoverLog {
    /// The path the last line announced.
    logged: Option<usize>,
    /// The current path, if moves were folded since the last line.
    current: Option<usize>,
    /// Moves folded since the last line.
    folded: u64,
    /// When the burst ends if nothing else moves.
    deadline: Option<Instant>,
}

impl FailoverLog {
    /// A data move from `from` to `to` at `now`: the line to log, if any.
    pub fn on_move(&mut self, now: Instant, from: usize, to: usize) -> Option<FailoverLine> {
        let burst = self.deadline.is_some();
        self.deadline = Some(now + SETTLE);
        if burst {
            self.current = Some(to);
            self.folded += 1;
            return None;
        }
        self.logged = Some(to);
        self.current = None;
        self.folded = 0;
        Some(FailoverLine::Moved { from, to })
    }

    /// When [`settle`](Self::settle) is due, if a burst is in progress.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Ends the burst if nothing moved for [`SETTLE`] before `now`: a line
    /// if the data ended elsewhere than the last line said.
    pub fn settle(&mut self, now: Instant) -> Option<FailoverLine> {
        if self.deadline.is_none_or(|d| now < d) {
            return None;
        }
        self.deadline = None;
        let moves = std::mem::take(&mut self.folded);
        let on = self.current.take()?;
        if Some(on) == self.logged {
            return None;
        }
        self.logged = Some(on);
        Some(FailoverLine::Settled { on, moves })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_flips_is_one_line() {
        let start = Instant::now();
        let mut log = FailoverLog::default();
        assert_eq!(
            log.on_move(start, 0, 1),
            Some(FailoverLine::Moved { from: 0, to: 1 })
        );
        // 29 more flips within 20 ms, ending on path 1 again.
        for i in 0..29u32 {
            let (from, to) = if i % 2 == 0 { (1, 0) } else { (0, 1) };
            let at = start + Duration::from_micros(700 * u64::from(i + 1));
            assert_eq!(log.on_move(at, from, to), None);
        }
        let deadline = log.deadline().expect("a burst in progress");
        assert_eq!(log.settle(deadline - Duration::from_millis(1)), None);
        // It ended on path 0: one line says so.
        assert_eq!(
            log.settle(deadline),
            Some(FailoverLine::Settled { on: 0, moves: 29 })
        );
        assert_eq!(log.deadline(), None);
        // The next move is news again.
        let later = deadline + Duration::from_secs(5);
        assert_eq!(
            log.on_move(later, 0, 1),
            Some(FailoverLine::Moved { from: 0, to: 1 })
        );
    }

    #[test]
    fn a_burst_that_ends_where_it_was_announced_adds_nothing() {
        let start = Instant::now();
        let mut log = FailoverLog::default();
        assert!(log.on_move(start, 0, 1).is_some());
        assert_eq!(log.on_move(start + Duration::from_millis(1), 1, 0), None);
        assert_eq!(log.on_move(start + Duration::from_millis(2), 0, 1), None);
        let deadline = log.deadline().expect("burst");
        assert_eq!(deadline, start + Duration::from_millis(2) + SETTLE);
        assert_eq!(log.settle(deadline), None);
        assert_eq!(log.deadline(), None);
    }
}
