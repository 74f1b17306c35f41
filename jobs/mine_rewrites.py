"""Mine the utterance -> rewrite table (seed 001, absorbing Markov chain) and publish it.

    python -m jobs.mine_rewrites --data DATA --out OUT [--depth 5 --epsilon 1e-3 --min-customers 5]
                                 [--z-rule paper|better] [--no-match-states utterance|interpretation]
                                 [--truth SIM_DIR] [--heldout SIM_DIR] [--engine ray|local]

``--data`` holds the contract tables (``interactions`` at least), e.g. a simulator
output, on a local path or any pyarrow.fs URI. Writes ``summary.json`` and ``report.md``
into ``--out``, quarantines bad rows under ``--out/rejected`` and publishes a new
version of the ``rewrites`` artifact in ``--store`` (default ``OUT/store``): the previous
version's rows are replaced, withdrawn (``withdrawn_by_reason`` in the summary) or kept
as ``raylib.rewrite.publish`` describes.
"""

from __future__ import annotations

import sys

from raylib import uri
from raylib.errors import UserError
from raylib.job import Job, Outcome, ensure_ray, entrypoint, log, parser
from raylib.rewrite.filters import Z_RULES, FilterParams
from raylib.rewrite.mining import Mined, MiningParams, mine_local
from raylib.rewrite.publish import ARTIFACT, publish_rewrites
from raylib.rewrite.report import render_report
from raylib.rewrite.sessions import NO_MATCH_STATES

JOB = "mine-rewrites"


def _parser(prog: str | None):
    p = parser(prog, __doc__)
    p.add_argument("--data", required=True, help="directory/URI holding the interactions table")
    p.add_argument("--out", required=True, help="directory/URI for summary.json, report.md and rejected/")
    p.add_argument("--store", help="artifact store root (default: OUT/store)")
    p.add_argument("--depth", type=int, default=5, help="BFS depth per source (0 = unlimited) (default %(default)s)")
    p.add_argument("--epsilon", type=float, default=1e-3, help="prune paths whose probability falls below this (default %(default)s)")
    p.add_argument("--top-k", type=int, default=10, help="targets kept per source interpretation (default %(default)s)")
    p.add_argument("--gap-s", type=float, default=45.0, help="session gap delta_tau in seconds (default %(default)s)")
    p.add_argument("--no-match-states", choices=NO_MATCH_STATES, default=MiningParams.no_match_states,
                   help="utterance: a no_match turn's state is its interpretation keyed by the utterance, so "
                        "failures the NLU collapses into one interpretation keep their own paths; "
                        "interpretation: the NLU's interpretation as is (default %(default)s)")
    p.add_argument("--min-customers", type=int, default=5, help="distinct customers behind a rewrite (default %(default)s)")
    p.add_argument("--min-support", type=int, default=10, help="times the source utterance was said (default %(default)s)")
    p.add_argument("--alpha", type=float, default=0.01, help="Z-test p-value threshold (default %(default)s)")
    p.add_argument("--z-rule", choices=Z_RULES, default=FilterParams.z_rule,
                   help="paper: remove rewrites with significantly HIGHER friction than the source; "
                        "better: keep only significantly LOWER friction (default %(default)s)")
    p.add_argument("--generic-min-sources", type=int, default=10,
                   help="unrelated sources that make a target generic (default %(default)s)")
    p.add_argument("--truth", help="simulator output with truth_* tables and world.json: quality metrics")
    p.add_argument("--heldout", help="held-out simulator traffic of the same world: replay metrics (needs --truth)")
    p.add_argument("--engine", choices=("ray", "local"), default="ray",
                   help="Ray Data pipeline or the single-process path, same result (default %(default)s)")
    p.add_argument("--disable", action="store_true", help="publish with the rewrites feature flag off")
    return p


def _params(args) -> MiningParams:
    if args.depth < 0 or not 0 <= args.epsilon < 1 or args.top_k < 1 or args.gap_s <= 0:
        raise UserError("need --depth >= 0, 0 <= --epsilon < 1, --top-k >= 1 and --gap-s > 0")
    if args.min_customers < 1 or args.min_support < 1 or not 0 < args.alpha < 1 or args.generic_min_sources < 1:
        raise UserError("need --min-customers, --min-support, --generic-min-sources >= 1 and 0 < --alpha < 1")
    return MiningParams(
        gap_s=args.gap_s, no_match_states=args.no_match_states, depth=args.depth or None, epsilon=args.epsilon,
        top_k=args.top_k,
        filters=FilterParams(min_support=args.min_support, alpha=args.alpha, z_rule=args.z_rule,
                             generic_min_sources=args.generic_min_sources, min_customers=args.min_customers),
    )


def _mine_ray(job: Job, data: str, params: MiningParams) -> Mined:
    import ray

    from raylib.rewrite.distributed import mine_ray

    fs, files = job.readable_files(data, "interactions")
    ensure_ray()
    mined = mine_ray(ray.data.read_parquet(files, filesystem=fs), params, quarantine=job.out)
    job.count_good(mined.stage_counts()["n_turns"])  # the workers quarantined the rest
    return mined


def _mine_local(job: Job, data: str, params: MiningParams) -> Mined:
    return mine_local(job.read(data, "interactions"), params)


def _truth_metrics(table, truth: str, heldout: str | None) -> dict:
    from raylib.rewrite.evaluate import intended_turns, quality, replay
    from raylib.sim import World

    for name in ("interactions", "truth_turns", "truth_rewrites"):
        if not uri.exists(uri.join(truth, name)):
            raise UserError(f"no {name!r} table under {truth}")
    world = World.from_dir(truth)
    turns = intended_turns(uri.read_table(truth, "interactions"), uri.read_table(truth, "truth_turns"))
    metrics = quality(table, world, turns, uri.read_table(truth, "truth_rewrites"))
    if heldout:
        held = intended_turns(uri.read_table(heldout, "interactions"), uri.read_table(heldout, "truth_turns"))
        metrics["replay"] = replay(table, world, held)
    return metrics


@entrypoint
def main(argv: list[str] | None = None, prog: str | None = None) -> Outcome:
    args = _parser(prog).parse_args(argv)
    params = _params(args)
    if args.heldout and not args.truth:
        raise UserError("--heldout needs --truth (the world the held-out traffic comes from)")
    job = Job.from_args(JOB, args)
    mined = (_mine_ray if args.engine == "ray" else _mine_local)(job, args.data, params)
    stages = mined.stage_counts()
    version, merged, withdrawn = publish_rewrites(
        job.store, mined, metadata={"params": params.as_dict(), "data": args.data, "engine": args.engine},
        enabled=False if args.disable else None,
    )
    summary = {
        "n_sessions": stages["n_sessions"],
        "n_interpretations": stages["n_interpretations"],
        "n_sources": stages["n_sources"],
        "n_rewrites": mined.table.num_rows,
        "removed_by_filter": mined.removed_by_filter,
        "stages": stages,
        "withdrawn_by_reason": withdrawn,
        "artifact": {"name": ARTIFACT, "rows_after_merge": merged.num_rows, "enabled": job.store.enabled(ARTIFACT)},
        "params": params.as_dict(),
    }
    if stages["n_turns"] == 0:
        summary["message"] = "no valid interactions: published an empty rewrite table (previous rewrites kept)"
        log.warning(summary["message"])
    if args.truth:
        metrics = _truth_metrics(mined.table, args.truth, args.heldout)
        summary.update({k: metrics[k] for k in ("precision", "win_loss", "coverage")})
        summary["truth"] = metrics
    outcome = job.finish(summary, lambda final: render_report(final, mined), published_version=version)
    log.info("%s", {k: outcome.summary[k] for k in ("n_sessions", "n_interpretations", "n_sources", "n_rewrites",
                                                    "rejected_rows")})
    return outcome


if __name__ == "__main__":
    sys.exit(main())
