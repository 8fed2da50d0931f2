#!/usr/bin/env bash
# Side-by-side load run on loopback: the backend directly, nginx as a plain
# reverse proxy, and the portcullis gateway, each driven by wrk in one run.
# Prints req/s, p99 latency and the proxy's CPU time per request.
#
#   bash benches/load.sh            # 10 s per target, 64 connections
#   DURATION=30 CONNECTIONS=128 bash benches/load.sh
#
# The proxies are pinned to one core (the last), the backend and wrk to the
# others, so "CPU per request" is the proxy's alone. Access logs are off for
# both proxies.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet
BIN=target/release/portcullis

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cores=$(nproc)
proxy_core=$((cores - 1))
other_cores="0-$((cores > 1 ? cores - 2 : 0))"

BACKEND_PORT=$(free_port); NGINX_PORT=$(free_port); GATEWAY_PORT=$(free_port); ADMIN_PORT=$(free_port)
HAPROXY_PORT=$(free_port); AUTH_PORT=$(free_port); AUTH_ADMIN_PORT=$(free_port)
REDIS_PORT=$(free_port); LIMITED_PORT=$(free_port); LIMITED_ADMIN_PORT=$(free_port)
FIXTURES=$PWD/tests/fixtures/jwt

# An RS256 access token from the test fixture key, valid for an hour.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
jwt_header=$(printf '{"alg":"RS256","typ":"JWT","kid":"rsa-a"}' | b64url)
jwt_payload=$(printf '{"iss":"https://sso.example.com","aud":"api","sub":"bench-user","email":"bench@example.com","exp":%d,"iat":%d,"realm_access":{"roles":["orders-reader"]}}' $((now + 3600)) "$now" | b64url)
jwt_signature=$(printf '%s.%s' "$jwt_header" "$jwt_payload" | openssl dgst -sha256 -sign "$FIXTURES/rsa-a.pem" | b64url)
TOKEN="$jwt_header.$jwt_payload.$jwt_signature"
python3 -c "import json; k=json.load(open('$FIXTURES/public-jwks.json')); json.dump({'keys':[k['rsa-a']]}, open('$work/jwks.json','w'))"

nginx_conf() { # name port body
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$2 reuseport;
    $3
  }
}
CONF
}
nginx_conf backend "$BACKEND_PORT" 'location / { return 200 "ok\n"; }'
# nginx sets the same headers the gateway sets, so both do the same work.
nginx_conf proxy "$NGINX_PORT" 'location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; proxy_set_header X-Request-Id $request_id; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host; proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\"$host\""; add_header X-Request-Id $request_id; }'

cat > "$work/gateway.yaml" <<YAML
listeners:
  - { name: plain, address: '127.0.0.1:$GATEWAY_PORT' }
admin: { address: '127.0.0.1:$ADMIN_PORT' }
server: { threads: 1, access_log: false }
upstreams:
  backend: { targets: [ '127.0.0.1:$BACKEND_PORT' ] }
routes:
  - { name: all, upstream: backend }
YAML

cat > "$work/gateway-auth.yaml" <<YAML
listeners:
  - { name: plain, address: '127.0.0.1:$AUTH_PORT' }
admin: { address: '127.0.0.1:$AUTH_ADMIN_PORT' }
server: { threads: 1, access_log: false }
identity:
  providers:
    - { name: sso, issuer: 'https://sso.example.com', jwks_file: '$work/jwks.json', audiences: [api], roles_claim: realm_access.roles }
  headers: { X-User-Id: sub, X-User-Email: email, X-User-Roles: realm_access.roles }
upstreams:
  backend: { targets: [ '127.0.0.1:$BACKEND_PORT' ] }
routes:
  - { name: all, upstream: backend, auth: { mode: required, roles_any: [orders-reader] } }
YAML

# A Redis-backed limit on every request (high enough never to refuse):
# the cost of one Redis round trip per request.
cat > "$work/gateway-limited.yaml" <<YAML
listeners:
  - { name: plain, address: '127.0.0.1:$LIMITED_PORT' }
admin: { address: '127.0.0.1:$LIMITED_ADMIN_PORT' }
server: { threads: 1, access_log: false }
redis: { url: 'redis://127.0.0.1:$REDIS_PORT' }
rate_limits: { store: redis, on_redis_error: fail_closed }
upstreams:
  backend: { targets: [ '127.0.0.1:$BACKEND_PORT' ] }
routes:
  - { name: all, upstream: backend, rate_limits: [ { key: client_ip, rate: 100000000/s } ] }
YAML

# HAProxy verifies the same token on every request (it has no cache) and
# sets the same headers.
cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option forwardfor
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  http-request deny unless { req.hdr(authorization) -m found }
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny unless { var(txn.alg) -m str RS256 }
  http-request deny unless { var(txn.bearer),jwt_verify(txn.alg,"$FIXTURES/rsa-a.pub.pem") -m int 1 }
  http-request set-header X-User-Id %[var(txn.bearer),jwt_payload_query('\$.sub')]
  http-request set-header X-Request-Id %[uuid]
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:$BACKEND_PORT
CFG

taskset -c "$other_cores" "$NGINX" -p "$work/backend" -c "$work/backend/nginx.conf" & pids+=($!)
taskset -c "$proxy_core" "$NGINX" -p "$work/proxy" -c "$work/proxy/nginx.conf" & nginx_pid=$!; pids+=($nginx_pid)
RUST_LOG=warn taskset -c "$proxy_core" "$BIN" gateway -c "$work/gateway.yaml" >/dev/null 2>"$work/gateway.err" & gateway_pid=$!; pids+=($gateway_pid)
RUST_LOG=warn taskset -c "$proxy_core" "$BIN" gateway -c "$work/gateway-auth.yaml" >/dev/null 2>"$work/gateway-auth.err" & auth_pid=$!; pids+=($auth_pid)
taskset -c "$proxy_core" haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 & haproxy_pid=$!; pids+=($haproxy_pid)
taskset -c "$other_cores" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & pids+=($!)
sleep 0.3
RUST_LOG=warn taskset -c "$proxy_core" "$BIN" gateway -c "$work/gateway-limited.yaml" >/dev/null 2>"$work/gateway-limited.err" & limited_pid=$!; pids+=($limited_pid)

for port in "$BACKEND_PORT" "$NGINX_PORT" "$GATEWAY_PORT" "$AUTH_PORT" "$HAPROXY_PORT" "$LIMITED_PORT"; do
  for _ in $(seq 100); do
    curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/" >/dev/null && break
    sleep 0.1
  done
done
for port in "$AUTH_PORT" "$HAPROXY_PORT"; do
  # Both must refuse a request without the token, or the comparison is void.
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")
  [ "$code" = 401 ] || [ "$code" = 403 ] || { echo "port $port accepted a request without token ($code)"; exit 1; }
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # label port pid [header]
  local before after out rps p99 reqs cpu_us
  [ -n "$3" ] && before=$(cpu_ticks "$3")
  out=$(taskset -c "$other_cores" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency ${4:+-H "$4"} "http://127.0.0.1:$2/")
  [ -n "$3" ] && after=$(cpu_ticks "$3")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  if [ -n "$3" ]; then
    cpu_us=$(python3 -c "print(f'{($after - $before) / $hz * 1e6 / $reqs:.1f}')")
  else
    cpu_us="-"
  fi
  printf '%-22s %12s %10s %16s  %s\n' "$1" "$rps" "$p99" "$cpu_us" "$errors"
}

echo "loopback, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, proxies pinned to core $proxy_core ($(nproc) cores), $(date -u +%FT%TZ)"
printf '%-22s %12s %10s %16s\n' target req/s p99 "proxy CPU us/req"
run "backend (direct)" "$BACKEND_PORT" ""
run "nginx reverse proxy" "$NGINX_PORT" "$nginx_pid"
run "portcullis gateway" "$GATEWAY_PORT" "$gateway_pid"
run "haproxy + jwt_verify" "$HAPROXY_PORT" "$haproxy_pid" "Authorization: Bearer $TOKEN"
run "portcullis + JWT/RBAC" "$AUTH_PORT" "$auth_pid" "Authorization: Bearer $TOKEN"
run "portcullis + Redis limit" "$LIMITED_PORT" "$limited_pid"
