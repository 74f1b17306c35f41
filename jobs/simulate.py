"""Write a simulated world's logs and ground truth: ``selflearn simulate --out DIR``.

``--interactions N`` sizes the world to about N interactions: the preset's world with as
many customers as a pilot of it says N takes (``raylib.sim.sizing``), so a bigger world is
more customers and sessions, never copies; ``summary.json`` records the target, the pilot's
interactions per customer and what was written.

Tables (directories of Parquet under DIR): interactions, customers, skills, routing_log,
truth_rewrites, truth_turns, truth_routing; plus summary.json and world.json.
"""

from __future__ import annotations

import sys

from raylib.errors import UserError
from raylib.job import Job, Outcome, entrypoint, log, parser
from raylib.sim import PRESETS, simulate
from raylib.sim.config import load_overrides, resolve
from raylib.sim.sizing import customers_for, interactions_per_customer

JOB = "simulate"


def parse_args(argv, prog):
    p = parser(prog, __doc__)
    p.add_argument("--out", required=True, help="output directory or pyarrow.fs URI")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="world size (default: small)")
    p.add_argument("--seed", type=int, default=0, help="world seed: same seed, same files (default: 0)")
    p.add_argument("--traffic-seed", type=int, default=None,
                   help="draw new traffic from the same world (default: the world seed)")
    p.add_argument("--config", help="YAML file of setting overrides, e.g. {noise: {partial_title_rate: 0.1}}")
    p.add_argument("--interactions", type=int,
                   help="size the world to about this many interactions (sets population.n_customers "
                   "from a pilot of the world; default: the preset's population)")
    return p.parse_args(argv)


def sized_overrides(preset: str, seed: int, overrides: dict, target: int) -> tuple[dict, dict]:
    """``overrides`` with ``population.n_customers`` set for ``target`` interactions, and the
    sizing figures for the summary."""
    if target < 1:
        raise UserError("--interactions must be >= 1")
    if "n_customers" in overrides.get("population", {}):
        raise UserError("--interactions sets population.n_customers: leave it out of --config")
    per_customer = interactions_per_customer(resolve(preset, overrides), seed)
    n = customers_for(target, per_customer)
    sized = {**overrides, "population": {**overrides.get("population", {}), "n_customers": n}}
    return sized, {"target_interactions": target, "pilot_interactions_per_customer": per_customer}


@entrypoint
def main(argv=None, prog=None) -> Outcome:
    args = parse_args(argv, prog)
    job = Job.from_args(JOB, args)
    overrides, sizing = load_overrides(args.config), {}
    if args.interactions is not None:
        overrides, sizing = sized_overrides(args.preset, args.seed, overrides, args.interactions)
    summary = {**simulate(job.out, args.preset, args.seed, overrides, args.traffic_seed), **sizing}
    job.count_good(summary["n_interactions"] + summary["n_routing"])
    outcome = job.finish(summary)
    log.info("%s", {k: outcome.summary[k] for k in ("n_interactions", "n_routing", "defect_rate")})
    return outcome


if __name__ == "__main__":
    sys.exit(main())
