"""Cost model of rewrite mining at production scale, from the measured per-stage rates.

    .venv/bin/python benchmarks/cost_model.py benchmarks/results/mine_scale_1m_16m.json [--cpus 32 128 512] \
        [--pdrfe benchmarks/results/pdrfe_scale.json]

Reads ``bench_scale.py``'s runs (one machine of ``cpus`` CPUs) and projects a run on N
interactions (500M: a day; 45B: three months) onto a cluster of C CPUs:

- data stages (validate, sessionize, count, evidence): linear in N at the largest measured
  size's CPU-seconds per interaction (spilling included, so conservative for a cluster
  whose object store holds the data), spread over C CPUs;
- source solves: CPU-seconds grow as N^b with b fitted over the ``--fit`` largest sizes
  (the chain's transitions, not only its states, drive the BFS), spread over C CPUs (one
  solver actor per CPU);
- driver stages (chain build, Eq. 20, filters) and the number of states grow as N^b, b
  fitted the same way; the driver is one process. The driver's peak RSS is its RSS when
  mining started (Ray and the imports) plus what mining added, grown as N^b;
- PDRFE (``--pdrfe``, ``bench_pdrfe.py``'s runs): one epoch over N edges at the largest
  graph's edges/s per single-threaded worker, spread over C workers, and the graph's
  memory at that graph's peak RSS per edge (one process holds the whole graph today).

No multi-node run was measured: perfect scaling over C CPUs is assumed, and extrapolating
a fitted exponent 3 orders of magnitude is the weakest step.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

DATA_STAGES = ("validate", "sessionize", "count", "evidence")
DRIVER_STAGES = ("chain build", "eq20", "filters")
SIZES = {"daily (500M)": 500e6, "3 months (45B)": 45e9}


def growth_exponent(x, y) -> float:
    """b of y ~ x^b, least squares on logs."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def extrapolate(x, y, n: float) -> tuple[float, float]:
    """y at ``n`` from its last measured value grown as x^b, and b (``growth_exponent``)."""
    b = growth_exponent(x, y)
    return float(y[-1] * (n / x[-1]) ** b), b


def project(runs: list[dict], cpus_measured: int, n: float, cluster_cpus: int) -> dict:
    """Projected hours per stage group, states and driver RSS for ``n`` interactions on
    ``cluster_cpus`` CPUs (module docstring); ``runs`` are the sizes to fit, smallest first."""
    x = np.array([r["ray"]["n_turns"] for r in runs], dtype=float)

    def stage(names):
        return np.array([sum(r["ray"]["stage_seconds"][s] for s in names) for r in runs])

    data_cpu_s = stage(DATA_STAGES)[-1] * cpus_measured / x[-1] * n
    solve_cpu_s, b_solve = extrapolate(x, stage(("source solves",)) * cpus_measured, n)
    driver_s, b_driver = extrapolate(x, stage(DRIVER_STAGES), n)
    states, b_states = extrapolate(x, np.array([r["ray"]["n_interpretations"] for r in runs], dtype=float), n)
    base = np.array([r["ray"].get("driver_peak_rss_mib_by_stage", {}).get("start", 0.0) for r in runs])
    added, b_rss = extrapolate(x, np.array([r["ray"]["driver_peak_rss_mib"] for r in runs]) - base, n)
    rss = base[-1] + added
    return {
        "interactions": n, "cluster_cpus": cluster_cpus,
        "data_hours": data_cpu_s / cluster_cpus / 3600, "data_cpu_hours": data_cpu_s / 3600,
        "solve_hours": solve_cpu_s / cluster_cpus / 3600, "solve_exponent": b_solve,
        "driver_hours": driver_s / 3600, "driver_exponent": b_driver,
        "states": states, "states_exponent": b_states, "driver_rss_gib": rss / 1024, "rss_exponent": b_rss,
    }


def project_pdrfe(runs: list[dict], n_edges: float, workers: int) -> dict:
    """Hours of one PDRFE epoch over ``n_edges`` on ``workers`` single-threaded CPU workers and
    the whole graph's memory, from the largest measured graph (module docstring)."""
    last = max(runs, key=lambda r: r["edges"])
    return {"epoch_hours": n_edges / last["edges_per_s"] / workers / 3600,
            "graph_gib": last["peak_rss_mib"] / last["edges"] * n_edges / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results")
    p.add_argument("--cpus", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--fit", type=int, default=3, help="fit the growth exponents over this many largest sizes")
    p.add_argument("--pdrfe", help="bench_pdrfe.py results (JSON with runs) to project one epoch as well")
    args = p.parse_args()
    with open(args.results) as f:
        measured = json.load(f)
    runs = measured["runs"][-args.fit:]
    for label, n in SIZES.items():
        for c in args.cpus:
            r = project(runs, measured["cpus"], n, c)
            total = r["data_hours"] + r["solve_hours"] + r["driver_hours"]
            print(f"{label:15s} {c:4d} CPUs: {total:6.2f} h (data {r['data_hours']:.2f}, solves {r['solve_hours']:.2f} "
                  f"[N^{r['solve_exponent']:.2f}], driver {r['driver_hours']:.2f} [N^{r['driver_exponent']:.2f}]); "
                  f"{r['data_cpu_hours']:,.0f} CPU-h data; states {r['states']:,.0f} [N^{r['states_exponent']:.2f}]; "
                  f"driver RSS {r['driver_rss_gib']:.1f} GiB [N^{r['rss_exponent']:.2f}]")
    if args.pdrfe:
        with open(args.pdrfe) as f:
            pdrfe = [r for r in json.load(f)["runs"] if r["conv"] == "factorized"]
        for label, n in SIZES.items():
            for c in args.cpus:
                r = project_pdrfe(pdrfe, n, c)
                print(f"PDRFE {label:15s} {c:4d} workers: {r['epoch_hours']:8.2f} h per epoch; "
                      f"graph {r['graph_gib']:,.0f} GiB in one process")


if __name__ == "__main__":
    main()
