//! Delivery-rate samples, as in the IETF delivery-rate-estimation draft
//! (the estimator BBR uses).
//!
//! Each ack-eliciting packet remembers, as it leaves, how much the path had
//! delivered by then and when ([`DeliveryState`]). When it is acknowledged,
//! the bytes delivered since it left, over the longer of its send interval and
//! its ACK interval, is a rate sample ([`RateSample`]) that neither ACK
//! compression nor a send burst inflates. Samples taken while the sender was
//! app-limited are marked, so a controller does not mistake a quiet
//! application for a slow network.

use std::time::{Duration, Instant};

/// What a path had delivered when a packet left (stored with the packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryState {
    /// Bytes the path had delivered (acknowledged) before the packet left.
    pub delivered: u64,
    /// When `delivered` last grew.
    pub delivered_time: Instant,
    /// Send time of the first packet of the flight this packet belongs to.
    pub first_sent_time: Instant,
    /// The sender was app-limited when the packet left.
    pub app_limited: bool,
}

/// One delivery-rate measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSample {
    /// Bytes delivered over `interval`.
    pub delivered: u64,
    /// The measurement interval (never shorter than the path's minimum RTT).
    pub interval: Duration,
    /// The sample was taken while the sender was app-limited: it may
    /// understate what the path can carry.
    pub app_limited: bool,
}

impl RateSample {
    /// The sampled rate in bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        let micros = self.interval.as_micros().max(1);
        (u128::from(self.delivered) * 1_000_000 / micros).min(u128::from(u64::MAX)) as u64
    }
}

/// A path's delivery-rate bookkeeping.
#[derive(Debug, Clone)]
pub struct DeliveryRate {
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    /// Non-zero while app-limited: the `delivered` count at which the
    /// app-limited flight will have been acknowledged.
    app_limited_until: u64,
}

impl DeliveryRate {
    /// Bookkeeping for a path opened at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            app_limited_until: 0,
        }
    }

    /// An ack-eliciting packet leaves at `now` with `in_flight_before` bytes
    /// already in flight: the state to store with it.
    pub fn on_sent(&mut self, now: Instant, in_flight_before: u64) -> DeliveryState {
        if in_flight_before == 0 {
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        DeliveryState {
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            app_limited: self.app_limited_until != 0,
        }
    }

    /// The sender has nothing more to send and `bytes_in_flight` in flight:
    /// samples are app-limited until that flight is acknowledged.
    pub fn mark_app_limited(&mut self, bytes_in_flight: u64) {
        self.app_limited_until = (self.delivered + bytes_in_flight).max(1);
    }

    /// Ack-eliciting packets (`bytes`, send time, state when sent) were
    /// acknowledged at `now`: the sample of the newest of them, if its
    /// interval is at least `min_rtt` (shorter ones are not trusted).
    ///
    /// `app_limited_flight` is `Some(bytes in flight after this ACK)` when
    /// the sender has nothing more to send: it is marked app-limited
    /// ([`DeliveryRate::mark_app_limited`]) once this ACK's bytes are
    /// counted. Marked before, the mark fell below the count at once and was
    /// cleared by this same ACK whenever the flight was empty, so the
    /// heartbeats of an idle stream gave non-app-limited samples of a few
    /// kB/s, which read as a bottleneck when the stream started.
    pub fn on_ack(
        &mut self,
        now: Instant,
        acked: impl IntoIterator<Item = (u64, Instant, DeliveryState)>,
        min_rtt: Duration,
        app_limited_flight: Option<u64>,
    ) -> Option<RateSample> {
        let sample = self.sample(now, acked, min_rtt);
        if let Some(in_flight) = app_limited_flight {
            self.mark_app_limited(in_flight);
        }
        sample
    }

    /// Counts the acknowledged packets; the sample of the newest.
    fn sample(
        &mut self,
        now: Instant,
        acked: impl IntoIterator<Item = (u64, Instant, DeliveryState)>,
        min_rtt: Duration,
    ) -> Option<RateSample> {
        let mut newest: Option<(Instant, DeliveryState)> = None;
        for (bytes, sent, state) in acked {
            self.delivered += bytes;
            self.delivered_time = now;
            if newest.is_none_or(|(_, n)| state.delivered >= n.delivered) {
                newest = Some((sent, state));
                self.first_sent_time = sent;
            }
        }
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        let (sent, state) = newest?;
        let send_elapsed = sent.saturating_duration_since(state.first_sent_time);
        let ack_elapsed = now.saturating_duration_since(state.delivered_time);
        let interval = send_elapsed.max(ack_elapsed);
        if interval.is_zero() || interval < min_rtt {
            return None;
        }
        Some(RateSample {
            delivered: self.delivered - state.delivered,
            interval,
            app_limited: state.app_limited,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_steady_flow_samples_its_rate() {
        // One 1000-byte packet every ms, each acknowledged 20 ms later.
        let t0 = Instant::now();
        let mut d = DeliveryRate::new(t0);
        let mut in_flight = Vec::new();
        let mut last = None;
        for i in 0..100u32 {
            let now = t0 + MS * i;
            if let Some(&(sent, state)) = in_flight.first() {
                if now >= sent + 20 * MS {
                    in_flight.remove(0);
                    last = d.on_ack(now, [(1000, sent, state)], 20 * MS, None).or(last);
                }
            }
            let state = d.on_sent(now, in_flight.len() as u64 * 1000);
            in_flight.push((now, state));
        }
        let s = last.expect("samples once a round trip has passed");
        assert!(!s.app_limited);
        let rate = s.bytes_per_second();
        assert!((950_000..=1_050_000).contains(&rate), "1 MB/s: {rate}");
    }

    #[test]
    fn a_burst_acknowledged_at_once_is_not_mistaken_for_a_fast_path() {
        let t0 = Instant::now();
        let mut d = DeliveryRate::new(t0);
        // Ten packets sent over 10 ms, all acknowledged together 30 ms later.
        let states: Vec<_> = (0..10u32)
            .map(|i| (t0 + MS * i, d.on_sent(t0 + MS * i, u64::from(i) * 1000)))
            .collect();
        let now = t0 + 40 * MS;
        let s = d
            .on_ack(
                now,
                states.iter().map(|&(t, st)| (1000, t, st)),
                10 * MS,
                None,
            )
            .expect("interval above min RTT");
        // 10 kB over the 40 ms since the flight began, not over 0 ms.
        assert_eq!(s.delivered, 10_000);
        assert_eq!(s.interval, 40 * MS);
    }

    #[test]
    fn app_limited_marking_lasts_one_flight() {
        let t0 = Instant::now();
        let mut d = DeliveryRate::new(t0);
        let a = d.on_sent(t0, 0);
        d.mark_app_limited(1000);
        let b = d.on_sent(t0 + MS, 1000);
        assert!(!a.app_limited);
        assert!(b.app_limited);
        let s = d
            .on_ack(t0 + 30 * MS, [(1000, t0 + MS, b)], MS, None)
            .unwrap();
        assert!(s.app_limited);
        // 1000 delivered, not beyond the mark of 1000: still app-limited.
        let c = d.on_sent(t0 + 31 * MS, 0);
        assert!(c.app_limited);
        d.on_ack(t0 + 60 * MS, [(1000, t0 + 31 * MS, c)], MS, None);
        assert!(!d.on_sent(t0 + 61 * MS, 0).app_limited);
    }

    #[test]
    fn heartbeats_of_an_idle_sender_stay_app_limited() {
        // One 100-byte ping at a time, each acknowledged 20 ms later with
        // nothing else to send and nothing left in flight.
        let t0 = Instant::now();
        let mut d = DeliveryRate::new(t0);
        let mut sent = t0;
        let mut state = d.on_sent(sent, 0);
        for i in 1..10u32 {
            let now = t0 + 100 * MS * i;
            let sample = d.on_ack(now - 80 * MS, [(100, sent, state)], MS, Some(0));
            if i > 1 {
                let s = sample.expect("a ping's round trip is above min RTT");
                assert!(s.app_limited, "ping {i}: {} B/s", s.bytes_per_second());
            }
            sent = now;
            state = d.on_sent(now, 0);
            assert!(state.app_limited, "ping {i} left app-limited");
        }
    }
}
