#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each with libFuzzer.
# Works on stable Rust (coverage instrumentation through LLVM flags); with a
# nightly toolchain and cargo-fuzz installed, `cargo fuzz run TARGET` works too.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
targets=${TARGETS:-"packet connection handshake decrypt"}
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$triple" --target-dir target/cov
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "== $t ($secs s)"
  "target/cov/$triple/release/$t" -max_total_time="$secs" -artifact_prefix="artifacts/$t/" "corpus/$t" 2>&1 | tail -n 2
done
