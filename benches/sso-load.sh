#!/usr/bin/env bash
# Client-credentials token issuance over HTTP: wrk posting
# `grant_type=client_credentials` with Basic client authentication to a
# release `portcullis sso` on loopback. Prints tokens/s, p99 latency and the
# SSO's CPU time per token, with the verified-secret cache (every request
# after the first skips argon2) and without it (a new client secret per
# connection is not possible with wrk; the argon2 cost per login is the
# `login/argon2id password check` figure of `cargo bench --bench sso`).
#
#   bash benches/sso-load.sh          # 10 s, 16 connections
#   DURATION=30 CONNECTIONS=64 bash benches/sso-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
command -v wrk >/dev/null 2>&1 || {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}

cargo build --release --quiet
BIN=$PWD/target/release/portcullis

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SECRET=bench-secret-$RANDOM$RANDOM
HASH=$(printf '%s\n' "$SECRET" | "$BIN" sso hash-password)
cat > "$work/sso.yaml" <<YAML
issuer: http://127.0.0.1:$PORT/sso
listen: 127.0.0.1:$PORT
keys: { dir: keys, algorithm: ES256 }
clients:
  - { client_id: billing, type: confidential, secret_hash: '$HASH', scopes: [orders.read], audience: [orders-api] }
YAML
"$BIN" sso -c "$work/sso.yaml" >/dev/null 2>"$work/sso.err" &
pid=$!
for _ in $(seq 1 50); do
  curl -fs "http://127.0.0.1:$PORT/sso/jwks" >/dev/null 2>&1 && break
  sleep 0.1
done

basic=$(printf 'billing:%s' "$SECRET" | base64 -w0)
cat > "$work/cc.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=orders.read"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $basic"
done = function(summary, latency, requests)
  io.write(string.format("non-2xx: %d\n", summary.errors.status))
end
LUA

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
before=$(cpu_ticks "$pid")
out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/cc.lua" "http://127.0.0.1:$PORT/sso/token")
after=$(cpu_ticks "$pid")
requests=$(echo "$out" | awk '/requests in/ {print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
p99=$(echo "$out" | awk '/ 99%/ {print $2}')
errors=$(echo "$out" | awk '/non-2xx/ {print $2}')
cpu_us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
echo "client_credentials (ES256, cached secret check): $rps tokens/s, p99 $p99, $cpu_us µs CPU/token, non-2xx $errors"
