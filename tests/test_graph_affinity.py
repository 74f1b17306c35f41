"""The affinity measures of ``raylib.graph.affinity`` against exact references (scipy's
Spearman, hand-built graphs), and on a simulated world: the truth recovers itself."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from raylib.graph.affinity import (in_graph, oracle_link, pair_affinity, recovery, rowwise_spearman,
                                   within_customer_spearman, world_index)
from raylib.sim import World


def test_rowwise_spearman_is_the_mean_of_scipys_per_row():
    rng = np.random.default_rng(0)
    scores, truth = rng.normal(size=(20, 6)), rng.normal(size=(20, 6))
    scores[3, 2] = scores[3, 4]  # a tie: average ranks, as scipy
    expected = np.mean([spearmanr(a, b).statistic for a, b in zip(scores, truth)])
    assert rowwise_spearman(scores, truth) == pytest.approx(expected)
    truth[5] = 1.0  # a constant row carries no order: left out
    truth[6, 0] = np.nan
    kept = [i for i in range(20) if i not in (5, 6)]
    assert rowwise_spearman(scores, truth) == pytest.approx(np.mean([spearmanr(scores[i], truth[i]).statistic for i in kept]))
    assert rowwise_spearman(truth[kept] * 2 + 1, truth[kept]) == pytest.approx(1.0)


def test_within_customer_spearman_skips_customers_with_fewer_than_three_pairs():
    customer = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    x = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 1.0, 2.0, 3.0])
    y = np.array([1.0, 2.0, 3.0, 5.0, 1.0, 3.0, 2.0, 1.0])  # customer 0: +1, customer 2: -1, customer 1 too small
    assert within_customer_spearman(customer, x, y) == pytest.approx(0.0)
    assert within_customer_spearman(customer[:3], x[:3], y[:3]) == pytest.approx(1.0)


def test_in_graph_counts_pairs_uses_and_defect_rates():
    # customer 0 uses skill 0 three times, skill 1 twice, skill 2 once; affinity orders them the same way
    edge_customer = np.array([0, 0, 0, 0, 0, 0])
    edge_skill = np.array([0, 0, 0, 1, 1, 2])
    edge_defect = np.array([0, 0, 0, 0, 1, 1])  # defect rates 0, 1/2, 1: the opposite order
    table = {0: 3.0, 1: 2.0, 2: 1.0}
    out = in_graph(edge_customer, edge_skill, edge_defect, lambda c, s: np.array([table[k] for k in s]), num_skills=3)
    assert out["pairs"] == 3 and out["pairs_with_affinity"] == 3
    assert out["uses_spearman"] == pytest.approx(1.0) and out["uses_spearman_within_customer"] == pytest.approx(1.0)
    assert out["defect_rate_spearman"] == pytest.approx(-1.0)


def test_the_truth_recovers_itself_on_a_simulated_world():
    world = World.from_preset("small", seed=1, overrides={"population": {"n_customers": 50}})
    customer_index = world_index(world.population.ids, world.population.ids[:10])
    skill_index = world_index(world.catalog.skill_ids, world.catalog.skill_ids[:40] + ["system"])
    assert skill_index[-1] == -1 and (customer_index == np.arange(10)).all()  # the system skill: not in the world
    customers = np.arange(10)
    candidates = np.stack([np.random.default_rng(c).choice(40, 8, replace=False) for c in customers])
    pos_skill, neg_skill = candidates[:, 0], candidates[:, 1:]
    aff_pos = pair_affinity(world, customer_index, skill_index, customers, pos_skill)
    aff_neg = pair_affinity(world, customer_index, skill_index, np.repeat(customers[:, None], 7, 1), neg_skill)
    assert np.allclose(aff_pos, world.population.affinity(customers, pos_skill, world.catalog))
    assert np.isnan(pair_affinity(world, customer_index, skill_index, customers[:1], np.array([40]))).all()  # system
    assert recovery(aff_pos, aff_neg, aff_pos, aff_neg) == pytest.approx(1.0)
    assert recovery(-aff_pos, -aff_neg, aff_pos, aff_neg) == pytest.approx(-1.0)
    links = oracle_link(aff_pos, aff_neg, np.zeros(10), np.zeros((10, 7)), np.ones(10, bool))
    best = aff_pos > aff_neg.max(1)
    assert links["affinity"]["new_pairs"]["hits@10"] == 1.0 and links["affinity"]["all"]["mrr"] == pytest.approx(
        np.mean(1.0 / (1 + (aff_neg > aff_pos[:, None]).sum(1))))
    assert links["affinity"]["all"]["auc"] >= best.mean()
