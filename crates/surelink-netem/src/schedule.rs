//! Link cuts: planned outages and periodic flapping.
//!
//! A [`CutSchedule`] says when a link is down, as offsets from the link's
//! creation (the `start` instant given to [`Link::new`](crate::Link::new)).
//! It holds a list of one-off [`Cut`]s and an optional repeating [`Flap`].
//! A [`Link`](crate::Link) asks [`CutSchedule::is_cut`] for every packet it
//! is handed; a packet sent while the link is cut is dropped.
//! On-demand cuts ([`Link::set_cut`](crate::Link::set_cut)) are separate and
//! add to the schedule.

use std::time::Duration;

use crate::config::check_duration;
use crate::NetemError;

/// One planned outage: the link is down during `[start, start + duration)`,
/// measured from link creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cut {
    /// When the outage begins, as an offset from link creation.
    pub start: Duration,
    /// How long the outage lasts.
    pub duration: Duration,
}

impl Cut {
    /// Whether `offset` (since link creation) falls inside this cut.
    pub fn contains(&self, offset: Duration) -> bool {
        offset >= self.start && offset - self.start < self.duration
    }
}

/// A repeating outage: in every `period` the link is up for
/// `period - down`, then down for `down`, starting at link creation.
///
/// So with `period = 500ms, down = 100ms` the link is down during
/// `[400ms, 500ms)`, `[900ms, 1000ms)`, and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flap {
    /// Length of one up+down cycle. Must be greater than zero.
    pub period: Duration,
    /// Down time at the end of each cycle. At most `period`.
    pub down: Duration,
}

impl Flap {
    /// Whether `offset` (since link creation) falls in a down phase.
    pub fn contains(&self, offset: Duration) -> bool {
        let period = self.period.as_nanos();
        if period == 0 {
            return false;
        }
        let phase = offset.as_nanos() % period;
        phase >= period - self.down.as_nanos().min(period)
    }
}

/// When a link is down: a list of one-off cuts plus an optional flap.
///
/// The default schedule never cuts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CutSchedule {
    /// One-off outages, in any order; they may overlap.
    pub cuts: Vec<Cut>,
    /// A repeating outage, if any.
    pub flap: Option<Flap>,
}

impl CutSchedule {
    /// A schedule that never cuts the link.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a one-off cut of `duration` beginning `start` after link creation.
    pub fn with_cut(mut self, start: Duration, duration: Duration) -> Self {
        self.cuts.push(Cut { start, duration });
        self
    }

    /// Sets the repeating flap (see [`Flap`]).
    pub fn with_flap(mut self, period: Duration, down: Duration) -> Self {
        self.flap = Some(Flap { period, down });
        self
    }

    /// Whether this schedule never cuts.
    pub fn is_empty(&self) -> bool {
        self.cuts.is_empty() && self.flap.is_none()
    }

    /// Whether the link is down at `offset` after link creation.
    pub fn is_cut(&self, offset: Duration) -> bool {
        self.cuts.iter().any(|cut| cut.contains(offset))
            || self.flap.is_some_and(|flap| flap.contains(offset))
    }

    /// Checks durations against [`MAX_DURATION`](crate::MAX_DURATION) and the
    /// flap for a non-zero period and a down time no longer than it.
    pub fn validate(&self) -> Result<(), NetemError> {
        for cut in &self.cuts {
            check_duration("cut-at", cut.start)?;
            check_duration("cut-for", cut.duration)?;
        }
        if let Some(flap) = self.flap {
            check_duration("flap period", flap.period)?;
            check_duration("flap down", flap.down)?;
            if flap.period.is_zero() {
                return Err(NetemError::ZeroFlapPeriod);
            }
            if flap.down > flap.period {
                return Err(NetemError::FlapDownExceedsPeriod {
                    period: flap.period,
                    down: flap.down,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn cut_is_half_open() {
        let cut = Cut {
            start: 5 * MS,
            duration: 2 * MS,
        };
        assert!(!cut.contains(4 * MS));
        assert!(cut.contains(5 * MS));
        assert!(cut.contains(7 * MS - Duration::from_nanos(1)));
        assert!(!cut.contains(7 * MS));
        let empty = Cut {
            start: 5 * MS,
            duration: Duration::ZERO,
        };
        assert!(!empty.contains(5 * MS));
    }

    #[test]
    fn flap_phases() {
        let flap = Flap {
            period: 500 * MS,
            down: 100 * MS,
        };
        assert!(!flap.contains(Duration::ZERO));
        assert!(!flap.contains(399 * MS));
        assert!(flap.contains(400 * MS));
        assert!(flap.contains(499 * MS));
        assert!(!flap.contains(500 * MS));
        assert!(flap.contains(900 * MS));
        let always = Flap {
            period: 10 * MS,
            down: 10 * MS,
        };
        assert!(always.contains(Duration::ZERO) && always.contains(15 * MS));
        let never = Flap {
            period: 10 * MS,
            down: Duration::ZERO,
        };
        assert!(!never.contains(9 * MS));
    }

    #[test]
    fn schedule_validation() {
        assert!(CutSchedule::none().validate().is_ok());
        assert!(CutSchedule::none().is_empty());
        assert_eq!(
            CutSchedule::none()
                .with_flap(Duration::ZERO, Duration::ZERO)
                .validate(),
            Err(NetemError::ZeroFlapPeriod)
        );
        assert!(matches!(
            CutSchedule::none().with_flap(MS, 2 * MS).validate(),
            Err(NetemError::FlapDownExceedsPeriod { .. })
        ));
        assert!(matches!(
            CutSchedule::none().with_cut(Duration::MAX, MS).validate(),
            Err(NetemError::DurationTooLong { name: "cut-at", .. })
        ));
    }
}
