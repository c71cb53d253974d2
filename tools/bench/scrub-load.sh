#!/usr/bin/env bash
# Appends with and without a scrub running (issue 14): one mirrorlogd on
# its embedded default (two 1 GiB file mirrors in a fresh folder), filled
# with 64 KiB records, then in short interleaved rounds: `local` appends of
# 1 KiB at QD1 and from 64 clients, first with no scrub, then while
# `mirrorlog scrub` runs at the daemon's default rates (64 MiB/s idle,
# 1 MiB/s while the node writes, which it does throughout). Prints
# p50/p99 and records/s of each, and the paired ratios (scrub / none).
# Then, with nothing else running, one unpaced scrub (rate "0") of the
# same set: its MB/s of payload verified over both mirrors.
#
#   tools/bench/scrub-load.sh [ROUNDS] [SECONDS] [FILL_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-4}
SECS=${2:-4}
FILL=${3:-6}
BIN=target/release
DIR=$(mktemp -d /work/bench-scrub.XXXXXX 2>/dev/null || mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT

start() { # $1 = scrub rate
  local port=$((20000 + RANDOM % 20000))
  cat > "$DIR/cfg.toml" <<EOF
[storage]
devices = ["$DIR/m0.dev", "$DIR/m1.dev"]
device_size = "1GiB"
[[journal]]
name = "default"
[server]
listen = ["127.0.0.1:$port"]
[scrub]
rate = "$1"
EOF
  "$BIN/mirrorlogd" --config "$DIR/cfg.toml" --log-level warn 2>>"$DIR/log" &
  PID=$!
  EP="127.0.0.1:$port"
  for _ in $(seq 1 200); do
    "$BIN/mirrorlog" --endpoint "$EP" --timeout 1 status >/dev/null 2>&1 && return
    sleep 0.05
  done
  echo "mirrorlogd did not start" >&2; cat "$DIR/log" >&2; exit 1
}

stop() { kill -TERM "$PID"; wait "$PID" || true; }

load() { # $1 = clients -> "p50 p99 rate"
  "$BIN/mirrorlog-bench" run --endpoint "$EP" --journal default --durability local --clients "$1" \
    --record-size 1024 --duration "$SECS" --poll --json |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["p50_us"], j["p99_us"], round(j["records_per_sec"]))'
}

scrub_state() {
  "$BIN/mirrorlog" --endpoint "$EP" scrub status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'
}

start 64MiB
"$BIN/mirrorlog-bench" run --endpoint "$EP" --journal default --durability local --clients 16 \
  --record-size 65536 --duration "$FILL" --poll --json >/dev/null
"$BIN/mirrorlog" --endpoint "$EP" status | grep -E "^default" || true
echo "round scrub qd1_p50 qd1_p99 qd1_rate c64_p50 c64_p99 c64_rate"
for r in $(seq 1 "$ROUNDS"); do
  a="$(load 1) $(load 64)"
  echo "$r none $a"
  "$BIN/mirrorlog" --endpoint "$EP" scrub start >/dev/null
  b="$(load 1) $(load 64)"
  # (It must still run at the end: "finished" means part of the
  # measurement ran without it.)
  st=$(scrub_state)
  "$BIN/mirrorlog" --endpoint "$EP" scrub cancel >/dev/null
  while [ "$(scrub_state)" = running ]; do sleep 0.05; done
  echo "$r scrub($st) $b"
  python3 -c 'import sys; a=list(map(float,sys.argv[1].split())); b=list(map(float,sys.argv[2].split())); print(f"{sys.argv[3]} scrub/none qd1_p50 {b[0]/a[0]:.2f} qd1_p99 {b[1]/a[1]:.2f} qd1_rate {b[2]/a[2]:.2f} c64_p50 {b[3]/a[3]:.2f} c64_p99 {b[4]/a[4]:.2f} c64_rate {b[5]/a[5]:.2f}")' "$a" "$b" "$r"
done
stop

start 0
t0=$(date +%s.%N)
"$BIN/mirrorlog" --endpoint "$EP" scrub start >/dev/null
while [ "$(scrub_state)" = running ]; do sleep 0.1; done
"$BIN/mirrorlog" --endpoint "$EP" scrub status
"$BIN/mirrorlog" --endpoint "$EP" scrub status --json
stop
