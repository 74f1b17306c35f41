"""Filters on candidate rewrites (seed 001, "System Overview" and Table 1 discussion).

Applied in this order; a rejected candidate is counted by the FIRST filter it fails:

1. ``min_support``: the source utterance was said at least ``min_support`` times, so its
   friction rate and its row of Eq. 20 rest on enough traffic.
2. ``z_test``: a pooled two-proportion Z-test of the friction rates of the source
   (x_s defects in n_s turns) and the rewrite (x_t in n_t), p < ``alpha`` (0.01, the
   paper's value):

       p_hat = (x_s + x_t) / (n_s + n_t)
       z = (x_s/n_s - x_t/n_t) / sqrt(p_hat (1 - p_hat) (1/n_s + 1/n_t))
       p_lower  = 1 - Phi(z)    (H1: rate_t < rate_s, the rewrite is better)
       p_higher = Phi(z)        (H1: rate_t > rate_s, the rewrite is worse)

   With no evidence (n_s or n_t = 0, or p_hat in {0, 1}) z = 0 and both p are 1/2.
   ``z_rule`` picks the rule:

   * ``"paper"`` (the seed's offline blacklist): REMOVE when the rewrite is
     significantly worse than not rewriting, p_higher < alpha; keep otherwise.
   * ``"better"``: KEEP only when the rewrite is significantly better, p_lower < alpha
     (much stricter: the rewrite must also be said often enough to prove it).

   The ``p_value`` kept with each rewrite is that of the rule's own test.

   Default ``"better"``, measured (issue 15; ``selflearn simulate`` then ``selflearn
   mine-rewrites --truth SIM --engine local --z-rule R``, other flags default):

       world                          rule    n_rewrites precision (traffic) coverage (traffic)  win/loss
       medium, seed 0                 paper   473        0.998 (0.994)       0.071 (0.679)       441/31
       medium, seed 0                 better  416        1.000 (1.000)       0.071 (0.679)       416/0
       small, seed 1                  paper    25        1.000 (1.000)       0.029 (0.278)        24/1
       small, seed 1                  better   22        1.000 (1.000)       0.029 (0.278)        22/0
       small, noisier (see below)     paper    33        1.000 (1.000)       0.030 (0.323)        31/2
       small, noisier (see below)     better   31        1.000 (1.000)       0.030 (0.323)        31/0

   (noisier: noise.partial_title_rate 0.15, unsupported_phrasing_rate 0.15,
   utterance_difficulty_sd 1.0, behaviour.rephrase_bad 0.25, generic 0.15.) Coverage is
   identical, also with ``--min-customers 2 --min-support 5`` (small 0.099 / 0.495, noisier
   0.115 / 0.561 under both): a truly defective source rephrased by enough distinct
   customers is always significantly better. The rewrites only "paper" adds are
   paraphrases of sources that already work (medium: "buy timken" -> "add timken to my
   cart", friction 0.057 -> 0.077) and hold all its losses: no coverage, worse win/loss.
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
Z_RULES = ("paper", "better")


@dataclass(frozen=True)
class FilterParams:
    min_support: int = 10
    alpha: float = 0.01
    z_rule: str = "better"  # one of Z_RULES; the module docstring has the measured reason
    generic_min_sources: int = 10
    related_similarity: float = 0.3
    min_customers: int = 5

    def __post_init__(self):
        if self.z_rule not in Z_RULES:
            raise ValueError(f"z_rule must be one of {Z_RULES}, got {self.z_rule!r}")


def two_proportion_z_test(x_s, n_s, x_t, n_t, alternative: str) -> tuple[np.ndarray, np.ndarray]:
    """One-sided pooled two-proportion Z-test; returns (z, p). ``alternative`` is H1 for
    the target's rate: ``"lower"`` (rate_t < rate_s, p = 1 - Phi(z)) or ``"higher"``
    (rate_t > rate_s, p = Phi(z)). No evidence gives z = 0, p = 1/2."""
    if alternative not in ("lower", "higher"):
        raise ValueError(f"alternative must be 'lower' or 'higher', got {alternative!r}")
    x_s, n_s, x_t, n_t = (np.asarray(v, dtype=np.float64) for v in (x_s, n_s, x_t, n_t))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (x_s + x_t) / (n_s + n_t)
        se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n_s + 1.0 / n_t))
        diff = x_s / n_s - x_t / n_t
        z = np.where((n_s > 0) & (n_t > 0) & (se > 0), diff / se, 0.0)
    return z, norm.sf(z) if alternative == "lower" else norm.cdf(z)


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
    _, p = two_proportion_z_test(
        candidates.column("source_defects").to_numpy(), candidates.column("source_count").to_numpy(),
        candidates.column("target_defects").to_numpy(), candidates.column("target_count").to_numpy(),
        "higher" if params.z_rule == "paper" else "lower",
    )
    candidates = candidates.append_column("p_value", pa.array(p, pa.float64()))
    utts = candidates.column("utterance").to_pylist()
    rews = candidates.column("rewrite").to_pylist()
    generic = generic_targets(utts, rews, params.generic_min_sources, params.related_similarity)
    passes = {
        "min_support": candidates.column("source_count").to_numpy() >= params.min_support,
        "z_test": p >= params.alpha if params.z_rule == "paper" else p < params.alpha,
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
