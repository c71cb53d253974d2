#!/usr/bin/env bash
# A/B of two mirrorlogd binaries on this machine, interleaved in short
# rounds (the disk and vCPUs are shared and noisy: compare within one run).
# Each round starts each daemon on its own fresh data folder (two 1 GiB
# file mirrors, the embedded default), then measures with the same
# mirrorlog-bench: QD1 (1 client) and 64 clients, `local` appends of 1 KiB,
# a polling load generator. Prints one line per measurement and the paired
# ratios (B / A) per round.
#
#   tools/bench/ab-daemon.sh A_MIRRORLOGD B_MIRRORLOGD [ROUNDS] [SECONDS]
# e.g. (A = a build of an older commit in its own worktree and target dir):
#   tools/bench/ab-daemon.sh /tmp/base-target/release/mirrorlogd target/release/mirrorlogd 3 5
set -euo pipefail
A=$1
B=$2
ROUNDS=${3:-3}
SECS=${4:-5}
here="$(cd "$(dirname "$0")/../.." && pwd)"
BENCH=${BENCH:-$here/target/release/mirrorlog-bench}
work=$(mktemp -d /work/ab-daemon.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

measure() { # binary label round -> "qd1_p50_us qd1_rps c64_rps c64_p50_us"
  local bin=$1 dir=$work/$2-$3 port=$((20000 + RANDOM % 10000))
  "$bin" --data-dir "$dir" --listen "127.0.0.1:$port" --metrics off 2>"$dir.log" &
  local pid=$!
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  local q c
  q=$("$BENCH" run --endpoint "127.0.0.1:$port" --journal default --durability local --clients 1 \
    --duration "$SECS" --poll --json)
  c=$("$BENCH" run --endpoint "127.0.0.1:$port" --journal default --durability local --clients 64 \
    --duration "$SECS" --poll --json)
  kill -TERM "$pid"
  wait "$pid" || true
  python3 -c 'import json,sys; q=json.loads(sys.argv[1]); c=json.loads(sys.argv[2]); print(q["p50_us"], round(q["records_per_sec"]), round(c["records_per_sec"]), c["p50_us"])' "$q" "$c"
}

echo "round build qd1_p50_us qd1_rec_per_s c64_rec_per_s c64_p50_us"
for r in $(seq 1 "$ROUNDS"); do
  a=$(measure "$A" a "$r")
  echo "$r A $a"
  b=$(measure "$B" b "$r")
  echo "$r B $b"
  python3 -c 'import sys; a=list(map(float,sys.argv[1].split())); b=list(map(float,sys.argv[2].split())); print(f"{sys.argv[3]} B/A qd1_p50 {b[0]/a[0]:.2f} qd1_rate {b[1]/a[1]:.2f} c64_rate {b[2]/a[2]:.2f}")' "$a" "$b" "$r"
done
