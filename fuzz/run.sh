#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 20), one after another, and
# fails on the first crash. CI runs it briefly; by hand: bash fuzz/run.sh 600
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
# No sanitizer: the code under test forbids `unsafe`; coverage is what counts.
cargo +nightly fuzz build -s none -O
for target in $(cargo +nightly fuzz list); do
  mkdir -p corpus/"$target"
  echo "fuzz: $target for ${seconds}s"
  cargo +nightly fuzz run -s none -O "$target" corpus/"$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 2>&1 | tail -n 12
done
