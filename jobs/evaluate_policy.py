"""Off-policy evaluation of a published routing policy (seed 002, Sec. 3.6) on routing
logs: Table-1 metrics per intent and overall with bootstrap intervals, per-intent
replication of RP, LP and HP, and the guard-rail decision.

    python -m jobs.evaluate_policy --data DIR --out DIR [--store URI] [--version V] [--held-out]
    ray job submit --working-dir . -- python -m jobs.evaluate_policy --data DIR --out DIR

Every row of DIR is evaluated, unless ``--held-out``: then only the test split of
``raylib.routing.refresh.split`` (by request id, as jobs.train_policy splits), for logs the
policy was trained on. Its train rows fit the networks and its validation rows set the
RPDR values; only the test rows are out of sample. The DM/DR reward model is learned from
the evaluated rows with 2-fold cross-fitting. Exit code:
0 when the guard-rails pass, 3 when they fail, 2 on bad input, 1 on anything unexpected.
"""

from __future__ import annotations

import sys

from raylib.errors import UserError
from raylib.job import EXIT_OK, EXIT_REJECTED, Job, Outcome, add_max_failures, ensure_ray, entrypoint, log, parser
from raylib.routing.data import read_routing

JOB = "evaluate-policy"


def parse_args(argv, prog):
    p = parser(prog, __doc__)
    p.add_argument("--data", required=True, help="directory (or URI) holding the routing_log table")
    p.add_argument("--out", required=True, help="directory for summary.json, report.md, charts, rejected/")
    p.add_argument("--store", help="artifact store root (default: OUT/store)")
    p.add_argument("--version", default="latest", help="policy version to evaluate (default latest)")
    p.add_argument("--held-out", action="store_true",
                   help="evaluate only the test split of DATA (the rows jobs.train_policy held out of training "
                   "and RPDR tuning); for logs the policy was trained on")
    p.add_argument("--guardrails", help="guard-rails YAML (default: built-in; see jobs/policy_guardrails.yaml)")
    p.add_argument("--epochs", type=int, default=6, help="reward-model training epochs")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers for the reward model (0: in-process)")
    add_max_failures(p)
    p.add_argument("--replicates", type=int, default=200, help="bootstrap replicates for the intervals")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.replicates < 0 or args.num_workers < 0 or args.max_failures < 0:
        raise UserError("--epochs must be >= 1, --replicates, --num-workers and --max-failures >= 0")
    return args


@entrypoint
def main(argv=None, prog=None) -> Outcome:
    args = parse_args(argv, prog)

    from raylib.routing.assess import assess
    from raylib.routing.guardrails import GuardRails
    from raylib.routing.hybrid import HybridPolicy
    from raylib.routing.learn import CrossFitRewardModel, LearnSettings
    from raylib.routing.refresh import split
    from raylib.routing.report import charts, render_report
    from raylib.routing.train import TrainSettings

    rails = GuardRails.from_yaml(args.guardrails)
    job = Job.from_args(JOB, args)
    if job.store.latest("policy") is None:
        raise UserError(f"no published policy in store {job.store}")
    artifact = job.store.load("policy", args.version)
    policy = HybridPolicy.from_artifact(artifact)
    data = read_routing(job, args.data, min_rows=10)
    rows, truth = split(data.log, data.truth)["test"] if args.held_out else (data.log, data.truth)
    if rows.num_rows < 10:
        raise UserError(f"only {rows.num_rows} held-out (test split) routing rows in {args.data}; need at least 10")
    if args.num_workers > 0:  # Ray Train workers; in-process training needs no runtime
        ensure_ray()
    settings = LearnSettings(
        reward=TrainSettings(epochs=args.epochs, seed=args.seed),
        num_workers=args.num_workers,
        storage_path=job.train_storage,
        max_failures=args.max_failures,
    )
    reward_model = CrossFitRewardModel.fit(rows, policy.vocab, settings)
    result = assess(policy, rows, rails, reward_model, truth, args.replicates, args.seed)
    evaluated = {"rows": "test split" if args.held_out else "all", "count": rows.num_rows}
    summary = {"data": data.summary(), "evaluated_rows": evaluated, "policy_version": artifact.version, **result,
               "guardrails": rails.to_dict()}
    passed = result["decision"]["status"] == "pass"
    title = "Hybrid routing policy: off-policy evaluation"
    outcome = job.finish(summary, lambda final: render_report(final, title), charts(summary), None,
                         EXIT_OK if passed else EXIT_REJECTED)
    log.info("guard-rails: %s", result["decision"]["status"])
    return outcome


if __name__ == "__main__":
    sys.exit(main())
