#!/usr/bin/env bash
# ActiveMQ 6 throughput with 1 KiB persistent sends and a consumer running
# (docs/benchmarks.md, "ActiveMQ 6 on mirrorlog"): stock KahaDB (one copy,
# one disk), the mirrorlog adapter with two local file mirrors (`local`),
# and with a replica site too (`remote-durable`: two mirrors on each of two
# sites); 1, 8 and 64 producers on their own connections, interleaved in
# rounds. Then, unless --no-restart: heap per pending message and broker
# restart time with --pending messages of 1 KiB left in a queue.
#   tools/activemq6/bench.sh [--messages N] [--rounds R] [--pending P] [--data DIR] [--no-restart]
#        [--configs "kahadb local%0us remote-durable%0us"] [--producers "1 8 64"] [--keep]
# At exit the appliances' devices and the brokers' data are deleted (the
# logs stay) unless --keep.
# A configuration name may end in @W: the adapter's appendsOnWire = W
# (e.g. "remote-durable@1 remote-durable@4"; default 1). It may then end
# in %D: the appliances' --idle-poll D (e.g. "remote-durable%0us"; default
# the daemon's, 1ms). The default configurations turn idle polling off, as
# docs/daemon.md says for a node whose cores run other work: here the
# appliances share the broker's and its clients' cores. "memory" is
# ActiveMQ's in-heap store, with no durability: the ceiling any store can
# reach with this load generator on this machine.
# Each line ends with the CPU seconds the run took: the broker's, the
# appliances' and the machine's (all processes, the JMS clients' JVMs
# starting and the consumer's idle wait at the end included).
# Needs `cargo build --release`, Maven (the adapter) and the activemq
# package (ActiveMQ's JMS client of tools/activemq/amqtool.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
messages=20000 rounds=2 pending=1000000 data=/tmp/mirrorlog-amq6-bench restart=1
configs="kahadb local%0us remote-durable%0us" producers="1 8 64" keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) messages="$2"; shift 2;;
    --rounds) rounds="$2"; shift 2;;
    --pending) pending="$2"; shift 2;;
    --data) data="$2"; shift 2;;
    --no-restart) restart=0; shift;;
    --configs) configs="$2"; shift 2;;
    --producers) producers="$2"; shift 2;;
    --keep) keep=1; shift;;
    *) sed -n '2,25p' "$0"; exit 2;;
  esac
done
bin="$root/target/release"
[ -x "$bin/mirrorlogd" ] || { echo "bench.sh: cargo build --release first" >&2; exit 2; }
mvn -B -q -DskipTests -f "$root/tools/java/pom.xml" install
build="$root/target/activemq"
"$root/tools/activemq/build.sh" "$build" >/dev/null
export MIRRORLOG_AMQTOOL_JAR="$build/mirrorlog-amqtool.jar"
amq="$root/tools/activemq/amqtool.sh"
pids=()
cleanup() { # stops what it started; drops the appliances' device files (GiBs per run), keeps the logs
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ "$keep" = 1 ] || rm -rf "$data"/*/a "$data"/*/b "$data"/*/broker/data
}
trap cleanup EXIT

. "$here/../wait-log.sh"

start_ml() { # dir size args... (a replica is ready only once its primary bootstrapped it: no wait)
  local dir="$1" size="$2"; shift 2
  mkdir -p "$dir"
  "$bin/mirrorlogd" --data-dir "$dir" --device-size "$size" "$@" >"$dir.log" 2>&1 &
  pids+=($!)
  case " $* " in *" replica "*) ;; *) wait_log "$dir.log" "server: ready";; esac
}

start_broker() { # name props...
  local name="$1"; shift
  ACTIVEMQ_OPTS="-Xms1G -Xmx1G" "$here/start-broker.sh" "$data/$name/broker" -Dactivemq.port=61696 "$@" \
    >>"$data/$name/broker.log" 2>&1 &
  broker_pid=$!
  pids+=($broker_pid)
  wait_log "$data/$name/broker.log" " started, writer epoch "
}

stop_broker() {
  kill -9 "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true
}

ticks() { # pid... -> user+system clock ticks of those processes (all threads)
  local t=0 p s
  for p in "$@"; do
    s="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
    s="${s##*) }"; set -- $s
    t=$(( t + ${12} + ${13} ))
  done
  echo "$t"
}
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }
secs() { echo "scale=2; $1 / $(getconf CLK_TCK)" | bc; }

measure() { # name producers -> one line
  local name="$1" p="$2" q="bench$RANDOM"
  local appliances=() x
  for x in "${pids[@]}"; do [ "$x" = "$broker_pid" ] || appliances+=("$x"); done
  local b0 a0 m0
  b0="$(ticks "$broker_pid")" a0="$(ticks "${appliances[@]}")" m0="$(machine_ticks)"
  "$amq" consume --url tcp://127.0.0.1:61696 --queue "$q" --idle-ms 3000 --out "$data/$name/consumed" >/dev/null 2>&1 &
  local cpid=$!
  local r
  r="$("$amq" produce --url tcp://127.0.0.1:61696 --queue "$q" --count "$messages" --producers "$p" --size 1024 2>/dev/null | tail -1)"
  wait "$cpid" || true
  local b1 a1 m1
  b1="$(ticks "$broker_pid")" a1="$(ticks "${appliances[@]}")" m1="$(machine_ticks)"
  echo "$name producers=$p $r consumed=$(wc -l <"$data/$name/consumed")" \
    "cpu_broker=$(secs $((b1 - b0))) cpu_appliances=$(secs $((a1 - a0))) cpu_machine=$(secs $((m1 - m0)))"
}

setup() { # name[@W][%D] -> broker running
  local name="$1" w=1 poll=()
  case "$name" in *%*) poll=(--idle-poll "${name#*%}");; esac
  case "${name%\%*}" in *@*) w="${name%\%*}"; w="${w#*@}";; esac
  mkdir -p "$data/$name"
  case "$name" in
    kahadb) start_broker kahadb -Dactivemq.store=kahadb;;
    memory) start_broker memory -Dactivemq.store=memory;;
    local*)
      start_ml "$data/$name/a" 1GiB --listen 127.0.0.1:7486 --metrics off "${poll[@]}"
      start_broker "$name" -Dmirrorlog.endpoints=127.0.0.1:7486 -Dmirrorlog.durability=local -Dmirrorlog.appendsOnWire="$w";;
    remote-durable*)
      start_ml "$data/$name/b" 1GiB --listen 127.0.0.1:7487 --metrics off --role replica --peer 127.0.0.1:7496 --repl-listen 127.0.0.1:7497 "${poll[@]}"
      start_ml "$data/$name/a" 1GiB --listen 127.0.0.1:7486 --metrics off --role primary --peer 127.0.0.1:7497 --repl-listen 127.0.0.1:7496 "${poll[@]}"
      wait_log "$data/$name/b.log" "server: ready"
      start_broker "$name" -Dmirrorlog.endpoints=127.0.0.1:7486,127.0.0.1:7487 -Dmirrorlog.durability=remote-durable \
        -Dmirrorlog.appendsOnWire="$w";;
    *) echo "bench.sh: unknown configuration $name" >&2; exit 2;;
  esac
}

teardown() {
  stop_broker
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

rm -rf "$data"; mkdir -p "$data"
echo "# $(date -u +%F) $(nproc) CPUs; $messages messages of 1 KiB per run, a consumer running; data in $data"
for round in $(seq 1 "$rounds"); do
  for name in $configs; do
    rm -rf "${data:?}/$name"
    setup "$name"
    for p in $producers; do
      echo "round=$round $(measure "$name" "$p")"
    done
    teardown
  done
done

[ "$restart" = 1 ] || exit 0
# Heap per pending message and restart time: $pending messages left in a
# queue of a `local` broker; then the broker is restarted (SIGKILL) and the
# time to serve again and the heap after a full GC are read.
name=pending
rm -rf "${data:?}/$name"; mkdir -p "$data/$name"
start_ml "$data/$name/a" 4GiB --listen 127.0.0.1:7486 --metrics off
start_broker "$name" -Dmirrorlog.endpoints=127.0.0.1:7486 -Dmirrorlog.durability=local
heap() { # -> used heap bytes after a full GC
  jcmd "$broker_pid" GC.run >/dev/null
  jcmd "$broker_pid" GC.heap_info | awk '/total/ {for (i=1;i<=NF;i++) if ($i ~ /used/) {v=$(i+1); sub(/K,?/,"",v); print v*1024; exit}}'
}
base_heap="$(heap)"
"$amq" produce --url tcp://127.0.0.1:61696 --queue pending --count "$pending" --producers 64 --size 1024 2>/dev/null | tail -1
full_heap="$(heap)"
stop_broker
mkdir -p "$data/$name-restart"
t0=$(date +%s.%N)
start_broker "$name-restart" -Dmirrorlog.endpoints=127.0.0.1:7486 -Dmirrorlog.durability=local
t1=$(date +%s.%N)
restart_heap="$(heap)"
echo "pending=$pending heap_before=$base_heap heap_full=$full_heap heap_after_restart=$restart_heap" \
  "bytes_per_pending_message=$(( (restart_heap - base_heap) / pending ))" \
  "restart_seconds=$(echo "$t1 - $t0" | bc)"
grep "records replayed" "$data/$name-restart/broker.log" | tail -1
