#!/usr/bin/env bash
# README's test command: installs what the tests need, then runs them all
# (unit, integration against a real tansu broker and again against Apache
# Kafka, C++ bridge driver, and,
# when a Mesos install is configured, the module in a real agent), plus
# fmt and clippy.
#
# Mesos: MESOS_LAB (a lab built by ../shared/mesos-lab/setup.sh), or the
# lab's default place $HOME/mesos-lab. Found: the module is built against
# it (its mesos-flags.sh) and tests/agent.rs runs master + agent + tasks.
# Not found: those tests say "agent tests SKIPPED" and nothing else changes.
set -euo pipefail
cd "$(dirname "$0")/.."
TANSU_BIN=$(scripts/setup.sh | tail -n 1)
export TANSU_BIN
# Apache Kafka's jars (cached per machine after the first run).
KAFKA_LIBS=$(scripts/kafka.sh | tail -n 1)
export KAFKA_LIBS
features=(--features fault-injection)
lab=${MESOS_LAB:-$HOME/mesos-lab}
if [ -x "$lab/bin/mesos-agent" ] && [ -f "$lab/mesos-flags.sh" ]; then
  export MESOS_LAB=$lab
  # shellcheck disable=SC1091
  . "$lab/mesos-flags.sh"
  features+=(--features mesos)
  echo "agent tests: against the Mesos lab in $MESOS_LAB"
else
  unset MESOS_LAB
  echo "agent tests SKIPPED: no Mesos found, see README (set MESOS_LAB)"
fi
cargo fmt --all -- --check
cargo clippy --release "${features[@]}" --all-targets -- -D warnings
log=$(mktemp)
set +e
cargo test --release "${features[@]}" --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The tests whose broker is `support::Broker` once more, against Apache
# Kafka (one KRaft node per test) instead of tansu; tests/cluster.rs runs
# three-node Apache Kafka clusters in the first pass already.
echo "again against Apache Kafka: kafka, stall, forward, accounting"
BROKER=apache-kafka cargo test --release "${features[@]}" --no-fail-fast \
  --test kafka --test stall --test forward --test accounting -- --test-threads=2 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
grep -q "agent tests SKIPPED" "$log" && echo "(agent tests SKIPPED: no Mesos found)"
rm -f "$log"
exit "$status"
