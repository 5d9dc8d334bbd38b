#!/usr/bin/python3
"""Read-only check that nothing changed the kernel clock during a test run.

    clockstate.py save FILE    record the state
    clockstate.py check FILE   compare with the recorded state; exit 1 if it changed

The state is what adjtimex(2) reports when called with modes = 0 (a pure read that needs no
privilege and changes nothing): the frequency correction, the remaining offset, the status
flags (STA_*) and the tick length, plus how far CLOCK_REALTIME is ahead of CLOCK_MONOTONIC_RAW.
A step of the clock or a slew of more than a millisecond moves that last number; a changed
frequency, offset, status or tick means someone called adjtimex / clock_adjtime with modes set.
Standard library only (ctypes), so it runs on a fresh machine.
"""
import ctypes
import ctypes.util
import json
import sys
import time

# struct timex from <sys/timex.h> on Linux (64-bit longs); the 11 trailing ints are padding.
_LONG, _INT = ctypes.c_long, ctypes.c_int


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", _LONG), ("freq", _LONG), ("maxerror", _LONG),
        ("esterror", _LONG), ("status", _INT), ("constant", _LONG), ("precision", _LONG),
        ("tolerance", _LONG), ("time_sec", _LONG), ("time_usec", _LONG), ("tick", _LONG),
        ("ppsfreq", _LONG), ("jitter", _LONG), ("shift", _INT), ("stabil", _LONG),
        ("jitcnt", _LONG), ("calcnt", _LONG), ("errcnt", _LONG), ("stbcnt", _LONG),
        ("tai", _INT), ("padding", _INT * 11),
    ]


COMPARED = ("freq", "offset", "status", "tick")
MAX_DRIFT = 1e-3  # seconds of REALTIME vs MONOTONIC_RAW movement tolerated (a few ppm over minutes)


def read_state():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()
    tx.modes = 0  # read only
    rc = libc.adjtimex(ctypes.byref(tx))
    if rc < 0:
        raise OSError(ctypes.get_errno(), "adjtimex(modes=0) failed")
    # The smallest of several back-to-back readings is the least disturbed by preemption.
    gaps = []
    for _ in range(7):
        raw = time.clock_gettime(time.CLOCK_MONOTONIC_RAW)
        real = time.clock_gettime(time.CLOCK_REALTIME)
        gaps.append(real - raw)
    return {
        "clock_state": rc,
        "freq": tx.freq,
        "offset": tx.offset,
        "status": tx.status,
        "tick": tx.tick,
        "realtime_minus_raw": min(gaps),
        "taken_at": time.time(),
    }


def main(argv):
    if len(argv) != 3 or argv[1] not in ("save", "check"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    cmd, path = argv[1], argv[2]
    now = read_state()
    if cmd == "save":
        with open(path, "w") as f:
            json.dump(now, f)
        print("clockstate: saved %s" % json.dumps({k: now[k] for k in COMPARED}))
        return 0
    with open(path) as f:
        before = json.load(f)
    changed = [k for k in COMPARED if before[k] != now[k]]
    span = now["taken_at"] - before["taken_at"]
    # An unchanged, non-zero frequency correction (freq in 2^-16 ppm, tick in us per 1/100 s)
    # makes REALTIME run at a steady rate against the raw clock: that is not a change.
    rate = before["freq"] / 65536.0 * 1e-6 + (before["tick"] - 10000) / 10000.0
    drift = now["realtime_minus_raw"] - before["realtime_minus_raw"] - rate * span
    for k in changed:
        print("clockstate: %s changed: %r -> %r" % (k, before[k], now[k]))
    print("clockstate: CLOCK_REALTIME moved %+.6f s against CLOCK_MONOTONIC_RAW in %.0f s"
          " (beyond the steady rate of the unchanged frequency correction)" % (drift, span))
    if changed or abs(drift) > MAX_DRIFT:
        print("clockstate: FAILED: the kernel clock state changed during the run")
        return 1
    print("clockstate: OK: kernel clock state unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
