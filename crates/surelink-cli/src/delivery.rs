//! Delivery options of `send` (`--deadline`, `--unreliable`) and `recv`
//! (`--playout`).
//!
//! `send` applies its mode to channel 0, the channel both the stream and the
//! gateway mode send on, right after connecting and before the first message:
//! the receiver learns the mode with every message, so it needs no option of
//! its own. `recv --playout` sets the protocol's playout delay (messages are
//! held until their send time plus the delay, which evens out jitter); the
//! value is also remembered for the statistics lines (`playout_delay_ms`).

use std::sync::OnceLock;
use std::time::Duration;

use clap::Args;
use surelink::{Connection, Delivery, ProtocolConfig};

use crate::args::parse_duration;

/// The channel `send` uses for its data.
pub const DATA_CHANNEL: u64 = 0;

/// `send`'s delivery mode options.
#[derive(Debug, Clone, Default, Args)]
pub struct DeliveryArgs {
    /// Deliver with a deadline (e.g. 80ms): a message that cannot reach the receiver within this
    /// long of being sent is skipped instead of delaying the ones after it (retransmitted only while
    /// it can still make it).
    #[arg(long, value_name = "DURATION", value_parser = parse_deadline, conflicts_with = "unreliable")]
    pub deadline: Option<Duration>,
    /// Send each message once, without retransmission: a lost message is skipped by the receiver.
    #[arg(long)]
    pub unreliable: bool,
}

impl DeliveryArgs {
    /// The delivery mode asked for; `None` keeps the default (reliable).
    pub fn delivery(&self) -> Option<Delivery> {
        match (self.deadline, self.unreliable) {
            (Some(d), _) => Some(Delivery::Deadline(
                u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            )),
            (None, true) => Some(Delivery::Unreliable),
            (None, false) => None,
        }
    }

    /// Sets the mode on `conn`'s data channel (before anything is sent).
    pub fn apply(&self, conn: &Connection) {
        if let Some(delivery) = self.delivery() {
            tracing::info!(?delivery, "delivery mode of the data channel");
            conn.set_channel_delivery(DATA_CHANNEL, delivery);
        }
    }
}

/// A deadline: a duration of at least 1 ms.
fn parse_deadline(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(1) {
        return Err(format!("deadline {text:?} is too short: at least 1ms"));
    }
    Ok(d)
}

/// `recv`'s playout option.
#[derive(Debug, Clone, Default, Args)]
pub struct PlayoutArgs {
    /// Hold each message until this long after it was sent (e.g. 100ms), so that messages come out
    /// evenly spaced despite jitter and retransmissions (like SRT's latency). A stop (Ctrl-C,
    /// SIGTERM) lifts the hold: the messages still held are written out at once, in order.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub playout: Option<Duration>,
}

/// The playout delay in force in this process, for the statistics lines.
static PLAYOUT_DELAY: OnceLock<Duration> = OnceLock::new();

impl PlayoutArgs {
    /// Sets the playout delay in `config` (and remembers it for the statistics).
    pub fn apply(&self, config: &mut ProtocolConfig) {
        config.playout_delay = self.playout;
        if let Some(d) = self.playout {
            let _ = PLAYOUT_DELAY.set(d);
        }
    }
}

/// The playout delay `recv --playout` set, if any.
pub fn playout_delay() -> Option<Duration> {
    PLAYOUT_DELAY.get().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        delivery: DeliveryArgs,
        #[command(flatten)]
        playout: PlayoutArgs,
    }

    #[test]
    fn modes_parse() {
        let cli = Cli::try_parse_from(["x", "--deadline", "80ms"]).expect("deadline");
        assert_eq!(cli.delivery.delivery(), Some(Delivery::Deadline(80_000)));
        let cli = Cli::try_parse_from(["x", "--unreliable"]).expect("unreliable");
        assert_eq!(cli.delivery.delivery(), Some(Delivery::Unreliable));
        let cli = Cli::try_parse_from(["x"]).expect("none");
        assert_eq!(cli.delivery.delivery(), None);
        assert!(Cli::try_parse_from(["x", "--deadline", "80ms", "--unreliable"]).is_err());
        assert!(Cli::try_parse_from(["x", "--deadline", "0ms"]).is_err());
        let cli = Cli::try_parse_from(["x", "--playout", "100ms"]).expect("playout");
        let mut config = ProtocolConfig::default();
        cli.playout.apply(&mut config);
        assert_eq!(config.playout_delay, Some(Duration::from_millis(100)));
    }
}
