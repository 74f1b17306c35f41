"""Router lift from the PDRFE embeddings, over world seeds (issue 16, item 4). Run by hand:

    python benchmarks/bench_router_lift.py [--seeds 0,1,2] [--preset small] [--negative-alpha 0.75]
        [--model "PDRFE (w/ edge attention)"] [--pdrfe-epochs 5] [--policy-epochs 6] [--work /tmp/router_lift]
        [--out benchmarks/results/router_lift.json]

For each seed: ``selflearn simulate --preset PRESET --seed SEED``; ``train-pdrfe`` of ``--model``
(default PDRFE (w/ edge attention)) alone with ``--negative-alpha``, publishing its embeddings
into a fresh store;
then ``train-policy`` on the same routing log with the same ``--seed`` twice, as the loop's
``pdrfe_router_features`` stage does: without embeddings (in an empty store) and with
``--embeddings latest`` (in the store holding only the embeddings). Both runs are
in-process (``--num-workers 0``), split the data alike and have no production policy, so
their true values (simulator truth of the same test requests) differ only by the
embeddings. Every job runs in its own process, one at a time.

Written to ``--out``: per seed the true values {logging, rp, lp, hp} without and with the
embeddings, their lift (with - without) and both guard-rail decisions (pass/reject); over seeds the mean
and sample standard deviation (ddof 1) of the lift, and the run-to-run spread: the sample
standard deviation over seeds of the true values without embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from raylib.job import EXIT_OK
from raylib.loop.child import GUARDED, run_job

POLICIES = ("rp", "lp", "hp")


def job(module: str, out: Path, args: list[str], ok=(EXIT_OK,)) -> dict:
    """Run ``python -m jobs.<module> --out OUT ARGS`` as the loop runs its child jobs (its
    output in OUT.log); OUT's summary.json."""
    return run_job(f"jobs.{module}", str(out), [*args, "--log-level", "WARNING"], f"{out}.log", ok)


def std(values) -> float | None:
    """Sample standard deviation (ddof 1); None for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def lift_table(rows: list[dict]) -> dict:
    """Mean and sample std over seeds of the lift per policy, and the run-to-run spread
    (std over seeds of the true value without embeddings), from per-seed rows holding
    ``without``, ``with`` true values and their ``lift``."""
    return {
        "lift_mean": {k: float(np.mean([r["lift"][k] for r in rows])) for k in POLICIES},
        "lift_std": {k: std([r["lift"][k] for r in rows]) for k in POLICIES},
        "without_mean": {k: float(np.mean([r["without"][k] for r in rows])) for k in POLICIES},
        "with_mean": {k: float(np.mean([r["with"][k] for r in rows])) for k in POLICIES},
        "run_to_run_spread": {k: std([r["without"][k] for r in rows]) for k in POLICIES},
    }


def one_seed(seed: int, args, work: Path) -> dict:
    """Simulate, train PDRFE and the policy without and with its embeddings for ``seed``."""
    t0 = time.time()
    d = work / f"seed{seed}"
    sim = d / "sim"
    job("simulate", sim, ["--preset", args.preset, "--seed", str(seed)])
    pdrfe = job("train_pdrfe", d / "pdrfe", [
        "--data", str(sim), "--store", str(d / "store_embeddings"), "--truth", str(sim),
        "--models", args.model, "--publish-model", args.model, "--epochs", str(args.pdrfe_epochs), "--num-workers", "1",
        "--negative-alpha", str(args.negative_alpha), "--seed", str(seed)])
    policy = ["--data", str(sim), "--epochs", str(args.policy_epochs), "--num-workers", "0",
              "--replicates", str(args.replicates), "--seed", str(seed)]
    without = job("train_policy", d / "policy", [*policy, "--store", str(d / "store_plain")], GUARDED)
    with_emb = job("train_policy", d / "policy_embeddings",
                   [*policy, "--store", str(d / "store_embeddings"), "--embeddings", "latest"], GUARDED)
    name = args.model
    row = {
        "seed": seed,
        "without": without["true_value"],
        "with": with_emb["true_value"],
        "lift": {k: with_emb["true_value"][k] - without["true_value"][k] for k in POLICIES},
        "decision": {side: (run.get("decision") or {}).get("status")
                     for side, run in (("without", without), ("with", with_emb))},
        "pdrfe": {"embeddings_version": pdrfe["published_version"],
                  "cross_entropy_with_utterance": pdrfe["cross_entropy_with_utterance"][name],
                  "link_new_pairs": pdrfe["link_prediction"][name]["new_pairs"],
                  "recovery": pdrfe["affinity"]["recovery"]},
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="world seeds (also the jobs' --seed)")
    p.add_argument("--preset", default="small", help="simulator preset (default small)")
    p.add_argument("--negative-alpha", type=float, default=0.75, help="train-pdrfe --negative-alpha (default 0.75)")
    p.add_argument("--model", default="PDRFE (w/ edge attention)", help="the train-pdrfe model whose embeddings "
                   "the policy gets (default PDRFE (w/ edge attention))")
    p.add_argument("--pdrfe-epochs", type=int, default=5, help="train-pdrfe --epochs (default 5, the job's)")
    p.add_argument("--policy-epochs", type=int, default=6, help="train-policy --epochs (default 6, the loop's)")
    p.add_argument("--replicates", type=int, default=50, help="train-policy --replicates (default 50, the loop's)")
    p.add_argument("--work", default="/tmp/router_lift", help="scratch directory for the jobs' outputs (must be "
                   "empty or absent)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "router_lift.json"))
    args = p.parse_args()
    work = Path(args.work)
    if work.exists() and any(work.iterdir()):  # a store left there would hold a production policy
        sys.exit(f"--work {work} is not empty")
    rows = [one_seed(int(s), args, work) for s in args.seeds.split(",")]
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")}, "per_seed": rows,
              **lift_table(rows)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}, indent=2))


if __name__ == "__main__":
    main()
