"""GPU vs CPU training speed of the two Ray Train jobs, the jobs as users run them. Run by hand
on a machine with a GPU (results in benchmarks/README.md):

    python -m jobs.cli simulate --out DATA --preset medium
    python benchmarks/bench_train_gpu.py --data DATA --out OUT [--cpu-workers 4 --cpu-threads 4]

One local Ray runtime; then ``train-pdrfe`` (PDRFE with edge attention only) and
``train-policy`` each run twice on the same data and settings: on CPU Ray Train workers
(``--cpu-workers`` x ``--cpu-threads`` torch threads, the peer: the node's cores) and with
``--use-gpu`` (one worker per GPU). Reports the jobs' own throughput metrics: training
edges/s (``training.<model>.edges_per_s``) and training requests/s per network
(``training_speed.<net>.requests_per_s``), each the rows of the last epoch over that
epoch's wall time, data loading and neighbour sampling included. Prints one JSON object;
also written to ``OUT/results.json`` after every run, so a cut-off run keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

PDRFE = "PDRFE (w/ edge attention)"


def _run(results: dict, key: str, fn, out: str) -> None:
    t0 = time.time()
    try:
        results[key] = fn()
    except Exception as exc:  # a failed configuration is a result too; the others still run
        results[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    results[key]["wall_s"] = round(time.time() - t0, 1)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(key, json.dumps({k: v for k, v in results[key].items() if k != "traceback"}), flush=True)


def pdrfe(args, device: str, hardware: list[str]) -> dict:
    from jobs import train_pdrfe

    out = os.path.join(args.out, f"pdrfe-{device}")
    code = train_pdrfe.main(["--data", args.data, "--out", out, "--models", PDRFE, "--publish-model", PDRFE,
                             "--epochs", str(args.epochs), "--edges-per-epoch", str(args.edges_per_epoch),
                             "--downstream-rows", "20000", "--dim", str(args.dim),
                             "--batch-size", str(args.batch_size), "--log-level", "WARNING", *hardware])
    summary = json.load(open(os.path.join(out, "summary.json")))
    t = summary["training"][PDRFE]
    return {"exit": code, "device": summary["device"], "workers": summary["workers"], "edges_per_s": t["edges_per_s"],
            "loss": t["loss"], "cross_entropy": summary["cross_entropy_with_utterance"][PDRFE]}


def policy(args, device: str, hardware: list[str]) -> dict:
    from jobs import train_policy

    out = os.path.join(args.out, f"policy-{device}")
    code = train_policy.main(["--data", args.data, "--out", out, "--epochs", str(args.epochs), "--replicates", "10",
                              "--log-level", "WARNING", *hardware])
    summary = json.load(open(os.path.join(out, "summary.json")))
    return {"exit": code, "speed": summary["training_speed"],
            "final_loss": {k: v[-1] for k, v in summary["training"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a simulated world (selflearn simulate --out DATA)")
    p.add_argument("--out", required=True)
    p.add_argument("--cpu-workers", type=int, default=4)
    p.add_argument("--cpu-threads", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--edges-per-epoch", type=int, default=60000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--only", choices=("pdrfe", "policy"), help="run one job's pair only")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)

    import ray
    import torch

    ray.init(include_dashboard=False)
    results = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "cpus": os.cpu_count(), "ray_resources": ray.cluster_resources(), "torch": torch.__version__}
    cpu = ["--num-workers", str(args.cpu_workers), "--torch-threads", str(args.cpu_threads)]
    gpu = ["--num-workers", str(int(results["ray_resources"].get("GPU", 0)) or 1), "--use-gpu"]
    runs = {"pdrfe": pdrfe, "policy": policy}
    for job, fn in runs.items():
        if args.only not in (None, job):
            continue
        _run(results, f"{job}-cpu", lambda: fn(args, "cpu", cpu), args.out)
        if results["gpu"]:
            _run(results, f"{job}-gpu", lambda: fn(args, "gpu", gpu), args.out)
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
