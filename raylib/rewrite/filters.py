"""Filters on candidate rewrites (seed 001, "System Overview" and Table 1 discussion).

Applied in this order; a rejected candidate is counted by the FIRST filter it fails:

1. ``min_support``: the source utterance was said at least ``min_support`` times, so its
   friction rate and its row of Eq. 20 rest on enough traffic.
2. ``z_test``: the rewrite's friction rate is lower than the source's, one-sided
   two-proportion Z-test with pooled variance, p < ``alpha`` (0.01, the paper's value):

       p_hat = (x_s + x_t) / (n_s + n_t)
       z = (x_s/n_s - x_t/n_t) / sqrt(p_hat (1 - p_hat) (1/n_s + 1/n_t)),   p = 1 - Phi(z)

3. ``generic_target``: a target into which at least ``generic_min_sources`` UNRELATED
   sources collapse (Table 1, no. 9: "play swaggy playlist" -> "shuffle my songs").
   Unrelated = character-trigram Jaccard similarity of the two utterances below
   ``related_similarity``. Fan-in is counted over all candidates, before any filter.
4. ``min_customers``: at least ``min_customers`` DISTINCT customers said the rewrite
   after the source in one session (``evidence``), so no single customer's utterance is
   ever served to others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy.stats import norm

FILTERS = ("min_support", "z_test", "generic_target", "min_customers")


@dataclass(frozen=True)
class FilterParams:
    min_support: int = 10
    alpha: float = 0.01
    generic_min_sources: int = 10
    related_similarity: float = 0.3
    min_customers: int = 5


def two_proportion_z_test(x_s, n_s, x_t, n_t) -> tuple[np.ndarray, np.ndarray]:
    """One-sided pooled two-proportion Z-test of H1: rate_t < rate_s; returns (z, p)."""
    x_s, n_s, x_t, n_t = (np.asarray(v, dtype=np.float64) for v in (x_s, n_s, x_t, n_t))
    pooled = (x_s + x_t) / (n_s + n_t)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n_s + 1.0 / n_t))
    diff = x_s / n_s - x_t / n_t
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, diff / se, 0.0)
    return z, norm.sf(z)


def trigram_similarity(a: str, b: str) -> float:
    """Jaccard similarity of the character-trigram sets of two utterances."""
    ga = {a[i:i + 3] for i in range(max(len(a) - 2, 1))}
    gb = {b[i:i + 3] for i in range(max(len(b) - 2, 1))}
    return len(ga & gb) / len(ga | gb)


def generic_targets(utterances: list[str], rewrites: list[str], min_sources: int, related: float) -> set[str]:
    """Targets with at least ``min_sources`` distinct unrelated source utterances."""
    fan_in: dict[str, set[str]] = {}
    for u, r in zip(utterances, rewrites):
        if trigram_similarity(u, r) < related:
            fan_in.setdefault(r, set()).add(u)
    return {r for r, sources in fan_in.items() if len(sources) >= min_sources}


def apply_filters(candidates: pa.Table, params: FilterParams) -> tuple[pa.Table, dict[str, int], pa.Table]:
    """Filter candidates with columns utterance, rewrite, source_count, source_defects,
    target_count, target_defects, n_customers. Returns (kept with ``p_value`` added,
    removed per filter, removed rows with the ``filter`` that removed them)."""
    z, p = two_proportion_z_test(
        candidates.column("source_defects").to_numpy(), candidates.column("source_count").to_numpy(),
        candidates.column("target_defects").to_numpy(), candidates.column("target_count").to_numpy(),
    )
    candidates = candidates.append_column("p_value", pa.array(p, pa.float64()))
    utts = candidates.column("utterance").to_pylist()
    rews = candidates.column("rewrite").to_pylist()
    generic = generic_targets(utts, rews, params.generic_min_sources, params.related_similarity)
    passes = {
        "min_support": candidates.column("source_count").to_numpy() >= params.min_support,
        "z_test": p < params.alpha,
        "generic_target": np.array([r not in generic for r in rews], dtype=bool),
        "min_customers": candidates.column("n_customers").to_numpy() >= params.min_customers,
    }
    alive = np.ones(candidates.num_rows, dtype=bool)
    removed: dict[str, int] = {}
    removed_by = np.full(candidates.num_rows, "", dtype=object)
    for name in FILTERS:
        dropped = alive & ~passes[name]
        removed[name] = int(dropped.sum())
        removed_by[dropped] = name
        alive &= passes[name]
    rejected = candidates.filter(pa.array(~alive)).append_column(
        "filter", pa.array(removed_by[~alive].tolist(), pa.string())
    )
    return candidates.filter(pa.array(alive)), removed, rejected
