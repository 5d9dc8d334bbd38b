#!/usr/bin/python3
"""Measures the offset a daemon's clock settles at over loopback, where the path is symmetric
and any lasting offset is the timestamps' own bias (docs/benchmarks.md).

Usage: scripts/loopback-bias.py [--seconds N] [--busy K] [--port-per-request true|false] BINARY...

For each binary in turn, one run: a reference daemon (virtual clock 0.2 s ahead of the system
clock, local stratum 1) on 127.0.1.1 and a client daemon (virtual clock 0.25 s ahead and
20 ppm fast) polling it every second. Both run with CAP_SYS_TIME dropped from their bounding
and inheritable sets, and their virtual clocks leave the system clock alone. After 30 s of
settling, the client's true error (its virtual clock against the reference's) is read twice a
second for N seconds; the mean, median and RMS are printed. `--busy K` keeps K processes
spinning through the run (each stopped by `timeout` and by PID), for timestamps taken under
CPU contention. Runs alternate between the binaries when given several, `--rounds` times.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

REF_AHEAD = 0.2
DROP_CAPS = ["setpriv", "--bounding-set=-sys_time", "--inh-caps=-sys_time"]


def config(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def run_once(binary, seconds, busy, port_per_request):
    port = random.randint(20000, 29999)
    with tempfile.TemporaryDirectory(prefix="ntpkit-loopback-") as work:
        os.chmod(work, 0o755)
        ref = config(os.path.join(work, "ref.toml"), f"""control-socket = "{work}/ref.sock"
access = ["allow all"]
listen = ["127.0.1.1:{port}"]
[rate-limit]
interval = -3
[sync]
local-stratum = 1
[clock]
backend = "virtual"
offset = {REF_AHEAD}
frequency-ppm = 0.0
""")
        client_sock = os.path.join(work, "client.sock")
        client = config(os.path.join(work, "client.toml"), f"""control-socket = "{client_sock}"
port-per-request = {port_per_request}
[[server]]
address = "127.0.1.1:{port}"
minpoll = 0
maxpoll = 0
[clock]
backend = "virtual"
offset = {REF_AHEAD + 0.05}
frequency-ppm = 20.0
""")
        procs = []
        try:
            for conf in (ref, client):
                procs.append(subprocess.Popen(
                    DROP_CAPS + [binary, "daemon", "-c", conf],
                    stdout=subprocess.DEVNULL, stderr=open(conf + ".log", "w")))
            for _ in range(busy):
                procs.append(subprocess.Popen(
                    ["timeout", str(seconds + 60), "sh", "-c", "while :; do :; done"]))
            time.sleep(30)
            errors = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                r = subprocess.run([binary, "status", "--json", "--socket", client_sock],
                                   capture_output=True, text=True, timeout=10)
                if r.returncode == 0:
                    st = json.loads(r.stdout)
                    if st["system"]["tracking"]["state"] == "synchronized":
                        errors.append(st["clock"]["offset_from_os"] - REF_AHEAD)
                time.sleep(0.5)
            return errors
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--busy", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--port-per-request", choices=["true", "false"], default="true")
    a = ap.parse_args()
    for r in range(a.rounds):
        for b in a.binaries:
            e = run_once(b, a.seconds, a.busy, a.port_per_request)
            if not e:
                print(f"{b}: never synchronized", file=sys.stderr)
                sys.exit(1)
            rms = (sum(x * x for x in e) / len(e)) ** 0.5
            print(f"round {r + 1} {b}: {len(e)} readings, true error mean {statistics.mean(e) * 1e6:+.1f} µs,"
                  f" median {statistics.median(e) * 1e6:+.1f} µs, RMS {rms * 1e6:.1f} µs", flush=True)


if __name__ == "__main__":
    main()
