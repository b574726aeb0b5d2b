//! `surelink completions SHELL` and `surelink man`: shell completions and
//! manual pages generated from the command-line definitions, so they never
//! drift from `--help`.
//!
//! ```text
//! surelink completions bash > /etc/bash_completion.d/surelink
//! surelink completions zsh > "${fpath[1]}/_surelink"
//! surelink completions fish > ~/.config/fish/completions/surelink.fish
//! surelink man > surelink.1                 # the main page on stdout
//! surelink man --dir /usr/local/share/man/man1   # one page per subcommand too
//! ```

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, ValueEnum};

/// The shells completions are generated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

/// Arguments of `surelink completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for (on stdout).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Arguments of `surelink man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write surelink.1 and one page per subcommand (surelink-send.1, …) into this
    /// directory instead of printing surelink.1 on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Runs `surelink completions`: the script on stdout.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut crate::Cli::command(), "surelink", &mut out);
    write_stdout(&out)
}

/// Runs `surelink man`.
pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    let command = crate::Cli::command();
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            eprintln!("surelink man: pages written to {}", dir.display());
            Ok(())
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .context("cannot render the manual page")?;
            write_stdout(&out)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}
