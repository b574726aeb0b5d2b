//! Overflow-free arithmetic on caller-supplied instants.
//!
//! `Instant + Duration` panics on overflow. Durations in a validated
//! configuration are bounded by [`MAX_DURATION`](crate::MAX_DURATION), so
//! overflow cannot happen in practice, but the link must never panic whatever
//! instants a caller passes, so every addition goes through [`later`].

use std::time::{Duration, Instant};

/// `t + d`, or `t` itself in the (practically unreachable) case where the
/// sum is not representable.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

/// Converts a nanosecond count to a `Duration`, saturating at `Duration::MAX`.
pub(crate) fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        // The remainder is below 10^9, so it fits in a u32.
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates() {
        let now = Instant::now();
        assert_eq!(later(now, Duration::MAX), now);
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(duration_from_nanos(u128::MAX), Duration::MAX);
        assert_eq!(
            duration_from_nanos(1_500_000_000),
            Duration::from_millis(1500)
        );
    }
}
