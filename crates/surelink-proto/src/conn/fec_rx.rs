//! The receiving side of forward error correction on deadline channels.
//!
//! Driven from packet input (`mod.rs`): the frames of an FEC_SOURCE frame are
//! processed like any others ([`Connection::on_fec_source`]) and its source
//! symbol (the packet number and those frames) goes to the [`FecDecoder`];
//! FEC_REPAIR frames go to the decoder too ([`Connection::on_fec_repair`]).
//! A source symbol the decoder rebuilds is a packet that never arrived: its
//! packet number is recorded as received (so it is acknowledged and the
//! sender does not retransmit it, and its original, should it arrive late,
//! is dropped as a duplicate) and its frames are processed as if it had
//! arrived now. The channels' sequence numbers drop anything already
//! delivered and the deadline logic skips anything late, so nothing is
//! delivered twice or late.

use std::time::Instant;

use super::Connection;
use crate::fec::{FecDecoder, RecoveredSymbol, RepairSymbol};
use crate::wire::{Frame, FrameIter, Reader};

/// FEC state of the receiving side (the decoder, with its default memory
/// bounds).
#[derive(Debug, Default)]
pub(super) struct FecReceiver {
    decoder: FecDecoder,
}

/// True if `frames` (the body of an FEC_SOURCE frame) decodes to MSG,
/// MSG_BUNDLE, SKIP and PADDING frames only: nothing else may be protected,
/// and nesting is refused.
pub(super) fn protected_frames_valid(frames: &[u8]) -> bool {
    FrameIter::new(frames).all(|f| {
        matches!(
            f,
            Ok(Frame::Msg(_) | Frame::Bundle(_) | Frame::Skip { .. } | Frame::Padding(_))
        )
    })
}

impl Connection {
    /// An FEC_SOURCE frame of packet `pn` arrived on `path` (validated by
    /// [`protected_frames_valid`]).
    pub(super) fn on_fec_source(
        &mut self,
        now: Instant,
        path: usize,
        pn: u64,
        seq: u64,
        frames: &[u8],
    ) {
        self.handle_protected_frames(now, path, frames);
        let mut symbol = Vec::with_capacity(frames.len() + 8);
        crate::wire::varint::write(&mut symbol, pn);
        symbol.extend_from_slice(frames);
        let recovered = self.fec_rx.decoder.push_source(seq, &symbol);
        self.on_fec_recovered(now, path, recovered);
    }

    /// An FEC_REPAIR frame arrived on `path`.
    pub(super) fn on_fec_repair(&mut self, now: Instant, path: usize, encoded: &[u8]) {
        let Ok((repair, rest)) = RepairSymbol::decode(encoded) else {
            self.stats.fec_repairs_rejected += 1;
            return;
        };
        if !rest.is_empty() {
            self.stats.fec_repairs_rejected += 1;
            return;
        }
        match self.fec_rx.decoder.push_repair(repair) {
            Ok(recovered) => self.on_fec_recovered(now, path, recovered),
            Err(_) => self.stats.fec_repairs_rejected += 1,
        }
    }

    /// Processes rebuilt packets as if they had arrived on `path` now.
    fn on_fec_recovered(&mut self, now: Instant, path: usize, recovered: Vec<RecoveredSymbol>) {
        for symbol in recovered {
            let mut r = Reader::new(&symbol.payload);
            let Ok(pn) = r.varint() else {
                self.stats.fec_repairs_rejected += 1;
                continue;
            };
            let frames = &symbol.payload[symbol.payload.len() - r.remaining()..];
            if !protected_frames_valid(frames) {
                self.stats.fec_repairs_rejected += 1;
                continue;
            }
            let fresh = self.received.on_packet(
                now,
                pn,
                true,
                self.config.ack_frequency,
                self.config.max_ack_delay,
            );
            if !fresh {
                // Its original arrived after all (the decoder had not seen
                // it as a source yet): already processed.
                continue;
            }
            self.stats.fec_recovered_packets += 1;
            self.handle_protected_frames(now, path, frames);
        }
    }

    /// Processes validated protected frames.
    fn handle_protected_frames(&mut self, now: Instant, path: usize, frames: &[u8]) {
        for f in FrameIter::new(frames).flatten() {
            self.handle_frame(now, path, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::protected_frames_valid;
    use crate::wire::{Delivery, Frame, MsgFrame};

    fn encode(frames: &[Frame<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            f.encode(&mut out);
        }
        out
    }

    #[test]
    fn only_msg_skip_and_padding_may_be_protected() {
        let msg = Frame::Msg(MsgFrame {
            channel: 0,
            seq: 3,
            msg_len: 4,
            offset: 0,
            timestamp_us: 10,
            delivery: Delivery::Deadline(50_000),
            packed: false,
            data: b"data",
        });
        let skip = Frame::Skip {
            channel: 0,
            up_to: 3,
        };
        assert!(protected_frames_valid(&encode(&[
            skip.clone(),
            msg.clone(),
            Frame::Padding(3)
        ])));
        assert!(protected_frames_valid(&[]));
        let inner = encode(std::slice::from_ref(&msg));
        for refused in [
            Frame::Ping {
                timestamp_us: 1,
                interval_us: 20_000,
            },
            Frame::MaxData { max: 9 },
            Frame::FecSource {
                seq: 1,
                frames: &inner,
            },
            Frame::FecRepair(b"x"),
        ] {
            assert!(
                !protected_frames_valid(&encode(&[msg.clone(), refused.clone()])),
                "{refused:?} accepted"
            );
        }
        let mut truncated = inner.clone();
        truncated.pop();
        assert!(!protected_frames_valid(&truncated));
    }
}
