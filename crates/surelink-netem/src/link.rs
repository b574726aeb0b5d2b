//! One direction of an impaired link: [`Link`].
//!
//! A `Link<P>` is a sans-IO state machine, fed with [`Link::send`] and
//! drained with [`Link::poll_deliver`]; the caller passes its own `now` each
//! time and asks [`Link::next_delivery`] when to poll next (the loop is shown
//! on [`Link`]). It owns the per-packet pipeline: cut check, burst and
//! independent loss, bottleneck, delay and jitter with FIFO clamping,
//! reordering, duplication, and the queue of packets in flight.
//!
//! Every random decision draws from its own ChaCha8 stream derived from the
//! seed (one each for burst loss, loss, jitter, reordering and duplication),
//! so, for instance, turning on jitter does not change which packets are
//! lost. The order of the pipeline is documented on [`LinkConfig`].

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::delivery::DeliveryQueue;
use crate::instant::later;
use crate::loss::{bernoulli, BurstState};
use crate::rate::Bottleneck;
use crate::{Delivery, DropReason, Fate, LinkConfig, LinkStats, NetemError};

/// Independent random streams, one per kind of decision.
#[derive(Debug, Clone)]
struct Streams {
    burst: ChaCha8Rng,
    loss: ChaCha8Rng,
    jitter: ChaCha8Rng,
    reorder: ChaCha8Rng,
    duplicate: ChaCha8Rng,
}

impl Streams {
    fn new(seed: u64) -> Self {
        let stream = |id: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(id);
            rng
        };
        Self {
            burst: stream(1),
            loss: stream(2),
            jitter: stream(3),
            reorder: stream(4),
            duplicate: stream(5),
        }
    }
}

/// One direction of an impaired link, carrying payloads of type `P`.
///
/// Created with a [`LinkConfig`], a seed and the instant the link comes up
/// (cut schedules are offsets from it). The same config, seed and sequence of
/// calls always give the same results.
///
/// The caller feeds packets with [`send`](Self::send) and drains what is due
/// with [`poll_deliver`](Self::poll_deliver), passing its own notion of `now`
/// each time, and asks [`next_delivery`](Self::next_delivery) when to poll
/// next. A simulation on a virtual clock typically loops:
///
/// ```
/// # use std::time::{Duration, Instant};
/// # use surelink_netem::{Link, LinkConfig};
/// # let start = Instant::now();
/// # let config = LinkConfig::clean().with_delay(Duration::from_millis(5));
/// let mut link = Link::new(config, 7, start).unwrap();
/// link.send(start, 100, vec![0u8; 100]);
/// while let Some(at) = link.next_delivery() {
///     // advance the virtual clock to `at`, then:
///     while let Some(packet) = link.poll_deliver(at) {
///         assert_eq!(packet.len(), 100);
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Link<P> {
    config: LinkConfig,
    start: Instant,
    manual_cut: bool,
    rng: Streams,
    burst_state: BurstState,
    bottleneck: Bottleneck,
    /// Delivery time of the last packet scheduled in FIFO order.
    last_delivery: Option<Instant>,
    in_flight: DeliveryQueue<P>,
    stats: LinkStats,
}

impl<P> Link<P> {
    /// Creates a link with `config`, drawing randomness from `seed`, that
    /// comes up at `start`. Fails if the configuration does not validate.
    pub fn new(config: LinkConfig, seed: u64, start: Instant) -> Result<Self, NetemError> {
        config.validate()?;
        Ok(Self {
            config,
            start,
            manual_cut: false,
            rng: Streams::new(seed),
            burst_state: BurstState::default(),
            bottleneck: Bottleneck::default(),
            last_delivery: None,
            in_flight: DeliveryQueue::default(),
            stats: LinkStats::default(),
        })
    }

    /// Hands out the next packet due at `now` (delivery time `<= now`), in
    /// delivery-time order; packets due at the same instant come out in send
    /// order.
    pub fn poll_deliver(&mut self, now: Instant) -> Option<P> {
        self.poll_delivery(now).map(|delivery| delivery.payload)
    }

    /// Like [`poll_deliver`](Self::poll_deliver), but also says when the
    /// packet became deliverable and how large it was.
    pub fn poll_delivery(&mut self, now: Instant) -> Option<Delivery<P>> {
        let delivery = self.in_flight.pop_due(now)?;
        self.stats.delivered += 1;
        self.stats.bytes_out = self
            .stats
            .bytes_out
            .saturating_add(delivery.size_bytes as u64);
        Some(delivery)
    }

    /// When the next packet becomes deliverable, if any is in flight.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.next_time()
    }

    /// Number of packets (duplicates included) scheduled but not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Cuts (`true`) or restores (`false`) the link on demand, in addition
    /// to the configured schedule. Packets already in flight are still
    /// delivered; packets sent while cut are dropped.
    pub fn set_cut(&mut self, cut: bool) {
        self.manual_cut = cut;
    }

    /// Whether a packet sent at `now` would be dropped by a cut (on-demand
    /// or scheduled). Instants before the link's start count as its start.
    pub fn is_cut(&self, now: Instant) -> bool {
        self.manual_cut || self.config.cuts.is_cut(self.elapsed(now))
    }

    /// The instant the link came up; cut schedules are offsets from it.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Counters since the link was created.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// The current configuration.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Replaces the configuration, keeping packets in flight, the bottleneck
    /// queue, the burst state and the random streams. The cut schedule stays
    /// relative to the link's start. On error the old configuration is kept.
    pub fn set_config(&mut self, config: LinkConfig) -> Result<(), NetemError> {
        config.validate()?;
        if config.burst.is_none() {
            self.burst_state = BurstState::default();
        }
        self.config = config;
        Ok(())
    }

    fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    /// Delivery time for a packet leaving the bottleneck at `departure`:
    /// base delay plus jitter, but not before the previous FIFO packet.
    fn fifo_delivery(&mut self, departure: Instant) -> Instant {
        let jitter = if self.config.jitter.is_zero() {
            Duration::ZERO
        } else {
            let max = u64::try_from(self.config.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(self.rng.jitter.gen_range(0..=max))
        };
        let mut at = later(later(departure, self.config.delay), jitter);
        if let Some(last) = self.last_delivery {
            at = at.max(last);
        }
        self.last_delivery = Some(at);
        at
    }

    fn record_drop(&mut self, reason: DropReason) -> Fate {
        let counter = match reason {
            DropReason::Loss => &mut self.stats.dropped_loss,
            DropReason::Burst => &mut self.stats.dropped_burst,
            DropReason::Cut => &mut self.stats.dropped_cut,
            DropReason::QueueFull => &mut self.stats.dropped_queue,
        };
        *counter += 1;
        Fate::Dropped(reason)
    }
}

impl<P: Clone> Link<P> {
    /// Offers a packet of `size_bytes` to the link at `now` and says what
    /// will happen to it. The payload is cloned only if it is duplicated.
    pub fn send(&mut self, now: Instant, size_bytes: usize, payload: P) -> Fate {
        self.stats.sent += 1;
        self.stats.bytes_in = self.stats.bytes_in.saturating_add(size_bytes as u64);

        if self.is_cut(now) {
            return self.record_drop(DropReason::Cut);
        }
        if let Some(model) = &self.config.burst {
            if self.burst_state.lose(model, &mut self.rng.burst) {
                return self.record_drop(DropReason::Burst);
            }
        }
        if bernoulli(&mut self.rng.loss, self.config.loss) {
            return self.record_drop(DropReason::Loss);
        }
        let departure = match self.config.rate_bps {
            Some(rate) => {
                match self
                    .bottleneck
                    .admit(now, size_bytes, rate, self.config.queue_bytes)
                {
                    Some(departure) => departure,
                    None => return self.record_drop(DropReason::QueueFull),
                }
            }
            None => now,
        };

        let mut deliver_at = self.fifo_delivery(departure);
        let reordered = bernoulli(&mut self.rng.reorder, self.config.reorder);
        if reordered {
            self.stats.reordered += 1;
            deliver_at = later(deliver_at, self.config.reorder_delay);
        }
        let duplicate_at = if bernoulli(&mut self.rng.duplicate, self.config.duplicate) {
            self.stats.duplicated += 1;
            Some(self.fifo_delivery(departure))
        } else {
            None
        };

        match duplicate_at {
            Some(copy_at) => {
                self.in_flight.push(deliver_at, size_bytes, payload.clone());
                self.in_flight.push(copy_at, size_bytes, payload);
            }
            None => self.in_flight.push(deliver_at, size_bytes, payload),
        }
        Fate::Scheduled {
            deliver_at,
            duplicate_at,
            reordered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn clean_link_delivers_immediately_in_order() {
        let t0 = Instant::now();
        let mut link = Link::new(LinkConfig::clean(), 1, t0).unwrap();
        for i in 0..10u32 {
            assert_eq!(
                link.send(t0, 4, i),
                Fate::Scheduled {
                    deliver_at: t0,
                    duplicate_at: None,
                    reordered: false
                }
            );
        }
        assert_eq!(link.in_flight(), 10);
        let got: Vec<u32> = std::iter::from_fn(|| link.poll_deliver(t0)).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(link.stats().delivered, 10);
        assert_eq!(link.stats().bytes_out, 40);
        assert_eq!(link.stats().in_flight(), 0);
    }

    #[test]
    fn set_config_rejects_invalid_and_keeps_old() {
        let t0 = Instant::now();
        let mut link: Link<()> = Link::new(LinkConfig::clean().with_delay(MS), 1, t0).unwrap();
        assert!(link.set_config(LinkConfig::clean().with_loss(2.0)).is_err());
        assert_eq!(link.config().delay, MS);
        link.set_config(LinkConfig::clean().with_delay(2 * MS))
            .unwrap();
        assert_eq!(link.config().delay, 2 * MS);
        assert!(Link::<()>::new(LinkConfig::clean().with_rate(0), 1, t0).is_err());
    }

    #[test]
    fn instants_before_start_do_not_panic() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let before = t0 - Duration::from_secs(5);
        let config = LinkConfig::clean()
            .with_cut(Duration::ZERO, MS)
            .with_rate(1000);
        let mut link = Link::new(config, 1, t0).unwrap();
        assert!(link.is_cut(before));
        assert_eq!(link.send(before, 10, ()), Fate::Dropped(DropReason::Cut));
        // Time going backwards after the cut: still scheduled, FIFO, no panic.
        let first = link.send(t0 + 2 * MS, 10, ()).deliver_at().unwrap();
        let second = link.send(t0 + MS + MS / 2, 10, ()).deliver_at().unwrap();
        assert!(second > first);
    }
}
