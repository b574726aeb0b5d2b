//! One pass over the frames of an authenticated data packet.
//!
//! [`read_packet_frames`] decodes each frame of a packet's payload once, into
//! a view borrowing from the payload, and checks it as it goes. The views are
//! put in the caller's [`FrameViews`], a buffer on its stack (filled in place:
//! it is too large to move per packet); `Connection::on_data_packet` applies them only
//! once the whole packet proved valid, so a packet with a malformed frame
//! has no effect at all. Which malformed packets are dropped and which close
//! the connection is decided here, by the first offending frame:
//! an undecodable frame, or an FEC_SOURCE frame protecting anything but MSG,
//! MSG_BUNDLE, SKIP and PADDING frames, drops the packet; a handshake frame (CONNECT,
//! ACCEPT, HANDSHAKE, TOKEN) is a protocol violation.

use smallvec::SmallVec;

use super::fec_rx;
use crate::wire::{Frame, FrameIter};

/// Frames held without a heap allocation: a full packet of 64-byte messages
/// carries about 18 MSG frames next to its ACK.
const INLINE_FRAMES: usize = 32;

/// The frames of one data packet, in packet order.
pub(super) type FrameViews<'a> = SmallVec<[Frame<'a>; INLINE_FRAMES]>;

/// What reading a data packet's frames found besides the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PacketSummary {
    /// True if a frame obliges us to acknowledge the packet.
    pub(super) ack_eliciting: bool,
}

/// Why a data packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Empty, undecodable, or an FEC_SOURCE frame protecting a frame it may
    /// not: the packet is dropped and counted.
    Malformed,
    /// A handshake frame inside a data packet: the peer broke the protocol.
    HandshakeFrame,
}

/// Reads every frame of `payload` once into `frames` (emptied first); the
/// first offending frame decides the refusal, and `frames` then holds the
/// frames before it, which must not be applied.
pub(super) fn read_packet_frames<'a>(
    payload: &'a [u8],
    frames: &mut FrameViews<'a>,
) -> Result<PacketSummary, Refusal> {
    frames.clear();
    if payload.is_empty() {
        return Err(Refusal::Malformed);
    }
    let mut summary = PacketSummary {
        ack_eliciting: false,
    };
    for frame in FrameIter::new(payload) {
        let frame = frame.map_err(|_| Refusal::Malformed)?;
        match &frame {
            Frame::Connect(_) | Frame::Accept { .. } | Frame::Handshake(_) | Frame::Token(_) => {
                return Err(Refusal::HandshakeFrame)
            }
            Frame::FecSource {
                frames: protected, ..
            } if !fec_rx::protected_frames_valid(protected) => return Err(Refusal::Malformed),
            _ => {}
        }
        summary.ack_eliciting |= frame.is_ack_eliciting();
        frames.push(frame);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{any_frame, OwnedFrame};
    use proptest::prelude::*;

    /// The frames a data packet may carry, valid FEC_SOURCE frames included
    /// (PADDING only last, since padding merges with what follows).
    fn data_packet() -> impl Strategy<Value = (Vec<OwnedFrame>, Vec<u8>)> {
        proptest::collection::vec(any_frame(), 1..24).prop_map(|owned| {
            let owned: Vec<_> = owned
                .into_iter()
                .filter(|f| {
                    !matches!(
                        f,
                        OwnedFrame::Padding(_)
                            | OwnedFrame::Connect(_)
                            | OwnedFrame::Accept(..)
                            | OwnedFrame::Handshake(_)
                            | OwnedFrame::Token(_)
                            | OwnedFrame::FecSource(..)
                    )
                })
                .collect();
            // Protect this packet's MSG and SKIP frames once more in an FEC_SOURCE.
            let mut protected = Vec::new();
            for f in &owned {
                if matches!(
                    f,
                    OwnedFrame::Msg(..) | OwnedFrame::Bundle(..) | OwnedFrame::Skip(..)
                ) {
                    f.frame().encode(&mut protected);
                }
            }
            (owned, protected)
        })
    }

    /// What the packet-level rule says of `payload`, from the frames as
    /// `FrameIter` decodes them one by one.
    fn expected(payload: &[u8]) -> Result<Vec<Frame<'_>>, Refusal> {
        if payload.is_empty() {
            return Err(Refusal::Malformed);
        }
        let mut frames = Vec::new();
        for f in FrameIter::new(payload) {
            match f {
                Err(_) => return Err(Refusal::Malformed),
                Ok(
                    Frame::Connect(_)
                    | Frame::Accept { .. }
                    | Frame::Handshake(_)
                    | Frame::Token(_),
                ) => return Err(Refusal::HandshakeFrame),
                Ok(Frame::FecSource { frames, .. })
                    if !FrameIter::new(frames).all(|f| {
                        matches!(
                            f,
                            Ok(Frame::Msg(_)
                                | Frame::Bundle(_)
                                | Frame::Skip { .. }
                                | Frame::Padding(_))
                        )
                    }) =>
                {
                    return Err(Refusal::Malformed)
                }
                Ok(f) => frames.push(f),
            }
        }
        Ok(frames)
    }

    proptest! {
        #[test]
        fn valid_frames_are_read_as_encoded(
            (owned, protected) in data_packet(),
            fec_seq in 0u64..1 << 20,
        ) {
            let mut frames: Vec<_> = owned.iter().map(OwnedFrame::frame).collect();
            frames.push(Frame::FecSource { seq: fec_seq, frames: &protected });
            let mut payload = Vec::new();
            for f in &frames {
                f.encode(&mut payload);
            }
            let mut read = FrameViews::new();
            let summary = read_packet_frames(&payload, &mut read).unwrap();
            prop_assert_eq!(&read[..], &frames[..]);
            let decoded: Vec<_> = FrameIter::new(&payload).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(&read[..], &decoded[..]);
            prop_assert_eq!(summary.ack_eliciting, frames.iter().any(Frame::is_ack_eliciting));
        }

        #[test]
        fn a_flipped_byte_is_read_or_refused_like_the_frames_say(
            (owned, protected) in data_packet(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut payload = Vec::new();
            for f in &owned {
                f.frame().encode(&mut payload);
            }
            Frame::FecSource { seq: 7, frames: &protected }.encode(&mut payload);
            let i = at.index(payload.len());
            payload[i] ^= flip;
            let mut read = FrameViews::new();
            let outcome = (read_packet_frames(&payload, &mut read), expected(&payload));
            match outcome {
                (Ok(_), Ok(frames)) => prop_assert_eq!(&read[..], &frames[..]),
                (Err(got), Err(want)) => prop_assert_eq!(got, want),
                (got, want) => prop_assert!(false, "read {:?}, expected {:?}", got, want),
            };
        }
    }

    #[test]
    fn the_first_offending_frame_decides() {
        let mut handshake_first = Vec::new();
        Frame::Ping {
            timestamp_us: 1,
            interval_us: 20_000,
        }
        .encode(&mut handshake_first);
        Frame::Token(b"t").encode(&mut handshake_first);
        let mut malformed_first = handshake_first.clone();
        handshake_first.push(0x3f);
        malformed_first.insert(2, 0x3f);
        let mut frames = FrameViews::new();
        assert_eq!(
            read_packet_frames(&handshake_first, &mut frames),
            Err(Refusal::HandshakeFrame)
        );
        assert_eq!(
            read_packet_frames(&malformed_first, &mut frames),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            read_packet_frames(&[], &mut frames),
            Err(Refusal::Malformed)
        );
        assert!(frames.is_empty(), "emptied before reading");
    }
}
