//! What impairments a link applies: [`LinkConfig`].
//!
//! A `LinkConfig` is plain data. Build one with [`LinkConfig::clean`] and the
//! `with_*` helpers, with a struct literal, or by parsing a spec string
//! (`"loss=2%,delay=10ms".parse()`, see the `spec` module). It is checked by
//! [`LinkConfig::validate`] whenever a [`Link`](crate::Link) is created or
//! reconfigured, so an invalid configuration is an error and never a panic.

use std::time::Duration;

use crate::loss::check_probability;
use crate::{CutSchedule, GilbertElliott, NetemError};

/// The longest duration accepted anywhere in a configuration: 10 years
/// (365-day years). Bounding durations keeps all instant arithmetic far from
/// overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The impairments applied by one direction of a link.
///
/// A packet handed to [`Link::send`](crate::Link::send) goes through, in order:
///
/// 1. **cuts**: dropped if the link is cut (schedule or on-demand);
/// 2. **burst**: dropped by the Gilbert-Elliott chain, if configured;
/// 3. **loss**: dropped with probability `loss`;
/// 4. **rate/queue**: if `rate_bps` is set, queued behind earlier packets for
///    serialisation at `rate_bps`, or tail-dropped if the queue would exceed
///    `queue_bytes`;
/// 5. **delay + jitter**: delivered `delay + U[0, jitter]` after leaving the
///    bottleneck, but never before the previously scheduled packet (jitter
///    alone keeps FIFO order);
/// 6. **reorder**: with probability `reorder`, held back an extra
///    `reorder_delay`, letting later packets overtake it;
/// 7. **duplicate**: with probability `duplicate`, a copy is scheduled with
///    its own jittered delay (after the bottleneck, FIFO with other packets).
///
/// # Spec syntax
///
/// `LinkConfig` implements `FromStr` and `Display` for a comma-separated list
/// of `key=value` items, as used on the command line:
///
/// ```text
/// loss=2%,burst=0.01:0.3:0.5,delay=10ms,jitter=1ms,reorder=1%,reorder-delay=5ms,
/// dup=0.5%,rate=10mbit,queue=64kb,cut-at=5s,cut-for=2s,flap=500ms/100ms
/// ```
///
/// | key | value | field |
/// |---|---|---|
/// | `loss` | probability | [`LinkConfig::loss`] |
/// | `burst` | `p:r[:loss_bad[:loss_good]]` (`loss_bad` defaults to 1, `loss_good` to 0) | [`LinkConfig::burst`] |
/// | `delay`, `jitter` | duration | [`LinkConfig::delay`], [`LinkConfig::jitter`] |
/// | `reorder` | probability | [`LinkConfig::reorder`] |
/// | `reorder-delay` | duration | [`LinkConfig::reorder_delay`] |
/// | `dup` (or `duplicate`) | probability | [`LinkConfig::duplicate`] |
/// | `rate` | rate (`bit`, `kbit`, `mbit`, `gbit`) | [`LinkConfig::rate_bps`] |
/// | `queue` | size (`b`, `kb`, `mb`) | [`LinkConfig::queue_bytes`] |
/// | `cut-at`, `cut-for` | durations, in pairs, repeatable | one [`Cut`](crate::Cut) per pair |
/// | `flap` | `period/down` durations | [`CutSchedule::flap`](crate::CutSchedule::flap) |
///
/// Probabilities are fractions (`0.02`) or percentages (`2%`); durations take
/// `ns`, `us`, `ms` or `s` and may be decimal (`1.5ms`); rates are bits per
/// second with decimal prefixes, sizes are bytes with binary prefixes
/// (`kb` = 1024, as in `tc`); units are case-insensitive. Keys may be
/// written with `_` instead of `-`. Each key other than `cut-at`/`cut-for`
/// may appear once. The empty string and `clean` mean no impairment. A
/// parsed spec is validated with [`LinkConfig::validate`]; errors name the
/// offending key and value.
///
/// `Display` writes every setting that differs from [`LinkConfig::clean`]
/// in this syntax (or `clean`), so that parsing it gives back an equal config.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Independent random loss probability, `0..=1`.
    pub loss: f64,
    /// Burst-loss model, applied in addition to `loss`.
    pub burst: Option<GilbertElliott>,
    /// One-way base delay.
    pub delay: Duration,
    /// Uniform extra delay in `[0, jitter]`; does not reorder on its own.
    pub jitter: Duration,
    /// Probability that a packet is held back by an extra `reorder_delay`.
    pub reorder: f64,
    /// How long a reordered packet is held back.
    pub reorder_delay: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Bottleneck rate in bits per second (`None`: infinitely fast).
    pub rate_bps: Option<u64>,
    /// Bottleneck queue limit in bytes, counting every admitted packet whose
    /// serialisation has not finished. Only used with `rate_bps`.
    /// `usize::MAX` means unlimited (the default).
    pub queue_bytes: usize,
    /// Planned link cuts; during a cut every packet is dropped.
    pub cuts: CutSchedule,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self::clean()
    }
}

impl LinkConfig {
    /// A perfect link: no loss, no delay, no rate limit, no cuts.
    pub fn clean() -> Self {
        Self {
            loss: 0.0,
            burst: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            duplicate: 0.0,
            rate_bps: None,
            queue_bytes: usize::MAX,
            cuts: CutSchedule::none(),
        }
    }

    /// Whether this configuration applies no impairment at all.
    pub fn is_clean(&self) -> bool {
        *self == Self::clean()
    }

    /// Sets the independent loss probability.
    pub fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }

    /// Sets the burst-loss model.
    pub fn with_burst(mut self, burst: GilbertElliott) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Sets the one-way base delay.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the jitter bound.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the reorder probability and how long reordered packets are held.
    pub fn with_reorder(mut self, reorder: f64, reorder_delay: Duration) -> Self {
        self.reorder = reorder;
        self.reorder_delay = reorder_delay;
        self
    }

    /// Sets the duplication probability.
    pub fn with_duplicate(mut self, duplicate: f64) -> Self {
        self.duplicate = duplicate;
        self
    }

    /// Sets the bottleneck rate in bits per second.
    pub fn with_rate(mut self, rate_bps: u64) -> Self {
        self.rate_bps = Some(rate_bps);
        self
    }

    /// Sets the bottleneck queue limit in bytes.
    pub fn with_queue(mut self, queue_bytes: usize) -> Self {
        self.queue_bytes = queue_bytes;
        self
    }

    /// Adds a one-off cut of `duration` beginning `start` after link creation.
    pub fn with_cut(mut self, start: Duration, duration: Duration) -> Self {
        self.cuts = self.cuts.with_cut(start, duration);
        self
    }

    /// Sets a repeating flap: down for `down` at the end of every `period`.
    pub fn with_flap(mut self, period: Duration, down: Duration) -> Self {
        self.cuts = self.cuts.with_flap(period, down);
        self
    }

    /// Checks that every setting makes sense: probabilities in `0..=1`,
    /// durations at most [`MAX_DURATION`], a non-zero rate and queue, a
    /// non-zero `reorder_delay` when reordering, and a sane cut schedule.
    pub fn validate(&self) -> Result<(), NetemError> {
        check_probability("loss", self.loss)?;
        if let Some(burst) = &self.burst {
            burst.validate()?;
        }
        check_duration("delay", self.delay)?;
        check_duration("jitter", self.jitter)?;
        check_probability("reorder", self.reorder)?;
        check_duration("reorder-delay", self.reorder_delay)?;
        if self.reorder > 0.0 && self.reorder_delay.is_zero() {
            return Err(NetemError::ReorderWithoutDelay {
                reorder: self.reorder,
            });
        }
        check_probability("dup", self.duplicate)?;
        if self.rate_bps == Some(0) {
            return Err(NetemError::ZeroRate);
        }
        if self.queue_bytes == 0 {
            return Err(NetemError::ZeroQueue);
        }
        self.cuts.validate()
    }
}

/// Checks that `value` is at most [`MAX_DURATION`].
pub(crate) fn check_duration(name: &'static str, value: Duration) -> Result<(), NetemError> {
    if value <= MAX_DURATION {
        Ok(())
    } else {
        Err(NetemError::DurationTooLong {
            name,
            value,
            max: MAX_DURATION,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn clean_is_valid_and_default() {
        assert!(LinkConfig::clean().validate().is_ok());
        assert!(LinkConfig::default().is_clean());
        assert!(!LinkConfig::clean().with_loss(0.1).is_clean());
    }

    #[test]
    fn builders_set_fields() {
        let c = LinkConfig::clean()
            .with_loss(0.02)
            .with_burst(GilbertElliott::gilbert(0.01, 0.3))
            .with_delay(10 * MS)
            .with_jitter(MS)
            .with_reorder(0.01, 5 * MS)
            .with_duplicate(0.005)
            .with_rate(10_000_000)
            .with_queue(65536)
            .with_cut(5000 * MS, 2000 * MS)
            .with_flap(500 * MS, 100 * MS);
        assert!(c.validate().is_ok());
        assert_eq!(c.loss, 0.02);
        assert_eq!(c.delay, 10 * MS);
        assert_eq!(c.rate_bps, Some(10_000_000));
        assert_eq!(c.queue_bytes, 65536);
        assert_eq!(c.cuts.cuts.len(), 1);
        assert!(c.cuts.flap.is_some());
    }

    #[test]
    fn validation_rejects_nonsense() {
        let bad = |c: LinkConfig| c.validate().unwrap_err();
        assert_eq!(
            bad(LinkConfig::clean().with_loss(1.5)),
            NetemError::InvalidProbability {
                name: "loss",
                value: 1.5
            }
        );
        assert!(matches!(
            bad(LinkConfig::clean().with_loss(-0.01)),
            NetemError::InvalidProbability { name: "loss", .. }
        ));
        assert!(matches!(
            bad(LinkConfig::clean().with_loss(f64::NAN)),
            NetemError::InvalidProbability { name: "loss", .. }
        ));
        assert!(matches!(
            bad(LinkConfig::clean().with_loss(f64::INFINITY)),
            NetemError::InvalidProbability { .. }
        ));
        assert!(matches!(
            bad(LinkConfig::clean().with_duplicate(2.0)),
            NetemError::InvalidProbability { name: "dup", .. }
        ));
        assert!(matches!(
            bad(LinkConfig::clean().with_reorder(-1.0, MS)),
            NetemError::InvalidProbability {
                name: "reorder",
                ..
            }
        ));
        assert!(matches!(
            bad(LinkConfig::clean().with_burst(GilbertElliott::gilbert(1.1, 0.5))),
            NetemError::InvalidProbability {
                name: "burst.p_good_to_bad",
                ..
            }
        ));
        assert_eq!(bad(LinkConfig::clean().with_rate(0)), NetemError::ZeroRate);
        assert_eq!(
            bad(LinkConfig::clean().with_queue(0)),
            NetemError::ZeroQueue
        );
        assert!(matches!(
            bad(LinkConfig::clean().with_reorder(0.1, Duration::ZERO)),
            NetemError::ReorderWithoutDelay { .. }
        ));
        assert!(matches!(
            bad(LinkConfig::clean().with_delay(Duration::MAX)),
            NetemError::DurationTooLong { name: "delay", .. }
        ));
        assert!(matches!(
            bad(LinkConfig::clean().with_jitter(MAX_DURATION + MS)),
            NetemError::DurationTooLong { name: "jitter", .. }
        ));
        assert_eq!(
            bad(LinkConfig::clean().with_flap(Duration::ZERO, Duration::ZERO)),
            NetemError::ZeroFlapPeriod
        );
        assert!(matches!(
            bad(LinkConfig::clean().with_flap(MS, 2 * MS)),
            NetemError::FlapDownExceedsPeriod { .. }
        ));
        // Boundaries are accepted.
        assert!(LinkConfig::clean()
            .with_loss(1.0)
            .with_delay(MAX_DURATION)
            .with_rate(1)
            .with_queue(1)
            .with_flap(MS, MS)
            .validate()
            .is_ok());
    }
}
