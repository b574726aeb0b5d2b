//! The bottleneck: serialisation at a fixed rate behind a tail-drop queue.
//!
//! When a link has a `rate_bps`, every admitted packet occupies the
//! bottleneck for `size * 8 / rate` seconds, one after the other (FIFO). The
//! queue holds every admitted packet whose serialisation has not finished,
//! the one on the wire included; a packet that would push the queue past
//! `queue_bytes` is tail-dropped. [`Link::send`](crate::Link::send) calls
//! [`Bottleneck::admit`] with the caller's `now` and gets back the instant
//! the packet has left the bottleneck, to which propagation delay is added.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::instant::{duration_from_nanos, later};

/// State of the rate limiter: when it is next free and what it still holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bottleneck {
    /// When the last admitted packet finishes serialisation.
    busy_until: Option<Instant>,
    /// Admitted packets not yet fully serialised: (finish time, size).
    backlog: VecDeque<(Instant, usize)>,
    /// Sum of the sizes in `backlog`.
    backlog_bytes: usize,
}

impl Bottleneck {
    /// Offers a packet of `size` bytes at `now`. Returns when it has been
    /// fully serialised, or `None` if the queue is full (tail drop).
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        size: usize,
        rate_bps: u64,
        queue_bytes: usize,
    ) -> Option<Instant> {
        while let Some(&(finish, bytes)) = self.backlog.front() {
            if finish > now {
                break;
            }
            self.backlog.pop_front();
            self.backlog_bytes = self.backlog_bytes.saturating_sub(bytes);
        }
        if size > queue_bytes.saturating_sub(self.backlog_bytes) {
            return None;
        }
        let begin = match self.busy_until {
            Some(busy) if busy > now => busy,
            _ => now,
        };
        let finish = later(begin, serialisation_time(size, rate_bps));
        self.busy_until = Some(finish);
        self.backlog.push_back((finish, size));
        self.backlog_bytes = self.backlog_bytes.saturating_add(size);
        Some(finish)
    }

    /// Bytes admitted but not yet serialised as of the last `admit`.
    #[cfg(test)]
    pub(crate) fn backlog_bytes(&self) -> usize {
        self.backlog_bytes
    }
}

/// Time to put `size` bytes on a wire of `rate_bps` bits per second, rounded
/// up to the nanosecond. A zero rate (rejected by validation) is treated as
/// 1 bit/s rather than dividing by zero.
pub(crate) fn serialisation_time(size: usize, rate_bps: u64) -> Duration {
    let bits = size as u128 * 8;
    let rate = u128::from(rate_bps.max(1));
    duration_from_nanos((bits * 1_000_000_000).div_ceil(rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn serialisation() {
        assert_eq!(serialisation_time(1000, 8_000_000), MS);
        assert_eq!(serialisation_time(0, 1), Duration::ZERO);
        assert_eq!(serialisation_time(1, 3), Duration::new(2, 666_666_667));
        assert_eq!(serialisation_time(10, 0), Duration::from_secs(80));
        // Never panics on extremes.
        let _ = serialisation_time(usize::MAX, 1);
    }

    #[test]
    fn queue_counts_unfinished_packets() {
        let now = Instant::now();
        let mut b = Bottleneck::default();
        // 8 Mbit/s, 1000-byte packets: 1ms each; queue of 3000 bytes.
        assert_eq!(b.admit(now, 1000, 8_000_000, 3000), Some(now + MS));
        assert_eq!(b.admit(now, 1000, 8_000_000, 3000), Some(now + 2 * MS));
        assert_eq!(b.admit(now, 1000, 8_000_000, 3000), Some(now + 3 * MS));
        assert_eq!(b.admit(now, 1000, 8_000_000, 3000), None);
        assert_eq!(b.backlog_bytes(), 3000);
        // After the first finishes, one more fits, behind the others.
        assert_eq!(b.admit(now + MS, 1000, 8_000_000, 3000), Some(now + 4 * MS));
        // An idle link starts serialising at `now`.
        assert_eq!(
            b.admit(now + 10 * MS, 500, 8_000_000, 3000),
            Some(now + 10 * MS + MS / 2)
        );
        assert_eq!(b.backlog_bytes(), 500);
        // A packet larger than the whole queue never fits.
        assert_eq!(b.admit(now + 20 * MS, 3001, 8_000_000, 3000), None);
    }
}
