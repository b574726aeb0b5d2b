//! Small helpers shared by the runtime's modules.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The runtime's clock: tokio's, as a std instant. Every time the runtime
/// reads goes through here, so that a test on a paused tokio clock
/// (`start_paused`, and the [`sim`](crate::sim) network) runs on virtual
/// time. Outside a runtime it is the system's monotonic clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The wall clock in µs since the Unix epoch: the clock connections timestamp
/// with, so that peers' clock estimates relate real times.
pub(crate) fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Formats a duration the way people write it: `300ms`, `10s`, `1.5s`, `250us`.
pub(crate) fn display_duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros == 0 {
        "0s".to_owned()
    } else if micros % 1_000_000 == 0 {
        format!("{}s", micros / 1_000_000)
    } else if micros >= 1_000_000 {
        format!("{}s", d.as_secs_f64())
    } else if micros % 1_000 == 0 {
        format!("{}ms", micros / 1_000)
    } else {
        format!("{micros}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(display_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(display_duration(Duration::from_secs(10)), "10s");
        assert_eq!(display_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(display_duration(Duration::from_micros(250)), "250us");
        assert_eq!(display_duration(Duration::ZERO), "0s");
    }
}
