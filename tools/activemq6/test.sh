#!/usr/bin/env bash
# Builds the ActiveMQ 6 adapter with Maven (from Maven Central) and runs its
# tests: ActiveMQ's own store tests (from its published test jars) against a
# mirrorlogd this script starts on two file mirrors in a temporary folder.
#   tools/activemq6/test.sh [-Dtest=Pattern] [other Maven arguments]
# MIRRORLOGD: the daemon binary (default: target/debug/mirrorlogd, built if missing).
# The tests reach it directly, and through a mirrorlog-faultproxy (the one
# next to MIRRORLOGD, built if missing) for those that slow it down.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${MIRRORLOGD:-$root/target/debug/mirrorlogd}"
[ -x "$bin" ] || (cd "$root" && cargo build --bin mirrorlogd)
work="$(mktemp -d)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Each journal holds at least one segment, and the tests make dozens of
# journals: 8 MiB segments (256 per mirror) instead of the default 64 MiB
# (32, which dozens of journals fill: `full`).
cat > "$work/mirrorlogd.toml" <<EOF
[storage]
devices = ["$work/m0.dev", "$work/m1.dev"]
device_size = "2GiB"
segment_size = "8MiB"

[[journal]]
name = "default"
EOF
"$bin" -c "$work/mirrorlogd.toml" --listen "127.0.0.1:$port" --metrics off > "$work/mirrorlogd.log" 2>&1 &
pid=$!
proxy_pid=
trap 'kill $pid $proxy_pid 2>/dev/null || true; wait $pid $proxy_pid 2>/dev/null || true; rm -rf "$work"' EXIT
. "$here/../wait-log.sh"
# Ready once it logs so (creating two 2 GiB mirror files can take longer
# than the listener's port alone says).
wait_log "$work/mirrorlogd.log" "server: ready"
proxy_bin="$(dirname "$bin")/mirrorlog-faultproxy"
if [ ! -x "$proxy_bin" ]; then
  (cd "$root" && cargo build -p mirrorlog-faultproxy)
  proxy_bin="$root/target/debug/mirrorlog-faultproxy"
fi
"$proxy_bin" --listen 127.0.0.1:0 --upstream "127.0.0.1:$port" --control 127.0.0.1:0 > "$work/faultproxy.out" 2>&1 &
proxy_pid=$!
wait_log "$work/faultproxy.out" '^listening=' 100
read -r line < "$work/faultproxy.out" # listening=ADDR upstream=ADDR control=ADDR
proxy="${line#listening=}"
proxy="${proxy%% *}"
control="${line##*control=}"
cd "$root/tools/java"
mvn -B -q -Dmirrorlog.endpoints="127.0.0.1:$port" -Dmirrorlog.faultproxy="$proxy" \
  -Dmirrorlog.faultproxyControl="$control" "$@" install
