//! The connection's timers, as one table.
//!
//! A timer is a [`Timer`] variant with a deadline (computed from state, never
//! stored twice) and an expiry action. [`Connection::poll_timeout`] is the
//! earliest deadline in the table; [`Connection::handle_timeout`] walks the
//! table in order and expires every timer that is due. Adding a timer is one
//! entry in [`Timer::table`] plus its arms in `deadline` and `expire`.
//!
//! Order matters and is the table's order: the idle timer first (it ends the
//! connection), then each path's pacing, loss-detection and heartbeat timers,
//! then the connection's handshake, keepalive and ACK timers, and last the
//! path check and playout, which run on every wake-up because failover and
//! deadline skipping also depend on state the other timers just changed.

use std::time::Instant;

use super::lifecycle::Lifecycle;
use super::{Connection, ConnectionError, Side};

/// One timer of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Nothing heard from the peer for the idle timeout.
    Idle,
    /// The path's pacer allows the next datagram.
    Pacing(usize),
    /// The path's loss time (time-threshold loss), else its probe timeout.
    LossDetection(usize),
    /// A heartbeat PING, a path challenge, or a down-path probe is due.
    Heartbeat(usize),
    /// Client: repeat the pending handshake message.
    Handshake,
    /// Keep an idle connection's NAT bindings and liveness fresh.
    Keepalive,
    /// A delayed ACK must go out (sent by `poll_transmit`).
    Ack,
    /// An open FEC group reached its hold time, or its quiet time after the
    /// input paused: close it, send its repairs.
    FecHold,
    /// The active path is silent while deadline data is alive: send an
    /// outage probe (`outage_probe.rs`).
    OutageProbe,
    /// The failure detector must look at the paths (and fail over or back).
    PathCheck,
    /// A message reaches its playout time or its deadline.
    Playout,
}

impl Timer {
    /// Every timer of a connection with `paths` paths, in expiry order.
    fn table(paths: usize) -> impl Iterator<Item = Timer> {
        std::iter::once(Timer::Idle)
            .chain((0..paths).flat_map(|i| {
                [
                    Timer::Pacing(i),
                    Timer::LossDetection(i),
                    Timer::Heartbeat(i),
                ]
            }))
            .chain([
                Timer::Handshake,
                Timer::Keepalive,
                Timer::Ack,
                Timer::FecHold,
                Timer::OutageProbe,
                Timer::PathCheck,
                Timer::Playout,
            ])
    }

    /// True for timers whose action runs on every wake-up, due or not.
    fn runs_on_every_wakeup(self) -> bool {
        matches!(self, Timer::PathCheck | Timer::Playout)
    }
}

impl Connection {
    /// When `timer` expires, if it is armed.
    fn deadline(&self, timer: Timer) -> Option<Instant> {
        match timer {
            // Silence is judged `receive_lag` late (the caller's backlog).
            Timer::Idle => Some(self.last_received + self.idle_timeout() + self.receive_lag),
            Timer::Pacing(i) => self.paths[i].pacing_until,
            Timer::LossDetection(i) => self.paths[i].loss_time.or(self.pto_deadline(i)),
            Timer::Heartbeat(i) => self.heartbeat_deadline(i),
            Timer::Handshake => {
                if self.side != Side::Client || self.is_closed() || self.handshake_out.is_none() {
                    return None;
                }
                let pto = self.pto_duration(0);
                let spread = pto.mul_f64(self.handshake_spread as f64 / 2048.0);
                Some(self.last_handshake_sent? + pto + spread)
            }
            Timer::Keepalive => {
                let p = self.ap();
                (self.lifecycle.is_open() && !p.sent.has_eliciting_in_flight())
                    .then(|| p.last_eliciting_sent + self.config.keepalive_interval)
            }
            Timer::Ack => self.received.ack_deadline(),
            Timer::FecHold => self.fec_tx.poll_timeout(self.fec_input_paused()),
            Timer::OutageProbe => self.outage_probe_deadline(),
            Timer::PathCheck => self.path_check_deadline(),
            Timer::Playout => self.reassembly.next_wake().map(|us| self.instant_at(us)),
        }
    }

    /// Runs `timer`'s action at `now`.
    fn expire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::Idle => {
                // Our CLOSE went unanswered but everything we sent was
                // acknowledged: that is a graceful end (the acknowledgement
                // of the CLOSE was lost).
                let error = match self.lifecycle {
                    Lifecycle::CloseSent { .. } => None,
                    _ if self.paths.all_down => Some(ConnectionError::ConnectionLost),
                    _ => Some(ConnectionError::TimedOut),
                };
                self.send_queue.clear();
                self.enter_closed(error);
            }
            Timer::Pacing(i) => self.paths[i].pacing_until = None,
            Timer::LossDetection(i) => {
                if self.paths[i].loss_time.is_some_and(|t| t <= now) {
                    self.detect_lost(now, i);
                } else {
                    let p = &mut self.paths[i];
                    p.pto_count += 1;
                    p.probes = 2;
                    self.stats.probe_timeouts += 1;
                }
            }
            Timer::Heartbeat(i) => {
                self.paths[i].on_heartbeat_due();
                // A quiet connection gives back the buffers it kept for reuse.
                for r in self.recyclers() {
                    r.decay();
                }
            }
            Timer::Handshake => {
                self.paths[0].pto_count += 1;
                self.stats.probe_timeouts += 1;
                self.pending.handshake = true;
            }
            Timer::Keepalive => {
                let a = self.paths.active;
                self.paths[a].ping = true;
            }
            // Wakes `poll_transmit`, which sends the ACK.
            Timer::Ack => {}
            Timer::FecHold => {
                let paused = self.fec_input_paused();
                self.fec_tx.handle_timeout(now, paused);
                self.offer_fec_repairs(now);
            }
            Timer::OutageProbe => self.on_outage_probe_due(now),
            Timer::PathCheck => self.check_paths(now),
            Timer::Playout => self.poll_delivery(now),
        }
    }

    /// When `handle_timeout` must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.lifecycle {
            Lifecycle::Closed => return None,
            Lifecycle::Draining { .. } => {
                let playout = self.deadline(Timer::Playout);
                return [self.drain_deadline(), playout].into_iter().flatten().min();
            }
            _ => {}
        }
        Timer::table(self.paths.len())
            .filter_map(|t| self.wake_at(t))
            .min()
    }

    /// When to wake up for `timer`: its deadline, except that a silence
    /// check (idle timeout, failure detector) judged while the caller lags
    /// wakes one more `receive_lag` later. Its deadline already includes the
    /// lag, and the lag keeps growing while the caller's backlog persists: a
    /// check woken exactly then would find the silence not yet due and ask
    /// again a moment later; with the extra lag the re-checks of a lasting
    /// backlog come at doubling spans. A caller that keeps up (no lag) wakes
    /// exactly at the deadline.
    fn wake_at(&self, timer: Timer) -> Option<Instant> {
        let deadline = self.deadline(timer)?;
        Some(match timer {
            Timer::Idle | Timer::PathCheck => deadline + self.receive_lag,
            _ => deadline,
        })
    }

    /// Handles the expiry of whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.lifecycle {
            Lifecycle::Closed => return,
            Lifecycle::Draining { .. } => {
                self.poll_delivery(now);
                self.drain_timeout(now);
                return;
            }
            _ => {}
        }
        for timer in Timer::table(self.paths.len()) {
            if timer.runs_on_every_wakeup() || self.deadline(timer).is_some_and(|t| t <= now) {
                self.expire(now, timer);
            }
            if timer == Timer::Idle && self.lifecycle.is_closed() {
                return;
            }
        }
        // The delayed ACK's action is `poll_transmit`'s: armed while no Data
        // packet may leave, it would stay due and `poll_timeout` in the past.
        debug_assert!(
            self.deadline(Timer::Ack).is_none() || self.can_send_data(),
            "a delayed ACK is armed while no Data packet may carry it"
        );
    }
}
