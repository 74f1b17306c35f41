"""The self-learning loop end to end on simulated traffic: ``selflearn demo [--out DIR]``.

simulate -> mine rewrites -> train PDRFE -> train the hybrid policy -> OPE + guard-rails
-> serve (Ray Serve) -> rounds of held-out traffic through POST /v1/rewrite and
POST /v1/route -> retrain from the decision logs -> reload -> next round. Each round
measures the defect rate of the users' requests (with and without the served rewrites)
and the true reward of the served router; see raylib/loop for what is measured on which
requests. A rerun with the same settings reuses finished stages (OUT/stages), so a killed
loop resumes where it stopped. Writes OUT/report.md, OUT/summary.json and PNGs.

This entrypoint parses the settings, starts (or joins) Ray, deploys the Serve application
when the loop asks for it, runs raylib.loop.Loop and prints where the report is.
"""

from __future__ import annotations

import json
import os
import sys
import time

from raylib import uri
from raylib.errors import UserError
from raylib.job import entrypoint, log, parser
from raylib.loop import DEFAULT_WORLD, Loop, LoopSettings
from raylib.loop.report import number
from raylib.loop.settings import world_settings
from raylib.sim import resolve
from raylib.sim.config import load_overrides
from serve_apps.deploy import deploy, free_port, ingress_env, packaged_config, serve_config

COUNTS = ("rounds", "route_requests", "pdrfe_epochs", "policy_epochs", "eval_requests", "min_customers", "min_support")


def parse_args(argv, prog):
    p = parser(prog, __doc__)
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--preset", default="small", choices=("small", "medium", "large"),
                   help="simulated world size (default: small, about 10 minutes on 2 cores)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--rounds", type=int, default=3, help="served rounds after the baseline round 0 (default 3)")
    p.add_argument("--route-requests", type=int, default=2000, help="routing requests per round (default 2000)")
    p.add_argument("--pdrfe-epochs", type=int, default=2, help="PDRFE link-prediction epochs (default 2)")
    p.add_argument("--policy-epochs", type=int, default=6, help="training epochs of the policy networks (RP, LP, reward models, the evaluation's too; default 6)")
    p.add_argument("--eval-requests", type=int, default=3000,
                   help="requests of the fixed evaluation set each round's true reward is measured on (default 3000)")
    p.add_argument("--min-customers", type=int, default=5,
                   help="distinct customers behind a served rewrite (default 5)")
    p.add_argument("--min-support", type=int, default=5,
                   help="times a source utterance was said before it can be rewritten (default 5)")
    p.add_argument("--mining-engine", choices=("local", "ray"), default="local",
                   help="rewrite mining path: single process (default; faster at the demo's scale) or Ray Data "
                        "(use on a cluster); both give the identical table")
    p.add_argument("--guardrails", help="guard-rails YAML for train_policy/evaluate_policy "
                   "(default: theirs, jobs/policy_guardrails.yaml)")
    p.add_argument("--config", help="YAML of simulator setting overrides (as for `selflearn simulate --config`), "
                   "merged over the loop's default world " + json.dumps(DEFAULT_WORLD))
    p.add_argument("--holdout-share", type=float, default=LoopSettings.holdout_share,
                   help="share of customers served no rewrites, the online A/B's control (default %(default)s)")
    p.add_argument("--fresh", action="store_true", help="ignore stage markers and redo every stage")
    args = p.parse_args(argv)
    for name in COUNTS:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    return args


def init_ray() -> None:
    """Join the cluster in RAY_ADDRESS, or start a local runtime (with the HAProxy ingress
    env that `selflearn serve` uses) and export its address so child jobs share it."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    os.environ.update(ingress_env("haproxy"))
    # Logical CPUs: Serve's replicas hold ~1 CPU while a retraining job runs beside them.
    ray.init(num_cpus=max(4, os.cpu_count() or 1), log_to_driver=False)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def shutdown_ray(serve_too: bool) -> None:
    """Leave Ray; first shut down the Serve application this run deployed, if any (on a
    joined cluster it would outlive the loop; another run's Serve is left alone)."""
    import ray
    from ray import serve

    if serve_too:
        serve.shutdown()
    ray.shutdown()


def deploy_service(store_root: str, decision_log_dir: str, admin_token: str) -> str:
    """Deploy the packaged Serve application on a free local port; returns its base URL.
    Decisions are flushed to the log within a second, so a round reads them back at once."""
    config = serve_config(packaged_config(), {
        "store_root": store_root,
        "decision_log_dir": decision_log_dir,
        "decision_log_max_age_s": 1.0,
        "admin_token": admin_token,
    }, host="127.0.0.1", port=free_port())
    return deploy(config)


@entrypoint
def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    settings = LoopSettings(preset=args.preset, seed=args.seed, rounds=args.rounds, route_requests=args.route_requests,
                            pdrfe_epochs=args.pdrfe_epochs, policy_epochs=args.policy_epochs,
                            eval_requests=args.eval_requests, min_customers=args.min_customers,
                            min_support=args.min_support, mining_engine=args.mining_engine,
                            holdout_share=args.holdout_share,
                            guardrails=uri.absolute(args.guardrails) if args.guardrails else None,
                            world=world_settings(load_overrides(args.config)))
    resolve(settings.preset, settings.world_overrides())  # unknown simulator settings fail here, not mid-loop
    started = time.monotonic()
    loop = Loop(args.out, settings, deploy_service, args.fresh)
    log.info("output in %s", loop.out)
    init_ray()
    try:
        summary = loop.run()
    finally:
        loop.close()
        shutdown_ray(serve_too=loop.deployed)
    log.info("defect rate %s -> %s; true reward %s -> %s", number(summary["defect_rate_before"]),
             number(summary["defect_rate_after"]), number(summary["true_reward_before"]),
             number(summary["true_reward_after"]))
    log.info("finished in %.0f s", time.monotonic() - started)
    print(f"report: {loop.path('report.md')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
