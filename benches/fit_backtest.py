#!/usr/bin/env python3
"""fit + a 50-window backtest on a year of 5-minute demand, timed from the command line.

Usage (from the repository, after `cargo build --release`):

    python3 benches/fit_backtest.py [--runs 3] [--model poisson] [--dir /tmp/sg-fit-bench]

Makes the input once: `surgeguard gen history --days 365 --peak-rpm 20` (about 5 M requests)
aggregated to a 5-minute series (`ts,value`, 105 120 steps) with `surgeguard aggregate`. Then,
--runs times, it times two processes, wall clock, start-up included:
- `surgeguard fit --series --history series.csv --events events.csv --horizon 1h`;
- `surgeguard backtest --series … --windows 50 --step 1d --horizon 1h` (50 refits, each with its
  own conformal calibration, and the reports and the PNG written).
It prints each run and the medians; the target is fit + backtest ≤ 5 s.
"""

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("SURGEGUARD_BIN", ROOT / "target" / "release" / "surgeguard"))


def timed(args):
    t = time.perf_counter()
    subprocess.run([str(BIN), *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default="poisson")
    ap.add_argument("--dir", default="/tmp/sg-fit-bench")
    a = ap.parse_args()
    d = Path(a.dir)
    history, series, events = d / "history", d / "series.csv", d / "history" / "events.csv"
    if not series.exists():
        d.mkdir(parents=True, exist_ok=True)
        print("generating a year of history …", flush=True)
        subprocess.run([str(BIN), "gen", "history", "--days", "365", "--peak-rpm", "20", "--out", str(history)], check=True)
        subprocess.run([str(BIN), "aggregate", "--history", str(history), "--resolution", "5m", "--out", str(series)], check=True)
    steps = sum(1 for _ in open(series)) - 1
    print(f"input: {steps} steps of 5 minutes; model {a.model}; binary {BIN}")
    common = ["--series", "--history", str(series), "--events", str(events), "--resolution", "5m", "--horizon", "1h", "--model", a.model]
    fits, bts = [], []
    for r in range(a.runs):
        f = timed(["fit", *common, "--out", str(d / "model.json")])
        b = timed(["backtest", *common, "--windows", "50", "--step", "1d", "--out", str(d / "bt")])
        fits.append(f)
        bts.append(b)
        print(f"run {r + 1}: fit {f:.2f} s, backtest {b:.2f} s, total {f + b:.2f} s", flush=True)
    mf, mb = statistics.median(fits), statistics.median(bts)
    print(f"median: fit {mf:.2f} s, 50-window backtest {mb:.2f} s, total {mf + mb:.2f} s (target ≤ 5 s)")


if __name__ == "__main__":
    main()
