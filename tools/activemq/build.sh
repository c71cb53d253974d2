#!/usr/bin/env bash
# Builds the ActiveMQ 5 adapter (mirrorlog-activemq.jar, with the shared Java
# client of tools/java/client inside) and the JMS test and bench tool
# (mirrorlog-amqtool.jar) with javac against Debian's jars; no Maven.
#   tools/activemq/build.sh [OUT_DIR]      (default: target/activemq)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../target/activemq}"
J=/usr/share/java
need=("$J/activeio-core.jar" "$J/activemq-broker.jar" "$J/activemq-client.jar" "$J/activemq-jdbc-store.jar" "$J/geronimo-jms_1.1_spec.jar")
for f in "${need[@]}"; do
  [ -f "$f" ] || { echo "build.sh: $f missing: apt-get install activemq" >&2; exit 2; }
done
cp="$(IFS=:; echo "${need[*]}"):$J/slf4j-api.jar"
rm -rf "$out/classes" "$out/toolclasses"
mkdir -p "$out/classes" "$out/toolclasses"
javac --release 11 -Xlint:all,-options,-removal,-deprecation -Werror -d "$out/classes" -cp "$cp" \
  $(find "$here/src/io/mirrorlog/activemq" "$here/../java/client/src/main/java" -name '*.java')
jar --create --file "$out/mirrorlog-activemq.jar" -C "$out/classes" .
javac --release 11 -Xlint:all,-options -Werror -d "$out/toolclasses" -cp "$cp" \
  $(find "$here/src/io/mirrorlog/amqtool" -name '*.java')
jar --create --file "$out/mirrorlog-amqtool.jar" -C "$out/toolclasses" .
echo "$out/mirrorlog-activemq.jar"
