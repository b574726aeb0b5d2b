//! Dense probing of a silent path while deadline messages can still make it.
//!
//! When a path goes silent (a cut), the sender learns that it is back only
//! from an acknowledgement of something sent after it returned. Left to the
//! application's traffic, that is the next video frame, up to a frame
//! interval after the return, and to the probe timeout, which backs off
//! exponentially during the silence. Every millisecond of that delay is a
//! millisecond less for the retransmissions of what the cut swallowed.
//!
//! So, while the active path is silent (whether the failure detector calls
//! it active, suspect or down) — an ack-eliciting packet in flight
//! and nothing heard for a probe timeout (`pto_base`) since it or the last
//! arrival, whichever is later — and a deadline message is still within its
//! deadline, the sender sends a PING every eighth of the smoothed RTT (at
//! least [`MIN_INTERVAL`]), ignoring the congestion window and the pacer.
//! The first one after the return arrives out of order, is acknowledged at
//! once, shows everything before it lost, and the earliest-deadline-first
//! retransmissions start. At most [`MAX_PROBES`] per silence (a PING packet
//! is a few dozen bytes): the count starts over when the path is heard from.
//!
//! Driven by the timer table (`Timer::OutageProbe`: [`Connection::outage_probe_deadline`],
//! [`Connection::on_outage_probe_due`]); packet assembly (`transmit.rs`)
//! sends the PING the path's `outage_probe` flag asks for.

use std::time::{Duration, Instant};

use super::path::PathState;
use super::Connection;

/// Shortest interval between two outage probes.
const MIN_INTERVAL: Duration = Duration::from_millis(2);

/// Outage probes are sent every smoothed RTT divided by this.
const RTT_FRACTION: u32 = 8;

/// Most outage probes per silence.
const MAX_PROBES: u32 = 100;

impl Connection {
    /// When the next outage probe is due on the active path, if one is: the
    /// path is silent, a deadline message is still alive then, and the
    /// silence has not used up its probes.
    pub(super) fn outage_probe_deadline(&self) -> Option<Instant> {
        if !self.lifecycle.is_open() {
            return None;
        }
        let p = self.ap();
        if p.outage_probe
            || !matches!(
                p.state(),
                PathState::Active | PathState::Suspect | PathState::Down
            )
        {
            return None;
        }
        let (sent, last) = p.outage_probes;
        if sent >= MAX_PROBES {
            return None;
        }
        let oldest = p.sent.oldest_eliciting_in_flight()?;
        let silent_from = p.last_heard().map_or(oldest, |heard| heard.max(oldest));
        let interval = (p.rtt.smoothed() / RTT_FRACTION).max(MIN_INTERVAL);
        let mut at = silent_from + p.rtt.pto_base();
        if let Some(last) = last {
            at = at.max(last + interval);
        }
        let due_us = self.send_queue.latest_deadline_us()?;
        (at < self.epoch + Duration::from_micros(due_us)).then_some(at)
    }

    /// The outage-probe timer fired: if a probe is still due, asks the
    /// active path for one.
    pub(super) fn on_outage_probe_due(&mut self, now: Instant) {
        if self.outage_probe_deadline().is_some_and(|at| at <= now) {
            let active = self.paths.active;
            let p = &mut self.paths[active];
            p.outage_probe = true;
            p.outage_probes = (p.outage_probes.0 + 1, Some(now));
        }
    }
}
