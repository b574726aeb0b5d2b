//! Command-line options for several paths: `--mode backup|broadcast|balance`.

use clap::ValueEnum;
use surelink::PathMode;

/// How `send --to A --to B` / `recv --listen A --listen B` use several paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ModeArg {
    /// Data on the first path; a standby takes over on failure, then fails back.
    #[default]
    Backup,
    /// Every packet on every live path: no gap when one fails.
    Broadcast,
    /// Packets striped over the live paths by capacity and RTT.
    Balance,
}

impl From<ModeArg> for PathMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Backup => PathMode::Backup,
            ModeArg::Broadcast => PathMode::Broadcast,
            ModeArg::Balance => PathMode::Balance,
        }
    }
}
