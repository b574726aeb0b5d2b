//! Seeded simulations of loss detection under reordering, on a virtual clock:
//! reordering without loss is tolerated (no congestion reaction, almost no
//! retransmission), a loss that proves spurious is undone and widens the
//! reordering window, and deadline channels stay on time through reordering
//! and loss, their losses found without a probe timeout.

mod harness;

use std::time::Duration;

use harness::{assert_exactly_once, ms, Sim, Workload};
use surelink_netem::{Link, LinkConfig};
use surelink_proto::wire::Delivery;
use surelink_proto::Config;

/// 10 ms each way; a share of the packets held back `reorder` more, letting
/// later packets overtake them.
fn reordering_link(reorder: Duration) -> LinkConfig {
    LinkConfig::clean()
        .with_delay(ms(10))
        .with_reorder(0.05, reorder)
}

fn clean() -> LinkConfig {
    LinkConfig::clean().with_delay(ms(10))
}

fn bulk() -> Workload {
    Workload {
        messages: 400,
        max_size: 1200,
        interval: Duration::ZERO,
    }
}

#[test]
fn reordering_without_loss_causes_no_congestion_reaction() {
    let mut spurious_total = 0;
    for seed in 0..40u64 {
        let reorder = ms(1 + seed % 10);
        let mut sim = Sim::new(Config::default(), clean(), clean(), seed);
        sim.run_handshake(Duration::from_secs(5));
        // Reordering from here on: a handshake message overtaken by data
        // would make that data undecryptable, a real loss.
        let link = reordering_link(reorder);
        sim.c2s = Link::new(link.clone(), seed * 3, sim.now).unwrap();
        sim.s2c = Link::new(link, seed * 5 + 1, sim.now).unwrap();
        let out = sim.run_transfer(&bulk(), Duration::from_secs(60));
        assert_exactly_once(&out, bulk().messages, &format!("seed {seed}"));
        assert!(
            sim.c2s.stats().reordered > 0,
            "seed {seed}: reordering happened"
        );
        let c = out.client_stats.unwrap();
        let ctx = format!("seed {seed}, reorder {reorder:?}: {c:?}");
        // Nothing was lost on the wire: every loss declared was spurious
        // and its congestion reaction was undone.
        assert_eq!(c.packets_lost, c.spurious_losses, "{ctx}");
        assert_eq!(c.ssthresh, u64::MAX, "no reduction stands: {ctx}");
        // Once reordering is seen the window adapts: a handful at most.
        assert!(
            c.spurious_losses <= sim.c2s.stats().reordered.min(5),
            "{ctx}"
        );
        // At most what those packets carried was sent again.
        let max_payload = Config::default().max_datagram_size as u64;
        assert!(
            c.payload_bytes_retransmitted <= c.spurious_losses * max_payload,
            "{ctx}"
        );
        let path = &c.paths[0];
        assert!(path.reordering_distance > 0, "{ctx}");
        if c.spurious_losses > 0 {
            assert!(
                path.reordering_window > path.min_rtt / 4,
                "the window widened after a spurious loss: {ctx}"
            );
        }
        spurious_total += c.spurious_losses;
    }
    assert!(
        spurious_total > 0,
        "reordering beyond a quarter RTT must have caused (undone) spurious losses"
    );
}

#[test]
fn deadline_channel_never_delivers_late_through_reordering_and_loss() {
    let deadline_us = 80_000;
    for seed in 0..20u64 {
        let link = reordering_link(ms(1 + seed % 10))
            .with_jitter(ms(1))
            .with_loss(0.05);
        let mut sim = Sim::new(Config::default(), link.clone(), link, seed);
        let out = sim.run_realtime(
            600,
            1000,
            ms(2),
            Delivery::Deadline(deadline_us),
            Duration::from_secs(30),
        );
        let mut accounted: Vec<u64> = out.delivered.iter().map(|m| m.seq).collect();
        accounted.extend(&out.skipped);
        accounted.sort_unstable();
        assert_eq!(accounted, (0..600).collect::<Vec<_>>(), "seed {seed}");
        // The receiver judges the deadline on the sender's clock mapped onto
        // its own through its clock estimate: "never late" holds up to that
        // estimate's error bound (a few µs here), which it reports.
        let bound_us = out
            .server_stats
            .as_ref()
            .and_then(|s| s.clock.as_ref())
            .map_or(0, |c| c.error_bound_us.ceil() as u64);
        for m in &out.delivered {
            assert!(
                m.delivered_us - m.sent_us <= deadline_us + bound_us,
                "seed {seed}: seq {} late: delivered {} us after it was sent (clock error bound {bound_us} us)",
                m.seq,
                m.delivered_us - m.sent_us
            );
        }
        let c = out.client_stats.unwrap();
        assert!(c.packets_lost > c.spurious_losses, "seed {seed}: real loss");
        // Every loss, lost retransmissions included, was found from the
        // acknowledgements of later packets, never by waiting for a probe timeout.
        assert_eq!(c.probe_timeouts, 0, "seed {seed}");
    }
}
