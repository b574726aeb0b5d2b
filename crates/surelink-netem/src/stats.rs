//! Counters kept by a link: [`LinkStats`].
//!
//! A [`Link`](crate::Link) updates its stats on every
//! [`send`](crate::Link::send) and [`poll_deliver`](crate::Link::poll_deliver);
//! read them with [`Link::stats`](crate::Link::stats).

use std::fmt;

/// Counters for one direction of a link. All counts are packets unless named
/// `bytes_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LinkStats {
    /// Packets handed to `send`.
    pub sent: u64,
    /// Packets handed out by `poll_deliver`, duplicates included.
    pub delivered: u64,
    /// Packets dropped by independent random loss.
    pub dropped_loss: u64,
    /// Packets dropped by the Gilbert-Elliott burst model.
    pub dropped_burst: u64,
    /// Packets dropped because the link was cut.
    pub dropped_cut: u64,
    /// Packets tail-dropped at a full bottleneck queue.
    pub dropped_queue: u64,
    /// Extra copies scheduled by duplication.
    pub duplicated: u64,
    /// Packets held back so that later packets may overtake them.
    pub reordered: u64,
    /// Bytes handed to `send` (dropped packets included).
    pub bytes_in: u64,
    /// Bytes handed out by `poll_deliver` (duplicates included).
    pub bytes_out: u64,
}

impl LinkStats {
    /// All dropped packets, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_burst + self.dropped_cut + self.dropped_queue
    }

    /// Packets (duplicates included) scheduled but not yet delivered.
    pub fn in_flight(&self) -> u64 {
        (self.sent + self.duplicated).saturating_sub(self.dropped() + self.delivered)
    }
}

impl fmt::Display for LinkStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent={} delivered={} dropped(loss={} burst={} cut={} queue={}) duplicated={} reordered={} bytes_in={} bytes_out={}",
            self.sent,
            self.delivered,
            self.dropped_loss,
            self.dropped_burst,
            self.dropped_cut,
            self.dropped_queue,
            self.duplicated,
            self.reordered,
            self.bytes_in,
            self.bytes_out
        )
    }
}
