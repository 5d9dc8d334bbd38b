#!/usr/bin/python3
"""Runs ntpkit and chronyd in clknetsim, the clock and network simulator chrony is tested in,
in the same models with the same seeds, and prints one table comparing them.

clknetsim runs each daemon's unmodified binary with its clock and socket calls replaced through
LD_PRELOAD; the simulation server knows every node's true time. Per model and daemon, over the
seeds: RMS, max and mean of the true offset of the measured nodes (clock - true time, sampled
every simulated second from the model's statistics start), RMS frequency error, sync time
(1 + the last second with |offset| > 1 ms or |frequency error| > 500 ppm, from the start of the
node) and the packets the measured nodes sent per day.

    scripts/clknetsim-compare.py                   # every model, seeds 1-20
    scripts/clknetsim-compare.py --seeds 1-3 --models test1-j100us,falsetickers-2of5
    scripts/clknetsim-compare.py --quick           # the CI subset: exits 1 if ntpkit crashed,
                                                   # did not synchronize, or lost a cell it wins
    scripts/clknetsim-compare.py --json out.json   # every run's figures too
    scripts/clknetsim-compare.py --with-sim        # and ntpkit's own simulator on the same
                                                   # models (scenarios/chrony-*.toml)

Needs root (to run every simulated process as an unprivileged user without CAP_SYS_TIME: the
processes only ever see clknetsim's clock, but that is how it is made sure), gcc/g++/make,
chronyd unpacked in /opt/chrony (scripts/install-test-deps.sh) and the release binary
(built with cargo if missing or older than the sources, unless --ntpkit is given). clknetsim is
built from ../shared/clknetsim/src (or $CLKNETSIM_SRC) in a directory outside the repository
($CLKNETSIM_BUILD, default /var/tmp/ntpkit-clknetsim-<hash of the sources>); it is never copied
into the repository. No process ever touches the machine's clock or network: clknetsim's clients
talk only to its server, over a unix socket.
"""

import argparse
import concurrent.futures
import hashlib
import json
import math
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHRONYD = "/opt/chrony/usr/sbin/chronyd"
UNPRIVILEGED = "nobody"
BASE = "192.168.123."


# --- models -----------------------------------------------------------------------------------

@dataclass
class Node:
    """One simulated node: what it runs (server, falseticker, relay, client) and its upstreams."""
    role: str                 # "server" (perfect stratum 1), "client" (measured), "relay"
    upstreams: list = field(default_factory=list)   # node numbers it polls
    poll: tuple = None        # (minpoll, maxpoll) or None for the daemon's defaults
    offset: float = 0.0       # initial clock offset, seconds
    wander: float = 0.0       # frequency random walk per simulated second (W)
    freq: float = 1e-4        # frequency error F of disciplined nodes
    start: float = 0.0        # when the node starts, seconds
    step: str = None          # a clknetsim step expression (a jump of a server's clock)


@dataclass
class Model:
    name: str
    description: str
    nodes: list               # node 1 first
    delay: dict               # (from, to) -> clknetsim delay expression (default for links)
    limit: float              # -l: simulated seconds
    reset: float              # -r: statistics start
    expect_sync: bool = True  # the measured nodes must synchronize
    log_expect: list = field(default_factory=list)  # lines ntpkit must log (fault models)


def jitter_delay(base, j, up=1.0):
    """base + J*up*Exp(1), one direction."""
    return f"(+ {base} (* {j * up} (exponential)))"


def one_to_one(name, description, base, j, wander, poll, limit, reset, asym=0.0):
    server = Node("server")
    client = Node("client", [1], poll=poll, offset=0.1, wander=wander)
    # Asymmetry a: server->client J(1+2a), client->server J(1-2a).
    delay = {(1, 2): jitter_delay(base, j, 1 + 2 * asym), (2, 1): jitter_delay(base, j, 1 - 2 * asym)}
    return Model(name, description, [server, client], delay, limit, reset)


def indicator(t0):
    """1 from simulated time t0 on, 0 before (for delay expressions)."""
    return f"(min 1 (max 0 (* 1e9 (+ time {-t0}))))"


def once_at(second, size):
    """A clknetsim step expression: a jump of `size` seconds at simulated second `second`."""
    return (f"(* {size / 2} (+ (pulse {second} 1e9) (* -1 (pulse {second + 1} 1e9))) -1)")


def falsetickers(k, n=5, turn=None, limit=1e4, reset=210):
    nodes = []
    for i in range(1, n + 1):
        offset = float(i) if i <= k else 0.0
        nodes.append(Node("server", offset=offset))
    if turn is not None:
        # One good server's clock jumps after the client synchronized.
        second, size = turn
        nodes[k].step = once_at(second, size)
    client = Node("client", list(range(1, n + 1)), offset=0.1, wander=1e-9)
    nodes.append(client)
    c = n + 1
    delay = {}
    for i in range(1, n + 1):
        delay[(i, c)] = jitter_delay(1e-3, 1e-4)
        delay[(c, i)] = jitter_delay(1e-3, 1e-4)
    return nodes, delay, limit, reset


def models():
    out = []
    base = one_to_one("001-defaults", "100 us + Exp(100 us) each way, W 1e-9, default polling",
                      1e-4, 1e-4, 1e-9, None, 1e4, 210)
    # The system backend hands its error bound to the (simulated) kernel.
    base.log_expect = ["kernel clock error estimates: maxerror"]
    out.append(base)
    for j, tag in [(1e-5, "10us"), (1e-4, "100us"), (1e-3, "1ms"), (1e-2, "10ms")]:
        cells = [
            one_to_one(f"test1-j{tag}", f"1 ms + Exp({tag}), W 1e-9, default polling",
                       1e-3, j, 1e-9, None, 1e5, 1e4),
            one_to_one(f"test1-j{tag}-poll6", f"Test 1, J {tag}, both fixed at 64 s",
                       1e-3, j, 1e-9, (6, 6), 1e5, 1e4),
            one_to_one(f"test1-j{tag}-poll10", f"Test 1, J {tag}, both fixed at 1024 s",
                       1e-3, j, 1e-9, (10, 10), 1e5, 1e4),
            one_to_one(f"test2-j{tag}", f"1 ms + Exp({tag}), W 1e-8, both fixed at 64 s",
                       1e-3, j, 1e-8, (6, 6), 1e5, 1e4),
        ]
        for m in cells:
            # With 10 ms of jitter no daemon stays within the 1 ms of the sync criterion.
            m.expect_sync = j < 1e-2
            out.append(m)
    out.append(one_to_one("011-asymmetric", "100 us + Exp(500 us), asymmetry 0.47, W 1e-9",
                          1e-4, 5e-4, 1e-9, None, 1e5, 2000, asym=0.47))
    nodes, delay, limit, reset = falsetickers(2)
    out.append(Model("falsetickers-2of5", "5 servers, 2 at +1 s and +2 s; 1 ms + Exp(100 us)",
                     nodes, delay, limit, reset))
    nodes, delay, limit, reset = falsetickers(3)
    out.append(Model("falsetickers-3of5", "5 servers, 3 off by 1-3 s: no majority, never synced",
                     nodes, delay, limit, reset, expect_sync=False, log_expect=["no majority"]))
    nodes, delay, limit, reset = falsetickers(0, turn=(3000, 2.0), limit=1e4, reset=210)
    out.append(Model("turns-falseticker", "5 good servers; one jumps +2 s at 3000 s",
                     nodes, delay, limit, reset))
    nodes, delay, limit, reset = falsetickers(2, turn=(3000, 3.0), limit=1e4, reset=210)
    out.append(Model("majority-lost", "2 falsetickers of 5; a good one jumps +3 s at 3000 s: "
                     "no majority from then on", nodes, delay, limit, reset, expect_sync=False,
                     log_expect=["no majority"]))
    gone = (f"(+ {jitter_delay(1e-4, 1e-4)} (* -10 (+ {indicator(3000)} "
            f"(* -1 {indicator(6600)}))))")
    out.append(Model("source-gone", "the only server unreachable from 3000 s to 6600 s",
                     [Node("server"), Node("client", [1], offset=0.1, wander=1e-9)],
                     {(1, 2): gone, (2, 1): gone}, 1e4, 210,
                     log_expect=["unreachable", "no selectable sources", "reachable again"]))
    # Three levels: 4 stratum-1, 4 stratum-2, 4 stratum-3, 5 clients from 2000 s; each node
    # polls all 4 of the level above.
    nodes = [Node("server") for _ in range(4)]
    nodes += [Node("relay", [1, 2, 3, 4], offset=0.0, wander=1e-9) for _ in range(4)]
    nodes += [Node("relay", [5, 6, 7, 8], offset=0.0, wander=1e-9) for _ in range(4)]
    nodes += [Node("client", [9, 10, 11, 12], offset=0.0, wander=1e-9, start=2000)
              for _ in range(5)]
    delay = {"*": jitter_delay(1e-4, 1e-4)}
    out.append(Model("hierarchy", "4 stratum-1 -> 4 -> 4 -> 5 clients (start 2000 s), each "
                     "polling all 4 above; 100 us + Exp(100 us)", nodes, delay, 1e4, 2300))
    return {m.name: m for m in out}


QUICK = {
    "models": ["001-defaults", "test1-j100us-poll6", "test1-j1ms-poll6", "falsetickers-2of5",
               "majority-lost", "source-gone"],
    "seeds": [1, 2, 3],
    # Cells ntpkit wins today: its mean RMS must stay below chronyd's.
    "must_win": ["test1-j100us-poll6", "test1-j1ms-poll6"],
}


def clknetsim_conf(model):
    lines = []
    n = len(model.nodes)
    for i, node in enumerate(model.nodes, 1):
        if node.role != "server" or node.offset:
            lines.append(f"node{i}_offset = {node.offset}")
        if node.role != "server":
            lines.append(f"node{i}_freq = (+ {node.freq} (sum (* {node.wander} (normal))))")
        if node.start:
            lines.append(f"node{i}_start = {node.start}")
        if node.step:
            lines.append(f"node{i}_step = {node.step}")
    for i in range(1, n + 1):
        for j in range(1, n + 1):
            if i == j:
                continue
            expr = model.delay.get((i, j), model.delay.get("*"))
            if expr:
                lines.append(f"node{i}_delay{j} = {expr}")
    return "\n".join(lines) + "\n"


def chronyd_conf(node, workdir, i):
    lines = [f"pidfile {workdir}/chronyd.{i}.pid", "cmdport 0"]
    if node.role == "server":
        lines += ["local stratum 1", "allow"]
    for u in node.upstreams:
        opts = f" minpoll {node.poll[0]} maxpoll {node.poll[1]}" if node.poll else ""
        lines.append(f"server {BASE}{u}{opts}")
    if node.role == "relay":
        lines.append("allow")
    return "\n".join(lines) + "\n"


def ntpkit_conf(node):
    lines = ['log-level = "info"']
    if node.role in ("server", "relay"):
        lines.append('listen = ["0.0.0.0:123"]')
        lines.append('access = ["allow all"]')
    for u in node.upstreams:
        lines += ["[[server]]", f'address = "{BASE}{u}"']
        if node.poll:
            lines += [f"minpoll = {node.poll[0]}", f"maxpoll = {node.poll[1]}"]
    lines += ["[clock]", 'backend = "system"']
    if node.role == "server":
        lines += ["[sync]", "local-stratum = 1"]
    return "\n".join(lines) + "\n"


# --- running ----------------------------------------------------------------------------------

def build_clknetsim():
    src = os.environ.get("CLKNETSIM_SRC",
                         os.path.join(os.path.dirname(ROOT), "shared", "clknetsim", "src"))
    if not os.path.isfile(os.path.join(src, "client.c")):
        sys.exit(f"clknetsim sources not found in {src} (set CLKNETSIM_SRC)")
    h = hashlib.sha256()
    for name in sorted(os.listdir(src)):
        p = os.path.join(src, name)
        if os.path.isfile(p):
            h.update(name.encode())
            with open(p, "rb") as f:
                h.update(f.read())
    build = os.environ.get("CLKNETSIM_BUILD", f"/var/tmp/ntpkit-clknetsim-{h.hexdigest()[:12]}")
    lib, server = os.path.join(build, "clknetsim.so"), os.path.join(build, "clknetsim")
    if not (os.path.isfile(lib) and os.path.isfile(server)):
        tmp = build + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        for dirpath, _, files in os.walk(tmp):
            os.chmod(dirpath, 0o755)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)
        r = subprocess.run(["make", "-j2", "-C", tmp], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"building clknetsim failed:\n{r.stdout}{r.stderr}")
        shutil.rmtree(build, ignore_errors=True)
        os.rename(tmp, build)
    os.chmod(build, 0o755)
    return lib, server


def ensure_ntpkit(path):
    if path:
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} is not an executable")
        return os.path.abspath(path)
    binary = os.path.join(ROOT, "target", "release", "ntpkit")
    r = subprocess.run(["cargo", "build", "--release", "-q", "-p", "ntpkit"], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"cargo build --release -p ntpkit failed:\n{r.stderr}")
    return binary


def unprivileged(argv, env=None):
    """argv run as the unprivileged user, without CAP_SYS_TIME in any set; `env` only for the
    final program (so that no wrapper loads clknetsim's library)."""
    u = pwd.getpwnam(UNPRIVILEGED)
    prefix = ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--clear-groups",
              "--bounding-set=-sys_time", "--inh-caps=-all"]
    if env:
        prefix += ["env"] + [f"{k}={v}" for k, v in env.items()]
    return prefix + argv


def parse_stats(text):
    """clknetsim's statistics: {node: {key: value}}."""
    nodes, cur = {}, None
    for line in text.splitlines():
        if line.startswith("----") and "Node" in line:
            cur = int(line.split("Node")[1].split()[0])
            nodes[cur] = {}
        elif cur is not None and ":" in line:
            key, _, value = line.partition(":")
            try:
                nodes[cur][key.strip()] = float(value.split()[0])
            except (ValueError, IndexError):
                pass
    return nodes


def sync_time(offsets, freqs, start):
    """1 + the last second (from the node's start) with |offset| > 1 ms or |freq| > 5e-4."""
    last = None
    for t, (o, f) in enumerate(zip(offsets, freqs)):
        if t >= start and (abs(o) > 1e-3 or abs(f) > 5e-4):
            last = t
    if last is None:
        return 0.0
    if last >= len(offsets) - 1:
        return None  # never synchronized
    return last + 1 - start


def run_one(model, daemon, seed, ntpkit, lib, server, keep=None):
    work = tempfile.mkdtemp(prefix=f"ntpkit-clknetsim-{model.name}-{daemon}-{seed}-")
    os.chmod(work, 0o777)
    procs = []
    try:
        with open(os.path.join(work, "conf"), "w") as f:
            f.write(clknetsim_conf(model))
        sock = os.path.join(work, "sock")
        n = len(model.nodes)
        sim = subprocess.Popen(
            # A kept run also keeps clknetsim's log of every packet (time, from, to, ...).
            unprivileged([server, "-s", sock, "-o", os.path.join(work, "log.offset"),
                          "-f", os.path.join(work, "log.freq")]
                         + (["-p", os.path.join(work, "log.packets")] if keep else [])
                         + ["-l", str(model.limit),
                          "-r", str(model.reset), os.path.join(work, "conf"), str(n)]),
            stdout=open(os.path.join(work, "stats"), "w"),
            stderr=open(os.path.join(work, "log"), "w"),
            env={**os.environ, "CLKNETSIM_RANDOM_SEED": str(seed)}, cwd=work)
        deadline = time.time() + 10
        while not os.path.exists(sock):
            if time.time() > deadline or sim.poll() is not None:
                raise RuntimeError("clknetsim server did not start")
            time.sleep(0.01)
        for i, node in enumerate(model.nodes, 1):
            if daemon == "chronyd":
                conf = os.path.join(work, f"chronyd.{i}.conf")
                with open(conf, "w") as f:
                    f.write(chronyd_conf(node, work, i))
                argv = [CHRONYD, "-d", "-f", conf]
            else:
                conf = os.path.join(work, f"ntpkit.{i}.toml")
                with open(conf, "w") as f:
                    f.write(ntpkit_conf(node))
                argv = [ntpkit, "daemon", "-c", conf]
            env = {"LD_PRELOAD": lib, "CLKNETSIM_NODE": str(i), "CLKNETSIM_SOCKET": sock,
                   "CLKNETSIM_RANDOM_SEED": str(seed)}
            log = open(os.path.join(work, f"log.{i}"), "w")
            procs.append(subprocess.Popen(unprivileged(argv, env), stdout=log, stderr=log,
                                          cwd=work, start_new_session=True))
        try:
            rc = sim.wait(timeout=600)
        except subprocess.TimeoutExpired:
            sim.kill()
            raise RuntimeError("clknetsim ran for over 600 s")
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=10))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                codes.append("hung")
        stats = parse_stats(open(os.path.join(work, "stats")).read())
        offsets = [list(map(float, line.split())) for line in open(os.path.join(work, "log.offset"))]
        freqs = [list(map(float, line.split())) for line in open(os.path.join(work, "log.freq"))]
        logs = {i: open(os.path.join(work, f"log.{i}")).read() for i in range(1, n + 1)}
        result = {"model": model.name, "daemon": daemon, "seed": seed, "simulator_rc": rc,
                  "exit": codes, "nodes": {}}
        for i, node in enumerate(model.nodes, 1):
            if node.role != "client":
                continue
            s = stats.get(i, {})
            interval = s.get("Mean outgoing packet interval", math.inf)
            result["nodes"][i] = {
                "rms": s.get("RMS offset"), "max": s.get("Maximum absolute offset"),
                "mean": s.get("Mean offset"), "rms_freq": s.get("RMS frequency"),
                "packets_per_day": 86400.0 / interval if interval and interval != math.inf else 0.0,
                "sync": sync_time([o[i - 1] for o in offsets], [f[i - 1] for f in freqs],
                                  int(node.start)),
            }
        crashed = [i + 1 for i, c in enumerate(codes) if c not in (0, -signal.SIGTERM)]
        result["crashed"] = crashed
        if daemon == "ntpkit":
            client_logs = "".join(logs[i] for i, nd in enumerate(model.nodes, 1) if nd.role == "client")
            result["missing_log"] = [x for x in model.log_expect if x not in client_logs]
        if crashed and keep is None:
            keep = True
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


# --- reporting --------------------------------------------------------------------------------

METRICS = [("rms", "RMS", 1e6, "µs"), ("max", "max", 1e6, "µs"), ("mean", "mean", 1e6, "µs"),
           ("rms_freq", "RMS freq", 1e9, "ppb"), ("sync", "sync", 1, "s"),
           ("packets_per_day", "pkts/day", 1, "")]


def aggregate(results):
    """{(model, daemon): {metric: [values over seeds and measured nodes]}}"""
    out = {}
    for r in results:
        cell = out.setdefault((r["model"], r["daemon"]), {m[0]: [] for m in METRICS})
        for node in r["nodes"].values():
            for key, *_ in METRICS:
                cell[key].append(node[key])
    return out


def mean(values):
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def seed_means(results, model, daemon, key):
    """One value per seed: the mean over the run's measured nodes (the nodes of one run share
    its network and are not independent samples)."""
    out = []
    for r in results:
        if r["model"] == model and r["daemon"] == daemon:
            m = mean([n[key] for n in r["nodes"].values()])
            if m is not None:
                out.append(m)
    return out


def standard_error(values):
    """Standard error of the mean of independent values, or None for fewer than two."""
    vals = [v for v in values if v is not None]
    return statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) >= 2 else None


def ratio_cell(num, num_se, den, den_se):
    """`(r ± e)`: the ratio of two means and its standard error (to first order, from the
    means' standard errors; no ± when either is unknown). The RMS, maximum and frequency
    error of a run are heavy-tailed (one start-up gone wrong dominates a seed), so over 20
    seeds a mean is typically known to 5-20 %."""
    ratio = abs(num) / abs(den) if den else math.inf
    if num_se is None or den_se is None or not num or not den or math.isinf(ratio):
        return ratio, None, f"({ratio:.2f})"
    err = ratio * math.hypot(num_se / num, den_se / den)
    return ratio, err, f"({ratio:.2f} ± {err:.2f})"


def fmt(v, scale):
    if v is None:
        return "never"
    x = v * scale
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def table(results, model_order):
    agg = aggregate(results)
    head = ["model"] + [f"{label} ({unit})".replace(" ()", "") for _, label, _, unit in METRICS]
    rows = []
    for name in model_order:
        c, k = agg.get((name, "chronyd")), agg.get((name, "ntpkit"))
        if not c or not k:
            continue
        row = [name]
        for key, _, scale, _ in METRICS:
            mc, mk = mean(c[key]), mean(k[key])
            never_c = sum(v is None for v in c[key])
            never_k = sum(v is None for v in k[key])
            if key == "sync" and (never_c or never_k):
                cell = f"{fmt(mc, 1)}{'*' * bool(never_c)} / {fmt(mk, 1)}{'*' * bool(never_k)}"
            elif mc is None or mk is None or key == "mean":
                cell = f"{fmt(mc, scale)} / {fmt(mk, scale)}"
            else:
                se_c = standard_error(seed_means(results, name, "chronyd", key))
                se_k = standard_error(seed_means(results, name, "ntpkit", key))
                cell = f"{fmt(mc, scale)} / {fmt(mk, scale)} {ratio_cell(mk, se_k, mc, se_c)[2]}"
            row.append(cell)
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def sim_scenario(model_name):
    """The scenario of ntpkit's own simulator that models the same thing."""
    if model_name == "001-defaults":
        return "chrony-defaults"
    return f"chrony-{model_name}"


def seconds(value):
    """A scenario duration ("10000s", "1h", or a number of seconds) in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0,
             "h": 3600.0, "d": 86400.0}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * units[unit]
    return float(value)


def run_sim(ntpkit, model_name, seeds):
    """ntpkit's own simulator over `seeds` (consecutive): means over seeds of the measured
    nodes (named client*), in the harness's units."""
    path = os.path.join(ROOT, "scenarios", sim_scenario(model_name) + ".toml")
    r = subprocess.run([ntpkit, "simulate", path, "--runs", str(len(seeds)), "--seed",
                        str(seeds[0]), "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ntpkit simulate {path}: {r.stderr.strip()}")
    report = json.loads(r.stdout)
    with open(path, "rb") as f:
        scenario = tomllib.load(f)
    duration = seconds(scenario["simulation"]["duration"])
    starts = {n["name"]: seconds(n.get("start", 0)) for n in scenario["node"]}
    cells = {key: [] for key, *_ in METRICS}
    # Per node, the spread over seeds; the nodes of a run are not independent, so the mean
    # over nodes is given the nodes' typical standard error, not a smaller one.
    spreads = {key: [] for key, *_ in METRICS}
    for node in report["nodes"]:
        if not node["name"].startswith("client"):
            continue
        group = next((g for g in starts if node["name"] == g or node["name"].startswith(g + "-")),
                     None)
        running = duration - starts.get(group, 0.0)
        st = node["stats"]
        # The report's field for each metric and its scale to the harness's units.
        fields = [("rms", "offset_rms_s", 1), ("max", "offset_max_s", 1),
                  ("mean", "offset_mean_s", 1), ("rms_freq", "frequency_rms_ppm", 1e-6),
                  ("sync", "sync_time_s", 1), ("packets_per_day", "packets_sent", 86400 / running)]
        for key, field_name, scale in fields:
            stat = st[field_name]
            never = key == "sync" and not node["synced_runs"]
            cells[key].append(None if never else stat["mean"] * scale)
            if stat.get("sd") is not None and stat.get("runs", 0) >= 2:
                spreads[key].append((stat["sd"] * scale) ** 2 / stat["runs"])
    cells["se"] = {key: math.sqrt(statistics.fmean(v)) if v else None
                   for key, v in spreads.items()}
    return cells


def sim_table(results, sims, model_order):
    """ntpkit in clknetsim against ntpkit in its own simulator."""
    agg = aggregate(results)
    head = ["model"] + [f"{label} ({unit})".replace(" ()", "") for _, label, _, unit in METRICS]
    rows = []
    for name in model_order:
        k, s = agg.get((name, "ntpkit")), sims.get(name)
        if not k or not s:
            continue
        row = [name]
        for key, _, scale, _ in METRICS:
            mk, ms = mean(k[key]), mean(s[key])
            if mk is None or ms is None or key == "mean":
                row.append(f"{fmt(mk, scale)} / {fmt(ms, scale)}")
                continue
            se_k = standard_error(seed_means(results, name, "ntpkit", key))
            ratio, err, text = ratio_cell(ms, s["se"][key], mk, se_k)
            apart = abs(ratio - 1) - 0.15
            flag = "" if apart <= 0 else " ?" if err is not None and apart <= 2 * err else " !"
            row.append(f"{fmt(mk, scale)} / {fmt(ms, scale)} {text}{flag}")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def parse_seeds(text):
    seeds = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        seeds += list(range(int(a), int(b or a) + 1))
    return seeds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated model names (default: all)")
    p.add_argument("--seeds", default="1-20", help="seeds, e.g. 1-20 or 1,4,7 (default 1-20)")
    p.add_argument("--quick", action="store_true", help="the CI subset, with its checks")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ntpkit", help="ntpkit binary (default: build target/release/ntpkit)")
    p.add_argument("--json", help="write every run's figures to this file")
    p.add_argument("--keep", action="store_true",
                   help="keep every run's work directory, with clknetsim's packet log")
    p.add_argument("--list", action="store_true", help="list the models and exit")
    p.add_argument("--with-sim", action="store_true",
                   help="also run ntpkit's own simulator on the same models and compare")
    p.add_argument("--chronyd-cache", metavar="FILE",
                   help="reuse chronyd's runs from FILE and add the missing ones to it "
                        "(clknetsim is deterministic: chronyd's figures for a model and seed "
                        "do not change while ntpkit is tuned)")
    args = p.parse_args()
    all_models = models()
    if args.list:
        for m in all_models.values():
            print(f"{m.name:22} {m.description}")
        return 0
    if os.geteuid() != 0:
        sys.exit("must run as root (every simulated process is started as an unprivileged user)")
    for tool in ("setpriv", "make", "gcc", "g++"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (scripts/install-test-deps.sh installs it)")
    if not os.access(CHRONYD, os.X_OK):
        sys.exit(f"{CHRONYD} not found (scripts/install-test-deps.sh unpacks it)")
    names = QUICK["models"] if args.quick else (
        args.models.split(",") if args.models else list(all_models))
    unknown = [n for n in names if n not in all_models]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; --list shows them")
    seeds = QUICK["seeds"] if args.quick else parse_seeds(args.seeds)
    lib, server = build_clknetsim()
    ntpkit = ensure_ntpkit(args.ntpkit)
    cache = {}
    if args.chronyd_cache and os.path.exists(args.chronyd_cache):
        with open(args.chronyd_cache) as f:
            cache = {(r["model"], r["seed"]): r for r in json.load(f)}
    jobs = [(all_models[n], d, s) for n in names for s in seeds for d in ("chronyd", "ntpkit")
            if not (d == "chronyd" and (n, s) in cache)]
    started = time.time()
    results = [cache[(n, s)] for n in names for s in seeds if (n, s) in cache]
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, m, d, s, ntpkit, lib, server, args.keep or None)
                   for m, d, s in jobs]
        for f in concurrent.futures.as_completed(futures):
            r = f.result()
            results.append(r)
            if (args.chronyd_cache and r["daemon"] == "chronyd" and not r["crashed"]
                    and r["simulator_rc"] == 0):
                cache[(r["model"], r["seed"])] = r
                with open(args.chronyd_cache + ".tmp", "w") as out:
                    json.dump(list(cache.values()), out)
                os.replace(args.chronyd_cache + ".tmp", args.chronyd_cache)
    print(f"clknetsim: {len(names)} model(s) x {len(seeds)} seed(s) x 2 daemons in "
          f"{time.time() - started:.0f} s; each cell: chronyd / ntpkit (ratio ± its standard "
          f"error over seeds), means over "
          f"seeds {seeds[0]}-{seeds[-1]} and measured nodes; * = some runs never synchronized")
    print(table(results, names))
    sims = {}
    if args.with_sim:
        for name in names:
            sims[name] = run_sim(ntpkit, name, seeds)
        print(f"\nntpkit in clknetsim / in its own simulator (scenarios/chrony-*.toml), same "
              f"seeds; ratio own/clknetsim ± its standard error, ! = apart by more than "
              f"15 % and two standard errors, ? = apart by more than 15 % but within two "
              f"standard errors of it; sync: the own simulator counts |offset| < 1 ms only")
        print(sim_table(results, sims, names))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "own_simulator": sims}, f, indent=1)
    failures = []
    for r in results:
        if r["crashed"] or r["simulator_rc"] != 0:
            failures.append(f"{r['model']} seed {r['seed']}: {r['daemon']} exited {r['exit']} "
                            f"(simulator {r['simulator_rc']})")
        if r["daemon"] == "ntpkit":
            model = all_models[r["model"]]
            if model.expect_sync and any(n["sync"] is None for n in r["nodes"].values()):
                failures.append(f"{r['model']} seed {r['seed']}: ntpkit never synchronized")
            if r.get("missing_log"):
                failures.append(f"{r['model']} seed {r['seed']}: ntpkit did not log "
                                f"{r['missing_log']}")
    if args.quick:
        agg = aggregate(results)
        for name in QUICK["must_win"]:
            c, k = mean(agg[(name, "chronyd")]["rms"]), mean(agg[(name, "ntpkit")]["rms"])
            if k is None or c is None or k > c:
                failures.append(f"{name}: ntpkit RMS {k} no longer below chronyd's {c}")
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
