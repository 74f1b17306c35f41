"""Simulator throughput: interactions/s and the peak memory of the process, per world size.

    .venv/bin/python benchmarks/bench_simulate.py [--preset medium]
    .venv/bin/python benchmarks/bench_simulate.py --preset large --interactions 1000000 2000000 4000000 \
        --keep /tmp/worlds --json benchmarks/results/simulate_scale.json

Without ``--interactions`` the preset's own world is written and the peer is writing the
same interactions table with pyarrow alone (no simulation), so the ratio says how much of
the time goes to simulating rather than to Parquet I/O. With ``--interactions`` each size
runs ``selflearn simulate --interactions N`` in a fresh process (``measure.py``): its wall
time (the pilot included), interactions/s and peak RSS; ``--keep`` keeps the worlds
(``DIR/<N>``) for the mining benchmarks. ``--routing`` sets the routing log's size.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from measure import measured, peak_rss_mib

from raylib import uri
from raylib.sim import simulate


def bench_preset(preset: str) -> None:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = simulate(out, preset, seed=0)
        sim_s = time.perf_counter() - t0
        table = uri.read_table(out, "interactions")
        t0 = time.perf_counter()
        uri.write_table(table, out + "/copy", "interactions")
        write_s = time.perf_counter() - t0
    n = summary["n_interactions"]
    print(f"preset={preset} interactions={n} routing={summary['n_routing']}")
    print(f"simulate: {sim_s:.1f} s, {n / sim_s:,.0f} utterances/s, peak RSS {peak_rss_mib():,.0f} MiB")
    print(f"peer (write the same table only): {write_s:.2f} s; simulate/write ratio {sim_s / write_s:.1f}x")


def bench_sizes(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        config = os.path.join(scratch, "routing.yaml")
        with open(config, "w") as f:
            f.write(f"routing: {{n_requests: {args.routing}}}\n")
        for n in args.interactions:
            out = os.path.join(args.keep or scratch, str(n))
            run = measured(["simulate", "--out", out, "--preset", args.preset, "--interactions", str(n),
                            "--config", config, "--log-level", "WARNING"])
            summary = json.loads(uri.read_bytes(uri.join(out, "summary.json")))
            row = {"target": n, "n_interactions": summary["n_interactions"], "n_customers": summary["n_customers"],
                   "n_routing": summary["n_routing"], "seconds": run["seconds"],
                   "interactions_per_s": summary["n_interactions"] / run["seconds"],
                   "peak_rss_mib": run["peak_rss_mib"],
                   "parquet_mib": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
                                      os.walk(os.path.join(out, "interactions")) for f in fs) / 2**20}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="medium")
    p.add_argument("--interactions", type=int, nargs="+", help="world sizes (interactions) to write")
    p.add_argument("--routing", type=int, default=10_000, help="routing-log rows per sized world")
    p.add_argument("--keep", help="keep the sized worlds under this directory")
    p.add_argument("--json", help="write the sized runs here")
    args = p.parse_args()
    if not args.interactions:
        bench_preset(args.preset)
        return
    rows = bench_sizes(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "routing": args.routing, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
