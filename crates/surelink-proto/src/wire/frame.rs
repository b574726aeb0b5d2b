//! Frames: the units of meaning inside a packet.
//!
//! Each frame starts with a varint type. Types 0x00–0x0b and 0x10–0x13 are
//! defined in v1, 0x0c (MSG_BUNDLE: several whole reliable messages of one
//! channel as length-prefixed records) since v3, 0x0d–0x0f (MSG_PACKED and
//! its deadline and unreliable forms: a message that is a packed batch of
//! messages) since v4, 0x20–0x21 carry forward
//! error correction (docs/FEC.md);
//! 0x14–0x1f are reserved for path status, checkpoint and resume frames of
//! later versions; anything else is rejected. [`FrameIter`] walks the
//! frames of a packet payload and yields an error (then stops) on malformed input.

use std::ops::RangeInclusive;

use super::{varint, Reader, WireError};

const PADDING: u64 = 0x00;
const PING: u64 = 0x01;
const PONG: u64 = 0x02;
const ACK: u64 = 0x03;
const MSG: u64 = 0x04;
const CLOSE: u64 = 0x05;
const MAX_DATA: u64 = 0x06;
const CONNECT: u64 = 0x07;
const ACCEPT: u64 = 0x08;
const MSG_DEADLINE: u64 = 0x09;
const MSG_UNRELIABLE: u64 = 0x0a;
const SKIP: u64 = 0x0b;
const MSG_BUNDLE: u64 = 0x0c;
const MSG_PACKED: u64 = 0x0d;
const MSG_DEADLINE_PACKED: u64 = 0x0e;
const MSG_UNRELIABLE_PACKED: u64 = 0x0f;
const HANDSHAKE: u64 = 0x10;
const TOKEN: u64 = 0x11;
const PATH_CHALLENGE: u64 = 0x12;
const PATH_RESPONSE: u64 = 0x13;
const FEC_SOURCE: u64 = 0x20;
const FEC_REPAIR: u64 = 0x21;

/// Longest HANDSHAKE or TOKEN body accepted.
pub const MAX_HANDSHAKE_LEN: usize = 4096;

/// Most ACK ranges a decoder accepts in one frame (bounds the work of a hostile ACK).
pub const MAX_ACK_RANGES: usize = 256;
/// Longest CLOSE reason in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// One frame, borrowing its payload from the packet it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `n` zero bytes; no meaning, used to pad Initial packets.
    Padding(usize),
    /// Heartbeat carrying the sender's clock (µs since its connection epoch)
    /// and when its next heartbeat on the path is due. Ack-eliciting.
    Ping {
        /// Sender's timestamp t1.
        timestamp_us: u64,
        /// The sender's next heartbeat on this path follows within this
        /// many µs (its current heartbeat interval).
        interval_us: u64,
    },
    /// Answer to a PING with the three timestamps of an NTP exchange.
    Pong {
        /// The t1 echoed from the PING.
        echo_us: u64,
        /// t2: when the PING arrived, on the answerer's clock.
        recv_us: u64,
        /// t3: when this PONG left, on the answerer's clock.
        send_us: u64,
    },
    /// Acknowledgement of packet numbers.
    Ack(AckFrame),
    /// A fragment of an application message.
    Msg(MsgFrame<'a>),
    /// Several whole reliable messages of one channel with consecutive
    /// sequence numbers, as length-prefixed records.
    Bundle(BundleFrame<'a>),
    /// The sender abandoned every message of `channel` below `up_to` (their
    /// deadline passed): the receiver skips them.
    Skip {
        /// The channel.
        channel: u64,
        /// First sequence number still to be expected.
        up_to: u64,
    },
    /// Connection close with a reason.
    Close {
        /// 0 = graceful, otherwise an error code (see docs/PROTOCOL.md).
        code: u64,
        /// Human-readable reason.
        reason: &'a str,
    },
    /// Flow-control credit: the sender may start messages up to this many cumulative payload bytes.
    MaxData {
        /// Cumulative byte limit.
        max: u64,
    },
    /// Client's connection request (in Initial packets).
    Connect(TransportParams),
    /// Server's acceptance (inside the server's handshake message).
    Accept {
        /// The connection id the client must put in every later packet.
        cid: u64,
        /// The server's transport parameters.
        params: TransportParams,
    },
    /// A handshake message (Noise, or the plain parameters in plaintext mode).
    Handshake(&'a [u8]),
    /// A retry token (in Retry packets, and echoed in the client's next Initial).
    Token(&'a [u8]),
    /// Asks the peer to echo `data` on the path it arrived on (path validation).
    PathChallenge(u64),
    /// Echoes a PATH_CHALLENGE's data.
    PathResponse(u64),
    /// Frames protected by forward error correction: source symbol `seq` of
    /// the sender's FEC source stream. `frames` holds MSG and SKIP frames,
    /// processed as if they stood in the packet directly.
    FecSource {
        /// Sequence number of the FEC source stream.
        seq: u64,
        /// The encoded protected frames.
        frames: &'a [u8],
    },
    /// One FEC repair symbol (`fec::RepairSymbol` encoding, checked by the
    /// receiver when it decodes it).
    FecRepair(&'a [u8]),
}

/// An ACK frame: acknowledged packet numbers as descending inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckFrame {
    /// Time between receiving the largest packet and sending this ACK, in µs.
    pub delay_us: u64,
    /// Disjoint ranges, highest first, separated by at least one missing number.
    pub ranges: Vec<RangeInclusive<u64>>,
}

impl AckFrame {
    /// Largest acknowledged packet number.
    pub fn largest(&self) -> u64 {
        self.ranges.first().map_or(0, |r| *r.end())
    }
}

/// How a message is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Delivery {
    /// Retransmitted until acknowledged; never skipped.
    #[default]
    Reliable,
    /// Retransmitted only while it can still arrive within this many µs of its
    /// source time; the receiver skips it rather than stall or deliver it late.
    Deadline(u64),
    /// Sent once; the receiver skips it if it does not arrive.
    Unreliable,
}

/// A message fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgFrame<'a> {
    /// Channel the message belongs to; ordering is per channel.
    pub channel: u64,
    /// Message sequence number within the channel, from 0.
    pub seq: u64,
    /// Total length of the message in bytes.
    pub msg_len: u64,
    /// Offset of this fragment within the message.
    pub offset: u64,
    /// Source time: µs since the sender's connection epoch when the message was sent.
    pub timestamp_us: u64,
    /// Delivery mode of the message.
    pub delivery: Delivery,
    /// The message is a packed batch: its bytes are records, each a varint
    /// length and that many bytes, each a message of its own for the
    /// receiving application (frame types 0x0d–0x0f).
    pub packed: bool,
    /// Fragment bytes.
    pub data: &'a [u8],
}

/// Several whole reliable messages of one channel, sequence numbers
/// `first_seq..first_seq + count`, carried as records in one frame.
///
/// Each record is a varint timestamp delta (µs after the previous record's
/// timestamp, the first one's after `timestamp_us`), a varint length and
/// that many bytes. The decoder checks every record (count, lengths,
/// timestamps) before the frame is handed out, so [`BundleFrame::messages`]
/// yields exactly `count` messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFrame<'a> {
    /// Channel of every message in the bundle.
    pub channel: u64,
    /// Sequence number of the first message.
    pub first_seq: u64,
    /// Number of messages (at least 1).
    pub count: u64,
    /// Source time the first record's delta is counted from, µs since the
    /// sender's connection epoch.
    pub timestamp_us: u64,
    /// The encoded records.
    pub records: &'a [u8],
}

impl<'a> BundleFrame<'a> {
    /// The messages of the bundle, each as the MSG frame that would carry it
    /// whole (offset 0, reliable).
    pub fn messages(&self) -> BundleMessages<'a> {
        BundleMessages {
            r: Reader::new(self.records),
            channel: self.channel,
            next_seq: self.first_seq,
            left: self.count,
            timestamp_us: self.timestamp_us,
        }
    }

    /// Reads the body after the type, checking every record.
    fn decode(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let frame = Self {
            channel: r.varint()?,
            first_seq: r.varint()?,
            count: r.varint()?,
            timestamp_us: r.varint()?,
            records: r.len_prefixed()?,
        };
        if frame.count == 0 {
            return Err(WireError::Invalid("empty bundle"));
        }
        // The last message's sequence number must be a varint too.
        if frame.count - 1 > varint::MAX - frame.first_seq {
            return Err(WireError::Invalid("bundle sequence range"));
        }
        let mut records = frame.messages();
        for _ in 0..frame.count {
            records.read_record()?;
        }
        if !records.r.is_empty() {
            return Err(WireError::Invalid("bytes after the bundle's last record"));
        }
        Ok(frame)
    }
}

/// Writes a MSG_BUNDLE frame in one pass, record by record, into at most
/// `space` bytes: the frame's `count` and records length are written as
/// varints of the width `space` needs (the reader accepts any width) and
/// filled in by [`finish`](Self::finish), so the sender need not measure
/// the records before writing them.
#[derive(Debug)]
pub struct BundleWriter {
    /// Where the frame starts in the output.
    start: usize,
    /// Where its `count` field is.
    count_at: usize,
    /// Where its records length field is (the records follow it).
    len_at: usize,
    /// Width of both fields.
    width: usize,
    /// Most bytes the whole frame may take.
    space: usize,
    /// Records written.
    count: u64,
}

impl BundleWriter {
    /// Starts a bundle of `channel`'s messages from `first_seq`, the first
    /// record's delta counted from `timestamp_us`, at the end of `out`, to
    /// take at most `space` bytes; `None` (and nothing written) if not even
    /// the header fits.
    pub fn begin(
        out: &mut Vec<u8>,
        channel: u64,
        first_seq: u64,
        timestamp_us: u64,
        space: usize,
    ) -> Option<Self> {
        let width = varint::size(space as u64);
        let header = varint::size(MSG_BUNDLE)
            + varint::size(channel)
            + varint::size(first_seq)
            + varint::size(timestamp_us)
            + 2 * width;
        if header > space {
            return None;
        }
        let start = out.len();
        varint::write(out, MSG_BUNDLE);
        varint::write(out, channel);
        varint::write(out, first_seq);
        let count_at = out.len();
        out.resize(count_at + width, 0);
        varint::write(out, timestamp_us);
        let len_at = out.len();
        out.resize(len_at + width, 0);
        Some(Self {
            start,
            count_at,
            len_at,
            width,
            space,
            count: 0,
        })
    }

    /// Appends a record of `data`, `delta_us` after the previous record's
    /// timestamp, if the frame still fits in its space; false (and nothing
    /// written) if not.
    pub fn push(&mut self, out: &mut Vec<u8>, delta_us: u64, data: &[u8]) -> bool {
        let record = varint::size(delta_us) + varint::size(data.len() as u64) + data.len();
        if out.len() - self.start + record > self.space {
            return false;
        }
        varint::write(out, delta_us);
        varint::write(out, data.len() as u64);
        out.extend_from_slice(data);
        self.count += 1;
        true
    }

    /// Records written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Completes the frame (its count and records length).
    pub fn finish(self, out: &mut [u8]) {
        let records = self.len_at + self.width;
        let records_len = (out.len() - records) as u64;
        varint::write_fixed(
            &mut out[self.count_at..self.count_at + self.width],
            self.count,
        );
        varint::write_fixed(&mut out[self.len_at..records], records_len);
    }

    /// Takes the frame back out of `out`, as if never begun.
    pub fn abandon(self, out: &mut Vec<u8>) {
        out.truncate(self.start);
    }
}

/// The messages of a [`BundleFrame`], in sequence order.
#[derive(Debug, Clone)]
pub struct BundleMessages<'a> {
    r: Reader<'a>,
    channel: u64,
    next_seq: u64,
    left: u64,
    timestamp_us: u64,
}

impl<'a> BundleMessages<'a> {
    fn read_record(&mut self) -> Result<MsgFrame<'a>, WireError> {
        let delta = self.r.varint()?;
        let timestamp_us = self
            .timestamp_us
            .checked_add(delta)
            .filter(|&t| t <= varint::MAX)
            .ok_or(WireError::Invalid("bundle timestamp"))?;
        let data = self.r.len_prefixed()?;
        let m = MsgFrame {
            channel: self.channel,
            seq: self.next_seq,
            msg_len: data.len() as u64,
            offset: 0,
            timestamp_us,
            delivery: Delivery::Reliable,
            packed: false,
            data,
        };
        self.timestamp_us = timestamp_us;
        self.next_seq += 1;
        self.left -= 1;
        Ok(m)
    }
}

impl<'a> Iterator for BundleMessages<'a> {
    type Item = MsgFrame<'a>;

    fn next(&mut self) -> Option<MsgFrame<'a>> {
        if self.left == 0 {
            return None;
        }
        // Checked when the frame was decoded; a failure here ends the walk.
        self.read_record().ok()
    }
}

/// Parameters each side announces in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportParams {
    /// Largest message the sender of these params accepts.
    pub max_message_size: u64,
    /// Initial flow-control credit in bytes.
    pub receive_window: u64,
    /// Idle timeout in milliseconds (0 = none).
    pub idle_timeout_ms: u64,
    /// Longest the sender of these params delays an ACK, in µs.
    pub max_ack_delay_us: u64,
    /// The sender's clock (µs) at its connection epoch: message timestamps are
    /// relative to it.
    pub clock_origin_us: u64,
}

// Parameter ids inside CONNECT/ACCEPT; unknown ids are skipped for forward compatibility.
const P_MAX_MESSAGE: u64 = 1;
const P_WINDOW: u64 = 2;
const P_IDLE: u64 = 3;
const P_ACK_DELAY: u64 = 4;
const P_CLOCK_ORIGIN: u64 = 5;
const MAX_PARAMS: u64 = 64;

impl TransportParams {
    fn encode(&self, out: &mut Vec<u8>) {
        let pairs = [
            (P_MAX_MESSAGE, self.max_message_size),
            (P_WINDOW, self.receive_window),
            (P_IDLE, self.idle_timeout_ms),
            (P_ACK_DELAY, self.max_ack_delay_us),
            (P_CLOCK_ORIGIN, self.clock_origin_us),
        ];
        varint::write(out, pairs.len() as u64);
        for (k, v) in pairs {
            varint::write(out, k);
            varint::write(out, v);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = r.varint()?;
        if n > MAX_PARAMS {
            return Err(WireError::Invalid("parameter count"));
        }
        let mut p = Self {
            max_message_size: 0,
            receive_window: 0,
            idle_timeout_ms: 0,
            max_ack_delay_us: 0,
            clock_origin_us: 0,
        };
        let mut seen = 0u8;
        for _ in 0..n {
            let k = r.varint()?;
            let v = r.varint()?;
            let (slot, bit) = match k {
                P_MAX_MESSAGE => (&mut p.max_message_size, 1),
                P_WINDOW => (&mut p.receive_window, 2),
                P_IDLE => (&mut p.idle_timeout_ms, 4),
                P_ACK_DELAY => (&mut p.max_ack_delay_us, 8),
                P_CLOCK_ORIGIN => (&mut p.clock_origin_us, 16),
                _ => continue,
            };
            if seen & bit != 0 {
                return Err(WireError::Invalid("duplicate parameter"));
            }
            seen |= bit;
            *slot = v;
        }
        if seen & 3 != 3 {
            return Err(WireError::Invalid("missing required parameter"));
        }
        Ok(p)
    }
}

impl Frame<'_> {
    /// True if receiving this frame obliges the peer to acknowledge the packet.
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(self, Frame::Padding(_) | Frame::Ack(_))
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Padding(n) => out.resize(out.len() + n, 0),
            Frame::Ping {
                timestamp_us,
                interval_us,
            } => {
                varint::write(out, PING);
                varint::write(out, *timestamp_us);
                varint::write(out, *interval_us);
            }
            Frame::Pong {
                echo_us,
                recv_us,
                send_us,
            } => {
                varint::write(out, PONG);
                varint::write(out, *echo_us);
                varint::write(out, *recv_us);
                varint::write(out, *send_us);
            }
            Frame::Ack(ack) => ack.encode(out),
            Frame::Msg(m) => {
                m.encode_header(out);
                out.extend_from_slice(m.data);
            }
            Frame::Bundle(b) => {
                varint::write(out, MSG_BUNDLE);
                varint::write(out, b.channel);
                varint::write(out, b.first_seq);
                varint::write(out, b.count);
                varint::write(out, b.timestamp_us);
                varint::write(out, b.records.len() as u64);
                out.extend_from_slice(b.records);
            }
            Frame::Close { code, reason } => {
                varint::write(out, CLOSE);
                varint::write(out, *code);
                let reason = truncate_utf8(reason, MAX_REASON_LEN);
                varint::write(out, reason.len() as u64);
                out.extend_from_slice(reason.as_bytes());
            }
            Frame::MaxData { max } => {
                varint::write(out, MAX_DATA);
                varint::write(out, *max);
            }
            Frame::Skip { channel, up_to } => {
                varint::write(out, SKIP);
                varint::write(out, *channel);
                varint::write(out, *up_to);
            }
            Frame::Connect(p) => {
                varint::write(out, CONNECT);
                p.encode(out);
            }
            Frame::Accept { cid, params } => {
                varint::write(out, ACCEPT);
                out.extend_from_slice(&cid.to_be_bytes());
                params.encode(out);
            }
            Frame::PathChallenge(d) | Frame::PathResponse(d) => {
                let ty = if matches!(self, Frame::PathChallenge(_)) {
                    PATH_CHALLENGE
                } else {
                    PATH_RESPONSE
                };
                varint::write(out, ty);
                out.extend_from_slice(&d.to_be_bytes());
            }
            Frame::Handshake(b) | Frame::Token(b) => {
                let ty = if matches!(self, Frame::Handshake(_)) {
                    HANDSHAKE
                } else {
                    TOKEN
                };
                varint::write(out, ty);
                varint::write(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Frame::FecSource { seq, frames } => {
                varint::write(out, FEC_SOURCE);
                varint::write(out, *seq);
                varint::write(out, frames.len() as u64);
                out.extend_from_slice(frames);
            }
            Frame::FecRepair(symbol) => {
                varint::write(out, FEC_REPAIR);
                varint::write(out, symbol.len() as u64);
                out.extend_from_slice(symbol);
            }
        }
    }

    /// Encoded size of this frame.
    pub fn encoded_len(&self) -> usize {
        let mut v = Vec::new();
        self.encode(&mut v);
        v.len()
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl MsgFrame<'_> {
    /// True if the frame carries its whole message (offset 0, every byte).
    pub fn is_whole(&self) -> bool {
        self.offset == 0 && self.data.len() as u64 == self.msg_len
    }

    /// Bytes the frame needs before its data (computed with the current
    /// `data` length, which bounds the length field of any shorter fragment).
    pub fn overhead(&self) -> usize {
        self.overhead_with_len(self.data.len())
    }

    /// Bytes the frame needs before `len` bytes of data (whatever `data`
    /// holds): what a fragment of `len` bytes of the same message costs.
    pub fn overhead_with_len(&self, len: usize) -> usize {
        let deadline = match self.delivery {
            Delivery::Deadline(d) => varint::size(d),
            _ => 0,
        };
        1 + varint::size(self.channel)
            + varint::size(self.seq)
            + varint::size(self.msg_len)
            + varint::size(self.offset)
            + varint::size(self.timestamp_us)
            + deadline
            + varint::size(len as u64)
    }

    /// Appends everything but the data (callers then append `data`).
    pub fn encode_header(&self, out: &mut Vec<u8>) {
        let ty = match (self.delivery, self.packed) {
            (Delivery::Reliable, false) => MSG,
            (Delivery::Deadline(_), false) => MSG_DEADLINE,
            (Delivery::Unreliable, false) => MSG_UNRELIABLE,
            (Delivery::Reliable, true) => MSG_PACKED,
            (Delivery::Deadline(_), true) => MSG_DEADLINE_PACKED,
            (Delivery::Unreliable, true) => MSG_UNRELIABLE_PACKED,
        };
        varint::write(out, ty);
        varint::write(out, self.channel);
        varint::write(out, self.seq);
        varint::write(out, self.msg_len);
        varint::write(out, self.offset);
        varint::write(out, self.timestamp_us);
        if let Delivery::Deadline(d) = self.delivery {
            varint::write(out, d);
        }
        varint::write(out, self.data.len() as u64);
    }
}

impl AckFrame {
    fn encode(&self, out: &mut Vec<u8>) {
        varint::write(out, ACK);
        let Some(first) = self.ranges.first() else {
            // An empty ACK is never built; encode a harmless ack of packet 0.
            varint::write(out, 0);
            varint::write(out, self.delay_us);
            varint::write(out, 0);
            varint::write(out, 0);
            return;
        };
        varint::write(out, *first.end());
        varint::write(out, self.delay_us);
        varint::write(out, self.ranges.len() as u64 - 1);
        varint::write(out, first.end() - first.start());
        let mut prev_smallest = *first.start();
        for r in &self.ranges[1..] {
            // gap = number of missing packets between ranges, minus one (never negative).
            varint::write(out, prev_smallest - r.end() - 2);
            varint::write(out, r.end() - r.start());
            prev_smallest = *r.start();
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let largest = r.varint()?;
        let delay_us = r.varint()?;
        let extra = r.varint()?;
        if extra >= MAX_ACK_RANGES as u64 {
            return Err(WireError::Invalid("ack range count"));
        }
        let first_len = r.varint()?;
        let smallest = largest
            .checked_sub(first_len)
            .ok_or(WireError::Invalid("ack range"))?;
        let mut ranges = Vec::with_capacity(extra as usize + 1);
        ranges.push(smallest..=largest);
        let mut prev_smallest = smallest;
        for _ in 0..extra {
            let gap = r.varint()?;
            let len = r.varint()?;
            let end = prev_smallest
                .checked_sub(gap)
                .and_then(|v| v.checked_sub(2))
                .ok_or(WireError::Invalid("ack gap"))?;
            let start = end
                .checked_sub(len)
                .ok_or(WireError::Invalid("ack range"))?;
            ranges.push(start..=end);
            prev_smallest = start;
        }
        Ok(Self { delay_us, ranges })
    }
}

/// Iterates over the frames of a packet payload.
///
/// Yields `Err` once on malformed input and then ends.
#[derive(Debug, Clone)]
pub struct FrameIter<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> FrameIter<'a> {
    /// Iterates over `payload` (the bytes after the header).
    pub fn new(payload: &'a [u8]) -> Self {
        Self {
            r: Reader::new(payload),
            failed: false,
        }
    }

    fn decode_one(&mut self) -> Result<Frame<'a>, WireError> {
        let r = &mut self.r;
        let ty = r.varint()?;
        Ok(match ty {
            PADDING => {
                let mut n = 1;
                while r.peek() == Some(0) {
                    r.u8()?;
                    n += 1;
                }
                Frame::Padding(n)
            }
            PING => Frame::Ping {
                timestamp_us: r.varint()?,
                interval_us: r.varint()?,
            },
            PONG => Frame::Pong {
                echo_us: r.varint()?,
                recv_us: r.varint()?,
                send_us: r.varint()?,
            },
            ACK => Frame::Ack(AckFrame::decode(r)?),
            MSG
            | MSG_DEADLINE
            | MSG_UNRELIABLE
            | MSG_PACKED
            | MSG_DEADLINE_PACKED
            | MSG_UNRELIABLE_PACKED => {
                let channel = r.varint()?;
                let seq = r.varint()?;
                let msg_len = r.varint()?;
                let offset = r.varint()?;
                let timestamp_us = r.varint()?;
                let delivery = match ty {
                    MSG | MSG_PACKED => Delivery::Reliable,
                    MSG_DEADLINE | MSG_DEADLINE_PACKED => Delivery::Deadline(r.varint()?),
                    _ => Delivery::Unreliable,
                };
                let data = r.len_prefixed()?;
                let end = offset
                    .checked_add(data.len() as u64)
                    .ok_or(WireError::Invalid("fragment offset"))?;
                if end > msg_len {
                    return Err(WireError::Invalid("fragment beyond message end"));
                }
                if data.is_empty() && msg_len != 0 {
                    return Err(WireError::Invalid("empty fragment"));
                }
                Frame::Msg(MsgFrame {
                    channel,
                    seq,
                    msg_len,
                    offset,
                    timestamp_us,
                    delivery,
                    packed: ty >= MSG_PACKED,
                    data,
                })
            }
            MSG_BUNDLE => Frame::Bundle(BundleFrame::decode(r)?),
            SKIP => Frame::Skip {
                channel: r.varint()?,
                up_to: r.varint()?,
            },
            CLOSE => {
                let code = r.varint()?;
                let reason = r.len_prefixed()?;
                if reason.len() > MAX_REASON_LEN {
                    return Err(WireError::Invalid("close reason length"));
                }
                let reason =
                    std::str::from_utf8(reason).map_err(|_| WireError::Invalid("close reason"))?;
                Frame::Close { code, reason }
            }
            MAX_DATA => Frame::MaxData { max: r.varint()? },
            CONNECT => Frame::Connect(TransportParams::decode(r)?),
            ACCEPT => Frame::Accept {
                cid: r.u64()?,
                params: TransportParams::decode(r)?,
            },
            PATH_CHALLENGE => Frame::PathChallenge(r.u64()?),
            PATH_RESPONSE => Frame::PathResponse(r.u64()?),
            HANDSHAKE | TOKEN => {
                let b = r.len_prefixed()?;
                if b.len() > MAX_HANDSHAKE_LEN {
                    return Err(WireError::Invalid("handshake length"));
                }
                if ty == HANDSHAKE {
                    Frame::Handshake(b)
                } else {
                    Frame::Token(b)
                }
            }
            FEC_SOURCE => Frame::FecSource {
                seq: r.varint()?,
                frames: r.len_prefixed()?,
            },
            FEC_REPAIR => Frame::FecRepair(r.len_prefixed()?),
            other => return Err(WireError::UnknownFrame(other)),
        })
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<Frame<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.is_empty() {
            return None;
        }
        let res = self.decode_one();
        self.failed = res.is_err();
        Some(res)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params() -> impl Strategy<Value = TransportParams> {
        (
            0..=varint::MAX,
            0..=varint::MAX,
            0..=varint::MAX,
            0..=varint::MAX,
            0..=varint::MAX,
        )
            .prop_map(|(a, b, c, d, e)| TransportParams {
                max_message_size: a,
                receive_window: b,
                idle_timeout_ms: c,
                max_ack_delay_us: d,
                clock_origin_us: e,
            })
    }

    fn ack() -> impl Strategy<Value = AckFrame> {
        (
            0..varint::MAX / 2,
            0..=varint::MAX,
            proptest::collection::vec((0u64..1000, 0u64..1000), 1..40),
        )
            .prop_filter_map("ranges fit", |(largest, delay_us, spans)| {
                let mut ranges = Vec::new();
                let mut end = largest;
                for (i, (gap, len)) in spans.into_iter().enumerate() {
                    if i > 0 {
                        end = end.checked_sub(gap + 2)?;
                    }
                    let start = end.checked_sub(len)?;
                    ranges.push(start..=end);
                    end = start;
                }
                Some(AckFrame { delay_us, ranges })
            })
    }

    /// An owned frame so proptest can generate data for the borrowed ones.
    #[derive(Debug, Clone)]
    pub(crate) enum Owned {
        Padding(usize),
        Ping(u64, u64),
        Pong(u64, u64, u64),
        Ack(AckFrame),
        Msg(u64, u64, u64, u64, Delivery, bool, Vec<u8>),
        /// Channel, first sequence, count, timestamp, encoded records.
        Bundle(u64, u64, u64, u64, Vec<u8>),
        Skip(u64, u64),
        Close(u64, String),
        MaxData(u64),
        Connect(TransportParams),
        Accept(u64, TransportParams),
        Handshake(Vec<u8>),
        Token(Vec<u8>),
        Challenge(u64),
        Response(u64),
        FecSource(u64, Vec<u8>),
        FecRepair(Vec<u8>),
    }

    impl Owned {
        /// The frame, borrowing from `self`.
        pub(crate) fn frame(&self) -> Frame<'_> {
            match self {
                Owned::Padding(n) => Frame::Padding(*n),
                Owned::Ping(t, i) => Frame::Ping {
                    timestamp_us: *t,
                    interval_us: *i,
                },
                Owned::Pong(a, b, c) => Frame::Pong {
                    echo_us: *a,
                    recv_us: *b,
                    send_us: *c,
                },
                Owned::Ack(a) => Frame::Ack(a.clone()),
                Owned::Msg(channel, seq, offset, ts, delivery, packed, data) => {
                    Frame::Msg(MsgFrame {
                        channel: *channel,
                        seq: *seq,
                        msg_len: offset + data.len() as u64 + 3,
                        offset: *offset,
                        timestamp_us: *ts,
                        delivery: *delivery,
                        packed: *packed,
                        data,
                    })
                }
                Owned::Bundle(channel, first_seq, count, timestamp_us, records) => {
                    Frame::Bundle(BundleFrame {
                        channel: *channel,
                        first_seq: *first_seq,
                        count: *count,
                        timestamp_us: *timestamp_us,
                        records,
                    })
                }
                Owned::Skip(c, u) => Frame::Skip {
                    channel: *c,
                    up_to: *u,
                },
                Owned::Close(code, reason) => Frame::Close {
                    code: *code,
                    reason,
                },
                Owned::MaxData(m) => Frame::MaxData { max: *m },
                Owned::Connect(p) => Frame::Connect(*p),
                Owned::Accept(cid, p) => Frame::Accept {
                    cid: *cid,
                    params: *p,
                },
                Owned::Handshake(b) => Frame::Handshake(b),
                Owned::Token(b) => Frame::Token(b),
                Owned::Challenge(d) => Frame::PathChallenge(*d),
                Owned::Response(d) => Frame::PathResponse(*d),
                Owned::FecSource(seq, frames) => Frame::FecSource { seq: *seq, frames },
                Owned::FecRepair(b) => Frame::FecRepair(b),
            }
        }
    }

    /// Any frame of any type.
    pub(crate) fn frame() -> impl Strategy<Value = Owned> {
        let v = 0..=varint::MAX;
        prop_oneof![
            (1usize..50).prop_map(Owned::Padding),
            (v.clone(), v.clone()).prop_map(|(t, i)| Owned::Ping(t, i)),
            (v.clone(), v.clone(), v.clone()).prop_map(|(a, b, c)| Owned::Pong(a, b, c)),
            ack().prop_map(Owned::Ack),
            (
                0u64..1 << 16,
                v.clone(),
                0u64..1 << 40,
                v.clone(),
                prop_oneof![
                    Just(Delivery::Reliable),
                    Just(Delivery::Unreliable),
                    v.clone().prop_map(Delivery::Deadline)
                ],
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 1..300)
            )
                .prop_map(|(c, s, o, t, m, p, d)| Owned::Msg(c, s, o, t, m, p, d)),
            bundle(),
            (v.clone(), v.clone()).prop_map(|(c, u)| Owned::Skip(c, u)),
            (v.clone(), "\\PC{0,40}").prop_map(|(c, r)| Owned::Close(c, r)),
            v.clone().prop_map(Owned::MaxData),
            params().prop_map(Owned::Connect),
            (any::<u64>(), params()).prop_map(|(c, p)| Owned::Accept(c, p)),
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(Owned::Handshake),
            proptest::collection::vec(any::<u8>(), 0..60).prop_map(Owned::Token),
            any::<u64>().prop_map(Owned::Challenge),
            any::<u64>().prop_map(Owned::Response),
            (v.clone(), proptest::collection::vec(any::<u8>(), 0..200))
                .prop_map(|(s, f)| Owned::FecSource(s, f)),
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(Owned::FecRepair),
        ]
    }

    /// Records of a bundle: (timestamp delta, bytes) each.
    fn records() -> impl Strategy<Value = Vec<(u64, Vec<u8>)>> {
        proptest::collection::vec(
            (
                prop_oneof![Just(0u64), 0u64..100, 0u64..1 << 20],
                proptest::collection::vec(any::<u8>(), 0..80),
            ),
            1..20,
        )
    }

    fn encode_records(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (delta, data) in records {
            varint::write(&mut out, *delta);
            varint::write(&mut out, data.len() as u64);
            out.extend_from_slice(data);
        }
        out
    }

    /// A well-formed MSG_BUNDLE frame.
    fn bundle() -> impl Strategy<Value = Owned> {
        (0u64..1 << 16, 0u64..1 << 40, 0u64..1 << 40, records()).prop_map(
            |(channel, first_seq, ts, records)| {
                Owned::Bundle(
                    channel,
                    first_seq,
                    records.len() as u64,
                    ts,
                    encode_records(&records),
                )
            },
        )
    }

    proptest! {
        /// A bundle's records come out as the messages that went in: each
        /// whole, reliable, with consecutive sequence numbers and its own
        /// timestamp.
        #[test]
        fn bundle_records_are_the_messages(
            channel in 0u64..1 << 16,
            first_seq in 0u64..1 << 40,
            ts in 0u64..1 << 40,
            records in records(),
        ) {
            let encoded = encode_records(&records);
            let mut buf = Vec::new();
            Frame::Bundle(BundleFrame {
                channel,
                first_seq,
                count: records.len() as u64,
                timestamp_us: ts,
                records: &encoded,
            })
            .encode(&mut buf);
            let decoded: Vec<_> = FrameIter::new(&buf).collect::<Result<_, _>>().unwrap();
            let [Frame::Bundle(b)] = &decoded[..] else {
                panic!("one bundle expected: {decoded:?}");
            };
            let messages: Vec<_> = b.messages().collect();
            prop_assert_eq!(messages.len(), records.len());
            let mut t = ts;
            for (i, (m, (delta, data))) in messages.iter().zip(&records).enumerate() {
                t += delta;
                prop_assert_eq!(m.channel, channel);
                prop_assert_eq!(m.seq, first_seq + i as u64);
                prop_assert_eq!(m.timestamp_us, t);
                prop_assert_eq!((m.offset, m.msg_len), (0, data.len() as u64));
                prop_assert_eq!(m.delivery, Delivery::Reliable);
                prop_assert_eq!(m.data, &data[..]);
            }
        }

        /// A bundle written record by record within `space` bytes decodes
        /// to the records that were taken, in order; a record that does not
        /// fit is refused without writing a byte, and an abandoned bundle
        /// leaves nothing behind.
        #[test]
        fn a_written_bundle_holds_the_records_that_fitted(
            channel in 0u64..1 << 16,
            first_seq in 0u64..1 << 40,
            ts in 0u64..1 << 40,
            records in records(),
            space in prop_oneof![0usize..40, 40usize..2_000, 16_000usize..20_000],
            prefix in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut buf = prefix.clone();
            let Some(mut w) = BundleWriter::begin(&mut buf, channel, first_seq, ts, space) else {
                prop_assert_eq!(&buf, &prefix);
                return Ok(());
            };
            let mut taken = 0;
            for (delta, data) in &records {
                let before = buf.clone();
                if !w.push(&mut buf, *delta, data) {
                    prop_assert_eq!(&buf, &before);
                    break;
                }
                taken += 1;
            }
            prop_assert_eq!(w.count(), taken as u64);
            let mut abandoned = buf.clone();
            BundleWriter::begin(&mut abandoned, channel, first_seq, ts, space)
                .expect("the header fitted before")
                .abandon(&mut abandoned);
            prop_assert_eq!(&abandoned, &buf);
            w.finish(&mut buf);
            prop_assert!(buf.len() - prefix.len() <= space);
            if taken == 0 {
                // An empty bundle is not a valid frame: a writer with no
                // record is abandoned, never finished, by its users.
                return Ok(());
            }
            let decoded: Vec<_> = FrameIter::new(&buf[prefix.len()..])
                .collect::<Result<_, _>>()
                .unwrap();
            let [Frame::Bundle(b)] = &decoded[..] else {
                panic!("one bundle expected: {decoded:?}");
            };
            prop_assert_eq!((b.channel, b.first_seq, b.count), (channel, first_seq, taken as u64));
            let mut t = ts;
            for (m, (delta, data)) in b.messages().zip(&records) {
                t += delta;
                prop_assert_eq!(m.timestamp_us, t);
                prop_assert_eq!(m.data, &data[..]);
            }
        }

        /// A bundle whose count, record lengths or bytes disagree is an
        /// error (never a panic, never a partial bundle).
        #[test]
        fn malformed_bundles_are_errors(
            records in records(),
            count_change in prop_oneof![Just(-1i64), Just(1i64), 2i64..5],
            flip_at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let encoded = encode_records(&records);
            let count = (records.len() as i64 + count_change).max(0) as u64;
            let mut buf = Vec::new();
            Frame::Bundle(BundleFrame {
                channel: 1,
                first_seq: 0,
                count,
                timestamp_us: 5,
                records: &encoded,
            })
            .encode(&mut buf);
            let res: Result<Vec<_>, _> = FrameIter::new(&buf).collect();
            prop_assert!(res.is_err(), "count {} for {} records accepted", count, records.len());
            // Any flipped byte of a good bundle: an error, or a bundle whose
            // messages are exactly as many as it says.
            let mut good = Vec::new();
            Frame::Bundle(BundleFrame {
                channel: 1,
                first_seq: 0,
                count: records.len() as u64,
                timestamp_us: 5,
                records: &encoded,
            })
            .encode(&mut good);
            let i = flip_at.index(good.len());
            good[i] ^= flip;
            for f in FrameIter::new(&good) {
                if let Ok(Frame::Bundle(b)) = f {
                    prop_assert_eq!(b.messages().count() as u64, b.count);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn each_frame_round_trips(f in frame()) {
            let frame = f.frame();
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            prop_assert_eq!(buf.len(), frame.encoded_len());
            let decoded: Vec<_> = FrameIter::new(&buf).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(decoded, vec![frame]);
        }

        #[test]
        fn frame_sequences_round_trip(fs in proptest::collection::vec(frame(), 1..8)) {
            // Padding merges with following padding, so keep it last only.
            let fs: Vec<_> = fs.into_iter().filter(|f| !matches!(f, Owned::Padding(_))).collect();
            let frames: Vec<_> = fs.iter().map(Owned::frame).collect();
            let mut buf = Vec::new();
            for f in &frames { f.encode(&mut buf); }
            let decoded: Vec<_> = FrameIter::new(&buf).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for f in FrameIter::new(&bytes) { let _ = f; }
        }

        #[test]
        fn truncation_is_an_error_not_a_panic(f in frame(), cut in any::<prop::sample::Index>()) {
            let frame = f.frame();
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            if !matches!(frame, Frame::Padding(_)) && buf.len() > 1 {
                let n = cut.index(buf.len() - 1) + 1;
                let n = n.min(buf.len() - 1);
                let res: Result<Vec<_>, _> = FrameIter::new(&buf[..n]).collect();
                prop_assert!(res.is_err() || res.unwrap() != vec![frame]);
            }
        }
    }

    #[test]
    fn malformed_frames_are_rejected() {
        let cases: &[(&[u8], &str)] = &[
            (
                &[0x04, 0, 0, 5, 4, 0, 2, 1, 2],
                "fragment beyond message end",
            ),
            (&[0x04, 0, 0, 5, 0, 0, 0], "empty fragment"),
            (&[0x09, 0, 0, 5, 0, 0], "deadline missing"),
            (&[0x03, 5, 0, 0, 6], "first ack range below zero"),
            (&[0x03, 5, 0, 1, 0, 4, 0], "gap below zero"),
            (&[0x05, 0, 2, 0xff, 0xfe], "reason not utf8"),
            (&[0x07, 1, 1, 10], "missing params"),
            (&[0x07, 2, 1, 10, 1, 10], "duplicate params"),
            (&[0x14], "reserved frame type"),
            (&[0x12, 1, 2], "truncated challenge"),
            (&[0x10, 5, 1, 2], "truncated handshake"),
            (&[0x3f], "unknown frame type"),
            (&[0x03, 5, 0, 0x41, 0x00, 0], "too many ranges"),
            (&[0x0c, 0, 0, 0, 0, 0], "empty bundle"),
            (&[0x0c, 0, 0, 1, 0, 3, 0, 5, 1], "record beyond the bundle"),
            (
                &[0x0c, 0, 0, 1, 0, 4, 0, 1, 9, 9],
                "bytes after the last record",
            ),
            (
                &[0x0c, 0, 0, 2, 0, 3, 0, 1, 9],
                "fewer records than the count",
            ),
            (
                &[
                    0x0c, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 4, 0, 0, 0, 0,
                ],
                "sequence range overflows",
            ),
            (
                &[
                    0x0c, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 3, 1, 1, 9,
                ],
                "timestamp overflows",
            ),
        ];
        for (bytes, why) in cases {
            let res: Result<Vec<_>, _> = FrameIter::new(bytes).collect();
            assert!(res.is_err(), "{why}: {res:?}");
        }
    }

    #[test]
    fn unknown_params_are_skipped() {
        let bytes = [0x07, 3, 1, 10, 2, 20, 9, 33];
        let f: Vec<_> = FrameIter::new(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            f,
            vec![Frame::Connect(TransportParams {
                max_message_size: 10,
                receive_window: 20,
                idle_timeout_ms: 0,
                max_ack_delay_us: 0,
                clock_origin_us: 0,
            })]
        );
    }
}
