//! Packet assembly and transmit scheduling: what the next datagram carries
//! and on which path.
//!
//! [`Connection::poll_transmit`] tries, in order: a pending Reject, the
//! pending handshake message, path probes (PATH_CHALLENGE / PATH_RESPONSE on
//! their own path), broadcast copies, data packets on the data paths chosen
//! by the [`PathSet`](super::path_set::PathSet), and finally heartbeats
//! (PING, PONG, PTO probes, outage and tail probes) on every path. Each
//! `write_*` function builds one kind of datagram; a Data packet is built for
//! a [`Role`]. Data packets are limited by the path's congestion window and
//! paced at its controller's rate; probes and CLOSE are not.
//!
//! **Tail probes.** Loss detection (RACK) learns that a packet was lost only
//! from the acknowledgement of a packet sent after it. The last packet of a
//! video frame's burst, or a lone deadline retransmission, has no such
//! successor until the next heartbeat (up to an interval later) or the next
//! frame, and when that successor's acknowledgement is lost, another
//! interval passes: a retransmission found lost that late leaves no time
//! for the next attempt within a budget of a few round trips. So when a
//! packet carrying deadline data that a retransmission could still repair in
//! time leaves, and nothing else is ready to follow it, a small PING follows
//! at once (ignoring the window and the pacer, and leaving the heartbeat
//! schedule alone): its acknowledgement judges the packet one round trip
//! later. Data past that point (a budget below two round trips, or a last
//! chance) gets none: finding its loss early would only abandon it early,
//! before a repair symbol could rebuild it.

use std::time::Instant;

use super::lifecycle::Lifecycle;
use super::sent::{SentFrame, SentPacket};
use super::{close_code, Connection, PathMode, Side, Transmit};
use crate::config::MIN_DATAGRAM_SIZE;
use crate::wire::{Frame, Header, PacketKind, FLAG_PLAINTEXT, HEADER_MAX_LEN};

impl Connection {
    /// Writes the next datagram to send into `buf` (cleared first), if any.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        buf.clear();
        if self.lifecycle.is_closed() {
            return None;
        }
        if let Some((code, reason)) = self.pending.reject.take() {
            self.write_reject(buf, code, &reason);
            // Linger, so a peer whose copy of the Reject was lost hears it
            // again when it retransmits (see `handle_datagram_on`).
            let drain_end = now + self.drain_period();
            if let Lifecycle::Draining { until, .. } = &mut self.lifecycle {
                *until = Some(drain_end);
            }
            return self.finish_transmit(buf, 0);
        }
        if self.pending.handshake && self.handshake_out.is_some() {
            if let Some(t) = self.write_handshake(now, buf) {
                return Some(t);
            }
        }
        if !self.can_send_data() {
            return None;
        }
        // Path validation: challenges and responses go on their own path.
        for i in 0..self.paths.len() {
            if let Some(t) = self.write_path_probe(now, buf, i) {
                return Some(t);
            }
        }
        // Broadcast copies of what was just sent on another path.
        while let Some((path, frames)) = self.paths.copies.pop_front() {
            if self.paths[path].state().is_usable() {
                if let Some(t) = self.write_packet(now, buf, path, Role::Copy(frames.clone())) {
                    return Some(t);
                }
                // Paced: send this copy when the path's pacer allows.
                self.paths.copies.push_front((path, frames));
                break;
            }
        }
        // FEC repair symbols of a group just closed, ahead of new data.
        if let Some(t) = self.write_fec_repair(now, buf) {
            return Some(t);
        }
        // Data (and ACKs, control frames) on the data path(s).
        for path in self.paths.data_paths() {
            if let Some(t) = self.write_packet(now, buf, path, Role::Data) {
                if self.paths.mode == PathMode::Broadcast {
                    self.paths.queue_copies(path);
                }
                return Some(t);
            }
        }
        // Heartbeats, PONGs and probes on every path.
        for i in 0..self.paths.len() {
            let p = &self.paths[i];
            if p.ping || p.outage_probe || p.tail_probe || p.pong.is_some() || p.probes > 0 {
                if let Some(t) = self.write_packet(now, buf, i, Role::Heartbeat) {
                    return Some(t);
                }
            }
        }
        None
    }

    /// True once Data packets may be sent and received: the handshake is
    /// done on our side and the packet keys are in place. Before that only
    /// handshake packets move, and a timer whose action is a Data packet
    /// (the delayed ACK) must not be armed.
    pub(super) fn can_send_data(&self) -> bool {
        self.protection.is_ready() && !self.lifecycle.is_handshaking()
    }

    /// The header flag of our mode.
    fn plaintext_flag(&self) -> u8 {
        if self.handshake.is_plaintext() {
            FLAG_PLAINTEXT
        } else {
            0
        }
    }

    /// Counts a built datagram and hands it out on `path`.
    fn finish_transmit(&mut self, buf: &[u8], path: usize) -> Option<Transmit> {
        self.next_pn += 1;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += buf.len() as u64;
        if !self.validated {
            self.amp_sent += buf.len() as u64;
        }
        let p = &mut self.paths[path];
        p.on_datagram_sent(buf.len() as u64);
        Some(Transmit {
            destination: p.addr.remote,
            local: p.addr.local,
            size: buf.len(),
        })
    }

    /// A Reject packet: our refusal's CLOSE code and reason, unprotected.
    fn write_reject(&mut self, buf: &mut Vec<u8>, code: u64, reason: &str) {
        Header {
            kind: PacketKind::Reject,
            flags: self.plaintext_flag(),
            dcid: self.peer_cid,
            pn: self.next_pn,
        }
        .encode(buf);
        Frame::Close { code, reason }.encode(buf);
    }

    /// The pending handshake message: the client's Initial (m1, with the retry
    /// token if any) or last message (m3), or the server's answer (m2).
    fn write_handshake(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let msg = self.handshake_out.as_ref()?;
        let initial = self.side == Side::Client && self.lifecycle.is_handshaking();
        // Before the client's address is validated, send at most 3x what it sent.
        let estimate = (msg.len() + 64) as u64;
        if !self.validated && self.amp_sent + estimate > 3 * self.amp_received {
            self.stats.amplification_blocked += 1;
            self.pending.handshake = false;
            return None;
        }
        Header {
            kind: if initial {
                PacketKind::Initial
            } else {
                PacketKind::Handshake
            },
            flags: self.plaintext_flag(),
            dcid: if initial {
                self.local_cid
            } else {
                self.peer_cid
            },
            pn: self.next_pn,
        }
        .encode(buf);
        if initial {
            if let Some(t) = &self.retry_token {
                Frame::Token(t).encode(buf);
            }
        }
        Frame::Handshake(msg).encode(buf);
        if initial && buf.len() < MIN_DATAGRAM_SIZE {
            Frame::Padding(MIN_DATAGRAM_SIZE - buf.len()).encode(buf);
        }
        self.pending.handshake = false;
        self.last_handshake_sent = Some(now);
        self.handshake_sends += 1;
        if self.side == Side::Client {
            self.handshake_spread = self.paths.next_jitter() % 1024;
        }
        self.finish_transmit(buf, 0)
    }

    /// Writes a Data packet header; returns its packet number and length.
    pub(super) fn begin_data_packet(&mut self, now: Instant, buf: &mut Vec<u8>) -> (u64, usize) {
        let flags = self.protection.send_flags(now);
        let pn = self.next_pn;
        Header {
            kind: PacketKind::Data,
            flags,
            dcid: self.peer_cid,
            pn,
        }
        .encode(buf);
        (pn, buf.len())
    }

    /// Seals a Data packet begun with `begin_data_packet` (`start` is its
    /// packet number and header length) and records what it carries.
    pub(super) fn seal_and_finish(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        path: usize,
        (pn, header_len): (u64, usize),
        frames: Vec<SentFrame>,
        eliciting: bool,
    ) -> Option<Transmit> {
        self.protection.seal(pn, buf, header_len);
        let size = buf.len() as u64;
        let p = &mut self.paths[path];
        p.last_sent = Some(now);
        if eliciting {
            p.last_eliciting_sent = now;
            p.pacer.on_sent(size);
            let delivery = p.delivery.on_sent(now, p.sent.bytes_in_flight());
            p.sent.on_sent(
                pn,
                SentPacket {
                    time: now,
                    size,
                    ack_eliciting: true,
                    frames,
                    delivery,
                },
            );
            p.cc.on_sent(now, size, p.sent.bytes_in_flight());
        }
        self.finish_transmit(buf, path)
    }

    /// PATH_CHALLENGE (repeated with backoff) and PATH_RESPONSE on `path`,
    /// within its anti-amplification budget while it is unvalidated.
    fn write_path_probe(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        path: usize,
    ) -> Option<Transmit> {
        let p = &self.paths[path];
        let challenge_due = p
            .challenge
            .is_some_and(|c| now >= c.next_send(self.config.heartbeat_interval));
        if p.response.is_none() && !challenge_due {
            return None;
        }
        if !p.may_probe() {
            return None;
        }
        let (pn, header_len) = self.begin_data_packet(now, buf);
        let p = &mut self.paths[path];
        if let Some(data) = p.response.take() {
            Frame::PathResponse(data).encode(buf);
        }
        if challenge_due {
            if let Some(challenge) = &mut p.challenge {
                Frame::PathChallenge(challenge.data()).encode(buf);
                challenge.on_sent(now);
            }
        }
        self.seal_and_finish(now, buf, path, (pn, header_len), Vec::new(), false)
    }

    /// Builds one Data packet on `path`: a full data packet, a heartbeat
    /// (PING/PONG/probe and a pending ACK), or a broadcast copy of `frames`.
    fn write_packet(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        path: usize,
        role: Role,
    ) -> Option<Transmit> {
        let overhead = self.protection.overhead();
        // Broadcast copies are re-encoded with another packet number: keep room.
        let margin = if self.paths.mode == PathMode::Broadcast {
            8
        } else {
            0
        };
        let mtu = self.config.max_datagram_size - overhead - margin;
        let (pn, header_len) = self.begin_data_packet(now, buf);
        let draining = self.lifecycle.is_draining();
        let is_data = matches!(role, Role::Data);
        let p = &self.paths[path];
        let probe = p.probes > 0;
        // An outage or tail probe is one small PING: it leaves whatever the
        // window and the pacer say (outage_probe.rs, and the module docs).
        let outage = !is_data && (p.outage_probe || p.tail_probe);
        // A CLOSE is one small last packet: it leaves whatever the window
        // (else it would wait for an ACK, which a vanished peer never sends).
        let closing = is_data && self.pending.close.is_some();
        let congestion_ok =
            probe || closing || outage || p.sent.bytes_in_flight() + mtu as u64 <= p.cc.window();
        let control_pending = is_data && (self.pending.max_data || self.pending.close.is_some())
            || p.pong.is_some()
            || p.ping
            || p.outage_probe
            || p.tail_probe
            || probe;
        let data_pending = is_data && !draining && self.send_queue.has_sendable(self.peer_max_data);
        let mut eliciting_ok = match &role {
            Role::Copy(_) => true,
            _ => congestion_ok && (control_pending || data_pending),
        };
        if eliciting_ok && !probe && !outage && self.pending.close.is_none() {
            let p = &mut self.paths[path];
            let rate = p.cc.pacing_rate(p.rtt.smoothed());
            if let Some(t) = p
                .pacer
                .delay(now, mtu as u64, rate, p.cc.window(), mtu as u64)
            {
                p.pacing_until = Some(t);
                eliciting_ok = false;
            }
        }
        let ack_path = path == self.paths.active || self.paths.mode == PathMode::Broadcast;
        let ack_now = ack_path
            && (self.received.wants_ack_now(now)
                || (eliciting_ok && self.received.has_unacked())
                || (draining && self.received.has_unacked()));
        if !ack_now && !eliciting_ok {
            buf.clear();
            return None;
        }
        let mut frames: Vec<SentFrame> = self
            .spare_frame_lists
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.last_frame_count));
        if ack_now {
            if let Some(ack) = self.received.build_ack(now) {
                let largest = ack.largest();
                Frame::Ack(ack).encode(buf);
                frames.push(SentFrame::Ack(largest));
            }
        }
        let mut eliciting = false;
        if let Role::Copy(copy) = role {
            for f in copy {
                match &f {
                    SentFrame::Msg(frag) => match self.send_queue.frame(frag) {
                        Some(frame) => Frame::Msg(frame).encode(buf),
                        // Acknowledged or abandoned meanwhile: no copy needed.
                        None => continue,
                    },
                    SentFrame::Bundle(bundle) => {
                        // Written as wide as the original (whose space was
                        // at most `mtu`), so it fits as the original did.
                        if !self.send_queue.write_bundle_copy(bundle, mtu, buf) {
                            continue;
                        }
                    }
                    SentFrame::MaxData => Frame::MaxData {
                        max: self.max_data_sent,
                    }
                    .encode(buf),
                    SentFrame::Skip { channel, up_to } => Frame::Skip {
                        channel: *channel,
                        up_to: *up_to,
                    }
                    .encode(buf),
                    SentFrame::Close => Frame::Close {
                        code: close_code::NO_ERROR,
                        reason: "",
                    }
                    .encode(buf),
                    SentFrame::Ping => Frame::Ping {
                        timestamp_us: self.clock_us(now),
                        interval_us: self.paths[path].heartbeat_interval().as_micros() as u64,
                    }
                    .encode(buf),
                    SentFrame::Ack(_) => continue,
                }
                if let SentFrame::Skip { .. } = f {
                    // Each copy of a SKIP is tracked like the original.
                    self.send_queue.on_skip_copy();
                }
                frames.push(f);
                eliciting = true;
            }
            if buf.len() == header_len {
                buf.clear();
                return None;
            }
            return self.seal_and_finish(now, buf, path, (pn, header_len), frames, eliciting);
        }
        if eliciting_ok && is_data {
            if let Some((code, reason)) = self.pending.close.take() {
                Frame::Close {
                    code,
                    reason: &reason,
                }
                .encode(buf);
                frames.push(SentFrame::Close);
                eliciting = true;
            }
        }
        if eliciting_ok && !draining {
            if is_data && std::mem::take(&mut self.pending.max_data) {
                let max = self.reassembly.max_data();
                self.max_data_sent = max;
                Frame::MaxData { max }.encode(buf);
                frames.push(SentFrame::MaxData);
                eliciting = true;
            }
            if let Some((echo_us, recv_us)) = self.paths[path].pong.take() {
                Frame::Pong {
                    echo_us,
                    recv_us,
                    send_us: self.clock_us(now),
                }
                .encode(buf);
                eliciting = true;
            }
            let mut needs_tail_probe = false;
            if is_data {
                self.send_queue.begin_packet();
                let now_us = self.micros(now);
                let slack_us = (self.paths[path].rtt.smoothed() / 2).as_micros() as u64;
                let room = mtu - self.fec_prepare(now, path);
                let (protected_start, frames_before) = (buf.len(), frames.len());
                while let Some((channel, up_to)) = self.send_queue.take_skip() {
                    if room.saturating_sub(buf.len()) < 20 {
                        self.send_queue.on_skip_lost(channel, up_to);
                        break;
                    }
                    Frame::Skip { channel, up_to }.encode(buf);
                    frames.push(SentFrame::Skip { channel, up_to });
                    eliciting = true;
                }
                loop {
                    let space = room.saturating_sub(buf.len());
                    if let Some(b) = self.send_queue.next_bundle(space, self.peer_max_data, buf) {
                        self.stats.bundles_sent += 1;
                        self.stats.bundled_messages_sent += b.count;
                        frames.push(SentFrame::Bundle(b));
                        eliciting = true;
                        continue;
                    }
                    let Some(f) =
                        self.send_queue
                            .next_fragment(space, self.peer_max_data, now_us, slack_us)
                    else {
                        break;
                    };
                    let Some(frame) = self.send_queue.frame(&f) else {
                        continue;
                    };
                    Frame::Msg(frame).encode(buf);
                    frames.push(SentFrame::Msg(f));
                    eliciting = true;
                }
                self.fec_protect(now, buf, pn, protected_start, &frames[frames_before..]);
                let repairable = frames[frames_before..].iter().any(|f| {
                    matches!(f, SentFrame::Msg(frag) if frag.repairable_in_time(now_us, slack_us))
                });
                needs_tail_probe = repairable && !self.send_queue.has_sendable(self.peer_max_data);
                if frames[frames_before..]
                    .iter()
                    .any(|f| matches!(f, SentFrame::Msg(_) | SentFrame::Bundle(_)))
                {
                    self.data_pace.on_data_packet(now);
                }
            }
            let data_flowing = self.data_flowing(path);
            let p = &mut self.paths[path];
            let probe = p.probes > 0;
            let ping = std::mem::take(&mut p.ping);
            let outage = std::mem::take(&mut p.outage_probe);
            // Any ack-eliciting packet that follows the one that asked for
            // a tail probe judges it: a PING only when nothing else is sent.
            let tail = std::mem::take(&mut p.tail_probe);
            let heartbeat = ping || outage || (probe && !eliciting);
            if heartbeat || (tail && !eliciting) {
                let (base, max) = (
                    self.config.heartbeat_interval,
                    self.config.heartbeat_max_interval,
                );
                // An outage probe goes while deadline data waits: the next
                // heartbeat is due at the base interval. A tail probe alone
                // leaves the heartbeat schedule as it was.
                let interval = if heartbeat {
                    p.on_ping_sent(now, base, max, data_flowing || outage)
                } else {
                    p.heartbeat_interval()
                };
                Frame::Ping {
                    timestamp_us: self.clock_us(now),
                    interval_us: interval.as_micros() as u64,
                }
                .encode(buf);
                frames.push(SentFrame::Ping);
                eliciting = true;
            }
            let p = &mut self.paths[path];
            if p.probes > 0 {
                p.probes -= 1;
            }
            // The last packet of deadline data for now needs a successor.
            p.tail_probe = needs_tail_probe;
        }
        if buf.len() == header_len {
            buf.clear();
            return None;
        }
        debug_assert!(buf.len() <= mtu + margin + HEADER_MAX_LEN);
        self.last_frame_count = frames.len();
        if self.paths.mode == PathMode::Broadcast && is_data {
            self.paths.last_frames = Some(
                frames
                    .iter()
                    .filter(|f| !matches!(f, SentFrame::Ack(_)))
                    .cloned()
                    .collect(),
            );
        }
        self.seal_and_finish(now, buf, path, (pn, header_len), frames, eliciting)
    }
}

/// What a Data packet is built for.
#[derive(Debug)]
enum Role {
    /// Application data, control frames and ACKs on a data path.
    Data,
    /// Only liveness traffic for this path (PING, PONG, probe) and a pending ACK.
    Heartbeat,
    /// A broadcast copy of these frames.
    Copy(Vec<SentFrame>),
}
