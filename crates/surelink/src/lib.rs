//! The surelink tokio runtime (in progress).
