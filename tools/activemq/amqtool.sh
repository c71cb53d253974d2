#!/usr/bin/env bash
# Runs the JMS producer/consumer (src/io/mirrorlog/amqtool/AmqTool.java):
#   tools/activemq/amqtool.sh produce --url tcp://127.0.0.1:61616 --queue Q --count 10000 [--producers 8] [--size 1024] [--acked FILE]
#   tools/activemq/amqtool.sh consume --url tcp://127.0.0.1:61616 --queue Q --out FILE [--idle-ms 5000]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
jar="${MIRRORLOG_AMQTOOL_JAR:-$here/../../target/activemq/mirrorlog-amqtool.jar}"
[ -f "$jar" ] || "$here/build.sh" >/dev/null
L=/usr/share/activemq/lib
exec java -Xmx512M -cp "$jar:$L/activemq-client.jar:$L/geronimo-jms_1.1_spec.jar:$L/geronimo-j2ee-management-1.1-spec.jar:$L/slf4j-api.jar:$L/hawtbuf.jar" \
  io.mirrorlog.amqtool.AmqTool "$@"
