//! CPU time from `getrusage`: of this process (every system that runs
//! in-process, both ends of the connection) or of the waited-for child
//! processes (SRT's tools).

use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeValLike;

/// Whose CPU time to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This process, all threads.
    Process,
    /// Child processes that have exited and been waited for.
    Children,
}

/// User plus system CPU seconds used so far by `scope`.
pub fn seconds(scope: Scope) -> f64 {
    let who = match scope {
        Scope::Process => UsageWho::RUSAGE_SELF,
        Scope::Children => UsageWho::RUSAGE_CHILDREN,
    };
    match getrusage(who) {
        Ok(usage) => {
            let micros =
                usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
            micros as f64 / 1e6
        }
        // getrusage cannot fail for these arguments on Linux.
        Err(_) => f64::NAN,
    }
}
