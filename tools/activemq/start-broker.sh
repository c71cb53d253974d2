#!/usr/bin/env bash
# Starts Debian's ActiveMQ 5 (package activemq) in the foreground with a
# given configuration, outside the Debian instance layout:
#   tools/activemq/start-broker.sh BASE_DIR [CONFIG_XML] [-Dkey=value ...]
# BASE_DIR gets conf/ (the config and log4j.properties), data/ and lib/ (the
# mirrorlog adapter and the JDBC drivers, which the broker puts on its class
# path). CONFIG_XML defaults to conf/activemq-mirrorlog.xml next to this
# script. -D options set the ${…} properties of the config, e.g.
#   -Dmirrorlog.endpoints=10.0.0.1:7400,10.0.1.1:7400 -Dmirrorlog.durability=remote-durable
# The adapter jar comes from MIRRORLOG_ACTIVEMQ_JAR, or is built with build.sh.
# The script execs java, so its pid is the broker's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 1 ] || { sed -n '2,13p' "$0"; exit 2; }
base="$(mkdir -p "$1" && cd "$1" && pwd)"; shift
config="$here/conf/activemq-mirrorlog.xml"
if [ $# -ge 1 ] && [[ "$1" != -D* ]]; then config="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; shift; fi
[ -f /usr/share/activemq/bin/activemq.jar ] || { echo "start-broker.sh: apt-get install activemq" >&2; exit 2; }
jar="${MIRRORLOG_ACTIVEMQ_JAR:-}"
if [ -z "$jar" ]; then
  jar="$("$here/build.sh" | tail -1)"
fi
mkdir -p "$base/conf" "$base/data" "$base/lib"
cp "$config" "$base/conf/activemq.xml"
cp "$here/conf/log4j.properties" "$base/conf/log4j.properties"
ln -sf "$jar" "$base/lib/mirrorlog-activemq.jar"
for j in derby derbytools postgresql; do
  [ -f "/usr/share/java/$j.jar" ] && ln -sf "/usr/share/java/$j.jar" "$base/lib/$j.jar"
done
exec java ${ACTIVEMQ_OPTS:--Xms512M -Xmx512M} \
  --add-reads=java.xml=java.logging \
  --add-opens java.base/java.security=ALL-UNNAMED \
  --add-opens java.base/java.net=ALL-UNNAMED \
  --add-opens java.base/java.lang=ALL-UNNAMED \
  --add-opens java.base/java.util=ALL-UNNAMED \
  --add-opens java.naming/javax.naming.spi=ALL-UNNAMED \
  --add-opens java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED \
  --add-opens java.base/java.util.concurrent=ALL-UNNAMED \
  --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED \
  -Dactivemq.home=/usr/share/activemq \
  -Dactivemq.base="$base" \
  -Dactivemq.conf="$base/conf" \
  -Dactivemq.data="$base/data" \
  -Dlog4j.configuration="file:$base/conf/log4j.properties" \
  -Dderby.stream.error.file="$base/derby.log" \
  "$@" \
  -jar /usr/share/activemq/bin/activemq.jar start "xbean:file:$base/conf/activemq.xml"
