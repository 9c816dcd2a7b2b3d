#!/usr/bin/env python3
"""Hourly request counts from a Parquet history: `surgeguard aggregate` beside DuckDB.

Usage (from the repository, after `cargo build --release`; needs `pip install duckdb`):

    python3 benches/aggregate_vs_duckdb.py [--rows 3000000] [--runs 5] [--dir /tmp/sg-agg-bench]

Generates the history once with `surgeguard gen history` (7 days, the peak rate chosen so the
history holds about --rows requests), checks that both engines return the same counts, then
times each --runs times, alternating, and prints the medians and their ratio.

What is timed:
- surgeguard: the whole `surgeguard aggregate --history DIR --resolution 1h` process (start-up,
  DataFusion session, query, zero fill, CSV to /dev/null), wall clock;
- DuckDB: the query in an already-open connection of this Python process (import and start-up
  not counted), with the result fetched into Python.
So the ratio is, if anything, unfair to surgeguard.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("SURGEGUARD_BIN", ROOT / "target" / "release" / "surgeguard"))
# Requests in a 7-day history per unit of --peak-rpm (measured: 1 430 045 rows at 300 rpm).
ROWS_PER_RPM = 1_430_045 / 300


def surgeguard_counts(history: Path) -> dict:
    out = subprocess.run([str(BIN), "aggregate", "--history", str(history), "--resolution", "1h"],
                         check=True, capture_output=True, text=True).stdout
    counts = {}
    for line in out.splitlines()[1:]:
        ts, value = line.split(",")
        counts[ts] = float(value)
    return counts


# DuckDB's fastest form of the query that we found (2026-11-29, DuckDB 2.0.1, this history):
# integer hours from epoch_ms, 144 ms; time_bucket on the cast timestamp took 290 ms and
# time_bucket on the TIMESTAMPTZ with strftime 501 ms. The bucket numbers are turned into
# timestamps only for the equality check, outside the timing.
QUERY = """
SELECT epoch_ms(ts) // 3600000 AS bucket, count(*) AS n
FROM read_parquet('{glob}')
GROUP BY bucket ORDER BY bucket
"""


def iso_hour(bucket: int) -> str:
    return datetime.fromtimestamp(bucket * 3600, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/sg-agg-bench")
    args = ap.parse_args()
    if not BIN.is_file():
        print(f"{BIN} not found: run `cargo build --release` first", file=sys.stderr)
        return 1
    history = Path(args.dir)
    if not history.is_dir():
        rpm = args.rows / ROWS_PER_RPM
        subprocess.run([str(BIN), "gen", "history", "--days", "7", "--out", str(history), "--peak-rpm", f"{rpm:.1f}"], check=True)
    glob = f"{history}/**/*.parquet"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    query = QUERY.format(glob=glob)
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()[0]

    # Same answer first (DuckDB omits empty hours; this history has none).
    ours = surgeguard_counts(history)
    theirs = {iso_hour(b): float(n) for b, n in con.execute(query).fetchall()}
    if ours != theirs:
        diff = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)][:5]
        print(f"the engines disagree, e.g. at {diff}", file=sys.stderr)
        return 1

    sg_times, duck_times = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        subprocess.run([str(BIN), "aggregate", "--history", str(history), "--resolution", "1h", "--out", "/dev/null"], check=True)
        sg_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        con.execute(query).fetchall()
        duck_times.append(time.perf_counter() - t)
    sg, duck = statistics.median(sg_times), statistics.median(duck_times)
    print(f"history: {rows} requests in {sum(1 for _ in history.rglob('*.parquet'))} Parquet files under {history}; "
          f"{len(ours)} hourly buckets, identical from both engines")
    print(f"surgeguard aggregate (whole process): median {sg * 1000:.0f} ms over {args.runs} runs "
          f"(min {min(sg_times) * 1000:.0f}, max {max(sg_times) * 1000:.0f})")
    print(f"DuckDB {duckdb.__version__} (query only):     median {duck * 1000:.0f} ms over {args.runs} runs "
          f"(min {min(duck_times) * 1000:.0f}, max {max(duck_times) * 1000:.0f})")
    print(f"ratio surgeguard / DuckDB: {sg / duck:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
