#!/usr/bin/env bash
# The SSO's directory at 100,000 users, on SQLite and on PostgreSQL (a
# server started here in a temporary directory): the admin API walking
# every page of the user list (100 per page) and searching, timed per
# request by curl; and password logins (the legacy password grant through
# wrk, argon2id per login) for throughput and p99. A table goes to stdout
# and target/bench/directory.md.
#
#   bash benches/directory.sh              # 100,000 users, 10 s of logins
#   USERS=20000 DURATION=5 bash benches/directory.sh
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-100000}
DURATION=${DURATION:-10}
PAGE=${PAGE:-100}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v psql >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
pgbin=$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")

cargo build --release --quiet
BIN=$PWD/target/release/portcullis
mkdir -p target/bench
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"; else "$@"; fi; }

# PostgreSQL in a temporary directory.
PGPORT=$(free_port)
mkdir -p "$work/pg"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$work/pg"
as_postgres "$pgbin/initdb" -D "$work/pg/data" -U portcullis --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
as_postgres "$pgbin/postgres" -D "$work/pg/data" -p "$PGPORT" -h 127.0.0.1 -k "$work/pg" -c fsync=off >/dev/null 2>&1 &
pids+=($!)
PGURL="postgres://portcullis@127.0.0.1:$PGPORT/postgres"
for _ in $(seq 1 100); do psql "$PGURL" -qAtc 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done

SECRET=bench-secret-$RANDOM$RANDOM
SECRET_HASH=$(printf '%s\n' "$SECRET" | "$BIN" sso hash-password)
PASSWORD=bench-password-$RANDOM
PASSWORD_HASH=$(printf '%s\n' "$PASSWORD" | "$BIN" sso hash-password)

results="| directory | users | list page p50 | list page p99 | list page max | search p50 | logins/s | login p99 |
|---|---|---|---|---|---|---|---|"

for backend in sqlite postgres; do
  dir="$work/$backend"
  mkdir -p "$dir"
  port=$(free_port)
  directory=""
  [ "$backend" = postgres ] && directory="directory: { url: '$PGURL' }"
  cat > "$dir/sso.yaml" <<YAML
issuer: http://127.0.0.1:$port/sso
listen: 127.0.0.1:$port
keys: { dir: keys }
login: { max_failures: 1000000 }
$directory
clients:
  - { client_id: ops, type: confidential, secret_hash: '$SECRET_HASH', roles: [sso-admin], grant_types: [client_credentials, password] }
YAML
  "$BIN" sso migrate -c "$dir/sso.yaml" >/dev/null
  # 100,000 users with one role each, in one statement per table.
  if [ "$backend" = sqlite ]; then
    python3 - "$dir/directory.db" "$USERS" "$PASSWORD_HASH" <<'PY'
import sqlite3, sys
db, n, hash_ = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = sqlite3.connect(db)
c.executemany("INSERT INTO users (id, username, email, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, 0, 0)",
              ((f"id{i}", f"user{i:06d}", f"user{i:06d}@example.com", hash_) for i in range(n)))
c.executemany("INSERT INTO user_roles (user_id, role) VALUES (?, 'member')", ((f"id{i}",) for i in range(n)))
c.commit()
PY
  else
    psql "$PGURL" -qAtc "INSERT INTO users (id, username, email, password_hash, created_at, updated_at)
      SELECT 'id' || g, 'user' || lpad(g::text, 6, '0'), 'user' || lpad(g::text, 6, '0') || '@example.com', '$PASSWORD_HASH', 0, 0
      FROM generate_series(0, $USERS - 1) g;
      INSERT INTO user_roles (user_id, role) SELECT 'id' || g, 'member' FROM generate_series(0, $USERS - 1) g;
      ANALYZE;" >/dev/null
  fi
  "$BIN" sso -c "$dir/sso.yaml" >/dev/null 2>"$dir/sso.err" &
  pids+=($!)
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/sso/jwks" >/dev/null 2>&1 && break; sleep 0.1; done
  token=$(curl -fs -u "ops:$SECRET" -d grant_type=client_credentials "http://127.0.0.1:$port/sso/token" \
    | sed 's/.*"access_token":"\([^"]*\)".*/\1/')

  # Every page of the list, in order.
  : > "$dir/pages.txt"
  after=""
  while :; do
    out=$(curl -fs -w '\n%{time_total}' -H "Authorization: Bearer $token" \
      "http://127.0.0.1:$port/sso/admin/users?limit=$PAGE&after=$after")
    echo "$out" | tail -1 >> "$dir/pages.txt"
    next=$(echo "$out" | head -1 | python3 -c 'import json,sys; print(json.load(sys.stdin).get("next") or "")')
    [ -z "$next" ] && break
    after=$next
  done
  pages=$(wc -l < "$dir/pages.txt")
  : > "$dir/search.txt"
  for i in $(seq 1 50); do
    curl -fs -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $token" \
      "http://127.0.0.1:$port/sso/admin/users?search=user0$((RANDOM % 99999))&limit=$PAGE" >> "$dir/search.txt"
  done
  stats() {
    python3 -c 'import sys
t = sorted(float(l) * 1000 for l in open(sys.argv[1]) if l.strip())
q = lambda p: t[min(len(t) - 1, int(len(t) * p))]
print(f"{q(0.5):.1f} ms|{q(0.99):.1f} ms|{t[-1]:.1f} ms")' "$1"
  }
  IFS='|' read -r p50 p99 max <<< "$(stats "$dir/pages.txt")"
  IFS='|' read -r s50 _ _ <<< "$(stats "$dir/search.txt")"

  # Password logins (argon2id each), spread over the users.
  cat > "$dir/login.lua" <<LUA
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $(printf 'ops:%s' "$SECRET" | base64 -w0)"
request = function()
  counter = counter + 1
  local body = string.format("grant_type=password&username=user%06d&password=$PASSWORD&scope=openid", counter % $USERS)
  return wrk.format(nil, nil, nil, body)
end
done = function(summary, latency, requests)
  io.write(string.format("non-2xx: %d\n", summary.errors.status))
end
LUA
  login=$(wrk -t2 -c8 -d"${DURATION}s" --latency -s "$dir/login.lua" "http://127.0.0.1:$port/sso/token")
  rps=$(echo "$login" | awk '/Requests\/sec/ {print $2}')
  lp99=$(echo "$login" | awk '/ 99%/ {print $2}')
  bad=$(echo "$login" | awk '/non-2xx/ {print $2}')
  [ "$bad" = 0 ] || { echo "$backend: $bad logins failed"; cat "$dir/sso.err" | tail -5; exit 1; }
  results="$results
| $backend | $USERS | $p50 | $p99 | $max | $s50 | $rps | $lp99 |"
  echo "$backend: $pages pages walked"
done

{
  echo "# Directory at $USERS users ($(date -u +%Y-%m-%d), $(nproc) cores)"
  echo
  echo "$results"
} | tee target/bench/directory.md
