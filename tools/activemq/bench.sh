#!/usr/bin/env bash
# ActiveMQ throughput with 1 KiB persistent sends (docs/benchmarks.md):
# stock KahaDB (one copy, one disk), then mirrorlog as the broker's journal
# with two local file mirrors (`local`), then with a replica site too
# (`remote-durable`), each with 1 and 8 producers on their own connections.
#   tools/activemq/bench.sh [--messages N] [--data DIR] [--only kahadb|local|remote-durable]
# Needs `cargo build --release` and the activemq package. The long-term store
# under the journal is embedded Derby in DIR.
#   tools/activemq/bench.sh --activemq6 [ARGS]
# runs ActiveMQ 6's benchmark instead (tools/activemq6/bench.sh ARGS: the
# journal-only adapter, no database).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ "${1:-}" = "--activemq6" ] && { shift; exec "$here/../activemq6/bench.sh" "$@"; }
root="$here/../.."
messages=20000 data=/tmp/mirrorlog-amq-bench only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) messages="$2"; shift 2;;
    --data) data="$2"; shift 2;;
    --only) only="$2"; shift 2;;
    *) sed -n '2,11p' "$0"; exit 2;;
  esac
done
bin="$root/target/release"
[ -x "$bin/mirrorlogd" ] || { echo "bench.sh: cargo build --release first" >&2; exit 2; }
build="$root/target/activemq"
"$here/build.sh" "$build" >/dev/null
export MIRRORLOG_ACTIVEMQ_JAR="$build/mirrorlog-activemq.jar" MIRRORLOG_AMQTOOL_JAR="$build/mirrorlog-amqtool.jar"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

. "$here/../wait-log.sh"

run_broker() { # name config props...
  local name="$1" config="$2"; shift 2
  local base="$data/$name/broker"
  mkdir -p "$data/$name"
  "$here/start-broker.sh" "$base" "$config" -Dactivemq.port=61690 "$@" >"$data/$name/broker.log" 2>&1 &
  pids+=($!)
  wait_log "$data/$name/broker.log" ") started" 600
  for p in 1 8; do
    local r
    r="$("$here/amqtool.sh" produce --url tcp://127.0.0.1:61690 --queue "bench$p" --count "$messages" --producers "$p" --size 1024 2>/dev/null | tail -1)"
    echo "$name producers=$p $r"
  done
  kill -9 "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
}

start_ml() { # dir args...
  local dir="$1"; shift
  mkdir -p "$dir"
  "$bin/mirrorlogd" --data-dir "$dir" "$@" >"$dir.log" 2>&1 &
  pids+=($!)
  ml_pid=$!
}

rm -rf "$data"; mkdir -p "$data"
echo "# $(date -u +%F) $(nproc) CPUs; $messages messages of 1 KiB per run; data in $data"
if [ -z "$only" ] || [ "$only" = kahadb ]; then
  mkdir -p "$data/kahadb"
  run_broker kahadb "$here/conf/activemq-kahadb.xml"
fi
if [ -z "$only" ] || [ "$only" = local ]; then
  mkdir -p "$data/local"
  start_ml "$data/local/a" --listen 127.0.0.1:7480 --metrics off
  wait_log "$data/local/a.log" "server: ready" 600
  run_broker local "$here/conf/activemq-mirrorlog.xml" -Dmirrorlog.endpoints=127.0.0.1:7480 -Dmirrorlog.durability=local
  kill -9 "$ml_pid"; wait "$ml_pid" 2>/dev/null || true
fi
if [ -z "$only" ] || [ "$only" = remote-durable ]; then
  mkdir -p "$data/remote"
  start_ml "$data/remote/b" --listen 127.0.0.1:7481 --metrics off --role replica --peer 127.0.0.1:7490 --repl-listen 127.0.0.1:7491
  start_ml "$data/remote/a" --listen 127.0.0.1:7480 --metrics off --role primary --peer 127.0.0.1:7491 --repl-listen 127.0.0.1:7490
  wait_log "$data/remote/a.log" "server: ready" 600
  wait_log "$data/remote/b.log" "server: ready" 600
  run_broker remote-durable "$here/conf/activemq-mirrorlog.xml" -Dmirrorlog.endpoints=127.0.0.1:7480,127.0.0.1:7481 -Dmirrorlog.durability=remote-durable
fi
