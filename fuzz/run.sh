#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) with cargo-fuzz (libFuzzer).
# cargo-fuzz needs nightly features; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them.
# Crashes land in fuzz/artifacts/<target>/; turn each into a regression test before fixing it.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in classify unescape patterns zip_check config; do
  echo "== $target (${seconds}s)"
  cargo fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 2>&1 | tail -n 3
done
