//! Congestion control behind one seam: the [`CongestionController`] trait.
//!
//! Every path owns a boxed controller, built by the [`CongestionControl`]
//! choice in [`Config`](crate::Config). The connection drives it:
//!
//! ```text
//! packet sent ───────────────► on_sent(now, bytes, bytes_in_flight)
//! ACK frame applied to a path ► on_ack(&AckEvent)        (packets + delivery-rate sample)
//! packets declared lost ─────► on_congestion_event(now, newest lost sent time, bytes)
//! loss turned out spurious ──► on_spurious_loss(now)      (undo the last reduction)
//! before sending ────────────► window(), pacing_rate(srtt)
//! ```
//!
//! The pacer (`conn::pacer`) spends tokens at the controller's
//! [`PacingRate`], so a rate-based controller ([`LiveRate`]: live streaming at
//! the input rate plus overhead) needs no window to speak of: it reports a
//! generous window, the rate it wants and a burst allowance large enough for
//! one video frame. Window-based controllers pace at 5/4 of window ÷ RTT with
//! short bursts.
//!
//! The connection also tells every controller what the application offers
//! (`on_offered`, once per message queued), which is what a live-stream
//! controller paces by.
//!
//! The app-limited marking is computed by the connection (the sender used
//! less than half the window and had nothing more to send) and travels in
//! each [`AckEvent`] and [`RateSample`]; a controller must neither grow nor
//! collapse its estimate from app-limited samples.
//!
//! Adding a controller is one file here implementing the trait plus one
//! variant of [`CongestionControl`].

mod delivery_rate;
mod live_rate;
mod new_reno_bdp_floor;

use std::fmt::Debug;
use std::time::{Duration, Instant};

pub use delivery_rate::{DeliveryRate, DeliveryState, RateSample};
pub use live_rate::{LiveParams, LiveRate};
pub use new_reno_bdp_floor::NewRenoBdpFloor;

/// The pacer's burst allowance unless a controller asks for another: what
/// the rate releases in this long may leave back to back.
pub const DEFAULT_PACING_BURST: Duration = Duration::from_micros(1600);

/// A rate: `bytes` per `per` (kept as a ratio, so the pacer's arithmetic is
/// exact), and how much of it may leave in one burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingRate {
    /// Bytes sent per `per`.
    pub bytes: u64,
    /// The interval `bytes` are spread over (never zero).
    pub per: Duration,
    /// The burst allowance: what the rate releases in this long may leave at
    /// once after a quiet period ([`DEFAULT_PACING_BURST`] unless set).
    pub burst: Duration,
}

impl PacingRate {
    /// `bytes` per `per` with the default burst allowance; a zero interval is
    /// taken as one nanosecond.
    pub fn new(bytes: u64, per: Duration) -> Self {
        Self {
            bytes,
            per: per.max(Duration::from_nanos(1)),
            burst: DEFAULT_PACING_BURST,
        }
    }

    /// The same rate with a burst allowance of what it releases in `burst`.
    pub fn with_burst(self, burst: Duration) -> Self {
        Self { burst, ..self }
    }
}

/// One acknowledged, ack-eliciting packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckedPacket {
    /// When it was sent.
    pub sent: Instant,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What one ACK frame newly acknowledged on a path.
#[derive(Debug, Clone, Copy)]
pub struct AckEvent<'a> {
    /// When the ACK arrived.
    pub now: Instant,
    /// The ack-eliciting packets it acknowledged, ascending packet number.
    pub packets: &'a [AckedPacket],
    /// The sender was not using the window (less than half of it in flight and
    /// nothing more to send): growth is not earned.
    pub app_limited: bool,
    /// The path's smallest RTT seen.
    pub min_rtt: Duration,
    /// The path's smoothed RTT.
    pub smoothed_rtt: Duration,
    /// The delivery-rate sample of the newest packet acknowledged, if any.
    pub rate_sample: Option<RateSample>,
}

/// A congestion controller for one path.
pub trait CongestionController: Debug + Send {
    /// Bytes that may be in flight.
    fn window(&self) -> u64;

    /// Slow-start threshold in bytes, for statistics (`u64::MAX` if none).
    fn ssthresh(&self) -> u64;

    /// The rate at which the pacer releases bytes, given the smoothed RTT.
    fn pacing_rate(&self, smoothed_rtt: Duration) -> PacingRate;

    /// An ack-eliciting packet of `bytes` left at `now`; `bytes_in_flight`
    /// includes it.
    fn on_sent(&mut self, now: Instant, bytes: u64, bytes_in_flight: u64);

    /// An ACK frame newly acknowledged packets on this path.
    fn on_ack(&mut self, ack: &AckEvent<'_>);

    /// Packets were declared lost (`lost_bytes` in all); the newest of them
    /// was sent at `newest_lost_sent`.
    fn on_congestion_event(&mut self, now: Instant, newest_lost_sent: Instant, lost_bytes: u64);

    /// A packet declared lost was acknowledged after all: undo the reduction
    /// that loss caused, if the controller can.
    fn on_spurious_loss(&mut self, now: Instant);

    /// The application queued `messages` messages of `bytes` in all at `now`
    /// (what it offers, before retransmissions; a batch is offered in one
    /// call). Window-based controllers ignore it.
    fn on_offered(&mut self, _now: Instant, _bytes: u64, _messages: u64) {}
}

/// Which congestion controller each path runs (part of [`Config`](crate::Config)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CongestionControl {
    /// NewReno over bytes in flight with a floor of twice the recently
    /// delivered bandwidth-delay product ([`NewRenoBdpFloor`]).
    NewRenoBdpFloor,
    /// Rate-based control for live streams: the application's input rate plus
    /// an overhead for retransmissions ([`LiveRate`]).
    Live(LiveParams),
    /// [`NewRenoBdpFloor`] until the application gives a channel deadline
    /// delivery (`Connection::set_channel_delivery`), then [`LiveRate`] with
    /// these parameters on every path, present and future.
    Auto(LiveParams),
}

impl Default for CongestionControl {
    /// [`CongestionControl::Auto`] with the default live parameters.
    fn default() -> Self {
        Self::Auto(LiveParams::default())
    }
}

impl CongestionControl {
    /// A fresh controller for datagrams of `mss` bytes, starting with a window
    /// of `initial_packets` datagrams.
    pub fn build(self, mss: u64, initial_packets: u64) -> Box<dyn CongestionController> {
        match self {
            Self::NewRenoBdpFloor | Self::Auto(_) => {
                Box::new(NewRenoBdpFloor::new(mss, initial_packets))
            }
            Self::Live(params) => Box::new(LiveRate::new(params, mss, initial_packets)),
        }
    }

    /// The choice once a channel carries deadline traffic: `Auto` becomes
    /// `Live`; `None` if that changes nothing.
    pub fn for_deadline_traffic(self) -> Option<Self> {
        match self {
            Self::Auto(params) => Some(Self::Live(params)),
            Self::NewRenoBdpFloor | Self::Live(_) => None,
        }
    }
}
