#!/usr/bin/env bash
# Merge the largest sample set (figma 3.1 + openai 3.1, 3.3 MB of YAML; the
# set every tool accepts: Redocly's join needs one OpenAPI version) with
# `portcullis openapi merge`, `@redocly/cli join` and `openapi-merge-cli`,
# in one run, best of RUNS wall-clock times each.
#   bash benches/openapi-merge.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SAMPLES=${SAMPLES:-../shared/openapi-samples}
[ -d "$SAMPLES" ] || { echo "no samples at $SAMPLES"; exit 1; }
SAMPLES=$(cd "$SAMPLES" && pwd)

cargo build --release --quiet
npm ci --prefix benches/openapi-tools --no-audit --no-fund --loglevel=error
tools=benches/openapi-tools/node_modules/.bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/merge-config.json" <<JSON
{ "inputs": [
    { "inputFile": "$SAMPLES/figma.oas3.1.yaml", "pathModification": { "prepend": "/figma" } },
    { "inputFile": "$SAMPLES/openai.oas3.1.yaml", "pathModification": { "prepend": "/openai" } } ],
  "output": "$work/omc.json" }
JSON

best() { # label command...
  local label=$1; shift
  local best_ms=999999999
  for _ in $(seq "$RUNS"); do
    local start end ms
    start=$(date +%s%N)
    "$@" >/dev/null 2>&1 || { echo "$label failed"; return 1; }
    end=$(date +%s%N)
    ms=$(( (end - start) / 1000000 ))
    (( ms < best_ms )) && best_ms=$ms
  done
  printf '%-28s %8d ms\n' "$label" "$best_ms"
  echo "$best_ms" > "$work/$label.ms"
}

echo "merging figma.oas3.1.yaml + openai.oas3.1.yaml, best of $RUNS, $(nproc) cores, $(date -u +%FT%TZ)"
best portcullis target/release/portcullis openapi merge \
  figma=/figma="$SAMPLES/figma.oas3.1.yaml" openai=/openai="$SAMPLES/openai.oas3.1.yaml" -o "$work/ours.json"
best redocly "$tools/redocly" join "$SAMPLES/figma.oas3.1.yaml" "$SAMPLES/openai.oas3.1.yaml" \
  --prefix-components-with-info-prop title --prefix-tags-with-info-prop title -o "$work/redocly.yaml"
best openapi-merge-cli "$tools/openapi-merge-cli" --config "$work/merge-config.json"
ours=$(cat "$work/portcullis.ms")
fastest=$(cat "$work/redocly.ms" "$work/openapi-merge-cli.ms" | sort -n | head -1)
python3 -c "print(f'portcullis is {max($fastest,1)/max($ours,1):.1f}x faster than the fastest other tool')"
