"""Learning on a bandit with known rewards: HP beats the logging policy while each intent
replicates at about κ̃, and consecutive refreshes (HP1..HP4) never regress beyond the
guard-rail tolerance and end above the baseline."""

from __future__ import annotations

import numpy as np
import pytest

from raylib.routing.assess import assess, current_value
from raylib.routing.data import prepare
from raylib.routing.features import Vocabulary
from raylib.routing.guardrails import GuardRails
from raylib.routing.hybrid import HybridPolicy, production_distribution
from raylib.routing.learn import LearnSettings, learn_hybrid
from raylib.routing.refresh import refresh_curve, split
from raylib.routing.toy import ToyBandit
from raylib.routing.train import TrainSettings

SMALL = dict(word_dim=8, utterance_hidden=8, candidate_hidden=16, fc_hidden=32)


def _settings(epochs=8):
    return LearnSettings(
        kappa_target=0.9,
        rp=TrainSettings(epochs=epochs + 4, sizes=SMALL),
        lp=TrainSettings(epochs=epochs, sizes=SMALL, seed=1),
        reward=TrainSettings(epochs=epochs, sizes=SMALL, seed=2),
    )


def test_hybrid_beats_logging_and_replicates_each_intent():
    bandit = ToyBandit(n_intents=4, seed=11)
    log, truth = bandit.routing(2400, seed=1)
    data = prepare(log, truth=truth)
    parts = split(data.log, data.truth)
    refresh = learn_hybrid(parts["train"][0], parts["validation"][0], _settings())
    report = assess(refresh.policy, *parts["test"][:1], GuardRails(min_segment_samples=50), refresh.reward_model, parts["test"][1], 50)
    values = report["true_value"]
    assert values["hp"] > values["logging"] + 0.01
    assert values["lp"] > values["hp"]  # LP alone improves more, at the cost of replication
    for intent, rep in report["replication"].items():
        error = 3 * np.sqrt(0.9 * 0.1 / rep["n"])
        assert rep["hp"] >= 0.9 - error, (intent, rep)
        assert 0 <= refresh.policy.rpdr[intent] <= 1


def test_four_refreshes_trend_up_within_tolerance():
    rails = GuardRails(min_segment_samples=10_000, max_reward_regression=0.02, ips_weight_bounds=(0.5, 1.5), min_ess=20)
    result = refresh_curve(ToyBandit(n_intents=4, seed=12), rounds=4, n=1500, n_eval=1500, seed=0,
                           settings=_settings(6), rails=rails, replicates=30)
    curve = result["deployed_curve"]
    assert len(curve) == 5 and len(result["rounds"]) == 4
    assert all(b >= a - rails.max_reward_regression for a, b in zip(curve, curve[1:]))
    assert curve[-1] > curve[0] + 0.02
    assert result["calibration"]["correlation"] is not None


def test_current_policy_value_is_its_mean_reward_on_its_own_logs_and_an_estimate_on_others():
    bandit = ToyBandit(n_intents=4, seed=5)
    other, _ = bandit.routing(400, seed=0)
    current = HybridPolicy.untrained(Vocabulary.fit(other), seed=1)
    own, _ = bandit.routing(400, seed=1, policy=current.as_logging_policy(seed=2))
    for log, on_own_logs in ((own, True), (other, False)):
        width = max(len(c) for c in log["candidates"].to_pylist())
        args = {
            "actions": log["action"].to_numpy().astype(np.int64),
            "propensity": log["propensity"].to_numpy(),
            "reward": log["reward"].to_numpy(),
            "predicted": None,
        }
        value = current_value(production_distribution(log, width, current), args)
        mean_reward = float(args["reward"].mean())
        # on its own logs every IPS weight is 1, so the (SNIPS) estimate is the mean reward
        assert (value == pytest.approx(mean_reward)) is on_own_logs
        assert current_value(None, args) == pytest.approx(mean_reward)
