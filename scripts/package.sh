#!/usr/bin/env bash
# Builds the release tarball
#   target/package/mesos-gelf-logger-<version>-mesos-<mesos version>-linux-x86_64.tar.gz
# against a Mesos install, found as build.rs finds it: MESOS_HOME, or
# MESOS_CXXFLAGS, or MESOS_LAB (a lab from ../shared/mesos-lab, whose
# mesos-flags.sh is sourced). Prints the tarball's path on its last line.
#   scripts/package.sh             build (cargo build --release --features mesos), then pack
#   scripts/package.sh --no-build  pack what target/release holds
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MESOS_CXXFLAGS:-}" ] && [ -z "${MESOS_HOME:-}" ] && [ -n "${MESOS_LAB:-}" ]; then
  # shellcheck disable=SC1091
  . "$MESOS_LAB/mesos-flags.sh"
fi
if [ "${1:-}" != "--no-build" ]; then
  cargo build --release --features mesos
fi
so=target/release/libmesos_gelf_logger.so
bin=target/release/mesos-gelf
# After `cargo test` alone the library may be only in deps/ (the newest wins).
if [ target/release/deps/libmesos_gelf_logger.so -nt "$so" ] || [ ! -f "$so" ]; then
  so=target/release/deps/libmesos_gelf_logger.so
fi
nm -D --defined-only "$so" | grep -q ' org_mesos_gelf_GelfContainerLogger$' \
  || { echo "package: $so has no module symbol (built without Mesos?)" >&2; exit 2; }
# The Mesos version the shim was compiled against, as build.rs reads it.
hpp=""
for f in ${MESOS_HOME:+-I$MESOS_HOME/include} ${MESOS_CXXFLAGS:-}; do
  case "$f" in -I*|-isystem*) d=${f#-I}; d=${d#-isystem}; [ -f "$d/mesos/version.hpp" ] && hpp="$d/mesos/version.hpp" ;; esac
done
[ -n "$hpp" ] || { echo "package: no mesos/version.hpp under MESOS_HOME or MESOS_CXXFLAGS" >&2; exit 2; }
mesos_version=$(sed -n 's/^#define MESOS_VERSION "\(.*\)"$/\1/p' "$hpp")
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
name=mesos-gelf-logger-$version-mesos-$mesos_version-linux-$(uname -m)
stage=target/package/$name
rm -rf "$stage" "target/package/$name.tar.gz"
mkdir -p "$stage"/{lib,bin,etc,systemd,marathon}
# Without the debug info the release profile keeps for profiling.
strip --strip-debug -o "$stage/lib/libmesos_gelf_logger.so" "$so"
strip --strip-debug -o "$stage/bin/mesos-gelf" "$bin"
strip --strip-debug -o "$stage/bin/mesos-gelf-companion" target/release/mesos-gelf-companion
"$bin" parameters --modules-json --library /usr/lib/mesos/modules/libmesos_gelf_logger.so > "$stage/etc/modules.json"
{ echo "# mesos-gelf-logger $version parameters"; echo; "$bin" parameters; } > "$stage/etc/PARAMETERS.md"
cp packaging/mesos-gelf-forward.service "$stage/systemd/"
cp packaging/mesos-gelf-forward.marathon.json "$stage/marathon/mesos-gelf-forward.json"
cp packaging/INSTALL.md "$stage/"
tar -czf "target/package/$name.tar.gz" -C target/package "$name"
echo "target/package/$name.tar.gz"
