//! Loss recovery (RFC 9002 §6) across the paths of a connection.
//!
//! One packet-number space, loss judged per path: an ACK frame is applied to
//! every path's sent-packet map ([`super::sent`]), each path takes its own RTT
//! sample, feeds its congestion controller (with a delivery-rate sample) and
//! detects its own losses with RACK ([`super::rack`]: time since the newest
//! acknowledged packet was sent, plus an adaptive reordering window). What
//! lost packets carried is re-queued (messages, SKIP, MAX_DATA, CLOSE); one
//! congestion event is reported per loss episode. A packet acknowledged after
//! it was declared lost is a spurious loss: what it carried counts as
//! acknowledged (a queued retransmission of it is dropped), the reordering
//! window widens, and when the whole episode proves spurious the controller
//! undoes its reduction (`on_spurious_loss`). The probe timeout (PTO) backs
//! off exponentially up to `max_pto`.
//!
//! Driven by the conductor (`on_ack_frame` for each ACK frame) and by the
//! timer table (the loss-detection timer: `detect_lost` at the loss time,
//! else a probe at the PTO).

use std::time::{Duration, Instant};

use super::congestion::{AckEvent, AckedPacket};
use super::sent::{SentFrame, SentPacket};
use super::{close_code, Connection};

/// How long declared losses are remembered, in probe timeouts.
const LOSS_MEMORY_PTOS: u32 = 4;

/// Most emptied frame lists kept for reuse.
const SPARE_FRAME_LISTS: usize = 64;

impl Connection {
    /// Applies an ACK frame that arrived on `path` to every path's packets.
    pub(super) fn on_ack_frame(&mut self, now: Instant, path: usize, ack: &crate::wire::AckFrame) {
        if ack.largest() >= self.next_pn {
            self.protocol_violation(
                now,
                close_code::PROTOCOL_VIOLATION,
                "ACK of a packet never sent".into(),
            );
            return;
        }
        let ack_delay = Duration::from_micros(ack.delay_us).min(self.peer_max_ack_delay());
        let sendable = self.send_queue.has_sendable(self.peer_max_data);
        let mtu = self.config.max_datagram_size as u64;
        // One packet-number space, loss judged per path: each path takes the
        // acknowledgements of its own packets.
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            let in_flight_before = p.sent.bytes_in_flight();
            let outcome = p.sent.on_ack(now, &ack.ranges);
            if outcome.acked.is_empty() && outcome.spurious.is_empty() {
                continue;
            }
            self.fec_tx.on_acked_out_of_order(outcome.out_of_order);
            if let Some(sample) = outcome.rtt_sample {
                // The ACK's own delay applies to the path it came back on.
                let delay = if i == path { ack_delay } else { Duration::ZERO };
                p.rtt.update(sample, delay);
                self.stats.rtt_histogram.record(sample);
            }
            let app_limited = in_flight_before + mtu <= p.cc.window() / 2 && !sendable;
            let app_limited_flight = app_limited.then(|| p.sent.bytes_in_flight());
            let eliciting = || {
                outcome
                    .acked
                    .iter()
                    .map(|(_, pkt)| pkt)
                    .filter(|pkt| pkt.ack_eliciting)
            };
            let packets: Vec<AckedPacket> = eliciting()
                .map(|pkt| AckedPacket {
                    sent: pkt.time,
                    bytes: pkt.size,
                })
                .collect();
            if !packets.is_empty() {
                let rate_sample = p.delivery.on_ack(
                    now,
                    eliciting().map(|pkt| (pkt.size, pkt.time, pkt.delivery)),
                    p.rtt.min(),
                    app_limited_flight,
                );
                p.cc.on_ack(&AckEvent {
                    now,
                    packets: &packets,
                    app_limited,
                    min_rtt: p.rtt.min(),
                    smoothed_rtt: p.rtt.smoothed(),
                    rate_sample,
                });
                p.pto_count = 0;
            } else if let Some(in_flight) = app_limited_flight {
                p.delivery.mark_app_limited(in_flight);
            }
            for spurious in &outcome.spurious {
                self.stats.spurious_losses += 1;
                p.spurious_losses += 1;
                if spurious.undo {
                    p.cc.on_spurious_loss(now);
                }
            }
            for carried in outcome.spurious.iter().flat_map(|s| &s.messages) {
                match carried {
                    SentFrame::Msg(frag) => self.send_queue.on_acked(frag),
                    SentFrame::Bundle(bundle) => self.send_queue.on_bundle_acked(bundle),
                    _ => {}
                }
            }
            for (_, mut pkt) in outcome.acked {
                for f in pkt.frames.drain(..) {
                    match f {
                        SentFrame::Msg(frag) => self.send_queue.on_acked(&frag),
                        SentFrame::Bundle(bundle) => self.send_queue.on_bundle_acked(&bundle),
                        SentFrame::Skip { .. } => self.send_queue.on_skip_acked(),
                        SentFrame::Ack(largest) => self.received.on_ack_acked(largest),
                        SentFrame::Close if self.lifecycle.is_close_sent() => {
                            self.enter_closed(None);
                        }
                        _ => {}
                    }
                }
                if self.spare_frame_lists.len() < SPARE_FRAME_LISTS && pkt.frames.capacity() > 0 {
                    self.spare_frame_lists.push(pkt.frames);
                }
            }
            self.detect_lost(now, i);
        }
        self.maybe_send_close();
    }

    /// Declares lost what the path's ACKs and loss delay say is lost, and
    /// re-arms its loss time.
    pub(super) fn detect_lost(&mut self, now: Instant, path: usize) {
        let p = &mut self.paths[path];
        let reo_wnd = p.sent.rack().reo_wnd(p.rtt.min(), p.rtt.smoothed());
        // A late acknowledgement can show a loss spurious for a few round trips.
        let remember_for = p.rtt.pto_base() * LOSS_MEMORY_PTOS;
        let outcome = p.sent.detect_lost(now, reo_wnd, remember_for);
        p.loss_time = outcome.next;
        self.on_packets_lost(now, path, outcome.lost, outcome.new_episode);
    }

    /// Re-queues what lost packets carried; `congestion` says the loss is a
    /// congestion signal for the path (a new loss episode; not so when a path
    /// is abandoned).
    pub(super) fn on_packets_lost(
        &mut self,
        now: Instant,
        path: usize,
        lost: Vec<(u64, SentPacket)>,
        congestion: bool,
    ) {
        let mut newest_lost_eliciting = None;
        let mut lost_bytes = 0;
        for (_, p) in lost {
            self.stats.packets_lost += 1;
            self.paths[path].packets_lost += 1;
            if p.ack_eliciting {
                newest_lost_eliciting = Some(p.time);
                lost_bytes += p.size;
            }
            for f in p.frames {
                match f {
                    SentFrame::Msg(frag) => self.send_queue.on_lost(frag),
                    SentFrame::Bundle(bundle) => self.send_queue.on_bundle_lost(&bundle),
                    SentFrame::MaxData => self.pending.max_data = true,
                    SentFrame::Close if self.lifecycle.is_close_sent() => {
                        self.pending.close = Some((close_code::NO_ERROR, String::new()));
                    }
                    SentFrame::Skip { channel, up_to } => {
                        self.send_queue.on_skip_lost(channel, up_to)
                    }
                    SentFrame::Close | SentFrame::Ack(_) | SentFrame::Ping => {}
                }
            }
        }
        if let (Some(newest), true) = (newest_lost_eliciting, congestion) {
            self.paths[path]
                .cc
                .on_congestion_event(now, newest, lost_bytes);
        }
    }

    /// The path's probe timeout, backed off by its PTO count, capped at `max_pto`.
    pub(super) fn pto_duration(&self, path: usize) -> Duration {
        let p = &self.paths[path];
        let base = p.rtt.pto_base() + self.peer_max_ack_delay();
        let backed_off = base.saturating_mul(1u32 << p.pto_count.min(16));
        backed_off.min(self.config.max_pto.max(base))
    }

    /// When the path's probe timeout fires (none while a loss time is armed
    /// or nothing ack-eliciting is in flight).
    pub(super) fn pto_deadline(&self, path: usize) -> Option<Instant> {
        let p = &self.paths[path];
        if p.loss_time.is_some() || self.is_closed() || !p.sent.has_eliciting_in_flight() {
            return None;
        }
        let last = p.sent.last_eliciting_sent().unwrap_or(self.epoch);
        Some(last + self.pto_duration(path))
    }
}
