#!/usr/bin/env bash
# Quick start: installs what the build needs if missing, builds, and runs
# `portcullis demo` — the gateway and the SSO together on loopback, with
# generated credentials printed at start (no external service needed).
#   bash deploy/quickstart.sh                  # the demo
#   bash deploy/quickstart.sh my-gateway.yaml  # the gateway on a config
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v cmake >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
fi
cargo build --release
if [ $# -gt 0 ]; then
  exec target/release/portcullis gateway -c "$1"
fi
exec target/release/portcullis demo
