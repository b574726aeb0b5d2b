//! [`LiveRate`]: rate-based congestion control for live streams, like SRT's
//! live mode.
//!
//! A live stream's rate is set by its source (a camera, an encoder), not by
//! the network: sending slower than the input only queues frames until they
//! miss their deadline, and random loss is not congestion. So the controller
//! paces at the measured input rate times `1 + overhead` (room for
//! retransmissions, 25 % by default as in SRT), optionally capped by
//! `max_bw`, and never below a floor of the initial window per 100 ms so a
//! stream that starts or resumes is not starved. The input rate (reported
//! through `on_offered`) is the peak rate over any [`PEAK_SPAN`] within the
//! last [`INPUT_WINDOW`]: a video's key frame can be ten times the average
//! frame, and paced at the average rate it would take longer than a deadline
//! to leave; paced at the rate it was produced, it leaves within about one
//! frame interval.
//!
//! * **Bursts:** the pacer may release what the rate sends in [`BURST`]
//!   (about one and a half 30 fps frames) back to back, so a frame queued at
//!   once leaves at once instead of being spread over round trips.
//! * **Window:** the pacing rate times (two smoothed RTTs + [`WINDOW_BUDGET`]),
//!   at least the initial window: an application-limited stream is never
//!   throttled by the window, which only bounds what a dead path swallows.
//! * **Loss:** ignored (`on_congestion_event` changes nothing), so neither
//!   random loss nor application-limited periods grow or collapse anything.
//! * **A real bottleneck:** when, over the last [`BOTTLENECK_WINDOW`], even
//!   the highest delivery-rate sample stays below half the average input
//!   rate (over the last [`INPUT_WINDOW`]), and enough of the samples were
//!   taken while data waited to be sent (application-limited samples
//!   measure the application, not the path), the
//!   path cannot carry the stream; the pacing rate is then capped at that
//!   delivery rate plus the overhead, so the excess waits in our queue (where
//!   deadlines abandon it) instead of a router's. The cap lifts by itself:
//!   delivery at the capped rate measures up to 1 + overhead times the last
//!   maximum each window until the input fits again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{AckEvent, CongestionController, PacingRate};

/// The input rate is what the application offered over this long.
pub const INPUT_WINDOW: Duration = Duration::from_millis(250);
/// The input rate is the most the application offered within any span this
/// long (less than one 30 fps frame interval), per second.
pub const PEAK_SPAN: Duration = Duration::from_millis(20);
/// The pacer's burst allowance: what the pacing rate releases in this long.
pub const BURST: Duration = Duration::from_millis(50);
/// Added to two smoothed RTTs to size the window.
pub const WINDOW_BUDGET: Duration = Duration::from_millis(100);
/// Delivery-rate samples are judged over this long for a bottleneck.
pub const BOTTLENECK_WINDOW: Duration = Duration::from_secs(1);
/// A bottleneck is declared only on at least this many samples in the window.
const MIN_BOTTLENECK_SAMPLES: usize = 8;
/// Bytes a message costs on the wire beyond its payload (packet header,
/// frame header and AEAD tag), so the input rate is a wire rate.
const PER_MESSAGE_OVERHEAD: u64 = 64;
/// The rate floor: the initial window per this long.
const FLOOR_PERIOD: Duration = Duration::from_millis(100);

/// Parameters of the live-stream controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveParams {
    /// Extra rate for retransmissions, percent of the input rate (default 25).
    pub overhead_percent: u32,
    /// A cap on the pacing rate in bytes per second (default none).
    pub max_bw: Option<u64>,
}

impl Default for LiveParams {
    fn default() -> Self {
        Self {
            overhead_percent: 25,
            max_bw: None,
        }
    }
}

/// Live-stream congestion control: the input rate plus an overhead.
#[derive(Debug, Clone)]
pub struct LiveRate {
    params: LiveParams,
    /// Floor of the rate and of the window, bytes (the initial window).
    floor_bytes: u64,
    /// What was offered within the input window, in spans of at most
    /// [`PEAK_SPAN`] (each starting with its first message): (start, wire bytes).
    offered: VecDeque<(Instant, u64)>,
    offered_bytes: u64,
    /// Delivery-rate samples within the bottleneck window: (when, bytes/s,
    /// application-limited).
    delivery: VecDeque<(Instant, u64, bool)>,
    smoothed_rtt: Duration,
}

impl LiveRate {
    /// A controller for datagrams of `mss` bytes whose rate and window floor
    /// is `initial_packets` datagrams (per 100 ms for the rate).
    pub fn new(params: LiveParams, mss: u64, initial_packets: u64) -> Self {
        Self {
            params,
            floor_bytes: mss * initial_packets.max(1),
            offered: VecDeque::new(),
            offered_bytes: 0,
            delivery: VecDeque::new(),
            smoothed_rtt: FLOOR_PERIOD,
        }
    }

    /// The application's input rate: the peak over any [`PEAK_SPAN`] of the
    /// last [`INPUT_WINDOW`], bytes/s.
    pub fn input_rate(&self) -> u64 {
        let peak = self.offered.iter().map(|&(_, b)| b).max().unwrap_or(0);
        per_second(peak, PEAK_SPAN)
    }

    /// The application's average input rate over the last [`INPUT_WINDOW`], bytes/s.
    pub fn average_input_rate(&self) -> u64 {
        per_second(self.offered_bytes, INPUT_WINDOW)
    }

    /// The highest delivery rate of the last [`BOTTLENECK_WINDOW`] if it shows
    /// that the path cannot carry half the input, bytes/s.
    ///
    /// A low application-limited sample measures what the application
    /// offered, not what the path carries: a bottleneck needs samples taken
    /// while data waited (in our queue or the pacer). Counting only the
    /// heartbeats before a stream starts capped its first frame at a few kB/s.
    fn bottleneck(&self) -> Option<u64> {
        let waited = self.delivery.iter().filter(|&&(_, _, app)| !app).count();
        if waited < MIN_BOTTLENECK_SAMPLES {
            return None;
        }
        let best = self.delivery.iter().map(|&(_, r, _)| r).max()?;
        (best.saturating_mul(2) < self.average_input_rate()).then_some(best)
    }

    /// Bytes per second the pacer releases.
    pub fn rate(&self) -> u64 {
        let with_overhead = |r: u64| {
            (u128::from(r) * u128::from(100 + self.params.overhead_percent) / 100)
                .min(u128::from(u64::MAX)) as u64
        };
        let mut rate =
            with_overhead(self.input_rate()).max(per_second(self.floor_bytes, FLOOR_PERIOD));
        if let Some(delivered) = self.bottleneck() {
            rate = rate.min(with_overhead(delivered).max(1));
        }
        match self.params.max_bw {
            Some(cap) => rate.min(cap.max(1)),
            None => rate,
        }
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some(&(t, bytes)) = self.offered.front() {
            if now.saturating_duration_since(t) < INPUT_WINDOW {
                break;
            }
            self.offered.pop_front();
            self.offered_bytes -= bytes;
        }
        while let Some(&(t, _, _)) = self.delivery.front() {
            if now.saturating_duration_since(t) < BOTTLENECK_WINDOW {
                break;
            }
            self.delivery.pop_front();
        }
    }
}

fn per_second(bytes: u64, over: Duration) -> u64 {
    (u128::from(bytes) * 1_000_000_000 / over.as_nanos().max(1)).min(u128::from(u64::MAX)) as u64
}

impl CongestionController for LiveRate {
    /// The pacing rate times (two smoothed RTTs + [`WINDOW_BUDGET`]), at
    /// least the initial window.
    fn window(&self) -> u64 {
        let span = self.smoothed_rtt * 2 + WINDOW_BUDGET;
        let bytes = u128::from(self.rate()) * span.as_nanos() / 1_000_000_000;
        (bytes.min(u128::from(u64::MAX)) as u64).max(self.floor_bytes)
    }

    fn ssthresh(&self) -> u64 {
        u64::MAX
    }

    fn pacing_rate(&self, _smoothed_rtt: Duration) -> PacingRate {
        PacingRate::new(self.rate(), Duration::from_secs(1)).with_burst(BURST)
    }

    fn on_sent(&mut self, now: Instant, _bytes: u64, _bytes_in_flight: u64) {
        self.forget_before(now);
    }

    fn on_ack(&mut self, ack: &AckEvent<'_>) {
        self.smoothed_rtt = ack.smoothed_rtt;
        self.forget_before(ack.now);
        if let Some(sample) = ack.rate_sample {
            self.delivery
                .push_back((ack.now, sample.bytes_per_second(), sample.app_limited));
        }
    }

    /// Random loss is not congestion for a live stream: nothing changes.
    fn on_congestion_event(&mut self, now: Instant, _newest_lost_sent: Instant, _lost: u64) {
        self.forget_before(now);
    }

    /// Nothing was reduced, so nothing is undone.
    fn on_spurious_loss(&mut self, _now: Instant) {}

    fn on_offered(&mut self, now: Instant, bytes: u64, messages: u64) {
        self.forget_before(now);
        let wire = bytes + PER_MESSAGE_OVERHEAD * messages;
        match self.offered.back_mut() {
            Some((start, span)) if now.saturating_duration_since(*start) < PEAK_SPAN => {
                *span += wire;
            }
            _ => self.offered.push_back((now, wire)),
        }
        self.offered_bytes += wire;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AckedPacket, RateSample};
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// 30 frames/s of 13 messages of 1316 bytes: 4.1 Mbit/s of payload.
    fn offer_frames(cc: &mut LiveRate, t0: Instant, frames: u32) -> Instant {
        let mut now = t0;
        for f in 0..frames {
            now = t0 + 33 * MS * f;
            for _ in 0..13 {
                cc.on_offered(now, 1316, 1);
            }
        }
        now
    }

    fn ack(cc: &mut LiveRate, now: Instant, delivered_per_second: u64, app_limited: bool) {
        cc.on_ack(&AckEvent {
            now,
            packets: &[AckedPacket {
                sent: now - 20 * MS,
                bytes: 1400,
            }],
            app_limited,
            min_rtt: 20 * MS,
            smoothed_rtt: 20 * MS,
            rate_sample: Some(RateSample {
                delivered: delivered_per_second / 50,
                interval: 20 * MS,
                app_limited,
            }),
        });
    }

    #[test]
    fn paces_at_the_input_rate_plus_the_overhead_and_ignores_loss() {
        let t0 = Instant::now();
        let mut cc = LiveRate::new(LiveParams::default(), 1452, 4);
        let now = offer_frames(&mut cc, t0, 60);
        // 8 frames (13 × 1380 wire bytes each) in the last 250 ms; the input
        // rate is one frame per 20 ms, the rate it was produced at.
        assert_eq!(cc.average_input_rate(), 8 * 13 * 1380 * 4);
        let input = 13 * 1380 * 50;
        assert_eq!(cc.input_rate(), input);
        assert_eq!(cc.rate(), input * 5 / 4);
        let window = cc.window();
        for i in 0..20u32 {
            cc.on_congestion_event(now, now - MS * i, 1452);
        }
        assert_eq!(cc.window(), window, "loss does not shrink the window");
        assert_eq!(cc.rate(), input * 5 / 4);
        // A frame (13 datagrams) fits the burst allowance.
        let rate = cc.pacing_rate(20 * MS);
        let burst = u128::from(rate.bytes) * rate.burst.as_nanos() / rate.per.as_nanos();
        assert!(burst >= 13 * 1452, "{burst}");
    }

    #[test]
    fn a_batch_is_offered_as_its_messages_one_by_one() {
        let t0 = Instant::now();
        let mut one_by_one = LiveRate::new(LiveParams::default(), 1452, 4);
        let mut batched = LiveRate::new(LiveParams::default(), 1452, 4);
        for f in 0..60u32 {
            let now = t0 + 33 * MS * f;
            for _ in 0..13 {
                one_by_one.on_offered(now, 1316, 1);
            }
            batched.on_offered(now, 13 * 1316, 13);
        }
        assert_eq!(batched.input_rate(), one_by_one.input_rate());
        assert_eq!(
            batched.average_input_rate(),
            one_by_one.average_input_rate()
        );
        assert_eq!(batched.rate(), one_by_one.rate());
    }

    #[test]
    fn max_bw_caps_the_rate() {
        let t0 = Instant::now();
        let params = LiveParams {
            overhead_percent: 25,
            max_bw: Some(100_000),
        };
        let mut cc = LiveRate::new(params, 1452, 4);
        offer_frames(&mut cc, t0, 60);
        assert_eq!(cc.rate(), 100_000);
    }

    #[test]
    fn backs_off_only_when_delivery_stays_below_half_the_input() {
        let t0 = Instant::now();
        let mut cc = LiveRate::new(LiveParams::default(), 1452, 4);
        let now = offer_frames(&mut cc, t0, 60);
        let (input, average) = (cc.input_rate(), cc.average_input_rate());
        // 10 % loss: delivery at 90 % of the input changes nothing.
        for i in 0..20u32 {
            ack(
                &mut cc,
                now - 200 * MS + 10 * MS * i,
                average * 9 / 10,
                true,
            );
        }
        assert_eq!(cc.rate(), input * 5 / 4);
        // A bottleneck at a third of the input for over a second.
        for i in 1..=120u32 {
            let t = now + 10 * MS * i;
            if i % 3 == 0 {
                for _ in 0..13 {
                    cc.on_offered(t, 1316, 1);
                }
            }
            // Data waits for the path: these samples are not app-limited.
            ack(&mut cc, t, average / 3, false);
        }
        // Capped at the delivery rate (a third of the input) plus 25 %.
        let capped = cc.rate();
        let expected = average / 3 * 5 / 4;
        assert!(
            capped.abs_diff(expected) < expected / 100,
            "{capped} vs {expected}"
        );
    }

    #[test]
    fn a_quiet_start_is_no_bottleneck() {
        let t0 = Instant::now();
        let mut cc = LiveRate::new(LiveParams::default(), 1452, 32);
        // Half a second of heartbeats only: application-limited samples of a
        // few kB/s.
        for i in 0..25u32 {
            ack(&mut cc, t0 + 20 * MS * i, 6_000, true);
        }
        // The stream starts with a large first frame.
        let start = t0 + 500 * MS;
        for _ in 0..89 {
            cc.on_offered(start, 1316, 1);
        }
        assert_eq!(cc.rate(), cc.input_rate() * 5 / 4);
        assert!(cc.rate() > 5_000_000, "{}", cc.rate());
    }
}
