#!/usr/bin/env bash
# Quick start: installs what the build needs if missing, builds, and runs the
# gateway on config/examples/quickstart.yaml (no external service needed).
#   curl -i localhost:8080/healthz           # proxied to the admin listener
#   curl -s localhost:8080/gateway/metrics   # /gateway stripped, admin /metrics
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v cmake >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
fi
cargo build --release
exec target/release/portcullis gateway -c "${1:-config/examples/quickstart.yaml}"
