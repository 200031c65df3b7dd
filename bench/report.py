#!/usr/bin/env python3
"""Render the tcpfault benchmark results as Markdown.

    python3 bench/report.py RESULTS_DIR

RESULTS_DIR is what bench/run.sh leaves behind (it prints its path):
  raw.tsv  one line per measurement: round, config, measure, value
           (value is "NA" when the run failed)
  rss.tsv  one line per proxy process: config, target, pid, VmRSS kB, VmHWM kB
Prints the summary table (medians over rounds), the RSS table and the
per-round values. run.sh calls this itself; run it again by hand to re-render.
"""
import statistics
import sys
from pathlib import Path

# (key, label, unit scale, decimals, higher_is_better)
MEASURES = [
    ("iperf1", "iperf3 bulk, 1 stream (Gbit/s)", 1e-9, 2, True),
    ("iperf4", "iperf3 bulk, 4 streams (Gbit/s)", 1e-9, 2, True),
    ("sc1", "short connections/s, 1 client", 1, 0, True),
    ("sc8", "short connections/s, 8 clients", 1, 0, True),
    ("pp50", "ping-pong RTT p50 (µs)", 1, 1, False),
    ("pp99", "ping-pong RTT p99 (µs)", 1, 1, False),
    ("sc_err", "short-conn errors (sum of all runs)", 1, 0, False),
]
CONFIG_ORDER = ["direct", "tcpfault", "socat", "haproxy"]


def load(results_dir):
    vals = {}  # (config, measure) -> [(round, float or None)]
    configs = []
    for line in (results_dir / "raw.tsv").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        rnd, cfg, measure, value = line.split("\t")
        if cfg not in configs:
            configs.append(cfg)
        v = None if value == "NA" else float(value)
        vals.setdefault((cfg, measure), []).append((int(rnd), v))
    configs.sort(key=lambda c: CONFIG_ORDER.index(c) if c in CONFIG_ORDER else 99)
    return configs, vals


def summary(vals, cfg, key):
    runs = [v for _, v in vals.get((cfg, key), []) if v is not None]
    if not runs:
        return None
    if key == "sc_err":
        return sum(runs)
    return statistics.median(runs)


def fmt(v, scale, decimals):
    if v is None:
        return "n/a"
    return f"{v * scale:,.{decimals}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    results_dir = Path(sys.argv[1])
    configs, vals = load(results_dir)
    proxies = [c for c in configs if c != "direct"]
    rounds = max((r for runs in vals.values() for r, _ in runs), default=0)

    head = ["measure"]
    if "direct" in configs:
        head.append("direct")
    for p in proxies:
        head.append(p)
        if "direct" in configs:
            head.append(f"{p}/direct")
    extra = [(a, b) for a, b in (("tcpfault", "haproxy"), ("tcpfault", "socat")) if a in configs and b in configs]
    head += [f"{a}/{b}" for a, b in extra]

    print(f"Medians of {rounds} alternating round(s). Ratios are value/value: for rates higher is better, "
          "for latency lower is better.\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for key, label, scale, dec, _ in MEASURES:
        if not any((c, key) in vals for c in configs):
            continue
        row = [label]
        d = summary(vals, "direct", key)
        if "direct" in configs:
            row.append(fmt(d, scale, dec))
        for p in proxies:
            v = summary(vals, p, key)
            row.append(fmt(v, scale, dec))
            if "direct" in configs:
                row.append("—" if key == "sc_err" else ratio(v, d))
        for a, b in extra:
            row.append("—" if key == "sc_err" else ratio(summary(vals, a, key), summary(vals, b, key)))
        print("| " + " | ".join(row) + " |")

    rss_file = results_dir / "rss.tsv"
    if rss_file.exists() and rss_file.read_text().strip():
        print("\nResident memory of each proxy process after all runs (from /proc/PID/status):\n")
        print("| proxy | instance (upstream) | VmRSS (KiB) | VmHWM peak (KiB) |")
        print("|---|---|---:|---:|")
        for line in rss_file.read_text().splitlines():
            cfg, target, _pid, rss, hwm = line.split("\t")
            print(f"| {cfg} | {target} | {rss} | {hwm} |")

    print("\nPer-round values (in table units):\n")
    print("| measure | config | " + " | ".join(f"r{r}" for r in range(1, rounds + 1)) + " |")
    print("|---|---|" + "---:|" * rounds)
    for key, label, scale, dec, _ in MEASURES:
        for c in configs:
            runs = dict(vals.get((c, key), []))
            if not runs:
                continue
            cells = [fmt(runs.get(r), scale, dec) if r in runs else "" for r in range(1, rounds + 1)]
            print(f"| {key} | {c} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
