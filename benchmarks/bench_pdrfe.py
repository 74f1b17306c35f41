"""Factorized edge convolution vs PyG NNConv (Eq. 1), same graph and width. Run by hand:

    python benchmarks/bench_pdrfe.py [--sizes 1000000,4000000] [--steps 20] [--quality-edges 60000]
    python benchmarks/bench_pdrfe.py --sizes 1000000,4000000,16000000 --convs factorized --full-epoch-up-to 1000000 --quality-edges 0

For each graph size and each convolution (PDRFE with personalizer, ``conv`` = factorized
or nnconv), a fresh process trains ``--steps`` link-prediction steps of ``--batch-size``
edges (5 negatives each) with the same sampler and reports training edges/s, the time of
one epoch over the 80% training edges (measured steps extrapolated to the epoch: timing a
full NNConv epoch at 4M edges on a laptop CPU takes hours) and the process's peak resident
memory (``--full-epoch-up-to N``: sizes up to N edges train one whole epoch instead, which
checks the extrapolation), the graph's build time and the memory of its utterance vectors
(one per unique utterance). The quality check trains both on a smaller graph for the same number of epochs and
compares the defect-prediction test cross-entropy (logistic regression and 2-layer NN).
Prints the speed ratio factorized / NNConv (target >= 10x).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import numpy as np


def _graph(n_edges: int, seed: int = 0):
    from raylib.graph.build import build_graph, split_edges
    from raylib.graph.data import GraphData
    from raylib.graph.encoders import HashingNgramEncoder
    from raylib.graph.synthetic import synthetic_tables

    inter, cust, skills = synthetic_tables(max(n_edges // 20, 50), 500, n_edges, seed=seed)
    g = build_graph(inter, cust, skills)
    data = GraphData.from_graph(g, HashingNgramEncoder(128).encode(g.utterances), split_edges(g.num_edges, 0.8, seed))
    return g, data


def _task(conv: str, data, dim: int, batch_size: int):
    """Link prediction with PDRFE (personalizer, ``conv``) on ``data``, the trainers' task."""
    from raylib.graph.models import ModelSpec
    from raylib.graph.train import LinkPrediction, TrainConfig

    spec = ModelSpec("pdrfe", conv=conv, personalizer=True)
    return LinkPrediction.of(spec, TrainConfig(dim=dim, batch_size=batch_size), data)


def _train_steps(task, model, opt, steps: int | None, rng) -> tuple[int, float]:
    """Train on ``steps`` batches of a fresh permutation of the training edges (None: one
    full epoch) with the trainers' loop; returns (edges, seconds)."""
    import torch

    from raylib.trainer import numpy_batches, run_epoch

    cap = None if steps is None else steps * task.batch_size
    batches = numpy_batches({"edge": task.graph.train_edges}, task.batch_size, rng, cap)
    began = time.perf_counter()
    edges, _ = run_epoch(task, model, model, opt, batches, torch.device("cpu"), rng)
    return edges, time.perf_counter() - began


def speed(n_edges: int, conv: str, dim: int, steps: int | None, batch_size: int, out: mp.Queue) -> None:
    import torch

    torch.set_num_threads(1)
    began = time.perf_counter()
    _, data = _graph(n_edges)
    build_s = time.perf_counter() - began
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    task = _task(conv, data, dim, batch_size)
    model = task.build()
    edges, seconds = _train_steps(task, model, task.optimizer(model), steps, np.random.default_rng(0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put({"edges": n_edges, "conv": conv, "dim": dim, "trained_edges": edges, "full_epoch": steps is None,
             "edges_per_s": edges / seconds, "epoch_s_extrapolated": len(data.train_edges) / (edges / seconds),
             "graph_build_s": build_s, "unique_utterances": len(data.utterance_vectors),
             "utterance_vectors_mib": data.utterance_vectors.nbytes / 2**20,
             "peak_rss_mib": peak / 1024, "graph_rss_mib": base / 1024, "train_rss_growth_mib": (peak - base) / 1024})


def quality(n_edges: int, conv: str, dim: int, epochs: int, batch_size: int, out: mp.Queue) -> None:
    import torch

    from raylib.graph.downstream import defect_cross_entropy, edge_features

    torch.set_num_threads(1)
    g, data = _graph(n_edges, seed=1)
    task = _task(conv, data, dim, batch_size)
    model, rng = task.build(), np.random.default_rng(0)
    opt = task.optimizer(model)
    for _ in range(epochs):
        _train_steps(task, model, opt, None, rng)
    out.put({"conv": conv, "cross_entropy": defect_cross_entropy(edge_features(model, data), g.edge_defect.astype(np.float32))})


def _run(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000000,4000000", help="graph sizes in edges")
    p.add_argument("--dim", type=int, default=128, help="embedding width (Table 6, the trainers' default)")
    p.add_argument("--convs", default="factorized,nnconv", help="convolutions to time")
    p.add_argument("--full-epoch-up-to", type=int, default=0, help="sizes up to this many edges train a whole epoch")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--quality-edges", type=int, default=60000, help="graph size of the quality check (0: skip)")
    p.add_argument("--quality-epochs", type=int, default=2)
    args = p.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        steps = None if n <= args.full_epoch_up_to else args.steps
        for conv in args.convs.split(","):
            rows.append(_run(speed, n, conv, args.dim, steps, args.batch_size))
            print(json.dumps(rows[-1]), flush=True)
        if args.convs != "factorized,nnconv":
            continue
        fac, nn = rows[-2], rows[-1]
        print(f"{n} edges: factorized / NNConv training edges/s = {fac['edges_per_s'] / nn['edges_per_s']:.1f}x; "
              f"peak RSS {fac['peak_rss_mib']:.0f} vs {nn['peak_rss_mib']:.0f} MiB", flush=True)
    if args.quality_edges:
        q = {c: _run(quality, args.quality_edges, c, args.dim, args.quality_epochs, args.batch_size) for c in ("factorized", "nnconv")}
        for c, r in q.items():
            print(json.dumps(r), flush=True)
        for k in ("lr", "mlp"):
            a, b = q["factorized"]["cross_entropy"][k], q["nnconv"]["cross_entropy"][k]
            print(f"defect cross-entropy ({k}): factorized {a:.4f} vs NNConv {b:.4f} "
                  f"({'equal or better' if a <= b + 1e-3 else 'worse'})")


if __name__ == "__main__":
    main()
