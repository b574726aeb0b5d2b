//! Prints the failure detector's trade-off: false suspicions per hour under
//! heartbeat jitter versus detection time after a silent failure, for several
//! phi thresholds (the default declares a path suspect at phi 4 and down at 8).
//!
//! `cargo run --release -p surelink-proto --example phi_curve`
//!
//! Heartbeats every 20 ms with exponentially distributed queueing delay of the
//! given mean; 200,000 heartbeats (about an hour) per row; deterministic.

use std::time::{Duration, Instant};

use surelink_proto::conn::phi_trade_off;

fn main() {
    let t0 = Instant::now();
    println!("| mean queueing jitter | phi threshold | false suspicions per hour | mean detection time |");
    println!("|---|---|---|---|");
    for jitter_ms in [1u64, 2, 5, 10] {
        for threshold in [1.0, 2.0, 4.0, 8.0, 12.0] {
            let (fp_per_hour, detect) = phi_trade_off(
                Duration::from_millis(20),
                Duration::from_millis(jitter_ms),
                threshold,
                200_000,
                t0,
            );
            println!(
                "| {jitter_ms} ms | {threshold} | {fp_per_hour:.1} | {:.1} ms |",
                detect.as_secs_f64() * 1e3
            );
        }
    }
}
