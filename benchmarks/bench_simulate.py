"""Simulator throughput: utterances/s at a preset and the peak memory of the process.

    .venv/bin/python benchmarks/bench_simulate.py [--preset medium]

The peer is writing the same interactions table with pyarrow alone (no simulation), so
the ratio says how much of the time goes to simulating rather than to Parquet I/O.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from raylib import uri
from raylib.sim import simulate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="medium")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = simulate(out, args.preset, seed=0)
        sim_s = time.perf_counter() - t0
        table = uri.read_table(out, "interactions")
        t0 = time.perf_counter()
        uri.write_table(table, out + "/copy", "interactions")
        write_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = summary["n_interactions"]
    print(f"preset={args.preset} interactions={n} routing={summary['n_routing']}")
    print(f"simulate: {sim_s:.1f} s, {n / sim_s:,.0f} utterances/s, peak RSS {peak_mb:,.0f} MiB")
    print(f"peer (write the same table only): {write_s:.2f} s; simulate/write ratio {sim_s / write_s:.1f}x")


if __name__ == "__main__":
    main()
