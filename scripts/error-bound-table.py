#!/usr/bin/python3
"""Runs every shipped scenario in the simulator and prints one Markdown table of the error
bound's coverage and width (docs/error-bound.md).

Usage: scripts/error-bound-table.py [RUNS] [BINARY]   (default 3 runs, target/release/ntpkit)

Per scenario, over its disciplined nodes and all runs pooled: samples with a bound, samples
without (status unknown), misses (|true error| > B), the lowest coverage of any node, the worst
miss, the median over nodes of each node's median B, the largest 99th percentile, the median
RMS true error, the median of (median B / RMS error), the median of ClockBound's formula, and
the largest ratio of our median B to ClockBound's.
"""
import glob
import json
import os
import statistics
import subprocess
import sys


def fmt(x):
    if x is None:
        return "-"
    a = abs(x)
    if a == 0:
        return "0"
    if a < 1e-6:
        return f"{x * 1e9:.0f} ns"
    if a < 1e-3:
        return f"{x * 1e6:.1f} µs"
    if a < 1:
        return f"{x * 1e3:.2f} ms"
    return f"{x:.2f} s"


def row(name, doc):
    nodes = []
    for n in doc["nodes"]:
        b = n.get("error_bound")
        if not b:
            continue
        rms = n["offset_s"]["rms"] if "offset_s" in n else n["stats"]["offset_rms_s"]["mean"]
        nodes.append((n["name"], b, rms))
    if not nodes:
        return f"| {name} | 0 | never synchronized | | | | | | | | | | |"
    bounded = sum(b["samples"] - b["unknown_samples"] for _, b, _ in nodes)
    unknown = sum(b["unknown_samples"] for _, b, _ in nodes)
    misses = sum(b["violations"] for _, b, _ in nodes)
    coverage = min(b["coverage"] for _, b, _ in nodes)
    worst = None
    for node, b, _ in nodes:
        w = b["worst_violation"]
        if w and (worst is None or w["excess_s"] > worst[1]["excess_s"]):
            worst = (node, w)
    worst = f"{fmt(worst[1]['excess_s'])} at {worst[1]['at_s']:.0f} s ({worst[0]})" if worst else "-"
    medians = [b["median_bound_s"] for _, b, _ in nodes if b["median_bound_s"]]
    p99 = max(b["p99_bound_s"] or 0 for _, b, _ in nodes)
    rms = statistics.median(r for _, _, r in nodes)
    ratio = statistics.median(b["median_bound_s"] / r for _, b, r in nodes if r > 0 and b["median_bound_s"])
    cb = statistics.median(b["median_clockbound_s"] for _, b, _ in nodes if b["median_clockbound_s"])
    vs_cb = max(b["median_bound_s"] / b["median_clockbound_s"] for _, b, _ in nodes if b["median_clockbound_s"])
    return (f"| {name} | {len(nodes)} | {bounded} | {unknown} | {misses} | {coverage * 100:.5f} % | "
            f"{worst} | {fmt(statistics.median(medians))} | {fmt(p99)} | {fmt(rms)} | {ratio:.1f} | "
            f"{fmt(cb)} | {vs_cb:.2f} |")


def main():
    runs = sys.argv[1] if len(sys.argv) > 1 else "3"
    binary = sys.argv[2] if len(sys.argv) > 2 else "target/release/ntpkit"
    print("| scenario | nodes | bounded samples | unknown | misses | lowest coverage | worst miss "
          "| median B | max p99 B | RMS error | B / RMS | median ClockBound | B / ClockBound (max) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob("scenarios/*.toml")):
        out = subprocess.run([binary, "simulate", path, "--runs", runs, "--json"],
                             check=True, capture_output=True, text=True).stdout
        print(row(os.path.basename(path)[:-5], json.loads(out)))


if __name__ == "__main__":
    main()
