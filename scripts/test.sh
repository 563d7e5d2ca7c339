#!/usr/bin/env bash
# README's test command: installs what the tests need, then runs them all
# (unit, integration against a real tansu broker, C++ bridge driver),
# plus fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
TANSU_BIN=$(scripts/setup.sh | tail -n 1)
export TANSU_BIN
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
log=$(mktemp)
set +e
cargo test --release -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
