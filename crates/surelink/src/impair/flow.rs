//! One client's traffic through the impairer: the flow task.
//!
//! A flow is opened by the relay (the listener task, module `relay`) the
//! first time a client address sends something. It owns:
//!
//! - a UDP socket bound to an ephemeral port and connected to the target, so
//!   that whatever the target sends back to that port belongs to this client;
//! - two [`Link`]s, upstream and downstream, each with its own seed;
//! - one [`PreciseTimer`], armed at the earlier of the two links'
//!   [`next_delivery`](Link::next_delivery): on Linux a `timerfd` that
//!   fires within tens of microseconds of it, so a datagram leaves when its
//!   drawn delay has passed rather than up to a millisecond later.
//!
//! The task is a single `select!` loop over: upstream datagrams handed over by
//! the relay (with the instant they arrived), datagrams read from the
//! connected socket, the delivery timer, the idle timer and shutdown. After
//! every event it releases whatever is due on both links, re-arms the timer,
//! and publishes its counters to the [`StatsBook`]. Nothing polls: the task
//! sleeps until a datagram or a delivery time comes.
//!
//! I/O errors are counted and logged, never fatal: a refused send loses that
//! one datagram, a failed read is skipped.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use surelink_netem::{splitmix64, Link};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::stats::{DirectionStats, FlowCounters, StatsBook};
use crate::precise_timer::PreciseTimer;

/// Largest UDP payload, and the size of every receive buffer.
pub(crate) const MAX_DATAGRAM: usize = 65_535;

/// Most datagrams (duplicates included) one direction of one flow holds in
/// flight; beyond it, arriving datagrams are dropped and counted as
/// `dropped_backlog`. Bounds memory under a flood through a long delay.
pub(crate) const MAX_IN_FLIGHT: usize = 65_536;

/// Pause after a read error that is not about one datagram, so that a
/// persistently failing socket cannot spin the task.
pub(crate) const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// The current time on tokio's clock, as a std instant (the netem links take
/// std instants).
pub(crate) use crate::util::now as clock_now;

/// Whether a read error concerns a single earlier datagram (an ICMP error
/// reported on a later call) rather than the socket itself.
pub(crate) fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// A datagram from a client, stamped with when it reached the impairer.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub(crate) at: Instant,
    pub(crate) payload: Vec<u8>,
}

/// What a flow tells the relay when it ends on its own.
#[derive(Debug)]
pub(crate) struct FlowExit {
    pub(crate) id: u64,
    pub(crate) client: SocketAddr,
    /// Datagrams handed over after the flow decided to end; the relay routes
    /// them again (to a new flow).
    pub(crate) leftovers: Vec<Datagram>,
}

/// State shared by the handle, the relay and every flow.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The on-demand cut, applied to both directions of every flow.
    pub(crate) cut: AtomicBool,
    pub(crate) stats: StatsBook,
}

impl Shared {
    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }
}

/// Everything a flow task needs.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) id: u64,
    pub(crate) client: SocketAddr,
    /// Connected to the target.
    pub(crate) socket: UdpSocket,
    /// The impairer's listening socket, for sending replies to the client.
    pub(crate) listen: Arc<UdpSocket>,
    pub(crate) upstream: Link<Vec<u8>>,
    pub(crate) downstream: Link<Vec<u8>>,
    pub(crate) inbox: mpsc::Receiver<Datagram>,
    pub(crate) exits: mpsc::UnboundedSender<FlowExit>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) idle_timeout: Duration,
}

/// Why the loop ended.
enum End {
    /// Shutdown was requested, or the relay is gone.
    Stop,
    /// No traffic for the idle timeout.
    Idle,
}

impl Flow {
    /// Runs the flow until shutdown or idle expiry.
    pub(crate) async fn run(mut self) {
        let mut counters = FlowCounters::default();
        let end = self.event_loop(&mut counters).await;
        let expired = matches!(end, End::Idle);
        self.shared.stats.close_flow(self.id, &counters, expired);
        if expired {
            // Anything the relay handed over while we were deciding to end
            // goes back to it, to be routed to a fresh flow.
            self.inbox.close();
            let mut leftovers = Vec::new();
            while let Ok(datagram) = self.inbox.try_recv() {
                leftovers.push(datagram);
            }
            tracing::debug!(flow = self.id, client = %self.client, "flow expired");
            // The relay may be gone already (shutdown); nothing to do then.
            let _ = self.exits.send(FlowExit {
                id: self.id,
                client: self.client,
                leftovers,
            });
        }
    }

    async fn event_loop(&mut self, counters: &mut FlowCounters) -> End {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let start = clock_now();
        let mut last_activity = start;

        let mut delivery_timer = PreciseTimer::new();
        let idle_timer = tokio::time::sleep_until(later(start, self.idle_timeout).into());
        tokio::pin!(idle_timer);
        let mut delivery_deadline: Option<Instant> = None;

        loop {
            if *self.shutdown.borrow() {
                return End::Stop;
            }
            // The deadline of the delivery timer if it fired: what it
            // announced is due even if the clock reads a hair earlier.
            let mut fired: Option<Instant> = None;
            // Unbiased: a flood in one direction must not starve the other.
            tokio::select! {
                changed = self.shutdown.changed() => {
                    // Err: the handle was dropped, which also means stop.
                    if changed.is_err() || *self.shutdown.borrow() {
                        return End::Stop;
                    }
                }
                () = delivery_timer.wait() => {
                    fired = delivery_deadline;
                }
                received = self.inbox.recv() => match received {
                    Some(datagram) => {
                        last_activity = datagram.at.max(last_activity);
                        if self.upstream.in_flight() >= MAX_IN_FLIGHT {
                            counters.upstream.dropped_backlog += 1;
                        } else {
                            self.upstream.set_cut(self.shared.is_cut());
                            let size = datagram.payload.len();
                            self.upstream.send(datagram.at, size, datagram.payload);
                        }
                    }
                    None => return End::Stop,
                },
                read = self.socket.recv(&mut buf) => match read {
                    Ok(len) => {
                        let now = clock_now();
                        last_activity = now;
                        if self.downstream.in_flight() >= MAX_IN_FLIGHT {
                            counters.downstream.dropped_backlog += 1;
                        } else {
                            self.downstream.set_cut(self.shared.is_cut());
                            let payload = buf.get(..len).unwrap_or_default().to_vec();
                            self.downstream.send(now, len, payload);
                        }
                    }
                    Err(error) => {
                        counters.downstream.recv_errors += 1;
                        tracing::debug!(flow = self.id, %error, "read from target failed");
                        if !is_transient(&error) {
                            tokio::time::sleep(ERROR_BACKOFF).await;
                        }
                    }
                },
                () = &mut idle_timer => {
                    let now = clock_now();
                    let idle_until = later(last_activity, self.idle_timeout);
                    let in_flight = self.upstream.in_flight() + self.downstream.in_flight();
                    if now >= idle_until && in_flight == 0 {
                        return End::Idle;
                    }
                    // Not idle yet, or idle with datagrams still in flight.
                    let next_check = if now >= idle_until {
                        later(now, self.idle_timeout)
                    } else {
                        idle_until
                    };
                    idle_timer.as_mut().reset(next_check.into());
                }
            }

            // Release everything due by now.
            let now = clock_now();
            let until = fired.map_or(now, |deadline| deadline.max(now));
            let upstream = &mut counters.upstream;
            while let Some(payload) = self.upstream.poll_deliver(until) {
                send_connected(&self.socket, &payload, upstream, self.id).await;
            }
            let downstream = &mut counters.downstream;
            while let Some(payload) = self.downstream.poll_deliver(until) {
                match self.listen.send_to(&payload, self.client).await {
                    Ok(_) => downstream.forwarded += 1,
                    Err(error) => {
                        downstream.send_errors += 1;
                        tracing::debug!(flow = self.id, %error, "send to client failed");
                    }
                }
            }

            delivery_deadline = earliest(
                self.upstream.next_delivery(),
                self.downstream.next_delivery(),
            );
            delivery_timer.set(delivery_deadline);
            counters.upstream.link = *self.upstream.stats();
            counters.downstream.link = *self.downstream.stats();
            self.shared.stats.update_flow(self.id, counters);
        }
    }
}

/// Sends one datagram to the target on the flow's connected socket. A
/// "connection refused" left pending by an earlier datagram (the target was
/// not listening) is consumed by the first attempt, so it is retried once.
async fn send_connected(socket: &UdpSocket, payload: &[u8], stats: &mut DirectionStats, flow: u64) {
    let mut result = socket.send(payload).await;
    if matches!(&result, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused) {
        result = socket.send(payload).await;
    }
    match result {
        Ok(_) => stats.forwarded += 1,
        Err(error) => {
            stats.send_errors += 1;
            tracing::debug!(flow, %error, "send to target failed");
        }
    }
}

/// The earlier of two optional instants (`None`: no deadline).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `t + d`, or `t` if that is not representable.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

/// The seed of one direction (0: upstream, 1: downstream) of the flow with
/// index `flow`: a SplitMix64 mix of the configured seed, the flow index and
/// the direction, so that flows and directions draw independent streams and
/// a run with the same seed and the same clients is reproducible.
pub(crate) fn flow_seed(seed: u64, flow: u64, direction: u64) -> u64 {
    splitmix64(seed ^ splitmix64(flow.wrapping_mul(2).wrapping_add(direction)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_deterministic_and_distinct() {
        assert_eq!(flow_seed(1, 0, 0), flow_seed(1, 0, 0));
        let seeds = [
            flow_seed(1, 0, 0),
            flow_seed(1, 0, 1),
            flow_seed(1, 1, 0),
            flow_seed(1, 1, 1),
            flow_seed(2, 0, 0),
        ];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn the_delivery_timer_follows_the_earlier_direction() {
        let t = Instant::now();
        let later_t = t + Duration::from_millis(1);
        assert_eq!(earliest(Some(t), Some(later_t)), Some(t));
        assert_eq!(earliest(Some(later_t), Some(t)), Some(t));
        assert_eq!(earliest(None, Some(t)), Some(t));
        assert_eq!(earliest(Some(t), None), Some(t));
        assert_eq!(earliest(None, None), None);
    }

    #[test]
    fn transient_errors() {
        assert!(is_transient(&io::ErrorKind::ConnectionRefused.into()));
        assert!(!is_transient(&io::ErrorKind::PermissionDenied.into()));
    }
}
