#!/usr/bin/env python3
"""What any estimator can reach on chrony's exponential-jitter models: a reference, not ntpkit.

On chrony's Test 1 / Test 2 models (each direction 1 ms + J·Exp(1), the clock's frequency a
random walk of W per √s, the clock read at 1 Hz from R to L seconds) this runs, on the same
draws:

* ``kalman-true``: a two-state Kalman filter told the true wander and each sample's true
  asymmetry bound: given the round trip's excess over the path's minimum S, the offset error
  is uniform on ±S/2, a variance of S²/12. The best any linear estimator weighing samples by
  their delay can do; no daemon knows S exactly.
* ``kalman-window``: the same filter with S taken against the smallest of the last
  ``--window`` delays plus that minimum's uncertainty (``--spread`` × the median excess / √n),
  as ntpkit's clock filter states it.
* ``bounded-true`` / ``bounded-window``: a particle filter that uses the error's bounded shape
  instead of its variance (each sample confines the clock to its ±S/2 band), with the true S
  and with the windowed one.

The clock is corrected instantly here (no slewing), so every figure flatters its estimator.
Requires numpy. Example (chrony's Test 2 with J = 10 ms, 20 seeds):

    python3 scripts/estimator-bounds.py --wander 1e-8 --jitter 10e-3 --poll 64 --seeds 20
"""

import argparse

import numpy as np

BASE = 1e-3


def draw(seed, wander, jitter, poll, length):
    """True clock error (s) at each second, poll times, and each exchange's one-way delays."""
    rng = np.random.default_rng(seed)
    freq = 1e-4 + np.cumsum(wander * rng.standard_normal(length))
    error = 0.1 + np.cumsum(freq)
    times = np.arange(poll, length, poll)
    up = BASE + jitter * rng.exponential(size=len(times))
    down = BASE + jitter * rng.exponential(size=len(times))
    return error, times, up, down


def excess_bounds(up, down, window, spread):
    """Each exchange's excess delay against the smallest of the last `window` delays, plus
    that minimum's uncertainty; the whole delay while fewer than eight are known."""
    delays = up + down
    out = np.empty_like(delays)
    for k, d in enumerate(delays):
        held = delays[max(0, k - window + 1):k + 1]
        if len(held) < 8:
            out[k] = d
            continue
        low = held.min()
        median = np.median(delays[max(0, k - 31):k + 1])
        out[k] = d - low + (median - low) * spread / np.sqrt(len(held))
    return out


def rms_from(error, estimate, start, end):
    e = (error - estimate)[start:end]
    return float(np.sqrt(np.nanmean(e * e)))


def kalman(error, times, up, down, excess, wander, start):
    """RMS error (s) of a phase/frequency Kalman filter weighing samples by excess²/12."""
    z = error[times] + (up - down) / 2
    q = wander * wander
    state = np.array([z[0], 0.0])
    cov = np.diag([1e-2, 1e-8])
    estimate = np.full(len(error), np.nan)
    last = times[0]
    for k, t in enumerate(times):
        if k > 0:
            estimate[last:t] = state[0] + state[1] * np.arange(t - last)
        dt = t - last
        f = np.array([[1.0, dt], [0.0, 1.0]])
        noise = q * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])
        state = f @ state
        cov = f @ cov @ f.T + noise
        r = excess[k] ** 2 / 12 + 1e-12
        gain = cov[:, 0] / (cov[0, 0] + r)
        state = state + gain * (z[k] - state[0])
        cov = cov - np.outer(gain, cov[0, :])
        last = t
    return rms_from(error, estimate, start, times[-1])


def bounded(error, times, up, down, excess, wander, start, seed, particles, tail):
    """RMS error (s) of a particle filter whose samples each confine the clock to ±excess/2."""
    rng = np.random.default_rng(seed + 1000)
    z = error[times] + (up - down) / 2
    q = wander * wander
    x = z[0] + excess[0] * (rng.random(particles) - 0.5)
    nu = rng.standard_normal(particles) * 1e-4
    w = np.full(particles, 1.0 / particles)
    estimate = np.full(len(error), np.nan)
    last = times[0]
    for k, t in enumerate(times):
        if k > 0:
            estimate[last:t] = np.sum(w * x) + np.sum(w * nu) * np.arange(t - last)
            dt = t - last
            a, b = rng.standard_normal(particles), rng.standard_normal(particles)
            x = x + nu * dt + np.sqrt(q * dt**3 / 3) * (np.sqrt(3) / 2 * a + 0.5 * b)
            nu = nu + np.sqrt(q * dt) * a
        half = excess[k] / 2
        outside = np.abs(z[k] - x) - half
        # Beyond the band the likelihood falls off over `tail` of it rather than at once: a
        # band drawn from an estimated minimum can miss the clock, and a hard edge would then
        # leave no particle standing. With `tail` 0, a hard edge (blurred by 2 %).
        if tail > 0:
            beyond = np.exp(-outside / (5e-6 + tail * half))
        else:
            beyond = np.exp(-0.5 * (outside / (5e-6 + 0.02 * half)) ** 2)
        w = w * np.where(outside <= 0, 1.0, beyond)
        total = w.sum()
        w = w / total if total > 0 else np.full(particles, 1.0 / particles)
        if 1.0 / np.sum(w * w) < particles / 2:
            pick = rng.choice(particles, particles, p=w)
            x, nu = x[pick], nu[pick]
            w = np.full(particles, 1.0 / particles)
            shrink = 0.1 * particles ** -0.2
            x = x + shrink * np.std(x) * rng.standard_normal(particles)
            nu = nu + shrink * np.std(nu) * rng.standard_normal(particles)
        last = t
    return rms_from(error, estimate, start, times[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wander", type=float, required=True, help="W, per √s (1e-9 or 1e-8)")
    p.add_argument("--jitter", type=float, required=True, help="J, seconds")
    p.add_argument("--poll", type=int, required=True, help="fixed poll interval, seconds")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--length", type=int, default=100_000, help="L, seconds")
    p.add_argument("--start", type=int, default=10_000, help="R, seconds")
    p.add_argument("--window", type=int, default=256, help="delays the minimum spans")
    p.add_argument("--spread", type=float, default=2.0, help="minimum's uncertainty factor")
    p.add_argument("--particles", type=int, default=20_000)
    p.add_argument("--tail", type=float, default=0.25,
                   help="the bounded filter's tail beyond a band, in units of the band (0: hard)")
    a = p.parse_args()
    rows = {"kalman-true": [], "kalman-window": [], "bounded-true": [], "bounded-window": []}
    for seed in range(1, a.seeds + 1):
        error, times, up, down = draw(seed, a.wander, a.jitter, a.poll, a.length)
        true_excess = up + down - 2 * BASE
        window = excess_bounds(up, down, a.window, a.spread)
        args = (error, times, up, down)
        rows["kalman-true"].append(kalman(*args, true_excess, a.wander, a.start))
        rows["kalman-window"].append(kalman(*args, window, a.wander, a.start))
        rows["bounded-true"].append(
            bounded(*args, true_excess, a.wander, a.start, seed, a.particles, a.tail))
        rows["bounded-window"].append(
            bounded(*args, window, a.wander, a.start, seed, a.particles, a.tail))
    print(f"W {a.wander:g}, J {a.jitter * 1e3:g} ms, poll {a.poll} s, {a.seeds} seeds, "
          f"minimum over {a.window} delays, spread {a.spread:g}, tail {a.tail:g}: mean RMS (µs)")
    for name, values in rows.items():
        print(f"  {name:15} {np.mean(values) * 1e6:8.0f}")


if __name__ == "__main__":
    main()
