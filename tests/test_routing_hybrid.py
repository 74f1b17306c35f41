"""Eq. 3 (κ_j), Eq. 4 (RPDR_j), the mixture propensity and the policy artifact."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raylib.routing.features import Vocabulary, encode, requests_to_table, top_intents
from raylib.routing.hybrid import HybridPolicy, kappa, mixture, production_distribution, rpdr
from raylib.routing.toy import ToyBandit


def test_kappa_eq3_hand_computed():
    pi_new = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    pi_ref = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.6, 0.4, 0.0]])
    # per-row replication: 1 - 2/2 = 0 ; 1 - 0 = 1 ; 1 - 0.8/2 = 0.6
    k = kappa(pi_new, pi_ref, np.array(["a", "a", "b"]))
    assert k == pytest.approx({"a": 0.5, "b": 0.6})


@pytest.mark.parametrize(
    "kappa_j, target, expected",
    [(0.95, 0.9, 0.0), (0.9, 0.9, 0.0), (0.8, 0.9, 0.5), (0.0, 0.9, 0.9), (0.6, 0.99, 0.975)],
)
def test_rpdr_eq4_hand_computed(kappa_j, target, expected):
    value = rpdr(kappa_j, target)
    assert value == pytest.approx(expected)
    # with a perfect RP the mixture replicates exactly at the target (or above it)
    assert value + (1 - value) * kappa_j >= target - 1e-12


def test_mixture_propensity_is_mixture_probability_of_the_sampled_action():
    bandit = ToyBandit(seed=3)
    log, _ = bandit.routing(200, seed=1)
    vocab = Vocabulary.fit(log)
    policy = HybridPolicy.untrained(vocab, seed=1)
    intents = top_intents(log)
    policy.rpdr = {str(j): float(i) / 10 for i, j in enumerate(sorted(set(intents)))}
    pi_rp, pi_lp, w, n = policy.model_distributions(log)
    expected = mixture(pi_rp, pi_lp, w)
    out = policy.act(log, np.random.default_rng(0))
    rows = np.arange(log.num_rows)
    assert np.allclose(out["propensities"], expected[rows, out["actions"]])
    assert np.all(out["actions"] < n)
    for dist, k in zip(out["distributions"], n):
        assert len(dist) == k and dist.sum() == pytest.approx(1.0)
    # hand check of the mixture on one row
    i = 0
    assert expected[i] == pytest.approx(w[i] * pi_rp[i] + (1 - w[i]) * pi_lp[i])
    # decided_by follows RPDR: with RPDR = 1 everywhere, RP decides every request
    policy.rpdr = {j: 1.0 for j in policy.rpdr}
    assert set(policy.act(log, np.random.default_rng(1))["decided_by"]) == {"rp"}


def test_sampling_frequencies_match_the_distribution():
    bandit = ToyBandit(seed=3)
    log, _ = bandit.routing(1, seed=2)
    policy = HybridPolicy.untrained(Vocabulary.fit(log), seed=2)
    policy.rpdr = {}
    policy.default_rpdr = 0.3
    big = log.take(np.zeros(4000, dtype=int))
    out = policy.act(big, np.random.default_rng(5))
    freq = np.bincount(out["actions"], minlength=len(out["distributions"][0])) / 4000
    assert np.abs(freq - out["distributions"][0]).max() < 0.04


def test_artifact_round_trip_and_decide_on_requests():
    bandit = ToyBandit(seed=4)
    log, _ = bandit.routing(100, seed=4)
    policy = HybridPolicy.untrained(Vocabulary.fit(log), seed=4)
    policy.rpdr = {"intent1": 0.25}
    again = HybridPolicy.from_files(**policy.to_files())
    a = np.concatenate(policy.action_distribution(log))
    b = np.concatenate(again.action_distribution(log))
    assert np.allclose(a, b) and again.rpdr == {"intent1": 0.25}
    request = {
        "utterance": "w1_0 never seen words",
        "candidates": [
            {"domain": "dom1", "intent": "intent1", "skill_id": "skill1", "nlu_confidence": 0.2},
            {"domain": "new", "intent": "brand_new", "skill_id": "unknown_skill", "nlu_confidence": 0.8},
        ],
        "context": {"device_type": "car", "device_status": "on", "asr_confidence": 0.9, "hour": 3},
        "customer_id": None,
    }
    (out,) = again.decide([request], np.random.default_rng(0))
    assert out["action"] in (0, 1) and out["decided_by"] in ("rp", "lp")
    assert out["probabilities"][out["action"]] == pytest.approx(out["propensity"])
    assert sum(out["probabilities"]) == pytest.approx(1.0)
    # the served request encodes exactly like the same request in a log table
    feats = encode(requests_to_table([request]), again.vocab)
    assert feats.n_candidates.tolist() == [2] and feats.order[0, 0] == 1  # highest confidence first


def test_production_distribution_is_the_current_policy_even_on_rows_logged_by_another():
    bandit = ToyBandit(seed=3)
    log, _ = bandit.routing(100, seed=2)  # logged by the bandit's own logging policy
    current = HybridPolicy.untrained(Vocabulary.fit(log), seed=4)
    width = max(len(c) for c in log["candidates"].to_pylist()) + 1  # wider than the table
    dist, _ = current.padded_distribution(log)
    ref = production_distribution(log, width, current)
    assert ref.shape == (100, width)
    assert np.allclose(ref[:, : dist.shape[1]], dist) and np.allclose(ref[:, dist.shape[1] :], 0)
    logged = production_distribution(log, width)  # no current policy: the logged Π_0
    for row, p in zip(logged, log["propensities"].to_pylist()):
        assert np.allclose(row[: len(p)], p) and np.allclose(row[len(p) :], 0)
    assert not np.allclose(ref, logged)
    i = log.schema.get_field_index("propensities")
    unknown = log.set_column(i, "propensities", pa.nulls(100, log.schema.field(i).type))
    assert production_distribution(unknown, width) is None
