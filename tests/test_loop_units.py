"""The loop's own pieces: stage markers, measurements and request shaping, on a tiny real world."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from jobs import self_learning_loop as loop
from raylib import schema
from raylib.sim import World, simulate
from raylib.store import Store
from serve_apps.models import RouteRequest

TINY = {"population": {"n_customers": 150}, "routing": {"n_requests": 200}}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny-world"))
    simulate(out, "small", seed=4, config=TINY)
    return out, World.from_dir(out)


def test_a_finished_stage_is_reused_and_a_changed_one_reruns(tmp_path):
    stages = loop.Stages(str(tmp_path))
    calls = []

    def work(value):
        calls.append(value)
        return {"value": value}

    assert stages.run("mine", {"rounds": 2, "world": (("a.b", 1),)}, lambda: work(1)) == {"value": 1}
    again = loop.Stages(str(tmp_path))  # a new process after a kill
    assert again.run("mine", {"rounds": 2, "world": (("a.b", 1),)}, lambda: work(2)) == {"value": 1}
    assert again.reused == ["mine"] and calls == [1]
    assert again.run("mine", {"rounds": 3, "world": (("a.b", 1),)}, lambda: work(3)) == {"value": 3}
    assert loop.Stages(str(tmp_path), fresh=True).run("mine", {"rounds": 3}, lambda: work(4)) == {"value": 4}
    recorded = json.loads((tmp_path / "mine.json").read_text())
    assert recorded["outputs"] == {"value": 4} and not list(tmp_path.glob("*.tmp"))


def test_a_stage_that_fails_leaves_no_marker(tmp_path):
    stages = loop.Stages(str(tmp_path))

    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stages.run("train", {}, boom)
    assert stages.done("train", {}) is None


def test_policy_value_by_hand():
    dists = [np.array([0.5, 0.5]), np.array([1.0, 0.0, 0.0])]
    rewards = [np.array([0.2, 0.6]), np.array([0.1, 0.9, 0.9])]
    assert loop.policy_value(dists, rewards) == pytest.approx((0.4 + 0.1) / 2)


def test_overrides_round_trip():
    nested = {"population": {"n_customers": 150}, "traffic": {"turn_gap_s": [2.0, 30.0]}}
    settings = loop.LoopSettings(world=loop.flatten(nested))
    assert settings.world == (("population.n_customers", 150), ("traffic.turn_gap_s", (2.0, 30.0)))
    assert settings.world_overrides() == {"population": {"n_customers": 150}, "traffic": {"turn_gap_s": (2.0, 30.0)}}


def test_perfect_rewrites_lower_the_defect_rate(tiny_world):
    """Serving the simulator's own truth (what the speaker meant) as rewrites must lower
    the expected defect rate; serving none must leave it unchanged."""
    out, world = tiny_world
    pairs = loop.user_requests(out)
    assert pairs.num_rows > 0 and set(pairs.column_names) == {"utterance", "intended_interpretation", "n"}
    n_interactions = schema.read_table(out, "interactions").num_rows
    assert 0 < sum(pairs["n"].to_pylist()) < n_interactions  # rephrases and interjections left out
    none = loop.defect_rates(world, pairs, [None] * pairs.num_rows)
    assert none["defect_rate"] == none["defect_rate_without_rewrites"] and none["rewritten_share"] == 0
    truth = schema.read_table(out, "truth_rewrites")
    meant = dict(zip(truth["utterance"].to_pylist(), truth["intended_utterance"].to_pylist()))
    served = [meant.get(u) for u in pairs["utterance"].to_pylist()]
    fixed = loop.defect_rates(world, pairs, served)
    assert fixed["rewritten_share"] > 0
    assert fixed["defect_rate"] < 0.9 * fixed["defect_rate_without_rewrites"]


def test_route_bodies_are_valid_api_requests(tiny_world):
    _, world = tiny_world
    requests, _ = world.routing(20, seed=1)
    bodies = loop.route_bodies(requests)
    assert len(bodies) == 20
    for body, cands in zip(bodies, requests["candidates"].to_pylist()):
        parsed = RouteRequest.model_validate(json.loads(json.dumps(body)), strict=True)
        assert [c.skill_id for c in parsed.candidates] == [c["skill_id"] for c in cands]


def test_copy_artifact_keeps_every_file_kind_and_the_metadata(tmp_path):
    source, target = Store(str(tmp_path / "a")), Store(str(tmp_path / "b"))
    table = pa.table({"customer_id": ["c1", "c2"], "embedding": [[0.5, 1.0], [2.0, -1.0]]})
    source.publish("embeddings", {"old": {"x": 0}})
    version = source.publish("embeddings", {"customers": table, "manifest": {"dim": 2}, "raw": b"\x00\x01"},
                             metadata={"model": "PDRFE"})
    assert version == "v000002"
    copied = target.load("embeddings", loop.copy_artifact(source, target, "embeddings", version))
    assert copied.version == "v000001" and copied.metadata["model"] == "PDRFE"
    assert copied.table("customers").equals(table)
    assert copied.json("manifest") == {"dim": 2} and copied.bytes("raw") == b"\x00\x01"
    assert source.versions("embeddings") == ["v000001", "v000002"]  # the source is untouched


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--config", "/nonexistent/world.yaml"], "cannot read input"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys, tmp_path):
    assert loop.main(["--out", str(tmp_path / "demo"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_simulator_settings_fail_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("population: {n_customer: 5}\n")
    assert loop.main(["--out", str(tmp_path / "demo"), "--config", str(bad)]) == 2
    assert "unknown simulator setting 'population.n_customer'" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "stages").exists()


def test_feedback_joins_onto_decisions_by_request_id(tiny_world):
    _, world = tiny_world
    log, _ = world.routing(5, seed=7)
    decisions = log.drop_columns(["reward"])
    ids = log["request_id"].to_pylist()
    feedback = pa.table({"request_id": [ids[3], ids[0], "unknown"], "reward": [1.0, 0.0, 1.0]}, schema=schema.FEEDBACK)
    joined = loop.with_feedback(decisions, feedback)
    assert joined["request_id"].to_pylist() == [ids[0], ids[3]]
    assert joined["reward"].to_pylist() == [0.0, 1.0]
    assert joined["context"].to_pylist() == [log["context"][0].as_py(), log["context"][3].as_py()]
