#!/bin/bash
# Idle cost of `ntpkit daemon` with 10 sources (issue 3 item 7): CPU share and resident memory
# of a daemon polling 10 upstream servers at its default poll interval (64 s, iburst at start),
# serving UDP on one address, with a virtual clock. Runs in a private network namespace; no
# process here holds CAP_SYS_TIME, nothing touches the OS clock. Bounded: SECS (default 300).
#
# Usage: scripts/bench-daemon-idle.sh [SECS]      (needs root for the namespace)
set -euo pipefail
SECS=${1:-300}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/ntpkit
[ -x "$BIN" ] || cargo build --release -p ntpkit --manifest-path "$ROOT/Cargo.toml"
NS=ntpkit-idle-$$
W=$(mktemp -d)
NOTIME="setpriv --bounding-set=-sys_time --inh-caps=-sys_time"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
ip netns add "$NS"
ip -n "$NS" link set lo up

# Ten upstream servers: one stratum-1 daemon listening on 127.0.0.11 … 127.0.0.20.
listen=$(for i in $(seq 11 20); do printf '"127.0.0.%d:123",' "$i"; done)
cat >"$W/upstream.toml" <<EOC
listen = [${listen%,}]
[sync]
local-stratum = 1
EOC
servers=$(for i in $(seq 11 20); do printf '[[server]]\naddress = "127.0.0.%d"\n' "$i"; done)
cat >"$W/idle.toml" <<EOC
listen = ["127.0.0.1:123"]
control-socket = "$W/idle.sock"
$servers
[clock]
backend = "virtual"
offset = 0.05
frequency-ppm = 20
EOC
ip netns exec "$NS" $NOTIME timeout $((SECS + 60)) "$BIN" daemon -c "$W/upstream.toml" >"$W/up.log" 2>&1 &
PIDS+=($!)
sleep 1
ip netns exec "$NS" $NOTIME timeout $((SECS + 60)) "$BIN" daemon -c "$W/idle.toml" >"$W/idle.log" 2>&1 &
PIDS+=($!)
sleep 2
pid=$(pgrep -f "daemon -c $W/idle.toml" | while read -r p; do [ "$(cat /proc/$p/comm)" = ntpkit ] && echo "$p"; done | head -n 1)
[ -n "$pid" ] || { echo "daemon did not start"; cat "$W/idle.log"; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
sleep 20   # past the start-up burst
t0=$(ticks); s0=$(date +%s.%N)
sleep "$SECS"
t1=$(ticks); s1=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$pid/status")
synced=$(ip netns exec "$NS" "$BIN" status --socket "$W/idle.sock" --json | python3 -c \
  'import json,sys; d=json.load(sys.stdin); t=d["system"]["tracking"]; print(t["synchronized"], sum(1 for s in d["system"]["sources"] if s["reach"]>0))')
awk -v t0="$t0" -v t1="$t1" -v s0="$s0" -v s1="$s1" -v hz="$hz" -v rss="$rss" -v hwm="$hwm" \
    -v th="$threads" -v sy="$synced" 'BEGIN {
  cpu = (t1 - t0) / hz; wall = s1 - s0;
  printf "idle daemon, 10 sources, %.0f s: CPU %.3f s = %.3f %% of one core; RSS %.1f MiB (peak %.1f MiB); %d threads; synchronized/reachable: %s\n",
    wall, cpu, 100 * cpu / wall, rss / 1024, hwm / 1024, th, sy }'
