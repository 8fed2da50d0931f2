#!/usr/bin/env bash
# The soak: mixed traffic against the gateway for SOAK_SECONDS (default 30
# minutes) on loopback — bearer tokens and a browser session from the SSO,
# a rate-limited route, a flapping upstream, gRPC, WebSocket, a reload every
# 30 s — then RSS over time, requests, errors and p99 as a table
# (target/soak/summary.md) and a plot (target/soak/soak.png).
#
#   bash benches/soak.sh                 # 30 minutes
#   SOAK_SECONDS=120 bash benches/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v gnuplot >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null
fi

out=$PWD/target/soak
mkdir -p "$out"
# The test binary drives the traffic (it reuses the integration tests'
# backends, SSO and browser); release builds, as in production.
SOAK_SECONDS=${SOAK_SECONDS:-1800} SOAK_OUT=$out \
  cargo test --release --test it soak -- --ignored --nocapture --test-threads 1

# Requests per second between samples, for the middle panel.
awk -F, 'NR > 1 { if (t != "") print $1 "," ($3 - r) / ($1 - t); t = $1; r = $3 }' \
  "$out/soak.csv" > "$out/rate.csv"
gnuplot <<PLOT
set terminal pngcairo size 1200,800 font ",11"
set output "$out/soak.png"
set datafile separator ","
set key autotitle columnhead
set multiplot layout 3,1 title "portcullis soak: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
set xlabel "seconds"
set ylabel "RSS (MiB)"
set yrange [0:*]
plot "$out/soak.csv" using 1:2 with lines lw 2 title "gateway RSS"
set ylabel "requests/s"
plot "$out/rate.csv" using 1:2 with lines lw 2 title "requests/s"
set ylabel "p99 (ms)"
plot "$out/soak.csv" using 1:6 with lines lw 2 title "p99 latency (5 s windows)"
unset multiplot
PLOT
cat "$out/summary.md"
echo "plot: $out/soak.png"
