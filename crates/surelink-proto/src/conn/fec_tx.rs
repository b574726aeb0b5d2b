//! The sending side of forward error correction on deadline channels.
//!
//! Driven from packet assembly (`transmit.rs`): before a Data packet takes
//! its SKIP and MSG frames, [`Connection::fec_prepare`] lets the policy
//! (`Config::fec`) choose the code and returns the room the packet must
//! leave free; after them, [`Connection::fec_protect`] wraps those frames in
//! an FEC_SOURCE frame when the packet carries deadline-channel data, and
//! feeds the source symbol (packet number and protected frames) to the
//! [`FecEncoder`]. When a group fills, or its hold timer (`Timer::FecHold`)
//! fires, its repair symbols are queued and [`Connection::write_fec_repair`]
//! sends them ahead of new data, in packets of their own, through the
//! congestion window and the pacer like data. Repair packets are
//! ack-eliciting and count in flight (they load the path as much as data), but
//! carry nothing to retransmit: a lost repair is simply gone.
//!
//! The `auto` policy re-sizes the code at group boundaries from a recent
//! window of the connection's packets: loss rate (packets declared lost over
//! packets sent), the rate a group fills at (the mean rate of deadline
//! packets, or the peak within one hold time if higher: bursty streams such as
//! video send a frame's packets together), the path's smoothed RTT, and the
//! budget (the smallest deadline among the protected messages).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::sent::SentFrame;
use super::{Connection, Transmit};
use crate::fec::{FecConfig, FecEncoder, FecScheme, LinkEstimate, RepairSymbol, MAX_SOURCE_LEN};
use crate::wire::{varint, Delivery, Frame};

/// Bytes a protected packet leaves free, so that the FEC_SOURCE frame fits
/// before its frames and a repair symbol over its frames (15-byte header,
/// 2-byte length, even padding, FEC_REPAIR type and length) fits in a
/// packet of the same size.
const SOURCE_RESERVE: usize = 32;

/// Packets the `auto` policy's loss window spans before it is measured.
const LOSS_WINDOW_PACKETS: u64 = 64;

/// Weight of the newest window in the smoothed loss rate (one window of 64
/// packets holds about three losses at 5 %: alone it is too noisy to size
/// the code from).
const LOSS_GAIN: f64 = 0.25;

/// Fraction of the budget a group may stay open (the hold timer).
const HOLD_FRACTION: u32 = 4;

/// Fraction of the budget after which an open group closes once the input
/// has paused (nothing queued to send, no new source symbol): a video
/// frame's last packets are protected at once instead of waiting for the
/// next frame or the hold timer.
const QUIET_FRACTION: u32 = 32;

/// FEC state of the sending side.
#[derive(Debug)]
pub(super) struct FecSender {
    config: FecConfig,
    /// The encoder of the chosen code, `None` while FEC is off.
    encoder: Option<FecEncoder>,
    /// Sequence number of the next source symbol.
    next_seq: u64,
    /// When the newest source symbol was protected.
    last_source: Option<Instant>,
    /// Repair symbols waiting to be sent, oldest first.
    repairs: VecDeque<RepairSymbol>,
    /// Bytes of repair symbols queued since the congestion controllers were
    /// last told (see [`Connection::offer_fec_repairs`]).
    unoffered: u64,
    /// The smallest deadline of a deadline message sent so far.
    budget: Option<Duration>,
    /// Packets acknowledged after a later one (see
    /// [`FecSender::on_acked_out_of_order`]).
    acked_out_of_order: u64,
    window: LossWindow,
}

/// The `auto` policy's measurement window: counters at its start and the
/// rates measured over the last completed window.
#[derive(Debug, Default)]
struct LossWindow {
    started: Option<Instant>,
    sent_at_start: u64,
    lost_at_start: u64,
    deadline_packets_at_start: u64,
    deadline_packets: u64,
    /// Deadline packets since `hold_started`, within one hold time.
    hold_started: Option<Instant>,
    packets_in_hold: u64,
    /// The most deadline packets sent within one hold time in this window.
    peak_in_hold: u64,
    /// Smoothed loss rate over the completed windows, `None` before the first.
    loss_rate: Option<f64>,
    packet_rate: f64,
}

impl LossWindow {
    /// Counts a deadline packet sent at `now`; `hold` is a group's hold time.
    fn on_deadline_packet(&mut self, now: Instant, hold: Duration) {
        self.deadline_packets += 1;
        match self.hold_started {
            Some(start) if now < start + hold => self.packets_in_hold += 1,
            _ => {
                self.hold_started = Some(now);
                self.packets_in_hold = 1;
            }
        }
        self.peak_in_hold = self.peak_in_hold.max(self.packets_in_hold);
    }

    /// The rate a group fills at: the mean rate of deadline packets, or on
    /// bursty traffic (a video frame's packets leave together) the peak
    /// rate within one hold time, so that a group spans a burst.
    fn filling_rate(&self, elapsed: f64, hold: Duration) -> f64 {
        let deadline = self
            .deadline_packets
            .saturating_sub(self.deadline_packets_at_start);
        let mean = deadline as f64 / elapsed;
        let peak = self.peak_in_hold as f64 / hold.as_secs_f64().max(1e-3);
        mean.max(peak)
    }

    /// Closes the window once it spans enough packets; returns true if the
    /// rates changed.
    fn update(&mut self, now: Instant, sent: u64, lost: u64, hold: Duration) -> bool {
        let Some(started) = self.started else {
            self.restart(now, sent, lost);
            return false;
        };
        let sent_in_window = sent.saturating_sub(self.sent_at_start);
        let elapsed = now.saturating_duration_since(started).as_secs_f64();
        if sent_in_window < LOSS_WINDOW_PACKETS || elapsed <= 0.0 {
            return false;
        }
        let lost_in_window = lost.saturating_sub(self.lost_at_start);
        let sample = (lost_in_window as f64 / sent_in_window as f64).min(1.0);
        self.loss_rate = Some(
            self.loss_rate
                .map_or(sample, |old| old + LOSS_GAIN * (sample - old)),
        );
        self.packet_rate = self.filling_rate(elapsed, hold);
        self.restart(now, sent, lost);
        true
    }

    fn restart(&mut self, now: Instant, sent: u64, lost: u64) {
        self.started = Some(now);
        self.sent_at_start = sent;
        self.lost_at_start = lost;
        self.deadline_packets_at_start = self.deadline_packets;
        self.peak_in_hold = 0;
    }
}

/// How long a group may stay open under `budget`: a quarter of it, at
/// least 1 ms.
fn hold_time(budget: Duration) -> Duration {
    (budget / HOLD_FRACTION).max(Duration::from_millis(1))
}

/// How long the input must pause before the open group closes: a 32nd of
/// `budget`, at least 1 ms (datagrams of one burst arrive closer together).
fn quiet_time(budget: Duration) -> Duration {
    (budget / QUIET_FRACTION).max(Duration::from_millis(1))
}

impl FecSender {
    /// A sender with the policy `config`.
    pub(super) fn new(config: FecConfig) -> Self {
        Self {
            config,
            encoder: None,
            next_seq: 0,
            last_source: None,
            repairs: VecDeque::new(),
            unoffered: 0,
            budget: None,
            acked_out_of_order: 0,
            window: LossWindow::default(),
        }
    }

    /// When the open group must be closed, if one is open: its hold time
    /// after its first symbol, or, when `input_paused` (nothing is queued to
    /// send), the quiet time after its newest.
    pub(super) fn poll_timeout(&self, input_paused: bool) -> Option<Instant> {
        let held = self.encoder.as_ref()?.poll_timeout()?;
        match (input_paused, self.last_source, self.budget) {
            (true, Some(last), Some(budget)) => Some(held.min(last + quiet_time(budget))),
            _ => Some(held),
        }
    }

    /// Closes the open group if its hold time, or with `input_paused` its
    /// quiet time, has passed.
    pub(super) fn handle_timeout(&mut self, now: Instant, input_paused: bool) {
        if self.poll_timeout(input_paused).is_some_and(|t| now >= t) {
            if let Some(encoder) = &mut self.encoder {
                let repairs = encoder.flush();
                self.queue(repairs);
            }
        }
    }

    /// Queues repair symbols to send, counting their bytes as offered load.
    fn queue(&mut self, repairs: Vec<RepairSymbol>) {
        for r in repairs {
            self.unoffered += r.encoded_len() as u64;
            self.repairs.push_back(r);
        }
    }

    /// Counts `n` packets acknowledged after a later packet was. With FEC on,
    /// most of them are losses the receiver rebuilt: the ACK that followed
    /// the loss showed the gap, the one after the repair filled it. The
    /// sender never declares such a packet lost (its acknowledgement comes
    /// within the reordering window), so without this count the loss rate
    /// the policy sees falls as FEC succeeds, and the code shrinks until it
    /// fails. Reordering on the path counts too, erring towards more repair.
    pub(super) fn on_acked_out_of_order(&mut self, n: u64) {
        self.acked_out_of_order += n;
    }

    /// True if repair symbols wait to be sent.
    pub(super) fn has_repairs(&self) -> bool {
        !self.repairs.is_empty()
    }

    /// The scheme protecting deadline packets now, if any.
    pub(super) fn scheme(&self) -> Option<FecScheme> {
        self.encoder.as_ref().map(FecEncoder::scheme)
    }

    /// Lets the policy choose the code for the next group (only between
    /// groups), from the connection's `sent`/`lost` packet counters and the
    /// path's `rtt`. Packets lost on the wire are those declared lost plus
    /// those acknowledged out of order (rebuilt by FEC).
    fn reconsider(&mut self, now: Instant, rtt: Duration, sent: u64, lost: u64) {
        let lost = lost + self.acked_out_of_order;
        if self.config == FecConfig::Off {
            return;
        }
        let Some(budget) = self.budget else {
            return; // no deadline message yet
        };
        let hold = hold_time(budget);
        let measured = self.window.update(now, sent, lost, hold);
        if self.poll_timeout(false).is_some() {
            return; // a group is open
        }
        if self.encoder.is_some() && !measured {
            return;
        }
        let estimate = LinkEstimate {
            loss_rate: self.window.loss_rate.unwrap_or(0.0),
            mean_burst: 1.0,
            rtt,
            budget,
            packet_rate: self.window.packet_rate,
        };
        let chosen = self.config.choose(&estimate);
        if chosen == self.scheme() {
            return;
        }
        self.encoder = chosen.and_then(|scheme| FecEncoder::new(scheme, hold).ok());
    }

    /// Feeds source symbol `symbol`; returns its sequence number, or `None`
    /// if FEC is off or the encoder refused it (the packet then goes
    /// unprotected).
    fn protect(&mut self, now: Instant, symbol: &[u8]) -> Option<u64> {
        let encoder = self.encoder.as_mut()?;
        let seq = self.next_seq;
        let repairs = encoder.push_source(now, seq, symbol).ok()?;
        self.queue(repairs);
        self.next_seq += 1;
        self.last_source = Some(now);
        Some(seq)
    }
}

impl Connection {
    /// True if the application's input has paused: nothing is queued to
    /// send (what waits for the congestion window or the pacer is queued).
    pub(super) fn fec_input_paused(&self) -> bool {
        !self.send_queue.has_sendable(self.peer_max_data)
    }

    /// Tells every path's congestion controller about the repair bytes queued
    /// since the last call: repairs are load the application's stream
    /// brings, so a rate-based controller must pace for them too (without
    /// this, a live stream's repairs would share the data's rate and push
    /// the data past its deadline).
    pub(super) fn offer_fec_repairs(&mut self, now: Instant) {
        let bytes = std::mem::take(&mut self.fec_tx.unoffered);
        if bytes > 0 {
            for p in self.paths.iter_mut() {
                // Offered as one message: the repairs since the last call.
                p.cc.on_offered(now, bytes, 1);
            }
        }
    }

    /// Before a Data packet on `path` takes its SKIP and MSG frames: lets the
    /// FEC policy choose the code; returns the bytes the packet must leave
    /// free for protection (0 when FEC is off).
    pub(super) fn fec_prepare(&mut self, now: Instant, path: usize) -> usize {
        let rtt = self.paths[path].rtt.smoothed();
        let (sent, lost) = (self.stats.packets_sent, self.stats.packets_lost);
        self.fec_tx.reconsider(now, rtt, sent, lost);
        if self.fec_tx.encoder.is_some() {
            SOURCE_RESERVE
        } else {
            0
        }
    }

    /// After a Data packet `pn` took its frames (`buf[start..]` are its SKIP
    /// and MSG frames, `frames` what it carries): if it carries a
    /// deadline-channel fragment, wraps those bytes in an FEC_SOURCE frame and
    /// feeds them to the encoder.
    pub(super) fn fec_protect(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        pn: u64,
        start: usize,
        frames: &[SentFrame],
    ) {
        let deadline = frames
            .iter()
            .filter_map(|f| match f {
                SentFrame::Msg(m) => match m.delivery {
                    Delivery::Deadline(us) => Some(Duration::from_micros(us)),
                    _ => None,
                },
                _ => None,
            })
            .min();
        let Some(deadline) = deadline else {
            return;
        };
        let tx = &mut self.fec_tx;
        let budget = tx.budget.map_or(deadline, |b| b.min(deadline));
        tx.budget = Some(budget);
        tx.window.on_deadline_packet(now, hold_time(budget));
        if tx.encoder.is_none() || buf.len() <= start {
            return;
        }
        let protected = &buf[start..];
        let mut symbol = Vec::with_capacity(varint::size(pn) + protected.len());
        varint::write(&mut symbol, pn);
        symbol.extend_from_slice(protected);
        if symbol.len() > MAX_SOURCE_LEN {
            return;
        }
        let Some(seq) = tx.protect(now, &symbol) else {
            return;
        };
        self.offer_fec_repairs(now);
        let mut head = Vec::with_capacity(12);
        Frame::FecSource { seq, frames: &[] }.encode(&mut head);
        // The empty frame wrote a zero length: write the real one instead.
        head.pop();
        varint::write(&mut head, protected.len() as u64);
        buf.splice(start..start, head);
        self.stats.fec_source_packets += 1;
    }

    /// A packet of queued repair symbols on the active path, if the
    /// congestion window and the pacer allow one now.
    pub(super) fn write_fec_repair(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if !self.fec_tx.has_repairs() || self.lifecycle.is_draining() {
            return None;
        }
        let path = self.paths.active;
        let mtu = self.config.max_datagram_size - self.protection.overhead();
        let p = &mut self.paths[path];
        if !p.state().is_usable() || p.sent.bytes_in_flight() + mtu as u64 > p.cc.window() {
            return None;
        }
        let rate = p.cc.pacing_rate(p.rtt.smoothed());
        if let Some(t) = p
            .pacer
            .delay(now, mtu as u64, rate, p.cc.window(), mtu as u64)
        {
            p.pacing_until = Some(t);
            return None;
        }
        let start = self.begin_data_packet(now, buf);
        let mut encoded = Vec::new();
        while let Some(repair) = self.fec_tx.repairs.front() {
            encoded.clear();
            repair.encode(&mut encoded);
            let frame = Frame::FecRepair(&encoded);
            if buf.len() > start.1 && buf.len() + frame.encoded_len() > mtu {
                break;
            }
            frame.encode(buf);
            self.fec_tx.repairs.pop_front();
            self.stats.fec_repair_symbols_sent += 1;
        }
        let sent = self.seal_and_finish(now, buf, path, start, Vec::new(), true);
        self.stats.fec_repair_packets_sent += 1;
        self.stats.fec_repair_bytes_sent += buf.len() as u64;
        sent
    }
}
