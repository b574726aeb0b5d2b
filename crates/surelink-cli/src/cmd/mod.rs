//! The subcommands, one module each.

pub mod completions;
pub mod demo;
pub mod impair;
pub mod keygen;
pub mod perf;
pub mod recv;
pub mod send;
pub mod time;
