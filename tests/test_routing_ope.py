"""IPS / SNIPS / DM / DR on a tiny hand-computed log, the deterministic-logging fallback,
interval coverage and estimate-vs-truth correlation on a bandit with known rewards."""

from __future__ import annotations

import numpy as np
import pytest

from raylib.routing import ope
from raylib.routing.data import padded
from raylib.routing.toy import ToyBandit

PI = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
ACTIONS = np.array([0, 1, 1])
PROPENSITY = np.array([0.5, 0.5, 0.25])
REWARD = np.array([0.0, 1.0, 1.0])
Q = np.array([[0.2, 0.6], [0.5, 0.5], [0.1, 0.9]])


def test_estimators_on_a_tiny_log_computed_by_hand():
    w = ope.ips_weights(PI, ACTIONS, PROPENSITY)
    assert w == pytest.approx([1.0, 0.0, 3.2])
    assert ope.ips(w, REWARD) == pytest.approx(3.2 / 3)
    assert ope.snips(w, REWARD) == pytest.approx(3.2 / 4.2)
    assert ope.direct_terms(PI, Q).mean() == pytest.approx((0.4 + 0.5 + 0.74) / 3)
    # DR rows: 0.4 + 1*(0-0.2) ; 0.5 + 0*(1-0.5) ; 0.74 + 3.2*(1-0.9)
    assert ope.dr_terms(PI, Q, ACTIONS, w, REWARD).mean() == pytest.approx((0.2 + 0.5 + 1.06) / 3)
    assert ope.effective_sample_size(w) == pytest.approx(4.2**2 / (1 + 10.24))


def test_group_metrics_by_hand():
    logged = np.array([[0.5, 0.5], [0.5, 0.5], [0.75, 0.25]])
    out = ope.evaluate_group(PI, ACTIONS, PROPENSITY, REWARD, logged, Q, defect=REWARD < 0.5, replicates=50)
    l1 = np.array([0.0, 1.0, 1.1])
    assert out["l1_mean"] == pytest.approx(l1.mean()) and out["l1_std"] == pytest.approx(l1.std())
    assert out["replication"]["value"] == pytest.approx((1 - l1 / 2).mean())
    assert out["replication_defect"] == pytest.approx(1.0) and out["replication_nondefect"] == pytest.approx(0.5 * (0.5 + 0.45))
    assert out["exploration"] == pytest.approx((0.5 + 0.0 + 0.2) / 3)
    assert out["ips_weight_max"] == pytest.approx(3.2)
    assert out["estimator"] == "dr" and out["estimate"]["value"] == pytest.approx(1.76 / 3)
    assert out["ips"]["lo"] <= out["ips"]["value"] <= out["ips"]["hi"]


def test_deterministic_logging_falls_back_to_dm():
    n = 40
    pi = np.tile([[0.3, 0.7]], (n, 1))
    q = np.tile([[0.2, 0.9]], (n, 1))
    out = ope.evaluate_group(pi, np.zeros(n, int), np.ones(n), np.full(n, 0.2), None, q, replicates=20)
    assert out["ips_trusted"] is False and "deterministic" in out["ips_untrusted_reasons"][0]
    assert out["estimator"] == "dm" and out["estimate"]["value"] == pytest.approx(0.3 * 0.2 + 0.7 * 0.9)
    # without a reward model there is nothing trustworthy, and still no crash
    bare = ope.evaluate_group(pi, np.zeros(n, int), np.ones(n), np.full(n, 0.2), replicates=20)
    assert bare["estimator"] == "none" and bare["estimate"] is None


def _target(dists: list[np.ndarray]) -> list[np.ndarray]:
    """A fixed target policy: the logging distribution flattened toward uniform."""
    return [0.5 * d + 0.5 / len(d) for d in dists]


def test_ips_interval_coverage_and_estimate_truth_correlation():
    bandit = ToyBandit(n_intents=4, seed=7)
    big, big_truth = bandit.routing(3000, seed=999)
    width = 4
    rewards = padded(big_truth.column("expected_rewards").to_pylist(), width)
    logging = bandit.logging_distribution(big)
    truth_value = (padded(_target(logging), width) * rewards).sum(axis=1).mean()
    covered, reps = 0, 30
    for rep in range(reps):
        log, _ = bandit.routing(300, seed=rep)
        pi = padded(_target(bandit.logging_distribution(log)), width)
        res = ope.evaluate_group(
            pi, log.column("action").to_numpy(), log.column("propensity").to_numpy(), log.column("reward").to_numpy(),
            replicates=200, rng=np.random.default_rng(rep),
        )
        covered += res["ips"]["lo"] <= truth_value <= res["ips"]["hi"]
    assert covered / reps >= 0.9

    # a family of policies from "always the worst" to "always the best": SNIPS tracks truth
    log, truth = bandit.routing(1500, seed=5)
    r = padded(truth.column("expected_rewards").to_pylist(), width)
    mask = padded([[1.0] * len(x) for x in truth.column("expected_rewards").to_pylist()], width) > 0
    best = np.eye(width)[np.where(mask, r, -1).argmax(axis=1)]
    worst = np.eye(width)[np.where(mask, r, 2).argmin(axis=1)]
    uniform = mask / mask.sum(axis=1, keepdims=True)
    estimates, values = [], []
    for a in np.linspace(0, 1, 6):
        for base in (worst, uniform):
            pi = a * best + (1 - a) * base
            w = ope.ips_weights(pi, log.column("action").to_numpy(), log.column("propensity").to_numpy())
            estimates.append(ope.snips(w, log.column("reward").to_numpy()))
            values.append((pi * r).sum(axis=1).mean())
    assert np.corrcoef(estimates, values)[0, 1] >= 0.9
