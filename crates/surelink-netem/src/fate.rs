//! What a link did with a packet: [`Fate`] and [`DropReason`].
//!
//! [`Link::send`](crate::Link::send) returns a `Fate` for every packet, so a
//! test can see directly why a packet never arrived or when it will.

use std::fmt;
use std::time::Instant;

/// Why a link dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Independent random loss (`loss`).
    Loss,
    /// Gilbert-Elliott burst loss (`burst`).
    Burst,
    /// The link was cut (schedule or on-demand).
    Cut,
    /// The bottleneck queue was full (tail drop).
    QueueFull,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::Loss => "loss",
            DropReason::Burst => "burst loss",
            DropReason::Cut => "link cut",
            DropReason::QueueFull => "queue full",
        })
    }
}

/// The fate of one packet handed to [`Link::send`](crate::Link::send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fate {
    /// The packet will never be delivered.
    Dropped(DropReason),
    /// The packet will be delivered, possibly twice.
    Scheduled {
        /// When the packet becomes deliverable.
        deliver_at: Instant,
        /// When the duplicate becomes deliverable, if the packet was duplicated.
        duplicate_at: Option<Instant>,
        /// Whether the packet was held back so that later packets may overtake it.
        reordered: bool,
    },
}

impl Fate {
    /// Whether the packet was dropped.
    pub fn is_dropped(&self) -> bool {
        matches!(self, Fate::Dropped(_))
    }

    /// Why the packet was dropped, if it was.
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self {
            Fate::Dropped(reason) => Some(*reason),
            Fate::Scheduled { .. } => None,
        }
    }

    /// When the (first copy of the) packet becomes deliverable, if it was not dropped.
    pub fn deliver_at(&self) -> Option<Instant> {
        match self {
            Fate::Dropped(_) => None,
            Fate::Scheduled { deliver_at, .. } => Some(*deliver_at),
        }
    }

    /// Whether the packet was duplicated.
    pub fn is_duplicated(&self) -> bool {
        matches!(
            self,
            Fate::Scheduled {
                duplicate_at: Some(_),
                ..
            }
        )
    }
}
