#!/bin/bash
# `ntpkit bench` against the C reference load generator ntpload (../shared/perf/ntpload.c) on the
# same servers: `ntpkit serve` and chronyd (-x, local stratum 1), both on loopback and without
# CAP_SYS_TIME.
#
# 1. Closed loop (SOCKETS sockets x WINDOW in flight), ROUNDS rounds of SECS seconds; in each
#    round both tools load both servers, the tool that goes first alternating from round to
#    round. Prints every run, the median replies/s of each tool on each server, their ratio
#    ntpkit bench / ntpload, and the median of the rounds' ratios (each round's two runs are
#    seconds apart, so this one is the least disturbed by other load on the machine).
# 2. Open loop at RATE requests/s, then an open-loop flood, once per tool and server: replies/s,
#    loss and latency percentiles (ntpload prints p50, p99 and p99.9 only).
#
# On a machine shared with other work: run it under `nice -n -10` (the servers and the tools
# inherit it, so other processes take less of their time), and/or give -i MAXSECS to wait before
# each round and each open-loop run, at most that long, for the CPUs to be 90 % idle.
#
# Usage: scripts/bench-loadgen-compare.sh [-r ROUNDS] [-t SECS] [-s SOCKETS] [-w WINDOW] [-R RATE]
#                                         [-i MAXSECS]
# Run from the repository root after `cargo build --release -p ntpkit`, as root (setpriv), with
# gcc and chronyd (/opt/chrony/usr/sbin or PATH). NTPLOAD_SRC overrides the C source's path.
set -u
ROUNDS=5 SECS=3 SOCKS=4 WIN=32 RATE=50000 IDLE_WAIT=0
while getopts "r:t:s:w:R:i:" o; do
  case $o in
    r) ROUNDS=$OPTARG ;; t) SECS=$OPTARG ;; s) SOCKS=$OPTARG ;; w) WIN=$OPTARG ;; R) RATE=$OPTARG ;;
    i) IDLE_WAIT=$OPTARG ;;
    *) exit 2 ;;
  esac
done
NTPKIT=target/release/ntpkit
SRC=${NTPLOAD_SRC:-../shared/perf/ntpload.c}
CHRONYD=$(command -v chronyd || echo /opt/chrony/usr/sbin/chronyd)
[ -x "$NTPKIT" ] || { echo "build first: cargo build --release -p ntpkit"; exit 2; }
[ -f "$SRC" ] || { echo "ntpload source missing: $SRC (set NTPLOAD_SRC)"; exit 2; }
[ -x "$CHRONYD" ] || { echo "chronyd missing: scripts/install-test-deps.sh unpacks it"; exit 2; }
NOTIME=(setpriv --bounding-set=-sys_time --inh-caps=-sys_time)
W=$(mktemp -d); chown _chrony:_chrony "$W" 2>/dev/null; chmod 755 "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT INT TERM
gcc -O2 -Wall -o "$W/ntpload" "$SRC" || exit 2

base=$((30000 + RANDOM % 20000))
PN=$base PC=$((base + 1))
for p in $PN $PC; do
  [ -z "$(ss -Hlun "sport = :$p")" ] || { echo "port $p busy, run again"; exit 2; }
done
cat >"$W/chrony.conf" <<EOF
port $PC
bindaddress 127.0.0.1
allow 127.0.0.1
local stratum 1
cmdport 0
bindcmdaddress $W/chronyd.sock
pidfile $W/chronyd.pid
EOF
"${NOTIME[@]}" "$NTPKIT" serve --no-rate-limit --listen 127.0.0.1:$PN >"$W/serve.log" 2>&1 & PIDS+=($!)
"${NOTIME[@]}" "$CHRONYD" -x -d -f "$W/chrony.conf" >"$W/chronyd.log" 2>&1 & PIDS+=($!)
sleep 2
for i in 0 1; do
  kill -0 "${PIDS[$i]}" 2>/dev/null || { echo "server $i exited:"; tail -n 5 "$W"/*.log; exit 1; }
done
port_of() { case $1 in ntpkit) echo $PN ;; chronyd) echo $PC ;; esac; }

# One run; prints "replies/s sent/s loss% p50 p90 p99 p99.9 max cpu%" (-: no such figure).
run_bench() { # PORT ARGS...
  local port=$1; shift
  local out
  out=$( { /usr/bin/time -f "CPU %U %S %e" "$NTPKIT" bench 127.0.0.1:"$port" --json "$@"; } 2>&1 )
  echo "$out" | python3 -c '
import json, sys
lines = sys.stdin.read().splitlines()
d = json.loads(next(l for l in lines if l.startswith("{")))
u, s, e = map(float, next(l for l in lines if l.startswith("CPU")).split()[1:])
l = d["latency_us"] or {}
f = lambda k: "%.1f" % l[k] if k in l else "-"
print("%.0f %.0f %.3f %s %s %s %s %s %.0f" % (d["valid_per_s"], d["sent_per_s"], d["loss_pct"], f("p50"), f("p90"),
      f("p99"), f("p99_9"), f("max"), 100 * (u + s) / e))'
}
run_ntpload() { # PORT ARGS...
  local port=$1; shift
  "$W/ntpload" -p "$port" "$@" | awk '
    /^latency us:/ { p50 = $4; p99 = $6; p999 = $8 }
    /^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] } }
    END { printf "%s %s %s %s - %s %s - %s\n", r["replies_ps"], r["sent_ps"], r["loss_pct"], p50, p99, p999, r["gen_cpu_pct"] }'
}
# Waits until the CPUs were >= 90 % idle over half a second (at most IDLE_WAIT s).
wait_idle() {
  local i a b
  [ "$IDLE_WAIT" -gt 0 ] || return 0
  for i in $(seq $((IDLE_WAIT * 2))); do
    a=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8, $5}' /proc/stat); sleep 0.5
    b=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8, $5}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); exit !((y[2]-x[2]) >= 0.9*(y[1]-x[1]))}' && return
  done
  echo "(machine still busy after $IDLE_WAIT s: measuring anyway)"
}
med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "closed loop: $SOCKS sockets x $WIN in flight, $SECS s + 0.5 s warm-up per run, $ROUNDS rounds"
echo "round server tool replies/s sent/s loss% p50 p90 p99 p99.9 max(us) gen-cpu%"
declare -A R Q
for r in $(seq "$ROUNDS"); do
  wait_idle
  if [ $((r % 2)) -eq 1 ]; then order="bench ntpload"; else order="ntpload bench"; fi
  for server in ntpkit chronyd; do
    p=$(port_of $server)
    for tool in $order; do
      if [ $tool = bench ]; then
        line=$(run_bench "$p" --duration "$SECS" --sockets "$SOCKS" --window "$WIN")
      else
        line=$(run_ntpload "$p" -t "$SECS" -s "$SOCKS" -w "$WIN")
      fi
      echo "$r $server $tool $line"
      R[$server.$tool]="${R[$server.$tool]:-} ${line%% *}"
      eval "last_$tool=${line%% *}"
    done
    Q[$server]="${Q[$server]:-} $(awk -v b="$last_bench" -v l="$last_ntpload" 'BEGIN{printf "%.4f", (l>0)?b/l:0}')"
  done
done
for server in ntpkit chronyd; do
  mb=$(echo "${R[$server.bench]}" | med); ml=$(echo "${R[$server.ntpload]}" | med)
  awk -v s=$server -v b="$mb" -v l="$ml" \
    'BEGIN{printf "median replies/s on %s: ntpkit bench %d, ntpload %d, ratio %.3f\n", s, b, l, (l>0)?b/l:0}'
  echo "median of the rounds' ratios on $server: $(echo "${Q[$server]}" | med)"
done

for mode in rate flood; do
  if [ $mode = rate ]; then
    echo "open loop at $RATE requests/s, $SECS s per run"
    bargs=(--rate "$RATE"); largs=(-r "$RATE")
  else
    echo "open-loop flood, $SOCKS sockets, $SECS s per run"
    bargs=(--flood); largs=(-w 0)
  fi
  echo "server tool replies/s sent/s loss% p50 p90 p99 p99.9 max(us) gen-cpu%"
  for server in ntpkit chronyd; do
    p=$(port_of $server)
    wait_idle
    echo "$server bench $(run_bench "$p" --duration "$SECS" --sockets "$SOCKS" "${bargs[@]}")"
    wait_idle
    echo "$server ntpload $(run_ntpload "$p" -t "$SECS" -s "$SOCKS" "${largs[@]}")"
  done
done
