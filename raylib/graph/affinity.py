"""Does the simulator's customer-skill affinity reach the interaction graph, and do the
learned embeddings recover it? (issue 16; evaluation only: reads the simulator's truth.)

The simulator's affinity (``raylib/sim/population.py``) is

    a(c, s) = z_c . w_s / sqrt(d)  +  m * M[meta(c), category(s)]

It shapes the graph twice: which skills a customer enables (Gumbel top-k of
``a + log popularity``) and, per turn, which enabled skill serves a domain (softmax of
``a``) and how likely the turn is defective (``sigmoid(b + d_u - w a)``). Three measures:

* ``in_graph``: over the customer-skill pairs of the graph, the Spearman correlation of
  ``a`` with the pair's number of interactions and with its defect rate, pooled and
  within customer (the mean over customers with >= 3 pairs of the per-customer
  correlation): how much of ``a`` a model could read from the edges at all.
* ``oracle_link``: link prediction (``raylib.graph.linkpred.ranking_metrics``) on the same
  held-out edges and negatives as the models, scored by the truth itself: by ``a`` and by
  the enabling score ``a + log popularity``. The ceiling a representation that recovered
  the affinity exactly would reach, next to the models' rows.
* ``recovery`` per model: the mean over held-out edges of the Spearman correlation between
  the model's link scores of the edge's candidate skills (the true one and its ``K``
  negatives) and their true affinities: 1 when the model orders a customer's skills as
  the affinity does, 0 when it knows nothing of it.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata, spearmanr

from raylib.graph.linkpred import ranking_metrics

MIN_PAIRS_PER_CUSTOMER = 3  # a within-customer correlation needs at least three pairs


def world_index(world_ids, graph_ids) -> np.ndarray:
    """The world's index of each of ``graph_ids`` among ``world_ids`` (-1: not in the world)."""
    index = {x: i for i, x in enumerate(world_ids)}
    return np.array([index.get(x, -1) for x in graph_ids], dtype=np.int64)


def pair_affinity(world, customer_index: np.ndarray, skill_index: np.ndarray, customers: np.ndarray,
                  skills: np.ndarray) -> np.ndarray:
    """``a(c, s)`` for graph node indices ``customers`` / ``skills`` (arrays of one shape),
    mapped to the world by ``customer_index`` / ``skill_index`` (``world_index``); NaN
    where the simulator has no affinity (the system skill, an id the world does not know)."""
    c, s = customer_index[customers.ravel()], skill_index[skills.ravel()]
    known = (c >= 0) & (s >= 0)
    out = np.full(c.shape, np.nan)
    out[known] = world.population.affinity(c[known], s[known], world.catalog)
    return out.reshape(customers.shape)


def rowwise_spearman(scores: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of the Spearman correlation of ``scores [N, M]`` with ``truth [N, M]``
    (average ranks for ties; rows where either side is constant, or holding a NaN, are
    left out); NaN when no row is left."""
    keep = ~np.isnan(truth).any(1) & ~np.isnan(scores).any(1)
    a, b = rankdata(scores[keep], axis=1), rankdata(truth[keep], axis=1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    norm = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    ok = norm > 0
    return float(np.mean((a * b).sum(1)[ok] / norm[ok])) if ok.any() else float("nan")


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan")
    return float(spearmanr(x[keep], y[keep]).statistic)


def within_customer_spearman(customer: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Mean over customers with >= ``MIN_PAIRS_PER_CUSTOMER`` pairs of the Spearman
    correlation of ``x`` with ``y`` among that customer's pairs (NaN when there is none)."""
    order = np.argsort(customer, kind="stable")
    bounds = np.flatnonzero(np.diff(customer[order])) + 1
    values = [_spearman(x[g], y[g]) for g in np.split(order, bounds) if len(g) >= MIN_PAIRS_PER_CUSTOMER]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def in_graph(edge_customer: np.ndarray, edge_skill: np.ndarray, edge_defect: np.ndarray,
             affinity_of_pair, num_skills: int) -> dict:
    """The ``in_graph`` measures over the graph's customer-skill pairs (see the module
    docstring); ``affinity_of_pair(customers, skills)`` gives ``a`` per pair."""
    key = edge_customer.astype(np.int64) * num_skills + edge_skill
    pairs, inverse, uses = np.unique(key, return_inverse=True, return_counts=True)
    defect_rate = np.bincount(inverse, weights=edge_defect.astype(np.float64)) / uses
    customer, skill = pairs // num_skills, pairs % num_skills
    a = affinity_of_pair(customer, skill)
    return {"pairs": int(len(pairs)), "pairs_with_affinity": int((~np.isnan(a)).sum()),
            "uses_spearman": _spearman(a, uses.astype(np.float64)),
            "uses_spearman_within_customer": within_customer_spearman(customer, a, uses.astype(np.float64)),
            "defect_rate_spearman": _spearman(a, defect_rate),
            "defect_rate_spearman_within_customer": within_customer_spearman(customer, a, defect_rate)}


def oracle_link(aff_pos: np.ndarray, aff_neg: np.ndarray, log_pop_pos: np.ndarray, log_pop_neg: np.ndarray,
                new_pair: np.ndarray) -> dict:
    """Link-prediction metrics of the truth on the models' test set (edges whose candidates
    all have an affinity), over all held-out edges and the new pairs alone."""
    keep = ~(np.isnan(aff_pos) | np.isnan(aff_neg).any(1))
    out = {}
    for name, pos, neg in (("affinity", aff_pos, aff_neg),
                           ("affinity + log popularity", aff_pos + log_pop_pos, aff_neg + log_pop_neg)):
        out[name] = {"all": ranking_metrics(pos[keep], neg[keep]),
                     "new_pairs": ranking_metrics(pos[keep & new_pair], neg[keep & new_pair])
                     if (keep & new_pair).any() else None}
    return out


def recovery(positive: np.ndarray, negative: np.ndarray, aff_pos: np.ndarray, aff_neg: np.ndarray) -> float:
    """Mean within-candidate-set Spearman of a model's link scores with the true affinity."""
    return rowwise_spearman(np.column_stack([positive, negative]), np.column_stack([aff_pos, aff_neg]))


def affinity_report(world, graph, data, test, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """The three measures for a trained run: ``graph`` (``CustomerSkillGraph``) and ``data``
    (``GraphData``) of the run, its link ``test`` set (``LinkTestSet``) and each model's
    ``(positive, negative)`` link scores on it."""
    customer_index = world_index(world.population.ids, graph.customer_ids)
    skill_index = world_index(world.catalog.skill_ids, graph.skill_ids)

    def affinity_of(customers, skills):
        return pair_affinity(world, customer_index, skill_index, customers, skills)

    customer = data.edge_customer[test.edges]
    aff_pos = affinity_of(customer, data.edge_skill[test.edges])
    aff_neg = affinity_of(np.repeat(customer[:, None], test.negatives.shape[1], 1), test.negatives)
    log_pop = np.where(skill_index >= 0, np.log(world.catalog.skill_popularity[np.maximum(skill_index, 0)]), np.nan)
    return {
        "in_graph": in_graph(graph.edge_customer, graph.edge_skill, graph.edge_defect, affinity_of, graph.num_skills),
        "oracle_link": oracle_link(aff_pos, aff_neg, log_pop[data.edge_skill[test.edges]], log_pop[test.negatives],
                                   ~test.seen_pair),
        "recovery": {name: recovery(pos, neg, aff_pos, aff_neg) for name, (pos, neg) in scores.items()},
    }
