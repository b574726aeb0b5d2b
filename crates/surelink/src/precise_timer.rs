//! A one-deadline timer that fires within tens of microseconds of its
//! deadline: the driver's timer and each impairer flow's.
//!
//! tokio's timer wheel has a resolution of 1 ms and fires up to about a
//! millisecond late. That is invisible to bulk transfer but not to real-time
//! traffic: a retransmitted message waits for a loss timer in the sender's
//! driver and crosses an impairer's delay three times (data, loss report,
//! retransmission), each a little late. A [`PreciseTimer`] holds one
//! deadline at a time and, on Linux, arms a `timerfd` (`CLOCK_MONOTONIC`,
//! an absolute deadline with `TFD_TIMER_ABSTIME`) registered with tokio
//! through [`AsyncFd`](tokio::io::unix::AsyncFd): the kernel's high-resolution
//! timers wake the task, with no thread and no spinning. One descriptor per
//! timer, re-armed to the current deadline, never one per deadline.
//!
//! Driven by its owner's loop: [`set`](PreciseTimer::set) the deadline (or
//! `None`) every time it may have changed (a no-op when it did not), and
//! await [`wait`](PreciseTimer::wait) in the loop's `select!`; `wait` is
//! cancel-safe and completes once the deadline has passed (at once if it
//! already has; never while no deadline is set).
//!
//! # Fallback to tokio's timer
//!
//! The timer falls back to [`tokio::time::sleep_until`] when:
//!
//! - tokio's clock is paused (`start_paused`, [`crate::sim`]): virtual time
//!   only advances through tokio's own timers, so a kernel timer would break
//!   the tests' determinism. Detected on every arming: a paused clock reads
//!   the same instant twice across a read of the system clock, a running one
//!   never does (a system clock too coarse to tell makes the timer fall back
//!   too, which costs only precision);
//! - the target is not Linux;
//! - creating, arming or reading the `timerfd` fails: a warning is logged
//!   once and this timer uses tokio's from then on. Never a panic.
//!
//! Deadlines are instants of the runtime's clock ([`crate::util::now`]); on a
//! running clock that is the system's monotonic clock, which the `timerfd`
//! shares.

use std::future::pending;
use std::pin::Pin;
use std::time::Instant;

use tokio::time::Sleep;

/// A timer with one deadline; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct PreciseTimer {
    /// The current deadline.
    deadline: Option<Instant>,
    /// The kernel timer: created at the first arming on a running clock,
    /// dropped if it fails.
    #[cfg(target_os = "linux")]
    kernel: KernelSlot,
    /// Whether `deadline` is tracked by the kernel timer (else by `sleep`).
    on_kernel: bool,
    /// tokio's timer, for the fallback.
    sleep: Pin<Box<Sleep>>,
}

impl PreciseTimer {
    /// A timer with no deadline. Must be called inside a tokio runtime with
    /// time enabled; the kernel timer, created at the first deadline set on
    /// a running clock, needs I/O enabled too (as every socket does).
    pub(crate) fn new() -> Self {
        Self {
            deadline: None,
            #[cfg(target_os = "linux")]
            kernel: KernelSlot::NotYet,
            on_kernel: false,
            sleep: Box::pin(tokio::time::sleep_until(crate::util::now().into())),
        }
    }

    /// Sets the deadline (`None`: none). Re-arms only when it changed.
    pub(crate) fn set(&mut self, deadline: Option<Instant>) {
        if deadline == self.deadline {
            return;
        }
        self.deadline = deadline;
        self.on_kernel = false;
        let Some(at) = deadline else {
            self.disarm_kernel();
            return;
        };
        if self.arm_kernel(at) {
            self.on_kernel = true;
        } else {
            self.sleep.as_mut().reset(at.into());
        }
    }

    /// Completes once the deadline has passed; pending while there is none.
    /// Cancel-safe.
    pub(crate) async fn wait(&mut self) {
        let Some(at) = self.deadline else {
            return pending().await;
        };
        if self.on_kernel {
            if self.wait_kernel(at).await {
                return;
            }
            // The kernel timer failed and is gone: go on with tokio's.
            self.on_kernel = false;
            self.sleep.as_mut().reset(at.into());
        }
        self.sleep.as_mut().await;
    }

    /// Whether the current deadline is on the kernel timer.
    #[cfg(test)]
    fn is_on_kernel(&self) -> bool {
        self.on_kernel
    }

    /// Arms the kernel timer at `at` if there is one and tokio's clock is
    /// the system's; false if the fallback must be used.
    #[cfg(target_os = "linux")]
    fn arm_kernel(&mut self, at: Instant) -> bool {
        if clock_is_paused() {
            self.disarm_kernel();
            return false;
        }
        if matches!(self.kernel, KernelSlot::NotYet) {
            self.kernel = match kernel::KernelTimer::new() {
                Ok(kernel) => KernelSlot::Ready(kernel),
                Err(error) => {
                    tracing::warn!(%error, "no timerfd; this timer falls back to tokio's (1 ms resolution)");
                    KernelSlot::Unavailable
                }
            };
        }
        let KernelSlot::Ready(kernel) = &mut self.kernel else {
            return false;
        };
        match kernel.arm(at) {
            Ok(()) => true,
            Err(error) => {
                self.kernel_failed(&error);
                false
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn arm_kernel(&mut self, _at: Instant) -> bool {
        false
    }

    #[cfg(target_os = "linux")]
    fn disarm_kernel(&mut self) {
        if let KernelSlot::Ready(kernel) = &mut self.kernel {
            kernel.disarm_quietly();
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn disarm_kernel(&mut self) {}

    /// Waits on the kernel timer for `at`; false if it failed (and was
    /// dropped).
    #[cfg(target_os = "linux")]
    async fn wait_kernel(&mut self, at: Instant) -> bool {
        let KernelSlot::Ready(kernel) = &mut self.kernel else {
            return false;
        };
        match kernel.wait(at).await {
            Ok(()) => true,
            Err(error) => {
                self.kernel_failed(&error);
                false
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    async fn wait_kernel(&mut self, _at: Instant) -> bool {
        false
    }

    /// Drops a kernel timer that failed; the timer uses tokio's from now on.
    #[cfg(target_os = "linux")]
    fn kernel_failed(&mut self, error: &std::io::Error) {
        tracing::warn!(%error, "timerfd failed; this timer falls back to tokio's (1 ms resolution)");
        self.kernel = KernelSlot::Unavailable;
    }
}

/// Whether a [`PreciseTimer`] has its kernel timer.
#[cfg(target_os = "linux")]
#[derive(Debug)]
enum KernelSlot {
    /// Not needed yet: no deadline was set on a running clock.
    NotYet,
    /// Created and working.
    Ready(kernel::KernelTimer),
    /// Creating or using it failed; tokio's timer is used.
    Unavailable,
}

/// Whether tokio's clock is paused: a paused clock reads the same instant
/// twice across a read of the system clock (time only moves when the
/// runtime advances it); a running one moves on.
#[cfg(target_os = "linux")]
fn clock_is_paused() -> bool {
    let first = tokio::time::Instant::now();
    let _ = std::hint::black_box(Instant::now());
    tokio::time::Instant::now() == first
}

/// The `timerfd` behind a [`PreciseTimer`] on Linux.
#[cfg(target_os = "linux")]
mod kernel {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::time::Instant;

    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use nix::time::{clock_gettime, ClockId as Clock};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// A non-blocking `CLOCK_MONOTONIC` timerfd registered with tokio, and
    /// the deadline it is armed at.
    #[derive(Debug)]
    pub(super) struct KernelTimer {
        fd: AsyncFd<Descriptor>,
        /// What the kernel timer is armed at; `None` once it fired (its
        /// expiration read) or was disarmed.
        armed: Option<Instant>,
    }

    /// The timerfd, as tokio's `AsyncFd` wants it (`AsRawFd`).
    #[derive(Debug)]
    struct Descriptor(TimerFd);

    impl AsRawFd for Descriptor {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    impl KernelTimer {
        /// Creates the timerfd and registers it with the current runtime.
        pub(super) fn new() -> io::Result<Self> {
            let fd = TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )?;
            // Deprecated as unsound for a wrapper whose descriptor could be
            // closed or replaced while registered; `Descriptor` owns its
            // timerfd and never gives it up, which is what the safe
            // replacement (`register`, unsafe, forbidden in this crate)
            // would have us promise.
            #[allow(deprecated)]
            let fd = AsyncFd::with_interest(Descriptor(fd), Interest::READABLE)?;
            Ok(Self { fd, armed: None })
        }

        /// Arms the timer at `at` (an instant of the runtime's clock),
        /// replacing any earlier deadline.
        pub(super) fn arm(&mut self, at: Instant) -> io::Result<()> {
            if self.armed == Some(at) {
                return Ok(());
            }
            // The runtime's clock first, the kernel's second: the kernel
            // deadline is then at or a hair after `at`, never before it.
            let now = crate::util::now();
            let kernel_now = clock_gettime(Clock::CLOCK_MONOTONIC)?;
            let kernel_at = kernel_now + TimeSpec::from(at.saturating_duration_since(now));
            self.fd.get_ref().0.set(
                Expiration::OneShot(kernel_at),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            )?;
            self.armed = Some(at);
            Ok(())
        }

        /// Disarms the timer; an error only logged (a stale expiration is
        /// harmless: `wait` re-arms before it waits).
        pub(super) fn disarm_quietly(&mut self) {
            if self.armed.take().is_some() {
                if let Err(error) = self.fd.get_ref().0.unset() {
                    tracing::debug!(%error, "timerfd could not be disarmed");
                }
            }
        }

        /// Completes once the timer armed at `at` expired (arming it again
        /// if it fired for an earlier deadline). Cancel-safe: an expiration
        /// is only consumed by the call that returns.
        pub(super) async fn wait(&mut self, at: Instant) -> io::Result<()> {
            loop {
                if at <= crate::util::now() {
                    return Ok(());
                }
                self.arm(at)?;
                let mut ready = self.fd.readable().await?;
                match ready.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                    Ok(Ok(())) => {
                        self.armed = None;
                        return Ok(());
                    }
                    Ok(Err(error)) => return Err(error),
                    // Not expired (readiness left over from an earlier
                    // deadline): tokio cleared it; wait again.
                    Err(_would_block) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::util::now;

    /// Waits for the timer, or panics if `limit` (far longer than any
    /// deadline the test sets) passes first: a hang guard, not a threshold.
    async fn wait_or_hang(timer: &mut PreciseTimer, limit: Duration) {
        tokio::select! {
            biased;
            () = timer.wait() => {}
            () = tokio::time::sleep(limit) => panic!("the timer did not fire within {limit:?}"),
        }
    }

    const HANG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn fires_at_its_deadline_never_before() {
        let mut timer = PreciseTimer::new();
        let at = now() + Duration::from_millis(3);
        timer.set(Some(at));
        if cfg!(target_os = "linux") {
            assert!(timer.is_on_kernel(), "a running clock uses the timerfd");
        }
        wait_or_hang(&mut timer, HANG).await;
        assert!(now() >= at, "fired before its deadline");
        // Still due: waiting again completes at once.
        wait_or_hang(&mut timer, HANG).await;
    }

    #[tokio::test]
    async fn rearmed_earlier_fires_at_the_new_deadline() {
        let mut timer = PreciseTimer::new();
        timer.set(Some(now() + Duration::from_secs(3600)));
        let earlier = now() + Duration::from_millis(2);
        timer.set(Some(earlier));
        wait_or_hang(&mut timer, HANG).await;
        assert!(now() >= earlier);
    }

    #[tokio::test]
    async fn rearmed_later_does_not_fire_at_the_old_deadline() {
        let mut timer = PreciseTimer::new();
        let first = now() + Duration::from_millis(1);
        timer.set(Some(first));
        let later = now() + Duration::from_millis(20);
        timer.set(Some(later));
        wait_or_hang(&mut timer, HANG).await;
        assert!(now() >= later, "fired at the replaced deadline");
    }

    #[tokio::test]
    async fn rearmed_after_firing_fires_again() {
        let mut timer = PreciseTimer::new();
        for step in 1..=3 {
            let at = now() + Duration::from_millis(step);
            timer.set(Some(at));
            wait_or_hang(&mut timer, HANG).await;
            assert!(now() >= at);
        }
    }

    #[tokio::test]
    async fn a_cancelled_timer_never_fires() {
        let mut timer = PreciseTimer::new();
        let at = now() + Duration::from_millis(1);
        timer.set(Some(at));
        timer.set(None);
        // Well past the cancelled deadline, the timer is still pending.
        let past_it = at + Duration::from_millis(50);
        tokio::select! {
            biased;
            () = timer.wait() => panic!("a cancelled timer fired"),
            () = tokio::time::sleep_until(past_it.into()) => {}
        }
        // And it can be armed again.
        let again = now() + Duration::from_millis(1);
        timer.set(Some(again));
        wait_or_hang(&mut timer, HANG).await;
        assert!(now() >= again);
    }

    #[tokio::test]
    async fn a_wait_cancelled_by_select_loses_nothing() {
        let mut timer = PreciseTimer::new();
        let at = now() + Duration::from_millis(5);
        timer.set(Some(at));
        // Abandon the wait many times before the deadline.
        for _ in 0..5 {
            tokio::select! {
                biased;
                () = tokio::task::yield_now() => {}
                () = timer.wait() => {}
            }
        }
        wait_or_hang(&mut timer, HANG).await;
        assert!(now() >= at);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_uses_tokio_timer_exactly() {
        let mut timer = PreciseTimer::new();
        let start = now();
        let at = start + Duration::from_millis(10);
        timer.set(Some(at));
        assert!(
            !timer.is_on_kernel(),
            "paused time must stay on tokio's timer"
        );
        timer.wait().await;
        assert_eq!(now(), at, "virtual time jumps exactly to the deadline");

        // Re-armed earlier, later, cancelled: all on virtual time.
        timer.set(Some(at + Duration::from_secs(3600)));
        timer.set(Some(at + Duration::from_millis(5)));
        timer.wait().await;
        assert_eq!(now(), at + Duration::from_millis(5));
        timer.set(None);
        tokio::select! {
            biased;
            () = timer.wait() => panic!("a cancelled timer fired"),
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }

    /// How late the timer fires against `tokio::time::sleep_until`, on a
    /// real clock: prints percentiles (docs/BENCHMARKS.md, "Precise timers
    /// in the driver and the impairer"); asserts only that neither fires
    /// before its deadline. A measurement, so not run by default:
    /// `cargo test -p surelink --lib precise_timer -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run on demand"]
    async fn lateness_against_tokio_sleep() {
        const ROUNDS: u64 = 2000;
        let mut timer = PreciseTimer::new();
        let (mut precise, mut wheel) = (Vec::new(), Vec::new());
        for i in 0..ROUNDS {
            // Deadlines 0.5–9.5 ms ahead, spread over the timer wheel's slots.
            let at = now() + Duration::from_micros(500 + (i * 7919) % 9000);
            if i % 2 == 0 {
                timer.set(Some(at));
                timer.wait().await;
                precise.push(now().duration_since(at));
            } else {
                tokio::time::sleep_until(at.into()).await;
                wheel.push(now().duration_since(at));
            }
            assert!(now() >= at, "fired before its deadline");
        }
        for (name, mut late) in [
            ("PreciseTimer", precise),
            ("tokio::time::sleep_until", wheel),
        ] {
            late.sort();
            let at = |q: f64| late[((late.len() - 1) as f64 * q) as usize].as_micros();
            println!(
                "{name}: {} deadlines, late by p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
                late.len(),
                at(0.5),
                at(0.9),
                at(0.99),
                at(1.0)
            );
        }
    }
}
