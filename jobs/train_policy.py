"""Train the hybrid RP/LP skill-routing policy (seed 002), evaluate it off-policy, apply
the guard-rails and publish it (store name "policy") only when they pass.

    python -m jobs.train_policy --data DIR --out DIR [--store URI] [--guardrails YAML]
    ray job submit --working-dir . -- python -m jobs.train_policy --data DIR --out DIR

DIR holds the contract tables: ``routing_log`` (required), ``feedback`` (joined onto rows
whose reward is null) and the simulator's ``truth_routing`` (true values in the summary).
Logs of several rounds may be pooled: every row keeps the propensity it was logged with.

The policy in production is the store's latest published policy (when there is none, the
logging policy recorded in the log): the new RP replicates it, κ (Eq. 3) and the guard-rails
measure replication against it, and the reward regression compares with its value.

``--embeddings VERSION|latest`` feeds the PDRFE customer and skill embeddings (store name
"embeddings" in --store, published by jobs.train_pdrfe) to the new networks; they travel
inside the published policy, so serving needs only the request's customer_id and skill_ids.
Exit code: 0 when the guard-rails pass (policy published), 3 when they reject it (nothing
published), 2 on bad input, 1 on anything unexpected.
"""

from __future__ import annotations

import sys

from raylib.errors import UserError
from raylib.job import EXIT_OK, EXIT_REJECTED, Job, Outcome, add_max_failures, add_torch_threads, ensure_ray, entrypoint, log, parser
from raylib.routing.data import read_routing

JOB = "train-policy"


def parse_args(argv, prog):
    p = parser(prog, __doc__)
    p.add_argument("--data", required=True, help="directory (or URI) holding the routing_log table")
    p.add_argument("--out", required=True, help="directory for summary.json, report.md, charts, rejected/")
    p.add_argument("--store", help="artifact store root (default: OUT/store)")
    p.add_argument("--guardrails", help="guard-rails YAML (default: built-in; see jobs/policy_guardrails.yaml)")
    p.add_argument("--objective", choices=("ips", "snips", "dr"), default="ips", help="LP objective (default ips, Eq. 2)")
    p.add_argument("--clip", type=float, help="cap on 1/propensity in the LP objective (weight clipping)")
    p.add_argument("--kappa-target", type=float, default=0.9, help="desired minimum replication κ̃ per intent")
    p.add_argument("--lp-only", action="store_true", help="LP-daily cadence: keep the RP of the latest published policy")
    p.add_argument("--embeddings", metavar="VERSION|latest",
                   help="also feed the PDRFE customer/skill embeddings of this 'embeddings' store version "
                   "(from jobs.train_pdrfe) to the new networks (default: none)")
    p.add_argument("--embedding-product", action="store_true",
                   help="with --embeddings, also feed the elementwise product customer ⊙ skill")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per network")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per network (0: in-process)")
    p.add_argument("--use-gpu", action="store_true", help="train on GPU workers")
    add_max_failures(p)
    add_torch_threads(p)
    p.add_argument("--replicates", type=int, default=200, help="bootstrap replicates for the intervals")
    p.add_argument("--refresh-rounds", type=int, default=0, help="also run N simulated refreshes (needs world.json in DATA)")
    p.add_argument("--refresh-rows", type=int, default=4000, help="requests per simulated refresh round")
    p.add_argument(
        "--refresh-rp-every",
        type=int,
        default=1,
        help="retrain the RP on the deployed policy every N refreshes (default 1; 0: keep the first RP)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--registered-model", default="selflearn-policy",
                   help="with tracking on: the MLflow registered model a released policy joins (default selflearn-policy)")
    p.add_argument("--alias", default="production", help="MLflow alias moved to a released policy (default production)")
    args = p.parse_args(argv)
    for name in ("epochs", "replicates", "refresh_rounds", "refresh_rows", "refresh_rp_every", "num_workers",
                 "max_failures", "torch_threads"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0")
    if not 0.0 < args.kappa_target <= 1.0:
        raise UserError("--kappa-target must be in (0, 1]")
    if args.embedding_product and not args.embeddings:
        raise UserError("--embedding-product needs --embeddings")
    return args


def load_embeddings(store, version: str | None, product: bool):
    """The PDRFE embeddings the new networks read (None without --embeddings)."""
    if not version:
        return None
    from raylib.routing.features import EmbeddingTables

    if store.latest("embeddings") is None:
        raise UserError(f"--embeddings {version}: the store {store.root} holds no 'embeddings' artifact (run jobs.train_pdrfe first)")
    art = store.load("embeddings", version)  # ArtifactNotFound (a UserError) for an unknown version
    try:
        tables = EmbeddingTables.from_artifact(art)
    except (KeyError, ValueError) as err:
        raise UserError(f"embeddings version {art.version} is not a customer/skill embeddings artifact: {err}") from None
    if product and tables.customer_dim != tables.skill_dim:
        raise UserError(f"--embedding-product needs equal widths; customers {tables.customer_dim}, skills {tables.skill_dim}")
    return tables


def learn_settings(args, storage_path: str, embeddings=None):
    from raylib.routing.learn import LearnSettings
    from raylib.routing.train import TrainSettings

    def net(seed):
        return TrainSettings(epochs=args.epochs, clip=args.clip, seed=args.seed + seed, threads=args.torch_threads)

    return LearnSettings(
        objective=args.objective,
        kappa_target=args.kappa_target,
        rp=net(0),
        lp=net(1),
        reward=net(2),
        num_workers=args.num_workers,
        use_gpu=args.use_gpu,
        storage_path=storage_path,
        max_failures=args.max_failures,
        embeddings=embeddings,
        embedding_product=args.embedding_product,
    )


@entrypoint
def main(argv=None, prog=None) -> Outcome:
    args = parse_args(argv, prog)

    from raylib.routing.assess import assess
    from raylib.routing.guardrails import GuardRails
    from raylib.routing.hybrid import HybridPolicy
    from raylib.routing.learn import learn_hybrid
    from raylib.routing.refresh import split
    from raylib.routing.report import charts, render_report

    rails = GuardRails.from_yaml(args.guardrails)
    job = Job.from_args(JOB, args)
    data = read_routing(job, args.data, min_rows=30)
    store = job.store
    current_version = store.latest("policy")
    current = HybridPolicy.from_artifact(store.load("policy", current_version)) if current_version else None
    if args.lp_only and current is None:
        raise UserError("--lp-only needs an already published policy in the store")
    fixed = current if args.lp_only else None
    embeddings = load_embeddings(store, args.embeddings, args.embedding_product)

    if args.num_workers > 0:  # Ray Train workers; in-process training needs no runtime
        ensure_ray()
    settings = learn_settings(args, job.train_storage, embeddings)
    parts = split(data.log, data.truth)
    refresh = learn_hybrid(parts["train"][0], parts["validation"][0], settings, fixed, current)
    test_log, test_truth = parts["test"]
    result = assess(
        refresh.policy, test_log, rails, refresh.reward_model, test_truth, args.replicates, args.seed, current=current
    )
    summary = {
        "data": data.summary(),
        **result,
        "current_policy": current_version,
        "embeddings": {
            "used": embeddings is not None or refresh.policy.rp_embeddings is not None,
            "version": embeddings.version if embeddings is not None else None,
            "rp_version": refresh.policy.rp_embeddings.version if refresh.policy.rp_embeddings is not None else None,
            "product": args.embedding_product,
        },
        "training": refresh.histories,
        "training_speed": refresh.speed,
        "guardrails": rails.to_dict(),
    }
    summary["refresh"] = run_refreshes(args, settings, rails) if args.refresh_rounds else None
    passed = result["decision"]["status"] == "pass"
    published, register = None, None
    if passed:
        meta = {"decision": result["decision"]["status"], "ope": result["ope"], "lp_only": args.lp_only, **refresh.policy.info}
        published = store.publish("policy", refresh.policy.to_files(), metadata=meta)
        art = store.load("policy", published)
        register = (args.registered_model, args.alias, {art.files[k]["file"]: art.bytes(k) for k in art.keys()})
    title = "Hybrid routing policy: training and pre-deployment evaluation"
    outcome = job.finish(summary, lambda final: render_report(final, title), charts(summary), published,
                         EXIT_OK if passed else EXIT_REJECTED, register)
    log.info("guard-rails: %s", result["decision"]["status"])
    return outcome


def run_refreshes(args, settings, rails) -> dict:
    """HP1..HPn on the simulated world stored with the data (``world.json``)."""
    from raylib.routing.refresh import refresh_curve
    from raylib.sim import World

    world = World.from_dir(args.data)
    return refresh_curve(
        world,
        args.refresh_rounds,
        args.refresh_rows,
        args.refresh_rows,
        args.seed,
        settings,
        rails,
        args.refresh_rp_every or None,
        args.replicates,
    )


if __name__ == "__main__":
    sys.exit(main())
