//! Recycled message buffers: the large buffers of packed batches and of
//! messages rebuilt from fragments go back to their connection when they are
//! let go, and the next one reuses them.
//!
//! Such a buffer is allocated on one thread and freed on another: a
//! `MessageBatch` is filled by the application and freed by the driver once
//! acknowledged; a rebuilt message is filled by the driver and freed by the
//! application. At the rate of a saturating sender of small messages (a
//! 64 KiB batch every few microseconds) the allocator gave the top of its
//! heaps back to the system on those frees and took it again on the next
//! allocations, a page fault for every 4 KiB written: about a tenth of the
//! CPU per message in the small-message benchmark (docs/BENCHMARKS.md,
//! "Small messages: packed batches"). Recycled, the memory stays mapped.
//!
//! Only buffers from [`MIN_RECYCLED_LEN`] to [`MAX_RECYCLED_LEN`] are
//! kept (smaller ones the allocator serves without going to the system),
//! and the free buffers of each end of a connection are bounded in bytes
//! ([`RECYCLE_BUDGET`], small next to its send buffer and receive window);
//! a connection that never moves messages of 32 KiB or more keeps none.
//! They are freed when the connection stops asking for them (see
//! [`Recycler::decay`], called on its heartbeats), and with the connection.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Smallest buffer that is recycled.
pub(crate) const MIN_RECYCLED_LEN: usize = 32 << 10;

/// Largest buffer that is recycled.
pub(crate) const MAX_RECYCLED_LEN: usize = 256 << 10;

/// Most bytes of free buffers one [`Recycler`] keeps. A sender's or
/// receiver's buffers come back in bursts (an acknowledgement of many
/// batches, an application catching up on many), so a handful is not
/// enough: with 4 buffers the page faults did not fall.
pub(crate) const RECYCLE_BUDGET: usize = 2 << 20;

/// Free buffers and the sum of their capacities.
#[derive(Debug, Default)]
struct Free {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
    /// Buffers of a recycled size asked for since the last decay.
    asked: u64,
}

impl Free {
    /// Keeps `buf`, emptied, if it is small enough and the budget allows.
    fn give_back(&mut self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if (MIN_RECYCLED_LEN..=MAX_RECYCLED_LEN).contains(&capacity)
            && self.bytes + capacity <= RECYCLE_BUDGET
        {
            buf.clear();
            self.bytes += capacity;
            self.buffers.push(buf);
        }
    }
}

/// A connection's free buffers, shared with the messages that will give
/// theirs back (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Recycler {
    free: Arc<Mutex<Free>>,
}

impl Recycler {
    /// The free buffers, whatever a panicking holder left (a buffer list
    /// has no invariant a panic could break).
    fn free(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty buffer with room for `len` bytes: a free one if one is
    /// large enough, else a new one, made up to an eighth larger than asked
    /// so that buffers of about the same size (packed batches cut at a byte
    /// count) fit each other's uses.
    pub(crate) fn buffer(&self, len: usize) -> Vec<u8> {
        if !(MIN_RECYCLED_LEN..=MAX_RECYCLED_LEN).contains(&len) {
            return Vec::with_capacity(len);
        }
        let reused = {
            let mut free = self.free();
            free.asked += 1;
            let fitting = free.buffers.iter().position(|b| b.capacity() >= len);
            fitting.map(|i| {
                let buf = free.buffers.swap_remove(i);
                free.bytes -= buf.capacity();
                buf
            })
        };
        reused.unwrap_or_else(|| {
            let granule = (len.next_power_of_two() / 8).max(4096);
            Vec::with_capacity(len.next_multiple_of(granule))
        })
    }

    /// Frees the free buffers if none was asked for since the last call, so
    /// that a connection that stopped moving large messages gives their
    /// memory back by its second call; a busy one keeps them.
    pub(crate) fn decay(&self) {
        let idle = {
            let mut free = self.free();
            if std::mem::take(&mut free.asked) > 0 {
                return;
            }
            free.bytes = 0;
            std::mem::take(&mut free.buffers)
        };
        drop(idle);
    }

    /// Bytes of free buffers kept.
    pub(crate) fn kept(&self) -> usize {
        self.free().bytes
    }

    /// Keeps the buffer of `bytes` if nothing else holds it.
    pub(crate) fn reclaim(&self, bytes: Bytes) {
        if let Ok(buf) = bytes.try_into_mut() {
            self.free().give_back(buf.into());
        }
    }

    /// `buf`, complete, as shared bytes that give the buffer back once
    /// every part of them is dropped.
    pub(crate) fn share(&self, buf: Vec<u8>) -> Bytes {
        if !(MIN_RECYCLED_LEN..=MAX_RECYCLED_LEN).contains(&buf.capacity()) {
            return Bytes::from(buf);
        }
        Bytes::from_owner(Recycled {
            buf,
            free: Arc::downgrade(&self.free),
        })
    }
}

/// The owner of a shared buffer: gives it back to its [`Recycler`], if that
/// is still there, when the last part of the bytes is dropped.
struct Recycled {
    buf: Vec<u8>,
    free: Weak<Mutex<Free>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        if let Some(free) = self.free.upgrade() {
            let buf = std::mem::take(&mut self.buf);
            free.lock()
                .unwrap_or_else(|e| e.into_inner())
                .give_back(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_buffer_is_reused_once_every_part_of_it_is_dropped_and_not_before() {
        let r = Recycler::default();
        let mut first = r.buffer(40_000);
        let at = first.as_ptr();
        first.extend_from_slice(&[1; 40_000]);
        let message = r.share(first);
        let part = message.slice(10..20);
        drop(message);
        let second = r.buffer(40_000);
        assert_ne!(second.as_ptr(), at, "a part of the first buffer is held");
        drop(part);
        let third = r.buffer(35_000);
        assert_eq!(third.as_ptr(), at, "the first buffer, given back");
        assert!(third.is_empty() && third.capacity() >= 35_000);
        let fourth = r.buffer(40_000);
        assert_ne!(fourth.as_ptr(), at, "in use again");
    }

    #[test]
    fn free_buffers_are_freed_once_none_is_asked_for_between_two_decays() {
        let r = Recycler::default();
        drop(r.share(r.buffer(40_000)));
        let kept = r.kept();
        assert!(kept >= 40_000);
        r.decay();
        assert_eq!(r.kept(), kept, "asked for since the last decay");
        r.decay();
        assert_eq!(r.kept(), 0, "nothing asked for: freed");
        drop(r.share(r.buffer(40_000)));
        r.decay();
        drop(r.buffer(1_000));
        r.decay();
        assert_eq!(r.kept(), 0, "small buffers do not count as asked for");
    }

    #[test]
    fn bytes_held_elsewhere_are_not_reclaimed() {
        let r = Recycler::default();
        let mut buf = r.buffer(50_000);
        buf.extend_from_slice(&[2; 50_000]);
        let at = buf.as_ptr();
        let bytes = Bytes::from(buf);
        let held = bytes.clone();
        r.reclaim(bytes);
        let other = r.buffer(50_000);
        assert_ne!(other.as_ptr(), at, "still held");
        r.reclaim(held);
        let reused = r.buffer(50_000);
        assert_eq!(reused.as_ptr(), at, "given back whole");
    }

    #[test]
    fn free_buffers_stay_within_the_budget_and_only_mid_sized_ones_are_kept() {
        let r = Recycler::default();
        let held: Vec<Bytes> = (0..2 * RECYCLE_BUDGET / 60_000)
            .map(|_| r.share(r.buffer(60_000)))
            .chain([
                r.share(r.buffer(MAX_RECYCLED_LEN + 1)),
                r.share(r.buffer(MIN_RECYCLED_LEN - 1)),
            ])
            .collect();
        drop(held);
        let free = r.free();
        assert!(free.bytes <= RECYCLE_BUDGET && free.bytes > RECYCLE_BUDGET / 2);
        assert_eq!(
            free.bytes,
            free.buffers.iter().map(Vec::capacity).sum::<usize>()
        );
        assert!(free
            .buffers
            .iter()
            .all(|b| (MIN_RECYCLED_LEN..=MAX_RECYCLED_LEN).contains(&b.capacity())));
    }
}
