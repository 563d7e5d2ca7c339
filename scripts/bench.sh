#!/usr/bin/env bash
# Prints the benchmark table (README "Performance"): installs the broker if
# needed, then `cargo bench`. Takes about two minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
TANSU_BIN=$(scripts/setup.sh | tail -n 1)
export TANSU_BIN
cargo bench --bench pipeline
# Scale: 1,000 containers with real companions on one publisher.
cargo bench --bench pipeline -- scale1000 1000
# The end-to-end pairs (bare producer against the whole pipeline) against
# one Apache Kafka node too, each pair on a fresh broker.
KAFKA_LIBS=$(scripts/kafka.sh | tail -n 1)
export KAFKA_LIBS
BROKER=apache-kafka cargo bench --bench pipeline -- e2e 5
