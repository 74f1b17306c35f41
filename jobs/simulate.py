"""Write a simulated world's logs and ground truth: ``selflearn simulate --out DIR``.

Tables (directories of Parquet under DIR): interactions, customers, skills, routing_log,
truth_rewrites, truth_turns, truth_routing; plus summary.json and world.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import yaml

from jobs._cli import entrypoint
from raylib.errors import UserError
from raylib.sim import PRESETS, simulate


def parse_args(argv, prog):
    p = argparse.ArgumentParser(prog=prog or "python -m jobs.simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory or pyarrow.fs URI")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="world size (default: small)")
    p.add_argument("--seed", type=int, default=0, help="world seed: same seed, same files (default: 0)")
    p.add_argument("--traffic-seed", type=int, default=None,
                   help="draw new traffic from the same world (default: the world seed)")
    p.add_argument("--config", help="YAML file of setting overrides, e.g. {noise: {partial_title_rate: 0.1}}")
    return p.parse_args(argv)


def load_overrides(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of settings")
    return data


@entrypoint
def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    started = time.time()
    summary = simulate(args.out, args.preset, args.seed, load_overrides(args.config), args.traffic_seed)
    summary["seconds"] = round(time.time() - started, 1)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
