//! The FEC policy: whether to protect a deadline channel, and how much.
//!
//! [`FecConfig`] is what `--fec off|auto|ROWSxCOLS|K+M` says. For `auto`,
//! [`FecConfig::choose`] is a pure function of the sender's measurements
//! ([`LinkEstimate`]: loss rate, mean loss-burst length, RTT, the channel's
//! latency budget and its packet rate); the sender calls it again as they
//! change and re-sizes its encoder ([`FecEncoder::set_scheme`](super::FecEncoder::set_scheme)).
//!
//! The `auto` rule:
//!
//! - retransmission repairs a loss in about two round trips; when the budget
//!   allows that and loss is below [`AutoFec::min_loss`], FEC stays off;
//!   below two round trips it is on even at zero loss, since it is then the
//!   only repair in time;
//! - a group must close within [`AutoFec::group_budget_fraction`] of the
//!   budget at the stream's packet rate, which bounds the source count `k`
//!   (at most [`AutoFec::max_group`]);
//! - the repair count `m` is the smallest for which a group of `k + m`
//!   symbols fails (more than `m` losses) with probability at most
//!   [`AutoFec::target_failure`], losses coming in bursts of the measured mean
//!   length; `m` is capped by [`AutoFec::max_overhead`];
//! - when the budget leaves time for retransmission, a source FEC fails to
//!   rebuild is still retransmitted: with `r` attempts in time (one per 1.5
//!   round trips after the first round trip) it stays lost only if every
//!   copy is lost too, so the group may fail `1 / loss^r` times as often,
//!   and fewer repairs do (at 2 % loss and 4.6 round trips, one repair per
//!   group instead of three).
//!
//! The code is Reed-Solomon: it recovers the most at equal overhead
//! (measurements in docs/FEC.md).

use std::str::FromStr;
use std::time::Duration;

use super::{FecError, FecScheme, MAX_GROUP_REPAIRS};

/// What the sender has measured about a deadline channel and its path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkEstimate {
    /// Fraction of packets lost, `0..=1`.
    pub loss_rate: f64,
    /// Mean length of a loss burst in packets (1 for independent loss).
    pub mean_burst: f64,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// The channel's latency budget (its deadline).
    pub budget: Duration,
    /// Packets per second the channel sends.
    pub packet_rate: f64,
}

/// Parameters of the `auto` policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoFec {
    /// Loss rate below which FEC stays off when retransmission has time.
    pub min_loss: f64,
    /// Budget, in round trips, from which FEC stays off whatever the loss:
    /// retransmission then has two attempts in time, and repair packets
    /// would only compete with data for the congestion window.
    pub max_budget_rtts: f64,
    /// Largest group (source symbols).
    pub max_group: u8,
    /// Fraction of the budget within which a group must fill.
    pub group_budget_fraction: f64,
    /// Acceptable probability that a group has more losses than repairs.
    pub target_failure: f64,
    /// Most repair symbols per source symbol.
    pub max_overhead: f64,
}

impl Default for AutoFec {
    /// Off below 1 % loss when there is time to retransmit, and from a
    /// budget of 5 RTTs (measured on a 4 Mbit/s video stream at 10 % loss
    /// and 20 ms RTT: FEC lowered the loss at 3 and 4 RTTs, raised it at 6;
    /// docs/FEC.md); groups of at most
    /// 16 filling within a quarter of the budget; one group in a thousand may
    /// fail; at most 50 % overhead.
    fn default() -> Self {
        Self {
            min_loss: 0.01,
            max_budget_rtts: 5.0,
            max_group: 16,
            group_budget_fraction: 0.25,
            target_failure: 1e-3,
            max_overhead: 0.5,
        }
    }
}

/// The FEC setting of a deadline channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FecConfig {
    /// No FEC.
    Off,
    /// Always this scheme.
    Fixed(FecScheme),
    /// Redundancy sized from measurements by [`FecConfig::choose`].
    Auto(AutoFec),
}

impl FecConfig {
    /// The scheme to protect the channel with, given `estimate`, or `None`
    /// for no FEC. Never panics: rates outside `0..=1` are clamped and NaN
    /// counts as zero.
    pub fn choose(&self, estimate: &LinkEstimate) -> Option<FecScheme> {
        match self {
            FecConfig::Off => None,
            FecConfig::Fixed(scheme) => Some(*scheme),
            FecConfig::Auto(auto) => auto.choose(estimate),
        }
    }
}

impl AutoFec {
    fn choose(&self, estimate: &LinkEstimate) -> Option<FecScheme> {
        let loss = sanitize(estimate.loss_rate).min(1.0);
        let retransmission_in_time = estimate.budget >= estimate.rtt * 2;
        if retransmission_in_time && loss < self.min_loss {
            return None;
        }
        let budget_rtts = estimate.budget.as_secs_f64() / estimate.rtt.as_secs_f64();
        if budget_rtts >= sanitize(self.max_budget_rtts) {
            return None;
        }
        let per_group = sanitize(estimate.packet_rate)
            * estimate.budget.as_secs_f64()
            * sanitize(self.group_budget_fraction);
        let source = (per_group.floor() as u64).clamp(1, u64::from(self.max_group.max(1)));
        let max_repair = ((source as f64 * sanitize(self.max_overhead)).ceil() as u64)
            .clamp(1, MAX_GROUP_REPAIRS as u64);
        let burst = sanitize(estimate.mean_burst).max(1.0);
        let target = self.target_failure_with_retransmission(loss, budget_rtts);
        let repair = (1..=max_repair)
            .find(|&m| group_failure(source + m, m, loss, burst) <= target)
            .unwrap_or(max_repair);
        Some(FecScheme::ReedSolomon {
            source: source as u8,
            repair: repair as u8,
        })
    }
}

impl AutoFec {
    /// The acceptable probability that a group fails, given that a source it
    /// fails to rebuild is retransmitted as often as `budget_rtts` allows: one
    /// attempt per 1.5 round trips after the first (loss detection and the
    /// copy's trip), each lost with probability `loss`. At most 1.
    fn target_failure_with_retransmission(&self, loss: f64, budget_rtts: f64) -> f64 {
        let target = sanitize(self.target_failure);
        let attempts = (sanitize(budget_rtts - 1.0) / 1.5).floor().min(16.0) as i32;
        if attempts == 0 || loss <= 0.0 {
            return target.min(1.0);
        }
        (target / loss.powi(attempts)).min(1.0)
    }
}

/// Probability that a group of `n` symbols loses more than `m`, when losses
/// come in bursts of `burst` symbols at overall rate `loss`: burst starts are
/// binomial with rate `loss / burst`, and each costs `burst` symbols.
fn group_failure(n: u64, m: u64, loss: f64, burst: f64) -> f64 {
    let starts = (loss / burst).min(1.0);
    let tolerated = (m as f64 / burst).floor() as u64;
    if starts >= 1.0 {
        return if tolerated >= n { 0.0 } else { 1.0 };
    }
    let mut within = 0.0;
    let mut term = (1.0 - starts).powf(n as f64); // P[0 bursts]
    for j in 0..=tolerated.min(n) {
        within += term;
        // P[j + 1] = P[j] * (n - j) / (j + 1) * p / (1 - p)
        term *= (n - j) as f64 / (j + 1) as f64 * starts / (1.0 - starts);
    }
    (1.0 - within).max(0.0)
}

/// A non-negative finite value: NaN and negatives become 0.
fn sanitize(value: f64) -> f64 {
    if value.is_finite() {
        value.max(0.0)
    } else if value == f64::INFINITY {
        f64::MAX
    } else {
        0.0
    }
}

impl FromStr for FecConfig {
    type Err = FecError;

    /// `off`, `auto`, `ROWSxCOLS` (XOR parity, e.g. `8x8`) or `K+M`
    /// (Reed-Solomon, e.g. `16+4`).
    fn from_str(s: &str) -> Result<Self, FecError> {
        let invalid = || FecError::InvalidSetting(s.to_owned());
        let pair = |sep: char| -> Result<(u8, u8), FecError> {
            let (a, b) = s.split_once(sep).ok_or_else(invalid)?;
            Ok((
                a.trim().parse().map_err(|_| invalid())?,
                b.trim().parse().map_err(|_| invalid())?,
            ))
        };
        let scheme = match s.trim().to_ascii_lowercase().as_str() {
            "off" => return Ok(FecConfig::Off),
            "auto" => return Ok(FecConfig::Auto(AutoFec::default())),
            lower if lower.contains('x') => {
                let (rows, cols) = pair(if s.contains('x') { 'x' } else { 'X' })?;
                FecScheme::Xor { rows, cols }
            }
            lower if lower.contains('+') => {
                let (source, repair) = pair('+')?;
                FecScheme::ReedSolomon { source, repair }
            }
            _ => return Err(invalid()),
        };
        scheme.validate()?;
        Ok(FecConfig::Fixed(scheme))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(loss_rate: f64, rtt_ms: u64, budget_ms: u64) -> LinkEstimate {
        LinkEstimate {
            loss_rate,
            mean_burst: 1.0,
            rtt: Duration::from_millis(rtt_ms),
            budget: Duration::from_millis(budget_ms),
            packet_rate: 1000.0,
        }
    }

    fn repairs(scheme: Option<FecScheme>) -> (u8, u8) {
        match scheme {
            Some(FecScheme::ReedSolomon { source, repair }) => (source, repair),
            other => panic!("expected Reed-Solomon, got {other:?}"),
        }
    }

    const AUTO: FecConfig = FecConfig::Auto(AutoFec {
        min_loss: 0.01,
        max_budget_rtts: 5.0,
        max_group: 16,
        group_budget_fraction: 0.25,
        target_failure: 1e-3,
        max_overhead: 0.5,
    });

    #[test]
    fn off_and_fixed_ignore_the_estimate() {
        let e = estimate(0.1, 20, 30);
        assert_eq!(FecConfig::Off.choose(&e), None);
        let fixed = FecScheme::Xor { rows: 4, cols: 4 };
        assert_eq!(FecConfig::Fixed(fixed).choose(&e), Some(fixed));
    }

    #[test]
    fn more_loss_means_more_repair() {
        let mut previous = 0;
        for loss in [0.02, 0.05, 0.10] {
            // Below two round trips: FEC is the only repair.
            let (source, repair) = repairs(AUTO.choose(&estimate(loss, 20, 39)));
            assert_eq!(source, 9);
            assert!(repair > previous, "loss {loss}: {repair} after {previous}");
            previous = repair;
        }
        // Beyond what 50 % overhead can cover, the cap holds.
        assert_eq!(repairs(AUTO.choose(&estimate(0.3, 20, 90))), (16, 8));
    }

    #[test]
    fn fewer_repairs_when_retransmission_fits_in_the_budget() {
        for loss in [0.02, 0.05, 0.10] {
            // The same group size (16) at 1.9 and at 4.5 round trips.
            let fast = LinkEstimate {
                packet_rate: 1000.0 * 90.0 / 38.0,
                ..estimate(loss, 20, 38)
            };
            let (source, alone) = repairs(AUTO.choose(&fast));
            let (source_slow, with_retransmission) = repairs(AUTO.choose(&estimate(loss, 20, 90)));
            assert_eq!((source, source_slow), (16, 16));
            assert!(
                with_retransmission < alone,
                "loss {loss}: {with_retransmission} repairs with retransmission, {alone} without"
            );
        }
        // 2 % at 4.5 round trips: two retransmissions in time, one repair.
        assert_eq!(repairs(AUTO.choose(&estimate(0.02, 20, 90))), (16, 1));
    }

    #[test]
    fn on_below_two_round_trips_even_without_loss() {
        assert_eq!(AUTO.choose(&estimate(0.0, 20, 200)), None);
        assert_eq!(AUTO.choose(&estimate(0.005, 20, 40)), None);
        let (_, repair) = repairs(AUTO.choose(&estimate(0.0, 20, 39)));
        assert_eq!(repair, 1);
        assert!(AUTO.choose(&estimate(0.005, 20, 30)).is_some());
    }

    #[test]
    fn off_from_the_budget_where_retransmission_has_two_attempts() {
        assert!(AUTO.choose(&estimate(0.1, 20, 99)).is_some());
        assert_eq!(AUTO.choose(&estimate(0.1, 20, 100)), None);
        assert_eq!(AUTO.choose(&estimate(0.3, 20, 200)), None);
    }

    #[test]
    fn a_group_fills_within_its_share_of_the_budget() {
        // 1,000 packets/s, 30 ms budget, a quarter of it: 7 packets.
        let (source, _) = repairs(AUTO.choose(&estimate(0.05, 20, 30)));
        assert_eq!(source, 7);
        // A slow stream: one packet per group, its repair a copy.
        let slow = LinkEstimate {
            packet_rate: 10.0,
            ..estimate(0.05, 20, 30)
        };
        assert_eq!(repairs(AUTO.choose(&slow)).0, 1);
    }

    #[test]
    fn bursts_need_more_repair() {
        let random = estimate(0.05, 20, 39);
        let bursty = LinkEstimate {
            mean_burst: 3.0,
            ..random
        };
        assert!(repairs(AUTO.choose(&bursty)).1 > repairs(AUTO.choose(&random)).1);
    }

    #[test]
    fn nonsense_measurements_do_not_panic() {
        for value in [f64::NAN, f64::INFINITY, -1.0, 2.0, 0.0] {
            let e = LinkEstimate {
                loss_rate: value,
                mean_burst: value,
                rtt: Duration::ZERO,
                budget: Duration::ZERO,
                packet_rate: value,
            };
            if let Some(scheme) = AUTO.choose(&e) {
                assert!(scheme.validate().is_ok(), "{scheme}");
            }
        }
    }

    #[test]
    fn parses_the_command_line_forms() {
        assert_eq!("off".parse(), Ok(FecConfig::Off));
        assert_eq!("auto".parse(), Ok(FecConfig::Auto(AutoFec::default())));
        assert_eq!(
            "8x8".parse(),
            Ok(FecConfig::Fixed(FecScheme::Xor { rows: 8, cols: 8 }))
        );
        assert_eq!(
            "16+4".parse(),
            Ok(FecConfig::Fixed(FecScheme::ReedSolomon {
                source: 16,
                repair: 4
            }))
        );
        for bad in ["", "on", "8x", "x8", "0x8", "300+4", "16+0", "1-2"] {
            assert!(bad.parse::<FecConfig>().is_err(), "{bad:?}");
        }
    }
}
