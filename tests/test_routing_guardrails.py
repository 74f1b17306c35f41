"""Guard-rails from YAML -> pass / fail decisions with reasons."""

from __future__ import annotations

import pytest

from raylib.errors import UserError
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


def test_small_segments_are_not_judged_unless_critical():
    rails = GuardRails(min_segment_samples=500, critical_intents=["GetWeather"], critical_min_replication=0.95)
    decision = decide(_ope(n=100), current_value=0.6, rails=rails)
    assert decision["reasons"] == ["critical intent GetWeather: replication 0.900 below 0.95"]


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
