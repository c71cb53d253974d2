#!/usr/bin/env bash
# Starts an embedded ActiveMQ 6.3.1 broker on the mirrorlog adapter in the
# foreground (io.mirrorlog.activemq6.Launcher), for machines without ActiveMQ
# 6's distribution and for the broker crash tests:
#   tools/activemq6/start-broker.sh BASE_DIR [-Dkey=value ...]
# with -Dmirrorlog.endpoints=A:7400,B:7400 -Dmirrorlog.journal=NAME
# -Dmirrorlog.durability=local|remote-received|remote-durable
# -Dactivemq.port=61616 -Dactivemq.name=NAME. BASE_DIR holds the broker's own
# directory (temporary spooling of non-persistent messages only).
# Build first: mvn -f tools/java/pom.xml -DskipTests install (test.sh does it).
# The script execs java, so its pid is the broker's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 1 ] || { sed -n '2,11p' "$0"; exit 2; }
base="$(mkdir -p "$1" && cd "$1" && pwd)"; shift
target="$here/../java/activemq6/target"
cp_file="$target/launch-classpath.txt"
jar="$(ls "$target"/mirrorlog-activemq6-*.jar 2>/dev/null | grep -v -- -tests | head -1)"
[ -f "$cp_file" ] && [ -n "$jar" ] || { echo "start-broker.sh: build first: mvn -f tools/java/pom.xml -DskipTests install" >&2; exit 2; }
exec java ${ACTIVEMQ_OPTS:--Xms256M -Xmx1G} -Dactivemq.data="$base/data" \
  -Dlog4j2.configurationFile="$here/log4j2.properties" "$@" \
  -cp "$jar:$(cat "$cp_file")" io.mirrorlog.activemq6.Launcher
