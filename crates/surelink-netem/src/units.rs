//! Numbers with units, as written in impairment specs and on the command line.
//!
//! - durations: `ns`, `us` (or `µs`), `ms`, `s`, e.g. `10ms`, `1.5s`; a bare `0` is zero;
//! - probabilities: a fraction `0.02` or a percentage `2%`;
//! - rates in bits per second: `bit`, `kbit` (10³), `mbit` (10⁶), `gbit` (10⁹);
//! - sizes in bytes: `b`, `kb` (1024), `mb` (1024²), as in `tc`.
//!
//! Decimal values are converted exactly with integer arithmetic: `1.5ms` is
//! exactly 1 500 000 ns, and a value finer than the smallest unit (`1.5ns`,
//! `0.5b`) is rejected rather than rounded. Units are case-insensitive. Each
//! `format_*` function writes a value in the largest unit that represents it
//! exactly, so formatting then parsing gives back the same value.
//!
//! The spec parser (`spec` module) uses these; [`parse_duration`] and
//! [`format_duration`] are public for the CLI.

use std::time::Duration;

use crate::instant::duration_from_nanos;
use crate::NetemError;

const NANOS_PER_SEC: u128 = 1_000_000_000;

const DURATION_UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", NANOS_PER_SEC),
];
const RATE_UNITS: &[(&str, u128)] = &[
    ("bit", 1),
    ("kbit", 1_000),
    ("mbit", 1_000_000),
    ("gbit", 1_000_000_000),
];
const SIZE_UNITS: &[(&str, u128)] = &[("b", 1), ("kb", 1024), ("mb", 1024 * 1024)];

/// Parses a duration such as `10ms`, `1.5s`, `250us`, `7ns` or `0`.
///
/// ```
/// use std::time::Duration;
/// use surelink_netem::parse_duration;
/// assert_eq!(parse_duration("1.5ms").unwrap(), Duration::from_micros(1500));
/// assert!(parse_duration("10").is_err()); // a unit is required
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, NetemError> {
    parse_duration_value(s).map_err(|reason| NetemError::InvalidDuration {
        input: s.to_owned(),
        reason,
    })
}

/// Formats a duration in the largest of `s`, `ms`, `us`, `ns` that
/// represents it exactly; [`parse_duration`] reads it back unchanged.
///
/// ```
/// use std::time::Duration;
/// use surelink_netem::format_duration;
/// assert_eq!(format_duration(Duration::from_micros(1500)), "1500us");
/// assert_eq!(format_duration(Duration::ZERO), "0s");
/// ```
pub fn format_duration(d: Duration) -> String {
    format_scaled(
        d.as_nanos(),
        &[
            ("s", NANOS_PER_SEC),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ],
    )
}

/// Parses a duration, returning the reason on failure.
pub(crate) fn parse_duration_value(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let nanos = parse_with_unit(s, DURATION_UNITS)?;
    if nanos / NANOS_PER_SEC > u128::from(u64::MAX) {
        return Err("too large".to_owned());
    }
    Ok(duration_from_nanos(nanos))
}

/// Parses a probability: a fraction (`0.02`) or a percentage (`2%`).
/// The result is finite and in `0..=1`.
pub(crate) fn parse_probability(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (number, percent) = match s.strip_suffix('%') {
        Some(number) => (number.trim_end(), true),
        None => (s, false),
    };
    let value: f64 = number.parse().map_err(|_| {
        "not a number (expected a fraction like 0.02 or a percentage like 2%)".to_owned()
    })?;
    let value = if percent { value / 100.0 } else { value };
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err("must be between 0 and 1 (or 0% and 100%)".to_owned())
    }
}

/// Formats a probability as a percentage if that reads back exactly,
/// otherwise as a fraction. Rust's float formatting is shortest-round-trip,
/// so [`parse_probability`] gives back the same `f64`.
pub(crate) fn format_probability(p: f64) -> String {
    let percent = p * 100.0;
    if percent.is_finite() {
        let text = percent.to_string();
        if text.parse::<f64>().map(|v| v / 100.0) == Ok(p) {
            return format!("{text}%");
        }
    }
    p.to_string()
}

/// Parses a rate in bits per second, e.g. `10mbit`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bits = parse_with_unit(s, RATE_UNITS)?;
    u64::try_from(bits).map_err(|_| "too large".to_owned())
}

/// Formats a rate in the largest of `gbit`, `mbit`, `kbit`, `bit` that
/// represents it exactly.
pub(crate) fn format_rate(bps: u64) -> String {
    format_scaled(
        u128::from(bps),
        &[
            ("gbit", 1_000_000_000),
            ("mbit", 1_000_000),
            ("kbit", 1_000),
            ("bit", 1),
        ],
    )
}

/// Parses a size in bytes, e.g. `64kb`.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let bytes = parse_with_unit(s, SIZE_UNITS)?;
    usize::try_from(bytes).map_err(|_| "too large".to_owned())
}

/// Formats a size in the largest of `mb`, `kb`, `b` that represents it exactly.
pub(crate) fn format_size(bytes: usize) -> String {
    format_scaled(
        bytes as u128,
        &[("mb", 1024 * 1024), ("kb", 1024), ("b", 1)],
    )
}

/// Writes `value` (in base units) with the first unit of `units` (largest
/// first, ending with the base unit) that divides it exactly.
fn format_scaled(value: u128, units: &[(&str, u128)]) -> String {
    for &(unit, scale) in units {
        if value % scale == 0 {
            return format!("{}{unit}", value / scale);
        }
    }
    // Unreachable when the last unit has scale 1; fall back to base units.
    format!("{value}{}", units.last().map_or("", |&(unit, _)| unit))
}

/// Splits `s` into a decimal number and a unit from `units`, and returns the
/// value in base units.
fn parse_with_unit(s: &str, units: &[(&str, u128)]) -> Result<u128, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim().to_lowercase();
    let unit_list = || {
        units
            .iter()
            .map(|&(name, _)| name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if number.is_empty() {
        return Err(format!(
            "expected a non-negative number followed by a unit ({})",
            unit_list()
        ));
    }
    if unit.is_empty() {
        return Err(format!("missing unit (one of {})", unit_list()));
    }
    let scale = units
        .iter()
        .find(|&&(name, _)| name == unit)
        .map(|&(_, scale)| scale)
        .ok_or_else(|| format!("unknown unit `{unit}` (expected one of {})", unit_list()))?;
    parse_scaled(number, scale)
}

/// Converts a decimal string of digits with at most one `.` into base units,
/// given how many base units one unit is. Exact; rejects results that are
/// not whole base units, and overflow.
fn parse_scaled(number: &str, scale: u128) -> Result<u128, String> {
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let valid = |part: &str| part.chars().all(|c| c.is_ascii_digit());
    if !valid(int_part) || !valid(frac_part) || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(format!("`{number}` is not a decimal number"));
    }
    let too_large = || "too large".to_owned();
    let int_value: u128 = if int_part.is_empty() {
        0
    } else {
        let digits = int_part.trim_start_matches('0');
        if digits.len() > 38 {
            return Err(too_large());
        }
        digits.parse::<u128>().unwrap_or(0)
    };
    let mut value = int_value.checked_mul(scale).ok_or_else(too_large)?;
    let frac = frac_part.trim_end_matches('0');
    if !frac.is_empty() {
        if frac.len() > 18 {
            return Err("too many decimal places".to_owned());
        }
        let numerator = frac.parse::<u128>().map_err(|_| too_large())? * scale;
        let denominator = 10u128.pow(frac.len() as u32);
        if numerator % denominator != 0 {
            return Err("finer than the smallest unit".to_owned());
        }
        value = value
            .checked_add(numerator / denominator)
            .ok_or_else(too_large)?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("10ms"), Duration::from_millis(10));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("250µs"), Duration::from_micros(250));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok(" 10 MS "), Duration::from_millis(10));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
        assert_eq!(ok("18446744073709551615s"), Duration::from_secs(u64::MAX));
        for bad in [
            "",
            "10",
            "ms",
            "-1ms",
            "+1ms",
            "1.5ns",
            "1..2ms",
            ".ms",
            "10 m",
            "1e3ms",
            "10msx",
            "18446744073709551616s",
            "99999999999999999999999999999999999999999s",
            "1.0000000000000000001s",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                matches!(&err, NetemError::InvalidDuration { input, .. } if input == bad),
                "{bad}: {err}"
            );
        }
        assert_eq!(ok("2.ms"), Duration::from_millis(2));
    }

    #[test]
    fn duration_format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(5),
            Duration::from_millis(1500),
            Duration::from_micros(7),
            Duration::from_nanos(123_456_789_012),
            Duration::MAX,
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_millis(2000)), "2s");
        assert_eq!(format_duration(Duration::from_nanos(1001)), "1001ns");
    }

    #[test]
    fn probabilities() {
        assert_eq!(parse_probability("2%").unwrap(), 0.02);
        assert_eq!(parse_probability("0.02").unwrap(), 0.02);
        assert_eq!(parse_probability("100%").unwrap(), 1.0);
        assert_eq!(parse_probability("0").unwrap(), 0.0);
        for bad in ["", "%", "150%", "1.5", "-1%", "nan", "inf", "abc"] {
            assert!(parse_probability(bad).is_err(), "{bad}");
        }
        for p in [0.0, 0.02, 0.005, 1.0, 0.1 + 0.2, 1e-300, 0.123_456_789_123] {
            let text = format_probability(p);
            assert_eq!(
                parse_probability(&text).unwrap().to_bits(),
                p.to_bits(),
                "{text}"
            );
        }
        assert_eq!(format_probability(0.02), "2%");
    }

    #[test]
    fn rates_and_sizes() {
        assert_eq!(parse_rate("10mbit").unwrap(), 10_000_000);
        assert_eq!(parse_rate("1.5Gbit").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("300bit").unwrap(), 300);
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("10mbps").is_err());
        assert!(parse_rate("0.5bit").is_err());
        assert!(parse_rate("18446744073709551616bit").is_err());
        assert_eq!(format_rate(10_000_000), "10mbit");
        assert_eq!(format_rate(1_500_000_000), "1500mbit");
        assert_eq!(format_rate(1), "1bit");
        assert_eq!(parse_size("64kb").unwrap(), 65536);
        assert_eq!(parse_size("1mb").unwrap(), 1 << 20);
        assert_eq!(parse_size("1500b").unwrap(), 1500);
        assert_eq!(parse_size("0.5kb").unwrap(), 512);
        assert!(parse_size("0.3kb").is_err());
        assert!(parse_size("64").is_err());
        assert!(parse_size("64kbit").is_err());
        assert_eq!(format_size(65536), "64kb");
        assert_eq!(format_size(1500), "1500b");
        assert_eq!(format_size(usize::MAX), format!("{}b", usize::MAX));
    }
}
