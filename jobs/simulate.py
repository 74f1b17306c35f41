"""Write a simulated world's logs and ground truth: ``selflearn simulate --out DIR``.

Tables (directories of Parquet under DIR): interactions, customers, skills, routing_log,
truth_rewrites, truth_turns, truth_routing; plus summary.json and world.json.
"""

from __future__ import annotations

import sys

from raylib.job import Job, Outcome, entrypoint, log, parser
from raylib.sim import PRESETS, simulate
from raylib.sim.config import load_overrides

JOB = "simulate"


def parse_args(argv, prog):
    p = parser(prog, __doc__)
    p.add_argument("--out", required=True, help="output directory or pyarrow.fs URI")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="world size (default: small)")
    p.add_argument("--seed", type=int, default=0, help="world seed: same seed, same files (default: 0)")
    p.add_argument("--traffic-seed", type=int, default=None,
                   help="draw new traffic from the same world (default: the world seed)")
    p.add_argument("--config", help="YAML file of setting overrides, e.g. {noise: {partial_title_rate: 0.1}}")
    return p.parse_args(argv)


@entrypoint
def main(argv=None, prog=None) -> Outcome:
    args = parse_args(argv, prog)
    job = Job.from_args(JOB, args)
    summary = simulate(job.out, args.preset, args.seed, load_overrides(args.config), args.traffic_seed)
    job.count_good(summary["n_interactions"] + summary["n_routing"])
    outcome = job.finish(summary)
    log.info("%s", {k: outcome.summary[k] for k in ("n_interactions", "n_routing", "defect_rate")})
    return outcome


if __name__ == "__main__":
    sys.exit(main())
