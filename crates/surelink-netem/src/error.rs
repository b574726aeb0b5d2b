//! The error type of the crate.
//!
//! Every way a configuration or a spec string can be rejected is a variant of
//! [`NetemError`]. Nothing in this crate panics on bad input: constructors,
//! [`LinkConfig::validate`](crate::LinkConfig::validate), the spec parser and
//! [`parse_duration`](crate::parse_duration) return these errors instead.

use std::time::Duration;

/// Why a configuration, a spec string or a value in one was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NetemError {
    /// A probability was not a number in `0..=1`.
    #[error("`{name}` must be a probability in 0..=1, got {value}")]
    InvalidProbability {
        /// Which setting held the probability (e.g. `loss`, `burst.p_bad_to_good`).
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A bottleneck rate of zero bits per second was configured.
    #[error("`rate` must be greater than 0 bit/s")]
    ZeroRate,
    /// A bottleneck queue limit of zero bytes was configured.
    #[error("`queue` must be greater than 0 bytes")]
    ZeroQueue,
    /// A duration was longer than [`MAX_DURATION`](crate::MAX_DURATION).
    #[error("`{name}` of {value:?} is longer than the maximum of {max:?}")]
    DurationTooLong {
        /// Which setting held the duration.
        name: &'static str,
        /// The rejected value.
        value: Duration,
        /// The largest accepted duration.
        max: Duration,
    },
    /// Reordering was enabled with a zero `reorder_delay`, which would reorder nothing.
    #[error("`reorder` is {reorder} but `reorder-delay` is zero: held-back packets would not be overtaken")]
    ReorderWithoutDelay {
        /// The configured reorder probability.
        reorder: f64,
    },
    /// A flap was configured with a zero period.
    #[error("flap period must be greater than zero")]
    ZeroFlapPeriod,
    /// A flap's down time was longer than its period.
    #[error("flap down time {down:?} is longer than its period {period:?}")]
    FlapDownExceedsPeriod {
        /// The flap period.
        period: Duration,
        /// The down time within each period.
        down: Duration,
    },
    /// A duration string could not be parsed.
    #[error("invalid duration `{input}`: {reason}")]
    InvalidDuration {
        /// The rejected text.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A spec item was not of the form `key=value`.
    #[error("expected `key=value` in impairment spec, got `{item}`")]
    MissingValue {
        /// The offending item.
        item: String,
    },
    /// A spec named a key this crate does not know.
    #[error("unknown impairment key `{key}` (known: loss, burst, delay, jitter, reorder, reorder-delay, dup, rate, queue, cut-at, cut-for, flap)")]
    UnknownKey {
        /// The unknown key.
        key: String,
    },
    /// A spec gave the same key more than once.
    #[error("impairment key `{key}` given more than once")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// A spec value could not be parsed for its key.
    #[error("invalid value `{value}` for `{key}`: {reason}")]
    InvalidValue {
        /// The key the value belongs to.
        key: String,
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A spec's `cut-at` and `cut-for` keys did not come in pairs.
    #[error("unpaired cut in impairment spec: {reason}")]
    UnpairedCut {
        /// What is missing or repeated.
        reason: &'static str,
    },
}
