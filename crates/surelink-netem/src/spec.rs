//! The impairment spec syntax: `FromStr` and `Display` for [`LinkConfig`].
//!
//! A spec is a comma-separated list of `key=value` items such as
//! `loss=2%,delay=10ms,rate=10mbit`, used by the CLI (`surelink impair`,
//! `surelink demo`) and handy in tests. The syntax is documented for users
//! on [`LinkConfig`] (section "Spec syntax"); the units are parsed by the
//! `units` module. Parsing ends with [`LinkConfig::validate`]. `Display`
//! writes every setting that differs from [`LinkConfig::clean`] (or `clean`),
//! so that parsing it gives back an equal config.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::units::{
    format_duration, format_probability, format_rate, format_size, parse_duration_value,
    parse_probability, parse_rate, parse_size,
};
use crate::{Cut, Flap, GilbertElliott, LinkConfig, NetemError};

/// The spec written for a configuration without impairments.
const CLEAN: &str = "clean";

impl FromStr for LinkConfig {
    type Err = NetemError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut config = LinkConfig::clean();
        if s.trim().is_empty() || s.trim().eq_ignore_ascii_case(CLEAN) {
            return Ok(config);
        }
        let mut seen: Vec<Key> = Vec::new();
        let mut cut_at: Option<Duration> = None;
        let mut cut_for: Option<Duration> = None;

        for item in s.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let (raw_key, value) =
                item.split_once('=')
                    .ok_or_else(|| NetemError::MissingValue {
                        item: item.to_owned(),
                    })?;
            let key = Key::parse(raw_key).ok_or_else(|| NetemError::UnknownKey {
                key: raw_key.trim().to_owned(),
            })?;
            let value = value.trim();
            let invalid = |reason: String| NetemError::InvalidValue {
                key: key.name().to_owned(),
                value: value.to_owned(),
                reason,
            };
            if !matches!(key, Key::CutAt | Key::CutFor) {
                if seen.contains(&key) {
                    return Err(NetemError::DuplicateKey {
                        key: key.name().to_owned(),
                    });
                }
                seen.push(key);
            }
            match key {
                Key::Loss => config.loss = parse_probability(value).map_err(invalid)?,
                Key::Burst => config.burst = Some(parse_burst(value).map_err(invalid)?),
                Key::Delay => config.delay = parse_duration_value(value).map_err(invalid)?,
                Key::Jitter => config.jitter = parse_duration_value(value).map_err(invalid)?,
                Key::Reorder => config.reorder = parse_probability(value).map_err(invalid)?,
                Key::ReorderDelay => {
                    config.reorder_delay = parse_duration_value(value).map_err(invalid)?;
                }
                Key::Dup => config.duplicate = parse_probability(value).map_err(invalid)?,
                Key::Rate => config.rate_bps = Some(parse_rate(value).map_err(invalid)?),
                Key::Queue => config.queue_bytes = parse_size(value).map_err(invalid)?,
                Key::Flap => config.cuts.flap = Some(parse_flap(value).map_err(invalid)?),
                Key::CutAt => {
                    if cut_at.is_some() {
                        return Err(NetemError::UnpairedCut {
                            reason: "`cut-at` given twice without a `cut-for` between",
                        });
                    }
                    cut_at = Some(parse_duration_value(value).map_err(invalid)?);
                }
                Key::CutFor => {
                    if cut_for.is_some() {
                        return Err(NetemError::UnpairedCut {
                            reason: "`cut-for` given twice without a `cut-at` between",
                        });
                    }
                    cut_for = Some(parse_duration_value(value).map_err(invalid)?);
                }
            }
            if let (Some(start), Some(duration)) = (cut_at, cut_for) {
                config.cuts.cuts.push(Cut { start, duration });
                cut_at = None;
                cut_for = None;
            }
        }
        match (cut_at, cut_for) {
            (Some(_), None) => Err(NetemError::UnpairedCut {
                reason: "`cut-at` without a `cut-for`",
            }),
            (None, Some(_)) => Err(NetemError::UnpairedCut {
                reason: "`cut-for` without a `cut-at`",
            }),
            _ => {
                config.validate()?;
                Ok(config)
            }
        }
    }
}

/// The keys of the spec syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Loss,
    Burst,
    Delay,
    Jitter,
    Reorder,
    ReorderDelay,
    Dup,
    Rate,
    Queue,
    CutAt,
    CutFor,
    Flap,
}

impl Key {
    /// Recognises a key as written (case-insensitive, `_` or `-`).
    fn parse(raw: &str) -> Option<Self> {
        let key = raw.trim().to_ascii_lowercase().replace('_', "-");
        Some(match key.as_str() {
            "loss" => Key::Loss,
            "burst" => Key::Burst,
            "delay" => Key::Delay,
            "jitter" => Key::Jitter,
            "reorder" => Key::Reorder,
            "reorder-delay" => Key::ReorderDelay,
            "dup" | "duplicate" => Key::Dup,
            "rate" => Key::Rate,
            "queue" => Key::Queue,
            "cut-at" => Key::CutAt,
            "cut-for" => Key::CutFor,
            "flap" => Key::Flap,
            _ => return None,
        })
    }

    /// The canonical spelling, as written by `Display`.
    fn name(self) -> &'static str {
        match self {
            Key::Loss => "loss",
            Key::Burst => "burst",
            Key::Delay => "delay",
            Key::Jitter => "jitter",
            Key::Reorder => "reorder",
            Key::ReorderDelay => "reorder-delay",
            Key::Dup => "dup",
            Key::Rate => "rate",
            Key::Queue => "queue",
            Key::CutAt => "cut-at",
            Key::CutFor => "cut-for",
            Key::Flap => "flap",
        }
    }
}

/// Parses `p:r[:loss_bad[:loss_good]]`.
fn parse_burst(value: &str) -> Result<GilbertElliott, String> {
    let parts: Vec<&str> = value.split(':').collect();
    if !(2..=4).contains(&parts.len()) {
        return Err(
            "expected p:r[:loss_bad[:loss_good]] (transition probabilities, then loss in the bad and good states)"
                .to_owned(),
        );
    }
    let part = |i: usize, name: &str, default: f64| -> Result<f64, String> {
        match parts.get(i) {
            Some(text) => parse_probability(text).map_err(|reason| format!("{name}: {reason}")),
            None => Ok(default),
        }
    };
    Ok(GilbertElliott {
        p_good_to_bad: part(0, "p (good to bad)", 0.0)?,
        p_bad_to_good: part(1, "r (bad to good)", 0.0)?,
        loss_bad: part(2, "loss in bad state", 1.0)?,
        loss_good: part(3, "loss in good state", 0.0)?,
    })
}

/// Parses `period/down`.
fn parse_flap(value: &str) -> Result<Flap, String> {
    let (period, down) = value
        .split_once('/')
        .ok_or_else(|| "expected period/down, e.g. 500ms/100ms".to_owned())?;
    Ok(Flap {
        period: parse_duration_value(period).map_err(|reason| format!("period: {reason}"))?,
        down: parse_duration_value(down).map_err(|reason| format!("down time: {reason}"))?,
    })
}

impl fmt::Display for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clean = LinkConfig::clean();
        let mut items: Vec<String> = Vec::new();
        if self.loss != clean.loss {
            items.push(format!("loss={}", format_probability(self.loss)));
        }
        if let Some(burst) = &self.burst {
            let mut text = format!(
                "burst={}:{}",
                format_probability(burst.p_good_to_bad),
                format_probability(burst.p_bad_to_good)
            );
            if burst.loss_bad != 1.0 || burst.loss_good != 0.0 {
                text.push(':');
                text.push_str(&format_probability(burst.loss_bad));
            }
            if burst.loss_good != 0.0 {
                text.push(':');
                text.push_str(&format_probability(burst.loss_good));
            }
            items.push(text);
        }
        if self.delay != clean.delay {
            items.push(format!("delay={}", format_duration(self.delay)));
        }
        if self.jitter != clean.jitter {
            items.push(format!("jitter={}", format_duration(self.jitter)));
        }
        if self.reorder != clean.reorder {
            items.push(format!("reorder={}", format_probability(self.reorder)));
        }
        if self.reorder_delay != clean.reorder_delay {
            items.push(format!(
                "reorder-delay={}",
                format_duration(self.reorder_delay)
            ));
        }
        if self.duplicate != clean.duplicate {
            items.push(format!("dup={}", format_probability(self.duplicate)));
        }
        if let Some(rate) = self.rate_bps {
            items.push(format!("rate={}", format_rate(rate)));
        }
        if self.queue_bytes != clean.queue_bytes {
            items.push(format!("queue={}", format_size(self.queue_bytes)));
        }
        for cut in &self.cuts.cuts {
            items.push(format!(
                "cut-at={},cut-for={}",
                format_duration(cut.start),
                format_duration(cut.duration)
            ));
        }
        if let Some(flap) = &self.cuts.flap {
            items.push(format!(
                "flap={}/{}",
                format_duration(flap.period),
                format_duration(flap.down)
            ));
        }
        if items.is_empty() {
            f.write_str(CLEAN)
        } else {
            f.write_str(&items.join(","))
        }
    }
}
