"""Guard-rails from YAML -> pass / fail decisions with reasons; small intents judged by
their intervals."""

from __future__ import annotations

import numpy as np
import pytest

from raylib.errors import UserError
from raylib.routing import ope
from raylib.routing.guardrails import GuardRails, decide


def _ope(estimate=0.62, weight=1.0, ess=500.0, replication=None, n=300):
    replication = replication or {"PlayMusic": 0.99, "GetWeather": 0.9}
    return {
        "overall": {
            "estimator": "dr",
            "estimate": {"value": estimate, "lo": estimate - 0.01, "hi": estimate + 0.01},
            "ips_weight_mean": {"value": weight},
            "ess": ess,
        },
        "segments": {j: {"n": n, "replication": {"value": v}} for j, v in replication.items()},
    }


def test_passes_when_every_rail_holds(tmp_path):
    path = tmp_path / "rails.yaml"
    path.write_text("min_replication: 0.85\nmax_reward_regression: 0.02\ncritical_intents: [PlayMusic]\n")
    rails = GuardRails.from_yaml(str(path))
    assert rails.critical_intents == ["PlayMusic"] and rails.max_reward_regression == 0.02
    decision = decide(_ope(), current_value=0.6, rails=rails)
    assert decision["status"] == "pass" and decision["reasons"] == []


def test_fails_with_one_reason_per_broken_rail():
    rails = GuardRails(min_replication=0.92, critical_intents=["PlayMusic"], critical_min_replication=0.995, min_ess=1000)
    decision = decide(_ope(estimate=0.55, weight=1.5, ess=200.0), current_value=0.6, rails=rails)
    assert decision["status"] == "fail"
    text = " | ".join(decision["reasons"])
    for needle in ("estimated reward 0.5500", "mean IPS weight 1.500", "ESS 200.0", "critical intent PlayMusic", "GetWeather"):
        assert needle in text
    assert len(decision["reasons"]) == 5


def test_small_intents_are_judged_by_their_intervals():
    rails = GuardRails(min_segment_samples=500, critical_intents=["GetWeather"], critical_min_replication=0.95)
    ope = _ope(n=100)
    ope["segments"]["Unsure"] = {"n": 20, "replication": {"value": 0.70, "lo": 0.50, "hi": 0.90}}
    ope["segments"]["Broken"] = {"n": 20, "replication": {"value": 0.40, "lo": 0.25, "hi": 0.60}}
    ope["segments"]["NoInterval"] = {"n": 20, "replication": {"value": 0.80, "lo": float("nan"), "hi": float("nan")}}
    decision = decide(ope, current_value=0.6, rails=rails)
    checks = {c["name"]: c for c in decision["checks"]}
    assert decision["reasons"] == [
        "small intent Broken (20 requests): replication 0.400, 95% interval upper bound 0.600, below 0.85",
        "critical intent GetWeather (100 requests): replication 0.900 below 0.95",
        "small intent NoInterval (20 requests): replication 0.800 below 0.85",
    ]
    unsure = checks["replication[Unsure]"]
    assert unsure["passed"] and unsure["judged_by"] == "interval upper bound" and unsure["interval"] == [0.5, 0.9]
    assert checks["replication[PlayMusic]"]["passed"] and checks["replication[PlayMusic]"]["n"] == 100
    assert checks["replication[GetWeather]"]["judged_by"] == checks["replication[NoInterval]"]["judged_by"] == "value"


def test_guardrails_flag_a_rare_intent_a_bad_lp_routes():
    # Π_0 takes candidate 0 with probability 0.8 and logged every request. The new policy
    # serves two frequent intents like Π_0 and the rare intent's 12 requests either with
    # candidate 1 (its LP alone, as the pooled κ of a small segment could make it) or like
    # Π_0 (its RP alone).
    rng = np.random.default_rng(0)
    n = 412
    segments = np.array(["Frequent1"] * 200 + ["Frequent2"] * 200 + ["Rare"] * 12)
    reference = np.tile([0.8, 0.2], (n, 1))
    actions = (rng.random(n) < 0.2).astype(np.int64)
    propensity = reference[np.arange(n), actions]
    reward = (rng.random(n) < 0.6).astype(float)
    rails = GuardRails(min_segment_samples=100, min_ess=10)
    decisions = {}
    for served_by, rare_row in (("lp", [0.0, 1.0]), ("rp", [0.8, 0.2])):
        pi = reference.copy()
        pi[segments == "Rare"] = rare_row
        result = ope.evaluate(pi, actions, propensity, reward, segments, reference, replicates=100)
        decisions[served_by] = decide(result, current_value=float(reward.mean()), rails=rails)
    rare = {k: next(c for c in d["checks"] if c["name"] == "replication[Rare]") for k, d in decisions.items()}
    assert rare["lp"]["judged_by"] == "interval upper bound" and rare["lp"]["interval"][1] < rails.min_replication
    assert not rare["lp"]["passed"] and any("small intent Rare (12 requests)" in r for r in decisions["lp"]["reasons"])
    assert rare["rp"]["passed"] and decisions["rp"]["status"] == "pass"


def test_no_trustworthy_estimate_fails():
    ope = _ope()
    ope["overall"]["estimate"] = None
    assert decide(ope, 0.6, GuardRails())["status"] == "fail"


def test_bad_yaml_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_replicaton: 0.9\n")
    with pytest.raises(UserError, match="unknown keys"):
        GuardRails.from_yaml(str(bad))
    with pytest.raises(UserError, match="cannot read"):
        GuardRails.from_yaml(str(tmp_path / "missing.yaml"))


def test_shipped_example_file_loads():
    import pathlib

    example = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "policy_guardrails.yaml"
    assert GuardRails.from_yaml(str(example)) == GuardRails()
