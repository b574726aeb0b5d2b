//! `send --fec`: forward error correction of the deadline channel.
//!
//! Flattened into `surelink send`; the setting goes into the protocol
//! configuration before the endpoint is built. It only acts on deadline
//! channels (`--deadline`): reliable and unreliable data is never protected.

use clap::Args;
use surelink::proto::fec::FecConfig;
use surelink::ProtocolConfig;

/// `send`'s FEC option.
#[derive(Debug, Clone, Args)]
pub struct FecArgs {
    /// Forward error correction of `--deadline` data: off; auto (the default: on when the deadline
    /// is under 5 round trips, redundancy sized from the measured loss, the RTT and the deadline);
    /// ROWSxCOLS (row/column XOR parity, e.g. 4x4); or
    /// K+M (Reed-Solomon, M repair packets per K data packets, e.g. 8+2).
    #[arg(long, value_name = "off|auto|ROWSxCOLS|K+M", default_value = "auto", value_parser = parse_fec)]
    pub fec: FecConfig,
}

impl FecArgs {
    /// Sets the FEC policy in `config`.
    pub fn apply(&self, config: &mut ProtocolConfig) {
        config.fec = self.fec;
    }
}

fn parse_fec(text: &str) -> Result<FecConfig, String> {
    text.parse()
        .map_err(|e: surelink::proto::fec::FecError| e.to_string())
}
