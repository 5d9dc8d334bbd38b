#!/bin/bash
# Idle cost of `ntpkit daemon` against chronyd, side by side: each polls the same 10 upstream
# servers at its default poll interval (64 s after the start-up burst) and serves NTP on one
# address; ntpkit disciplines a virtual clock, chronyd runs with -x (it never touches the
# clock). CPU time is the sum over every thread of /proc/PID/task/*/schedstat (ns on the CPU,
# finer than the clock ticks of /proc/PID/stat), over SECS seconds after a 20 s start-up; RSS
# from /proc/PID/status. Runs in a private network namespace; no process holds CAP_SYS_TIME.
#
# Usage: scripts/bench-daemon-idle.sh [SECS]      (needs root for the namespace; default 240)
set -euo pipefail
SECS=${1:-240}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/ntpkit
CHRONYD=/opt/chrony/usr/sbin/chronyd
cargo build --release -q -p ntpkit --manifest-path "$ROOT/Cargo.toml"
[ -x "$CHRONYD" ] || { echo "$CHRONYD missing: run scripts/install-test-deps.sh"; exit 1; }
NS=ntpkit-idle-$$
W=$(mktemp -d)
chown _chrony:_chrony "$W" && chmod 0750 "$W"   # chronyd's command socket directory
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
{
  for i in $(seq 11 20); do echo "server 127.0.0.$i iburst"; done
  echo "bindaddress 127.0.0.2"
  echo "allow 127.0.0.0/8"
  echo "cmdport 0"
  echo "bindcmdaddress $W/chronyd.sock"
  echo "pidfile $W/chronyd.pid"
} >"$W/chronyd.conf"
ip netns exec "$NS" $NOTIME timeout $((SECS + 60)) "$BIN" daemon -c "$W/upstream.toml" >"$W/up.log" 2>&1 &
PIDS+=($!)
sleep 1
ip netns exec "$NS" $NOTIME timeout $((SECS + 60)) "$BIN" daemon -c "$W/idle.toml" >"$W/idle.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS" $NOTIME timeout $((SECS + 60)) "$CHRONYD" -x -d -f "$W/chronyd.conf" >"$W/chronyd.log" 2>&1 &
PIDS+=($!)
sleep 2
find_pid() {  # find_pid COMM PATTERN
  pgrep -f "$2" | while read -r p; do [ "$(cat /proc/"$p"/comm)" = "$1" ] && echo "$p"; done | head -n 1
}
npid=$(find_pid ntpkit "daemon -c $W/idle.toml")
cpid=$(find_pid chronyd "$W/chronyd.conf")
[ -n "$npid" ] || { echo "ntpkit did not start"; cat "$W/idle.log"; exit 1; }
[ -n "$cpid" ] || { echo "chronyd did not start"; cat "$W/chronyd.log"; exit 1; }
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {print s}'; }
sleep 20   # past the start-up burst
n0=$(cpu_ns "$npid"); c0=$(cpu_ns "$cpid"); s0=$(date +%s.%N)
sleep "$SECS"
n1=$(cpu_ns "$npid"); c1=$(cpu_ns "$cpid"); s1=$(date +%s.%N)
field() { awk -v k="$2:" '$1 == k {print $2}' /proc/"$1"/status; }
synced=$(ip netns exec "$NS" "$BIN" status --socket "$W/idle.sock" --json | python3 -c \
  'import json,sys; d=json.load(sys.stdin); t=d["system"]["tracking"]; print(t["synchronized"], sum(1 for s in d["system"]["sources"] if s["reach"]>0))')
chrony_sources=$(ip netns exec "$NS" /opt/chrony/usr/bin/chronyc -n -h "$W/chronyd.sock" -c sources | awk -F, '$6 != "0"' | wc -l)
report() {  # report NAME PID CPU0 CPU1 EXTRA
  awk -v name="$1" -v c0="$3" -v c1="$4" -v s0="$s0" -v s1="$s1" -v rss="$(field "$2" VmRSS)" \
      -v hwm="$(field "$2" VmHWM)" -v th="$(field "$2" Threads)" -v extra="$5" 'BEGIN {
    cpu = (c1 - c0) / 1e9; wall = s1 - s0;
    printf "%-7s idle, 10 sources, %.0f s: CPU %.4f s = %.4f %% of one core; RSS %.1f MiB (peak %.1f MiB); %d thread(s); %s\n",
      name, wall, cpu, 100 * cpu / wall, rss / 1024, hwm / 1024, th, extra }'
}
report ntpkit "$npid" "$n0" "$n1" "synchronized/reachable: $synced"
report chronyd "$cpid" "$c0" "$c1" "reachable sources: $chrony_sources"
awk -v a="$((n1 - n0))" -v b="$((c1 - c0))" 'BEGIN { if (b > 0) printf "CPU ratio ntpkit/chronyd: %.2f\n", a / b }'
