"""Rewrite-mining benchmarks (run by hand; prints ratios against peers measured in the same run).

(a) ``scale``: end-to-end single-process mining cost as traffic doubles. Traffic is the
    simulator's interactions replicated under fresh customer ids (k copies), so the
    per-utterance cost of sessionize / count / evidence shows; the chain itself keeps the
    same states, which a real doubling of traffic would grow more slowly than linearly.
(b) ``solve``: at ~10^5 states (a clustered random chain), the per-source BFS + sub-chain
    solve against exact per-source solves of (I - Q)^T x = e_s (one sparse LU, then one
    solve per source) on the same sampled sources, and against a batched 5-step
    truncated Neumann series sum_{n<=5} e_s Q^n (sparse products). ``--exact iterative``
    solves each source's system iteratively (``richardson``) instead of one LU (at 10^6 states the LU's
    fill-in is the cost); ``--json`` writes the figures.

    python benchmarks/bench_rewrite.py solve --states 100000 --sources 300
    python benchmarks/bench_rewrite.py solve --states 1000000 --sources 100 --exact iterative
    python benchmarks/bench_rewrite.py scale --data SIM_DIR --copies 2 4 8 16
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from raylib.rewrite.approx import approximate_sources
from raylib.rewrite.mining import mine_local
from raylib.uri import read_table
from raylib.validate import validate


def clustered_chain(n: int, cluster: int, degree: int, cross: float, seed: int):
    """Q, R of a chain whose states form communities (as the paper observes, Eq. 21)."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), degree)
    base = (rows // cluster) * cluster
    local = base + rng.integers(0, cluster, len(rows))
    far = rng.integers(0, n, len(rows))
    cols = np.where(rng.random(len(rows)) < cross, far, np.minimum(local, n - 1))
    counts = rng.geometric(0.3, len(rows)).astype(np.float64)
    C = sp.csr_matrix((counts, (rows, cols)), shape=(n, n))
    C.sum_duplicates()
    absorb = np.column_stack([rng.geometric(0.5, n) * (rng.random(n) < 0.7), rng.geometric(0.4, n)]) * 2.0
    Z = np.asarray(C.sum(1)).ravel() + absorb.sum(1)
    Q = (sp.diags(1 / Z) @ C).tocsr()
    R = sp.csr_matrix(absorb / Z[:, None])
    Q.sort_indices()
    return Q, R


def richardson(QT: sp.csr_matrix, e: np.ndarray, tol: float = 1e-13) -> np.ndarray:
    """x = (I - Q^T)^-1 e by the fixed point x <- e + Q^T x, until a step changes x by less
    than ``tol`` (L1). It converges for any absorbing chain (spectral radius of Q < 1), at
    the chain's absorption rate per step; scipy's Krylov solvers did worse here (BiCGSTAB
    broke down, GMRES(50) took ~2 s per source at 2 * 10^4 states)."""
    x = e.copy()
    while True:
        nxt = e + QT @ x
        if np.abs(nxt - x).sum() < tol:
            return nxt
        x = nxt


def exact_top1(Q, r_plus, sources, method: str) -> tuple[dict, float, float]:
    """argmax_t N[s, t] r+_t per source from exact solves of (I - Q)^T x = e_s: one sparse LU
    and a solve per source, or ``richardson`` per source. Returns the tops and the factor
    and solve seconds."""
    t = time.perf_counter()
    lu = spla.splu((sp.identity(Q.shape[0], format="csc") - Q).T.tocsc()) if method == "lu" else None
    QT = Q.T.tocsr()
    t_factor = time.perf_counter() - t
    t = time.perf_counter()
    top = {}
    for s in sources:
        e = np.zeros(Q.shape[0])
        e[s] = 1.0
        x = lu.solve(e) if lu is not None else richardson(QT, e)
        top[int(s)] = int(np.argmax(x * r_plus))
    return top, t_factor, time.perf_counter() - t


def bench_solve(args) -> None:
    Q, R = clustered_chain(args.states, args.cluster, args.degree, args.cross, args.seed)
    r_plus = R[:, 0].toarray().ravel()
    sources = np.random.default_rng(args.seed + 1).choice(args.states, args.sources, replace=False)
    print(f"chain: {Q.shape[0]} states, {Q.nnz} transitions; {len(sources)} sampled sources")

    t = time.perf_counter()
    res = approximate_sources(Q, R, sources, depth=args.depth, epsilon=args.epsilon, top_k=1)
    t_approx = time.perf_counter() - t
    best = res.filter(res.column("is_best"))
    approx_top = dict(zip(best.column("source").to_pylist(), best.column("target").to_pylist()))

    exact_top, t_factor, t_solves = exact_top1(Q, r_plus, sources, args.exact)

    t = time.perf_counter()
    X = sp.csr_matrix((np.ones(len(sources)), (np.arange(len(sources)), sources)), shape=(len(sources), Q.shape[0]))
    acc = X.copy()
    for _ in range(5):
        X = X @ Q
        acc = acc + X
    neumann = acc @ sp.diags(r_plus)
    neumann_top = np.asarray(neumann.argmax(axis=1)).ravel()
    t_neumann = time.perf_counter() - t

    agree = float(np.mean([approx_top.get(int(s), -1) == exact_top[int(s)] for s in sources]))
    agree_n = np.mean([neumann_top[i] == exact_top[int(s)] for i, s in enumerate(sources)])
    exact_total = t_factor + t_solves
    print(f"per-source BFS+solve : {t_approx:8.3f} s  ({1e3 * t_approx / len(sources):.2f} ms/source)")
    print(f"exact ({args.exact:9s})  : {exact_total:8.3f} s  (factor {t_factor:.3f} s + solves {t_solves:.3f} s, "
          f"{1e3 * t_solves / len(sources):.1f} ms/source)")
    print(f"5-step Neumann batch : {t_neumann:8.3f} s")
    print(f"speed-up vs exact (factor + solves): {exact_total / t_approx:.1f}x; vs solves only: "
          f"{t_solves / t_approx:.1f}x; Neumann / approx time: {t_neumann / t_approx:.2f}x")
    print(f"top-1 agreement with exact: approx {agree:.4f}, Neumann {agree_n:.4f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"states": Q.shape[0], "transitions": int(Q.nnz), "sources": len(sources), "exact": args.exact,
                       "approx_s": t_approx, "approx_ms_per_source": 1e3 * t_approx / len(sources),
                       "exact_factor_s": t_factor, "exact_solves_s": t_solves,
                       "exact_ms_per_source": 1e3 * (t_factor + t_solves) / len(sources),
                       "speedup_vs_exact": exact_total / t_approx, "neumann5_s": t_neumann,
                       "top1_agreement": agree, "top1_agreement_neumann5": float(agree_n),
                       "peak_rss_mib": peak}, f, indent=2)


def bench_scale(args) -> None:
    base = validate(read_table(args.data, "interactions"), "interactions").good
    print(f"base traffic: {base.num_rows} utterances")
    previous = None
    for k in args.copies:
        parts = [base.set_column(0, "customer_id", pc.binary_join_element_wise(
            base.column("customer_id"), pa.scalar(f"x{i}"), "-")) for i in range(k)]
        traffic = pa.concat_tables(parts)
        t = time.perf_counter()
        mined = mine_local(traffic)
        dt = time.perf_counter() - t
        per = dt / traffic.num_rows * 1e6
        growth = f"  growth per doubling {per / previous:.2f}x" if previous else ""
        print(f"{traffic.num_rows:>9} utterances: {dt:7.1f} s, {per:.2f} us/utterance, "
              f"{mined.table.num_rows} rewrites{growth}")
        previous = per


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("solve")
    s.add_argument("--states", type=int, default=100_000)
    s.add_argument("--sources", type=int, default=300)
    s.add_argument("--cluster", type=int, default=30)
    s.add_argument("--degree", type=int, default=4)
    s.add_argument("--cross", type=float, default=0.02)
    s.add_argument("--depth", type=int, default=5)
    s.add_argument("--epsilon", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--exact", choices=("lu", "iterative"), default="lu")
    s.add_argument("--json")
    c = sub.add_parser("scale")
    c.add_argument("--data", required=True)
    c.add_argument("--copies", type=int, nargs="+", default=[2, 4, 8, 16])
    args = p.parse_args()
    (bench_solve if args.what == "solve" else bench_scale)(args)


if __name__ == "__main__":
    main()
