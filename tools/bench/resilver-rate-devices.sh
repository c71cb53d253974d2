#!/usr/bin/env bash
# The resilver's rate from one device onto another (issue 14): the healthy
# members are loop devices over files on a tmpfs (RAM), the new member a
# file on the disk, so that the copy reads one device and writes another,
# as it does on a storage node; this machine has one disk, and every file
# on it shares its bandwidth. Compared in the same run with the disk's
# sequential 1 MiB O_DIRECT writes (dd, plain and with dsync: the resilver
# writes with RWF_DSYNC) to a fresh file of the same size. Needs root
# (mount, losetup).
#
#   tools/bench/resilver-rate-devices.sh [RUNS] [FILL_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
FILL=${2:-10}
BIN=target/release
DIR=$(mktemp -d /work/bench-rdev.XXXXXX)
RAM="$DIR/ram"
mkdir -p "$RAM"
mount -t tmpfs -o size=5g tmpfs "$RAM"
LOOPS=()
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  umount "$RAM" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
for i in 0 1; do
  truncate -s 2G "$RAM/m$i"
  LOOPS+=("$(losetup --find --show --direct-io=off "$RAM/m$i")")
done
port=$((20000 + RANDOM % 20000))
cat > "$DIR/cfg.toml" <<EOF
[storage]
devices = ["${LOOPS[0]}", "${LOOPS[1]}"]
[[journal]]
name = "default"
[server]
listen = ["127.0.0.1:$port"]
EOF
EP="127.0.0.1:$port"
"$BIN/mirrorlog" format --devices "${LOOPS[0]},${LOOPS[1]}" --yes >/dev/null
"$BIN/mirrorlogd" --config "$DIR/cfg.toml" --log-level warn 2>>"$DIR/log" &
PID=$!
for _ in $(seq 1 600); do
  "$BIN/mirrorlog" --endpoint "$EP" --timeout 1 status >/dev/null 2>&1 && break
  sleep 0.05
done
"$BIN/mirrorlog-bench" run --endpoint "$EP" --journal default --durability local --clients 16 \
  --record-size 262144 --duration "$FILL" --poll --json >/dev/null
"$BIN/mirrorlog" --endpoint "$EP" status | grep -E "^default" || true
resilver() {
  "$BIN/mirrorlog" --endpoint "$EP" status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['resilver']['$1'])"
}
mbs() { python3 -c 'import re,sys; m=re.search(r"([\d.,]+) ([kMG]?B)/s", sys.argv[1]); v=float(m.group(1).replace(",", ".")); print(v*{"B":1e-6,"kB":1e-3,"MB":1,"GB":1e3}[m.group(2)])' "$1"; }
echo "run resilver_MBps dd_write_MBps dd_dsync_MBps resilver/dd resilver/dd_dsync"
old="${LOOPS[1]}"
for r in $(seq 1 "$RUNS"); do
  rm -f "$DIR/seq.dev"; fallocate -l 2G "$DIR/seq.dev"
  plain=$(mbs "$(dd if=/dev/zero of="$DIR/seq.dev" bs=1M count=1536 oflag=direct conv=notrunc 2>&1 | tail -1)")
  rm -f "$DIR/seq.dev"; fallocate -l 2G "$DIR/seq.dev"
  dsync=$(mbs "$(dd if=/dev/zero of="$DIR/seq.dev" bs=1M count=1536 oflag=direct,dsync conv=notrunc 2>&1 | tail -1)")
  rm -f "$DIR/seq.dev"
  new="$DIR/new$r.dev"; fallocate -l 2G "$new"
  "$BIN/mirrorlog" --endpoint "$EP" replace --old "$old" --new "$new" >/dev/null
  while [ "$(resilver state)" = running ]; do sleep 0.05; done
  rate=$(python3 -c "print($(resilver bytes_per_second)/1e6)")
  echo "$r $rate $plain $dsync $(python3 -c "print(round($rate/$plain,2), round($rate/$dsync,2))") ($(resilver bytes_done) bytes)"
  # The next run replaces the new member (a healthy one: it stays until
  # the next is resilvered, then leaves).
  [ "$r" -gt 1 ] && rm -f "$DIR/new$((r - 1)).dev" 2>/dev/null || true
  old="$new"
done
"$BIN/mirrorlog" --endpoint "$EP" status | grep -E "healthy|RESILVER|FAILED" || true
kill -TERM "$PID"; wait "$PID" || true
