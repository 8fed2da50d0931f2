#!/usr/bin/env bash
# The test command (README): installs what is missing, then formatting,
# clippy with -D warnings, and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
# pingora's dependency tree builds zlib-ng with cmake.
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
# The JWT tests sign with a 1024-bit key through openssl; the OpenID
# Provider tests run panva/oidc-provider on Node.js.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Rate-limit tests start and kill their own redis-server.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The docs portal is rendered by a real headless browser.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# The SSO's directory is tested on a real PostgreSQL (initdb + postgres into
# a temporary directory; Debian keeps them in /usr/lib/postgresql/*/bin).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
# A third-party OpenAPI validator checks the merged documents.
python3 -c 'import openapi_spec_validator' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore openapi-spec-validator

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Every example config must pass `portcullis check` (also a test in tests/it/cli.rs).
for example in config/examples/*.yaml deploy/compose-gateway.yaml; do
  case "$example" in *sso*) continue ;; esac
  cargo run --quiet -- check -c "$example"
done
# The SSO example takes its hashes from the environment, as in production.
BILLING_SECRET_HASH=$(echo ci-only-secret | cargo run --quiet -- sso hash-password) \
ALICE_PASSWORD_HASH=$(echo ci-only-password | cargo run --quiet -- sso hash-password) \
  cargo run --quiet -- sso check -c config/examples/sso.yaml

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --all-targets: unit and integration tests, and each benchmark run once as a test.
set +e
cargo test --workspace --all-targets 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The slow suites, briefly: a 30-second soak (benches/soak.sh runs it for
# 30 minutes) and every fuzz target for 20 s (fuzz/run.sh 600 by hand).
if [ "$status" -eq 0 ]; then
  set +e
  SOAK_SECONDS=30 SOAK_OUT=target/soak cargo test --test it soak -- --ignored 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
  set -e
fi
if [ "$status" -eq 0 ]; then
  set +e
  bash fuzz/run.sh "${FUZZ_SECONDS:-20}" 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
  set -e
fi
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')
echo "Total: $passed passed, $failed failed"
exit "$status"
