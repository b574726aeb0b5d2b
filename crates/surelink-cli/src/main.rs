//! The `surelink` command-line tool (in progress).
fn main() {}
