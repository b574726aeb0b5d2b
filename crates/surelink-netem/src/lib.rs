//! A seeded, deterministic, sans-IO network impairment model.
//!
//! `surelink-netem` models one direction of an impaired network path as a
//! state machine that is *fed* and *polled*, in the same style as the
//! protocol core:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use surelink_netem::{Fate, Link, LinkConfig};
//!
//! let config: LinkConfig = "loss=2%,delay=10ms,jitter=1ms".parse().unwrap();
//! let start = Instant::now(); // any instant; the link never reads a clock
//! let mut link = Link::new(config, 42, start).unwrap();
//!
//! // input: a packet leaves the sender at `now`
//! let fate = link.send(start, 3, b"abc".to_vec());
//! if let Fate::Scheduled { deliver_at, .. } = fate {
//!     assert!(deliver_at >= start + Duration::from_millis(10));
//! }
//!
//! // output: everything due by `now`, in delivery-time order
//! let later = start + Duration::from_millis(20);
//! while let Some(packet) = link.poll_deliver(later) {
//!     assert_eq!(packet, b"abc");
//! }
//! // when to poll next
//! assert_eq!(link.next_delivery(), None);
//! ```
//!
//! Time is an input: every method that depends on time takes the caller's
//! `now`, and the link never reads a clock, so a whole network can run on a
//! virtual clock in a test. Randomness comes from a [`rand_chacha::ChaCha8Rng`]
//! seeded with the caller's `u64` seed: the same seed and the same inputs give
//! the same outputs, on every platform.
//!
//! The pieces, one per module:
//!
//! - [`LinkConfig`] (module `config`): what impairments to apply, with
//!   [`LinkConfig::validate`] and builder helpers.
//! - [`GilbertElliott`] (module `loss`): the two-state burst-loss model.
//! - [`CutSchedule`] (module `schedule`): planned link cuts and flapping.
//! - [`Link`] (module `link`): one impaired direction; [`Duplex`] (module
//!   `duplex`) pairs two of them.
//! - [`Fate`] and [`DropReason`] (module `fate`): what happened to a packet.
//! - [`LinkStats`] (module `stats`): counters.
//! - Spec strings (module `spec`) and units (module `units`): the
//!   `loss=2%,delay=10ms,...` syntax used on the command line, with
//!   [`parse_duration`] reused by the CLI.
//! - [`NetemError`] (module `error`): everything that can be rejected.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod delivery;
mod duplex;
mod error;
mod fate;
mod instant;
mod link;
mod loss;
mod rate;
mod schedule;
mod seed;
mod spec;
mod stats;
mod units;

pub use config::{LinkConfig, MAX_DURATION};
pub use delivery::Delivery;
pub use duplex::Duplex;
pub use error::NetemError;
pub use fate::{DropReason, Fate};
pub use link::Link;
pub use loss::GilbertElliott;
pub use schedule::{Cut, CutSchedule, Flap};
pub use seed::splitmix64;
pub use stats::LinkStats;
pub use units::{format_duration, parse_duration, parse_rate};
