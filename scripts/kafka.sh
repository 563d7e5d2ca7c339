#!/usr/bin/env bash
# Gathers the Apache Kafka broker the tests start (the version in
# scripts/kafka/pom.xml) from Maven Central into a per-machine cache, once:
# later runs find it there and do not touch the registry. Installs Java 17
# and Maven first when missing. Prints the jar folder on its last line
# (tests read it from KAFKA_LIBS).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")
cache=${KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mesos-gelf/apache-kafka-$version}
if [ ! -f "$cache/complete" ] || ! cmp -s "$here/kafka/pom.xml" "$cache/pom.xml"; then
  need=()
  command -v java >/dev/null || need+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || need+=(maven)
  if [ ${#need[@]} -gt 0 ]; then
    echo "kafka: installing ${need[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
  fi
  echo "kafka: gathering Apache Kafka $version's jars into $cache" >&2
  rm -rf "$cache"
  mkdir -p "$cache"
  cp "$here/kafka/pom.xml" "$cache/pom.xml"
  (cd "$cache" && mvn -B -q -f pom.xml dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory=libs >&2)
  ls "$cache/libs/kafka_2.13-$version.jar" >/dev/null
  touch "$cache/complete"
fi
java -version 2>&1 | head -n 1 >&2
echo "$cache/libs"
