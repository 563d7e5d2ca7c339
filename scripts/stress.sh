#!/usr/bin/env bash
# Runs README's test command N times (default 10) beside a CPU hog (one busy
# loop per core), to find tests that depend on timing. Reports each run's
# result and the failing tests; exits non-zero if any run failed.
#   scripts/stress.sh [N] [extra cargo test args...]
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
shift || true
hogs=()
for _ in $(seq "$(nproc)"); do
  ( while :; do :; done ) &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
failed=0
for i in $(seq "$n"); do
  log=$(mktemp)
  start=$(date +%s)
  scripts/test.sh "$@" >"$log" 2>&1
  rc=$?
  summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  echo "run $i/$n: exit $rc in $(( $(date +%s) - start )) s: ${summary:-no summary}"
  if [ "$rc" -ne 0 ]; then
    failed=$((failed + 1))
    grep -E '^test .* FAILED$|^    [a-z_0-9]+$' "$log" | sed 's/^/    /' | sort -u
    cp "$log" "stress-run-$i.log"
    echo "    full log: stress-run-$i.log"
  fi
  rm -f "$log"
done
echo "$failed of $n runs failed"
[ "$failed" -eq 0 ]
