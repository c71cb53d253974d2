#!/usr/bin/env bash
# Resilver (issue 14). One mirrorlogd on two 8 GiB file mirrors in a fresh
# folder, journal `fill` filled with 256 KiB records (FILL_SECONDS at 16
# clients); the loads measured go to journal `default` (which they never
# fill past half the set, so the load tool sets no mark that would reclaim
# what the resilver has left to copy).
#
# 1. Rate: with nothing else running, `mirrorlog replace` of a member by a
#    blank 8 GiB file, resilvered unpaced (the default `resilver.rate` 0):
#    its MB/s, next to dd's sequential 1 MiB O_DIRECT writes to a fresh
#    (fallocated, as the blank device) file on the same file system in the same run (plain, and with dsync:
#    the resilver writes with RWF_DSYNC, as every write of the engine).
#    Every file here shares one disk: the resilver reads the source and
#    writes the copy on the same device.
# 2. Appends during a resilver at the default rates (unpaced idle,
#    `busy_rate` 4 MiB/s while the node writes, which it does throughout),
#    against the same set with the resilver held (rate and busy_rate 1
#    byte/s): a healthy member is replaced by a blank file, so three
#    members take every append in both arms and the difference is the
#    resilver's copying. In short interleaved rounds (a daemon restart per
#    arm, which resumes the resilver where it was; the arms' order
#    alternates), `local` 1 KiB appends
#    at QD1 and from 64 clients: p50/p99, records/s and the paired ratios
#    (resilver / held). Before the rounds, the same loads on the healthy
#    two-member set, for the cost of a third member taking writes.
#
#   tools/bench/resilver-load.sh [ROUNDS] [SECONDS] [FILL_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-4}
SECS=${2:-4}
FILL=${3:-10}
BIN=target/release
DIR=$(mktemp -d /work/bench-resilver.XXXXXX 2>/dev/null || mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT

start() {
  local port=$((20000 + RANDOM % 20000))
  cat > "$DIR/cfg.toml" <<EOF
[storage]
devices = ["$DIR/m0.dev", "$DIR/m1.dev"]
device_size = "8GiB"
[[journal]]
name = "default"
[[journal]]
name = "fill"
[server]
listen = ["127.0.0.1:$port"]
EOF
  "$BIN/mirrorlogd" --config "$DIR/cfg.toml" --log-level warn 2>>"$DIR/log" &
  PID=$!
  EP="127.0.0.1:$port"
  for _ in $(seq 1 1200); do
    "$BIN/mirrorlog" --endpoint "$EP" --timeout 1 status >/dev/null 2>&1 && return
    sleep 0.05
  done
  echo "mirrorlogd did not start" >&2; cat "$DIR/log" >&2; exit 1
}

stop() { kill -TERM "$PID"; wait "$PID" || true; }

restart() { # the same config, the same port
  "$BIN/mirrorlogd" --config "$DIR/cfg.toml" --log-level warn 2>>"$DIR/log" &
  PID=$!
  for _ in $(seq 1 1200); do
    "$BIN/mirrorlog" --endpoint "$EP" --timeout 1 status >/dev/null 2>&1 && return
    sleep 0.05
  done
  echo "mirrorlogd did not restart" >&2; cat "$DIR/log" >&2; exit 1
}

load() { # $1 = clients -> "p50 p99 rate"
  "$BIN/mirrorlog-bench" run --endpoint "$EP" --journal default --durability local --clients "$1" \
    --record-size 1024 --duration "$SECS" --poll --json |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["p50_us"], j["p99_us"], round(j["records_per_sec"]))'
}

resilver() { # field of the status JSON's resilver object
  "$BIN/mirrorlog" --endpoint "$EP" status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['resilver']['$1'])"
}

blank() { rm -f "$1"; fallocate -l 8G "$1"; }

start
"$BIN/mirrorlog-bench" run --endpoint "$EP" --journal fill --durability local --clients 16 \
  --record-size 262144 --duration "$FILL" --poll --json >/dev/null
"$BIN/mirrorlog" --endpoint "$EP" status | grep -E "^default|^fill" || true

echo "== 1. resilver rate, nothing else running"
sync
blank "$DIR/seq.dev"
dd_plain=$(dd if=/dev/zero of="$DIR/seq.dev" bs=1M count=1024 oflag=direct conv=notrunc 2>&1 | tail -1)
blank "$DIR/seq.dev"
dd_dsync=$(dd if=/dev/zero of="$DIR/seq.dev" bs=1M count=1024 oflag=direct,dsync conv=notrunc 2>&1 | tail -1)
# A copy on the same disk, as the resilver makes: read 1 MiB, write it.
blank "$DIR/copy.dev"
dd_copy=$(dd if="$DIR/seq.dev" of="$DIR/copy.dev" bs=1M count=1024 iflag=direct oflag=direct,dsync conv=notrunc 2>&1 | tail -1)
rm -f "$DIR/seq.dev" "$DIR/copy.dev"
echo "dd 1 MiB O_DIRECT:       $dd_plain"
echo "dd 1 MiB O_DIRECT+dsync: $dd_dsync"
echo "dd copy 1 MiB O_DIRECT (read, then write with dsync): $dd_copy"
blank "$DIR/r0.dev"
"$BIN/mirrorlog" --endpoint "$EP" replace --old "$DIR/m1.dev" --new "$DIR/r0.dev" >/dev/null
while [ "$(resilver state)" = running ]; do sleep 0.1; done
sed -i "s|$DIR/m1.dev|$DIR/r0.dev|" "$DIR/cfg.toml"
"$BIN/mirrorlog" --endpoint "$EP" status | grep -E "^resilver|RESILVER|healthy" || true
echo "resilver: $(resilver state), $(resilver bytes_done) bytes, $(resilver bytes_per_second) bytes/s"
python3 - "$dd_plain" "$dd_dsync" "$dd_copy" "$(resilver bytes_per_second)" <<'EOF'
import re, sys
def mbs(line):
    m = re.search(r"([\d.,]+) ([kMG]?B)/s", line)
    v = float(m.group(1).replace(",", ".")); u = m.group(2)
    return v * {"B": 1e-6, "kB": 1e-3, "MB": 1, "GB": 1e3}[u]
plain, dsync, copy, r = mbs(sys.argv[1]), mbs(sys.argv[2]), mbs(sys.argv[3]), float(sys.argv[4]) / 1e6
print(f"resilver {r:.1f} MB/s; dd write {plain:.1f} MB/s (ratio {r/plain:.2f}); dd write dsync {dsync:.1f} MB/s "
      f"(ratio {r/dsync:.2f}); dd copy on the same disk {copy:.1f} MB/s (ratio {r/copy:.2f})")
EOF

[ -n "${RATE_ONLY:-}" ] && exit 0
echo "== 2. appends with the resilver held and running at the default rates"
HELD='[resilver]\nrate = "1"\nbusy_rate = "1"\n'
config() { # $1 = the [resilver] table (empty: the defaults)
  grep -v '^\[resilver\]\|^rate\|^busy_rate' "$DIR/cfg.toml" > "$DIR/cfg2.toml"
  printf '%b' "$1" >> "$DIR/cfg2.toml"
  mv "$DIR/cfg2.toml" "$DIR/cfg.toml"
}
arm() { # $1 = the [resilver] table -> loads
  config "$1"
  restart
  echo "$(load 1) $(load 64) $(resilver state) $(resilver bytes_done)"
  stop
}
# The replacement is made held, so that nothing is copied before the rounds.
stop
config "$HELD"
restart
echo "two healthy members: $(load 1) $(load 64)"
blank "$DIR/s.dev"
"$BIN/mirrorlog" --endpoint "$EP" replace --old "$DIR/m0.dev" --new "$DIR/s.dev" >/dev/null
stop
sed -i "s|\"$DIR/r0.dev\"]|\"$DIR/r0.dev\", \"$DIR/s.dev\"]|" "$DIR/cfg.toml"
echo "round arm qd1_p50 qd1_p99 qd1_rate c64_p50 c64_p99 c64_rate state copied"
for r in $(seq 1 "$ROUNDS"); do
  # Arms in alternating order, so neither always runs first after a start.
  if [ $((r % 2)) = 1 ]; then
    a=$(arm "$HELD")
    b=$(arm '')
  else
    b=$(arm '')
    a=$(arm "$HELD")
  fi
  echo "$r held $a"
  echo "$r resilver $b"
  python3 -c 'import sys; a=list(map(float,sys.argv[1].split()[:6])); b=list(map(float,sys.argv[2].split()[:6])); print(f"{sys.argv[3]} resilver/held qd1_p50 {b[0]/a[0]:.2f} qd1_p99 {b[1]/a[1]:.2f} qd1_rate {b[2]/a[2]:.2f} c64_p50 {b[3]/a[3]:.2f} c64_p99 {b[4]/a[4]:.2f} c64_rate {b[5]/a[5]:.2f}")' "$a" "$b" "$r"
done
