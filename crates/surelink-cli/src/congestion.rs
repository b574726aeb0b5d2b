//! Congestion-control options of `send`: `--congestion auto|newreno|live`,
//! `--max-bw RATE` and `--overhead PERCENT`.
//!
//! `auto` (the default) runs NewReno with a bandwidth-delay-product floor for
//! reliable transfers and switches to the live-stream controller (the input
//! rate plus an overhead for retransmissions, like SRT's live mode) as soon
//! as the data channel gets a deadline (`--deadline`). `live` uses the
//! live-stream controller whatever the delivery mode, `newreno` never does.
//! `--max-bw` and `--overhead` tune the live-stream controller; they are
//! refused with `newreno`. `send` turns these into the protocol
//! configuration's congestion choice before connecting.

use anyhow::bail;
use clap::{Args, ValueEnum};
use surelink::impair::netem::parse_rate;
use surelink::{CongestionControl, LiveParams};

/// Which congestion controller `send` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum CongestionArg {
    /// NewReno for reliable data, the live-stream controller once the data
    /// channel has a deadline.
    #[default]
    Auto,
    /// NewReno with a bandwidth-delay-product floor.
    Newreno,
    /// The input rate plus an overhead for retransmissions (SRT-like live mode).
    Live,
}

/// `send`'s congestion-control options.
#[derive(Debug, Clone, Default, Args)]
pub struct CongestionArgs {
    /// Congestion controller: auto picks live for `--deadline`, newreno otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub congestion: CongestionArg,
    /// Cap on the live controller's sending rate, e.g. 10mbit (units bit, kbit, mbit, gbit).
    #[arg(long, value_name = "RATE", value_parser = parse_max_bw)]
    pub max_bw: Option<u64>,
    /// The live controller's extra rate for retransmissions, percent of the input rate
    /// [default: 25].
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub overhead: Option<u32>,
}

impl CongestionArgs {
    /// The protocol's congestion-control choice; `--max-bw`/`--overhead` with
    /// `--congestion newreno` is an error.
    pub fn congestion_control(&self) -> anyhow::Result<CongestionControl> {
        let defaults = LiveParams::default();
        let params = LiveParams {
            overhead_percent: self.overhead.unwrap_or(defaults.overhead_percent),
            max_bw: self.max_bw,
        };
        Ok(match self.congestion {
            CongestionArg::Auto => CongestionControl::Auto(params),
            CongestionArg::Live => CongestionControl::Live(params),
            CongestionArg::Newreno => {
                if self.max_bw.is_some() || self.overhead.is_some() {
                    bail!("--max-bw and --overhead tune the live controller; they do not apply to --congestion newreno");
                }
                CongestionControl::NewRenoBdpFloor
            }
        })
    }
}

/// A rate in bits per second (`10mbit`), returned in bytes per second.
fn parse_max_bw(text: &str) -> Result<u64, String> {
    let bits = parse_rate(text)?;
    if bits < 8 {
        return Err(format!("--max-bw {text:?} is below one byte per second"));
    }
    Ok(bits / 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        congestion: CongestionArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<CongestionControl> {
        let cli = Cli::try_parse_from(std::iter::once("send").chain(args.iter().copied()))?;
        cli.congestion.congestion_control()
    }

    #[test]
    fn auto_by_default_with_srt_like_overhead() {
        assert_eq!(
            parse(&[]).unwrap(),
            CongestionControl::Auto(LiveParams {
                overhead_percent: 25,
                max_bw: None
            })
        );
    }

    #[test]
    fn live_takes_max_bw_in_bits_and_overhead_in_percent() {
        assert_eq!(
            parse(&[
                "--congestion",
                "live",
                "--max-bw",
                "10mbit",
                "--overhead",
                "40"
            ])
            .unwrap(),
            CongestionControl::Live(LiveParams {
                overhead_percent: 40,
                max_bw: Some(1_250_000)
            })
        );
    }

    #[test]
    fn newreno_refuses_live_options_and_bad_values_are_errors() {
        assert_eq!(
            parse(&["--congestion", "newreno"]).unwrap(),
            CongestionControl::NewRenoBdpFloor
        );
        assert!(parse(&["--congestion", "newreno", "--overhead", "10"]).is_err());
        assert!(parse(&["--max-bw", "fast"]).is_err());
        assert!(parse(&["--max-bw", "1bit"]).is_err());
        assert!(parse(&["--overhead", "-5"]).is_err());
    }
}
