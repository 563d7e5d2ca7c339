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
cargo test --release -- --test-threads=2
