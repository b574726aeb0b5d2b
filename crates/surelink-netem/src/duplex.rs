//! Both directions of an impaired link: [`Duplex`].
//!
//! A `Duplex` is two independent [`Link`]s, `a_to_b` and `b_to_a`, built from
//! one seed. Each direction gets its own seed derived deterministically from
//! it, so the two directions draw unrelated random decisions. Drive each
//! direction as a `Link`; the helpers here act on both at once.

use std::time::Instant;

use crate::{splitmix64, Link, LinkConfig, NetemError};

/// Two directions of an impaired link between endpoints A and B.
#[derive(Debug, Clone)]
pub struct Duplex<P> {
    /// Packets travelling from A to B.
    pub a_to_b: Link<P>,
    /// Packets travelling from B to A.
    pub b_to_a: Link<P>,
}

impl<P> Duplex<P> {
    /// Builds both directions, each from its own config, with per-direction
    /// seeds derived from `seed` (see [`Duplex::direction_seeds`]).
    pub fn new(
        a_to_b: LinkConfig,
        b_to_a: LinkConfig,
        seed: u64,
        start: Instant,
    ) -> Result<Self, NetemError> {
        let (seed_ab, seed_ba) = Self::direction_seeds(seed);
        Ok(Self {
            a_to_b: Link::new(a_to_b, seed_ab, start)?,
            b_to_a: Link::new(b_to_a, seed_ba, start)?,
        })
    }

    /// Builds both directions with the same config (but different random
    /// decisions).
    pub fn symmetric(config: LinkConfig, seed: u64, start: Instant) -> Result<Self, NetemError> {
        Self::new(config.clone(), config, seed, start)
    }

    /// The seeds used for `a_to_b` and `b_to_a` given the duplex seed.
    pub fn direction_seeds(seed: u64) -> (u64, u64) {
        (
            splitmix64(seed ^ 0xA2B0_0000_0000_0001),
            splitmix64(seed ^ 0xB2A0_0000_0000_0002),
        )
    }

    /// Cuts or restores both directions on demand.
    pub fn set_cut(&mut self, cut: bool) {
        self.a_to_b.set_cut(cut);
        self.b_to_a.set_cut(cut);
    }

    /// The earliest pending delivery in either direction.
    pub fn next_delivery(&self) -> Option<Instant> {
        match (self.a_to_b.next_delivery(), self.b_to_a.next_delivery()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn directions_are_independent_and_deterministic() {
        let (a, b) = Duplex::<()>::direction_seeds(5);
        assert_ne!(a, b);
        assert_eq!((a, b), Duplex::<()>::direction_seeds(5));
        assert_ne!((a, b), Duplex::<()>::direction_seeds(6));

        let t0 = Instant::now();
        let config = LinkConfig::clean().with_loss(0.5);
        let mut d = Duplex::symmetric(config, 5, t0).unwrap();
        let ab: Vec<bool> = (0..64)
            .map(|_| d.a_to_b.send(t0, 1, ()).is_dropped())
            .collect();
        let ba: Vec<bool> = (0..64)
            .map(|_| d.b_to_a.send(t0, 1, ()).is_dropped())
            .collect();
        assert_ne!(ab, ba);
    }

    #[test]
    fn helpers_act_on_both() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut d = Duplex::new(
            LinkConfig::clean().with_delay(3 * ms),
            LinkConfig::clean().with_delay(ms),
            1,
            t0,
        )
        .unwrap();
        assert_eq!(d.next_delivery(), None);
        d.a_to_b.send(t0, 1, 1u8);
        assert_eq!(d.next_delivery(), Some(t0 + 3 * ms));
        d.b_to_a.send(t0, 1, 2u8);
        assert_eq!(d.next_delivery(), Some(t0 + ms));
        d.set_cut(true);
        assert!(d.a_to_b.is_cut(t0) && d.b_to_a.is_cut(t0));
        assert!(Duplex::<u8>::new(
            LinkConfig::clean(),
            LinkConfig::clean().with_loss(9.0),
            1,
            t0
        )
        .is_err());
    }
}
