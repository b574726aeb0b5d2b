//! Random loss models: independent (Bernoulli) loss and Gilbert-Elliott bursts.
//!
//! Independent loss drops each packet with a fixed probability. The
//! [`GilbertElliott`] model adds *correlated* loss: a two-state Markov chain
//! (Good, Bad) that advances once per packet, with a loss probability per
//! state. Long stays in the Bad state produce the loss bursts seen on real
//! wireless and congested paths.
//!
//! A [`Link`](crate::Link) drives both: for every packet that is not cut it
//! first asks the burst chain ([`BurstState::lose`]), then the independent
//! loss ([`bernoulli`]), each with its own random stream.

use rand::Rng;

use crate::NetemError;

/// Parameters of the Gilbert-Elliott burst-loss model.
///
/// The chain starts in the Good state. For each packet, the packet is lost
/// with the loss probability of the current state, then the chain moves
/// Good→Bad with `p_good_to_bad` or Bad→Good with `p_bad_to_good`.
///
/// With `loss_good = 0` and `loss_bad = 1` this is the classic Gilbert model;
/// the mean burst length is then `1 / p_bad_to_good` packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from Good to Bad after a packet (`p`).
    pub p_good_to_bad: f64,
    /// Probability of moving from Bad to Good after a packet (`r`).
    pub p_bad_to_good: f64,
    /// Loss probability while in the Good state (`1 - k`).
    pub loss_good: f64,
    /// Loss probability while in the Bad state (`1 - h`).
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The classic Gilbert model: no loss in Good, every packet lost in Bad.
    pub fn gilbert(p_good_to_bad: f64, p_bad_to_good: f64) -> Self {
        Self {
            p_good_to_bad,
            p_bad_to_good,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// Checks that all four parameters are probabilities in `0..=1`.
    pub fn validate(&self) -> Result<(), NetemError> {
        check_probability("burst.p_good_to_bad", self.p_good_to_bad)?;
        check_probability("burst.p_bad_to_good", self.p_bad_to_good)?;
        check_probability("burst.loss_good", self.loss_good)?;
        check_probability("burst.loss_bad", self.loss_bad)?;
        Ok(())
    }

    /// Long-run fraction of packets that see the Bad state: `p / (p + r)`.
    ///
    /// When both transition probabilities are zero the chain never leaves
    /// its initial Good state, so this is `0`.
    pub fn stationary_bad(&self) -> f64 {
        let total = self.p_good_to_bad + self.p_bad_to_good;
        if total > 0.0 {
            self.p_good_to_bad / total
        } else {
            0.0
        }
    }

    /// Long-run loss rate of this model alone:
    /// `π_bad · loss_bad + π_good · loss_good`.
    pub fn mean_loss(&self) -> f64 {
        let bad = self.stationary_bad();
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }

    /// Mean number of consecutive packets spent in the Bad state
    /// (`1 / p_bad_to_good`), or infinity if the Bad state is absorbing.
    pub fn mean_bad_run(&self) -> f64 {
        if self.p_bad_to_good > 0.0 {
            1.0 / self.p_bad_to_good
        } else {
            f64::INFINITY
        }
    }
}

/// The current state of a Gilbert-Elliott chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum BurstState {
    /// Few or no losses.
    #[default]
    Good,
    /// Many or all packets lost.
    Bad,
}

impl BurstState {
    /// Decides the fate of one packet in the current state, then advances
    /// the chain. Returns `true` if the packet is lost.
    pub(crate) fn lose<R: Rng>(&mut self, model: &GilbertElliott, rng: &mut R) -> bool {
        let (loss, leave) = match self {
            BurstState::Good => (model.loss_good, model.p_good_to_bad),
            BurstState::Bad => (model.loss_bad, model.p_bad_to_good),
        };
        let lost = bernoulli(rng, loss);
        if bernoulli(rng, leave) {
            *self = match self {
                BurstState::Good => BurstState::Bad,
                BurstState::Bad => BurstState::Good,
            };
        }
        lost
    }
}

/// Returns `true` with probability `p`. Never panics: `p <= 0` (or NaN) is
/// never true, `p >= 1` is always true.
pub(crate) fn bernoulli<R: Rng>(rng: &mut R, p: f64) -> bool {
    if p <= 0.0 || p.is_nan() {
        return false;
    }
    if p >= 1.0 {
        return true;
    }
    rng.gen::<f64>() < p
}

/// Checks that `value` is a probability in `0..=1` (NaN is rejected).
pub(crate) fn check_probability(name: &'static str, value: f64) -> Result<(), NetemError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(NetemError::InvalidProbability { name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn stationary_values() {
        let ge = GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.3,
            loss_good: 0.0,
            loss_bad: 0.5,
        };
        assert!((ge.stationary_bad() - 0.01 / 0.31).abs() < 1e-12);
        assert!((ge.mean_loss() - 0.5 * 0.01 / 0.31).abs() < 1e-12);
        assert!((ge.mean_bad_run() - 1.0 / 0.3).abs() < 1e-12);
        let stuck = GilbertElliott::gilbert(0.0, 0.0);
        assert_eq!(stuck.stationary_bad(), 0.0);
        assert_eq!(stuck.mean_loss(), 0.0);
        assert!(stuck.mean_bad_run().is_infinite());
    }

    #[test]
    fn bernoulli_extremes() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..1000 {
            assert!(!bernoulli(&mut rng, 0.0));
            assert!(!bernoulli(&mut rng, f64::NAN));
            assert!(bernoulli(&mut rng, 1.0));
        }
    }

    #[test]
    fn gilbert_bursts_are_runs() {
        // In the classic Gilbert model, losses happen exactly while in Bad.
        let ge = GilbertElliott::gilbert(0.05, 0.25);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut state = BurstState::Good;
        let mut runs = 0u32;
        let mut lost_total = 0u32;
        let mut previous = false;
        for _ in 0..100_000 {
            let lost = state.lose(&ge, &mut rng);
            if lost && !previous {
                runs += 1;
            }
            lost_total += u32::from(lost);
            previous = lost;
        }
        let mean_run = f64::from(lost_total) / f64::from(runs);
        assert!((mean_run - 4.0).abs() < 0.4, "mean run {mean_run}");
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let mut ge = GilbertElliott::gilbert(0.1, 0.2);
        assert!(ge.validate().is_ok());
        ge.loss_bad = 1.5;
        assert_eq!(
            ge.validate(),
            Err(NetemError::InvalidProbability {
                name: "burst.loss_bad",
                value: 1.5
            })
        );
        ge.loss_bad = 1.0;
        ge.p_bad_to_good = f64::NAN;
        assert!(ge.validate().is_err());
    }
}
