//! `surelink keygen`: make a static identity (an X25519 key pair).
//!
//! The private key goes to `--out FILE`, created with mode 0600; an existing
//! file is never replaced without `--force`. The public key (64 hex digits,
//! what `send --peer-key` and allow-list files take) and its fingerprint (for
//! people to compare) are printed on stdout:
//!
//! ```text
//! public-key: 5f0c…(64 hex digits)
//! fingerprint: 1a2b:3c4d:5e6f:7a8b
//! ```
//!
//! `--show FILE` prints the same two lines for an existing key file.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use surelink::Identity;

use crate::keys::{describe_public_key, read_identity, write_identity};

/// Arguments of `surelink keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write the new private key to this file (created with mode 0600).
    #[arg(long, value_name = "FILE", required_unless_present = "show")]
    pub out: Option<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
    /// Print the public key of an existing private key file instead.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["out", "force"])]
    pub show: Option<PathBuf>,
}

/// Runs `surelink keygen`.
pub async fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let identity = match (&args.out, &args.show) {
        (_, Some(path)) => read_identity(path)?,
        (Some(path), None) => {
            let identity = Identity::generate(&mut rand::rngs::OsRng);
            write_identity(path, &identity, args.force)?;
            eprintln!(
                "surelink keygen: private key written to {} (keep it secret; mode 0600)",
                path.display()
            );
            identity
        }
        (None, None) => bail!(crate::exit::UsageError("--out FILE is required".into())),
    };
    print!("{}", describe_public_key(&identity.public()));
    Ok(())
}
