#!/bin/bash
# NTS serving against chronyd, on loopback, with `ntpkit bench`: plain replies/s, authenticated
# (NTS) replies/s and NTS-KE handshakes/s of `ntpkit serve --nts-ke` and of chronyd 4.3 (-x,
# local stratum 1, NTS server), both without CAP_SYS_TIME, each with a certificate made for the
# run (openssl, CN/SAN localhost and 127.0.0.1, CA:FALSE).
#
# Each round measures, for every closed-loop window given with -w and for both servers (the
# server that goes first alternating from round to round): plain requests, NTS requests, then
# NTS-KE exchanges. Every run prints its rate and the server's CPU time per reply (or per key
# exchange): utime + stime of the server's processes (chronyd's NTS-KE helper included) from
# /proc/PID/stat, before and after the run, divided by the whole run's replies (warm-up and
# grace included, as the CPU time is). Then the medians, the ratios ntpkit/chronyd, and what
# an authenticated reply costs against a plain one (ratio of rates, CPU µs per reply).
#
# chronyd runs with the kernel's default receive buffer (net.core.rmem_default); `ntpkit serve`
# is given the same with --udp-recv-buffer unless -b says otherwise (its own default, 64 KiB,
# holds about 60 NTS requests: fewer than a closed loop of 4 x 32 keeps in flight). The load
# generator verifies one NTS reply in VERIFY_ONE_IN (-v, default 16) in full and checks the
# others for their unique identifier, so that it stays cheaper than the servers it loads.
#
# On a machine shared with other work, give -i MAXSECS to wait before each round, at most that
# long, for the CPUs to be 90 % idle.
#
# Usage: scripts/bench-nts-compare.sh [-r ROUNDS] [-t SECS] [-s SOCKETS] [-w "WINDOW ..."]
#                                     [-c CONNECTIONS] [-v VERIFY_ONE_IN] [-b BYTES] [-i MAXSECS]
# Run from the repository root after `cargo build --release -p ntpkit`, as root (setpriv), with
# openssl and chronyd (/opt/chrony/usr/sbin or PATH).
set -u
ROUNDS=5 SECS=3 SOCKS=4 WINDOWS="8 32" CONNS=2 VERIFY=16 IDLE_WAIT=0
RCVBUF=$(cat /proc/sys/net/core/rmem_default 2>/dev/null || echo 212992)
while getopts "r:t:s:w:c:v:b:i:" o; do
  case $o in
    r) ROUNDS=$OPTARG ;; t) SECS=$OPTARG ;; s) SOCKS=$OPTARG ;; w) WINDOWS=$OPTARG ;;
    c) CONNS=$OPTARG ;; v) VERIFY=$OPTARG ;; b) RCVBUF=$OPTARG ;; i) IDLE_WAIT=$OPTARG ;;
    *) exit 2 ;;
  esac
done
NTPKIT=target/release/ntpkit
CHRONYD=$(command -v chronyd || echo /opt/chrony/usr/sbin/chronyd)
[ -x "$NTPKIT" ] || { echo "build first: cargo build --release -p ntpkit"; exit 2; }
[ -x "$CHRONYD" ] || { echo "chronyd missing: scripts/install-test-deps.sh unpacks it"; exit 2; }
command -v openssl >/dev/null || { echo "openssl missing: apt-get install -y openssl"; exit 2; }
NOTIME=(setpriv --bounding-set=-sys_time --inh-caps=-sys_time)
W=$(mktemp -d); chmod 755 "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT INT TERM

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
  -addext 'basicConstraints=critical,CA:FALSE' \
  -keyout "$W/server.key" -out "$W/server.crt" 2>/dev/null || { echo "openssl failed"; exit 2; }
chown _chrony:_chrony "$W" "$W/server.key" "$W/server.crt" 2>/dev/null
chmod 640 "$W/server.key"

base=$((30000 + RANDOM % 20000))
PN=$base PC=$((base + 1)) KN=$((base + 2)) KC=$((base + 3))
for p in $PN $PC; do
  [ -z "$(ss -Hlun "sport = :$p")" ] || { echo "port $p/udp busy, run again"; exit 2; }
done
for p in $KN $KC; do
  [ -z "$(ss -Hltn "sport = :$p")" ] || { echo "port $p/tcp busy, run again"; exit 2; }
done
cat >"$W/chrony.conf" <<EOF
port $PC
ntsport $KC
bindaddress 127.0.0.1
allow 127.0.0.1
local stratum 1
ntsserverkey $W/server.key
ntsservercert $W/server.crt
ntsprocesses 1
cmdport 0
pidfile $W/chronyd.pid
EOF
"${NOTIME[@]}" "$NTPKIT" serve --no-rate-limit --listen 127.0.0.1:$PN --nts-ke 127.0.0.1:$KN \
  --udp-recv-buffer "$RCVBUF" --cert "$W/server.crt" --key "$W/server.key" --nts-master "$W/master" >"$W/serve.log" 2>&1 &
PIDS+=($!)
"${NOTIME[@]}" "$CHRONYD" -x -d -f "$W/chrony.conf" >"$W/chronyd.log" 2>&1 & PIDS+=($!)
sleep 2
for i in 0 1; do
  kill -0 "${PIDS[$i]}" 2>/dev/null || { echo "server $i exited:"; tail -n 5 "$W"/*.log; exit 1; }
done
declare -A SPID=([ntpkit]=${PIDS[0]} [chronyd]=${PIDS[1]})
declare -A PORT=([ntpkit]=$PN [chronyd]=$PC)
declare -A KEPORT=([ntpkit]=$KN [chronyd]=$KC)
TCK=$(getconf CLK_TCK)

# CPU seconds (utime + stime) of PID and its children (chronyd's NTS-KE helper).
cpu_of() {
  local p total=0 t
  for p in "$1" $(pgrep -P "$1"); do
    t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
    total=$((total + ${t:-0}))
  done
  awk -v t="$total" -v k="$TCK" 'BEGIN{printf "%.3f", t / k}'
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
med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# One run against SERVER in MODE (plain, nts, ke) with closed-loop WINDOW; prints
# "rate/s cpu-us-per-op ops failures".
run_one() { # SERVER MODE WINDOW
  local server=$1 mode=$2 win=$3 args c0 c1 out
  case $mode in
    plain) args=(127.0.0.1:"${PORT[$server]}" --sockets "$SOCKS" --window "$win") ;;
    nts) args=(--nts localhost:"${KEPORT[$server]}" --ca-file "$W/server.crt" --sockets "$SOCKS"
               --window "$win" --verify-one-in "$VERIFY") ;;
    ke) args=(--nts-ke localhost:"${KEPORT[$server]}" --ca-file "$W/server.crt"
              --connections "$CONNS") ;;
  esac
  c0=$(cpu_of "${SPID[$server]}")
  out=$("$NTPKIT" bench "${args[@]}" --duration "$SECS" --json 2>&1)
  c1=$(cpu_of "${SPID[$server]}")
  echo "$out" | python3 -c '
import json, sys
text = sys.stdin.read()
try:
    d = json.loads(next(l for l in text.splitlines() if l.startswith("{")))
except StopIteration:
    print("0 - 0 -", text.strip().replace("\n", " ")[:200]); sys.exit()
cpu = float(sys.argv[1]) - float(sys.argv[2])
if d["mode"] == "nts-ke":
    rate, ops = d["completed_per_s"], d["total"]["completed"]
    fails = d["total"]["failed"]
else:
    rate, ops = d["valid_per_s"], d["total"]["valid"]
    n = d.get("nts") or {}
    fails = n.get("failed", 0) + n.get("naks", 0) if n else d["lost"]
print("%.0f %s %d %d" % (rate, "%.2f" % (1e6 * cpu / ops) if ops else "-", ops, fails))
' "$c1" "$c0"
}

echo "closed loop: $SOCKS sockets x window $WINDOWS; NTS-KE: $CONNS connections; $SECS s + 0.5 s" \
  "warm-up per run, $ROUNDS rounds; NTS replies verified: 1 in $VERIFY; ntpkit receive" \
  "buffer $RCVBUF bytes"
echo "round server mode window rate/s server-cpu-us/op ops lost-or-failed"
declare -A R C
for r in $(seq "$ROUNDS"); do
  wait_idle
  if [ $((r % 2)) -eq 1 ]; then order="ntpkit chronyd"; else order="chronyd ntpkit"; fi
  for win in $WINDOWS; do
    for mode in plain nts; do
      for server in $order; do
        line=$(run_one "$server" "$mode" "$win")
        echo "$r $server $mode $win $line"
        set -- $line
        R[$server.$mode.$win]="${R[$server.$mode.$win]:-} $1"
        C[$server.$mode.$win]="${C[$server.$mode.$win]:-} $2"
      done
    done
  done
  for server in $order; do
    line=$(run_one "$server" ke -)
    echo "$r $server ke - $line"
    set -- $line
    R[$server.ke.-]="${R[$server.ke.-]:-} $1"
    C[$server.ke.-]="${C[$server.ke.-]:-} $2"
  done
done

echo
echo "medians: mode window | ntpkit rate/s, cpu us/op | chronyd rate/s, cpu us/op | ratio ntpkit/chronyd"
for key in $(for w in $WINDOWS; do echo "plain.$w nts.$w"; done) ke.-; do
  rn=$(echo "${R[ntpkit.$key]}" | med); rc=$(echo "${R[chronyd.$key]}" | med)
  cn=$(echo "${C[ntpkit.$key]}" | tr -d '-' | med); cc=$(echo "${C[chronyd.$key]}" | tr -d '-' | med)
  awk -v k="$key" -v rn="$rn" -v rc="$rc" -v cn="$cn" -v cc="$cc" 'BEGIN{split(k, m, ".");
    printf "%-5s %-6s | %9.0f %8.2f | %9.0f %8.2f | %.2f\n", m[1], m[2], rn, cn, rc, cc, (rc > 0) ? rn / rc : 0}'
done
echo
echo "an authenticated reply against a plain one: rate plain/nts, cpu us nts/plain (medians)"
for w in $WINDOWS; do
  for server in ntpkit chronyd; do
    rp=$(echo "${R[$server.plain.$w]}" | med); rs=$(echo "${R[$server.nts.$w]}" | med)
    cp=$(echo "${C[$server.plain.$w]}" | tr -d '-' | med); cs=$(echo "${C[$server.nts.$w]}" | tr -d '-' | med)
    awk -v s=$server -v w=$w -v rp="$rp" -v rs="$rs" -v cp="$cp" -v cs="$cs" 'BEGIN{
      printf "%-7s window %-3s: rate plain/nts %.2f; cpu per reply %.2f -> %.2f us (x%.2f, +%.2f us)\n",
      s, w, (rs > 0) ? rp / rs : 0, cp, cs, (cp > 0) ? cs / cp : 0, cs - cp}'
  done
done
