//! The progress bar of `send --in FILE` and `recv --out FILE`, and the
//! summary printed when a transfer ends.
//!
//! On a terminal, [`Progress`] draws an indicatif bar on stderr: bytes (of
//! the input's length when it is known), rate, ETA, and, refreshed from the
//! connection every [`REFRESH`], the retransmission rate and each path's
//! state. When stderr is not a terminal it draws nothing. The command moves
//! the bar ([`Progress::set_position`]) as data is read or written, and
//! [`Progress::watch`] follows a (new) connection. [`summary`] is the final
//! screen, printed on every stderr.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use surelink::{Connection, ConnectionStats, PathState};

/// How often the connection figures on the bar are refreshed.
const REFRESH: Duration = Duration::from_millis(200);

/// A progress bar for one transfer (hidden unless stderr is a terminal).
pub struct Progress {
    bar: ProgressBar,
    name: String,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts the bar for `name` (`total` bytes, 0 if unknown), labelled `role`.
    pub fn start(role: &str, total: u64, name: &str) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let template = if total > 0 {
            "{prefix} [{bar:24.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"
        } else {
            "{prefix} {spinner} {bytes} {bytes_per_sec} {elapsed} {msg}"
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target((total > 0).then_some(total), target);
        bar.set_style(style);
        bar.set_prefix(role.to_owned());
        Self {
            bar,
            name: name.to_owned(),
            watcher: None,
        }
    }

    /// The transfer's input or output name (a path, `stdin`, `stdout`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes done so far.
    pub fn set_position(&self, bytes: u64) {
        self.bar.set_position(bytes);
    }

    /// Adds `bytes` to the bytes done.
    pub fn add(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    /// Shows `conn`'s retransmission rate and path states from now on (a
    /// reconnected session watches its new connection).
    pub fn watch(&mut self, conn: &Connection) {
        if let Some(old) = self.watcher.take() {
            old.abort();
        }
        if self.bar.is_hidden() {
            return;
        }
        let bar = self.bar.clone();
        let conn = conn.clone();
        self.watcher = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !conn.is_closed() {
                tick.tick().await;
                bar.set_message(connection_line(&conn.stats()));
            }
        }));
    }

    /// Removes the bar (the summary follows).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        self.bar.finish_and_clear();
    }
}

/// `retx 0.4% path 0 active, 1 standby`: the bar's connection figures.
fn connection_line(stats: &ConnectionStats) -> String {
    format!(
        "retx {:.1}% {}",
        stats.retransmission_rate() * 100.0,
        path_states(stats)
    )
}

/// Each path's state: `path 0 active` or `paths 0 active, 1 down`.
fn path_states(stats: &ConnectionStats) -> String {
    let states: Vec<String> = stats
        .paths
        .iter()
        .map(|p| format!("{} {}", p.id.0, state_name(p.state)))
        .collect();
    let label = if states.len() == 1 { "path" } else { "paths" };
    format!("{label} {}", states.join(", "))
}

fn state_name(state: PathState) -> &'static str {
    match state {
        PathState::Probing => "probing",
        PathState::Active => "active",
        PathState::Standby => "standby",
        PathState::Suspect => "suspect",
        PathState::Down => "down",
        PathState::Recovering => "recovering",
    }
}

/// The final screen of a transfer: what moved, how fast, what it cost.
pub fn summary(
    role: &str,
    what: &str,
    bytes: u64,
    elapsed: Duration,
    stats: &ConnectionStats,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-6);
    format!(
        "surelink {role}: {what}: {bytes} bytes in {:.2} s ({:.2} MB/s)\n\
         surelink {role}: rtt {:.1} ms (min {:.1} ms), {} packets sent, {} lost, {:.2}% of payload retransmitted\n\
         surelink {role}: {}",
        elapsed.as_secs_f64(),
        bytes as f64 / secs / 1e6,
        stats.rtt.as_secs_f64() * 1e3,
        stats.min_rtt.as_secs_f64() * 1e3,
        stats.packets_sent,
        stats.packets_lost,
        stats.retransmission_rate() * 100.0,
        path_states(stats),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_bytes_rate_and_retransmissions() {
        let mut stats = ConnectionStats::default();
        stats.payload_bytes_sent = 1000;
        stats.payload_bytes_retransmitted = 50;
        let text = summary(
            "send",
            "sent in.bin",
            2_000_000,
            Duration::from_secs(2),
            &stats,
        );
        assert!(
            text.contains("sent in.bin: 2000000 bytes in 2.00 s (1.00 MB/s)"),
            "{text}"
        );
        assert!(text.contains("5.00% of payload retransmitted"), "{text}");
        assert_eq!(text.lines().count(), 3);
    }
}
