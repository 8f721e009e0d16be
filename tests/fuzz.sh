#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60) and prints a
# table of runs per target: the device models (devices/fuzz) and the
# parsers of hostile input (fuzz/: agent messages, image manifests, the
# layer unpacker, snapshot state files). Installs cargo-fuzz when missing.
# A crash fails the run and leaves its input under the workspace's
# artifacts/.
# Usage: tests/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz >&2
export RUSTC_BOOTSTRAP=1
rows=() failed=0
for ws in devices/fuzz fuzz; do
  for t in $(cd "$ws" && cargo fuzz list); do
    log=$(mktemp)
    if (cd "$ws" && cargo fuzz run -O "$t" -- -max_total_time="$secs" -rss_limit_mb=4096) > "$log" 2>&1; then
      rc=ok
    else
      rc=CRASH; failed=$((failed + 1)); tail -40 "$log" >&2
    fi
    runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | awk '{print $2}')
    rows+=("| $ws | $t | ${runs:-?} | $rc |")
    rm -f "$log"
  done
done
echo "| workspace | target | runs in ${secs}s | result |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
[ "$failed" = 0 ]
