"""The loop's own pieces (raylib/loop) and the library measurements it uses: stage markers,
child jobs, defect rates of the users' requests, policy values, feedback join, request
shaping, reports, on hand-made cases and a tiny real world."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from jobs import self_learning_loop as entry
from raylib import schema, uri
from raylib.errors import UserError
from raylib.job import EXIT_OK, EXIT_REJECTED
from raylib.loop import child
from raylib.loop.child import run_job
from raylib.loop.loop import copy_artifact
from raylib.loop.report import markdown_report
from raylib.loop.rounds import round_defect_rates
from raylib.loop.service import route_bodies
from raylib.loop.settings import DEFAULT_WORLD, LoopSettings, flatten, world_settings
from raylib.loop.stages import Stages
from raylib.rewrite.evaluate import defect_rates, intended_turns, replay
from raylib.routing.assess import logging_true_value
from raylib.routing.data import prepare
from raylib.schema import normalize_utterance
from raylib.sim import World, simulate
from raylib.store import Store
from serve_apps.models import RouteRequest

TINY = {"population": {"n_customers": 150}, "routing": {"n_requests": 200}}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny-world"))
    simulate(out, "small", seed=4, config=TINY)
    return out, World.from_dir(out)


# ---- stage markers ---------------------------------------------------------------------------


def test_a_finished_stage_is_reused_and_a_changed_one_reruns(tmp_path):
    stages = Stages(str(tmp_path))
    calls = []

    def work(value):
        calls.append(value)
        return {"value": value}

    assert stages.run("mine", {"rounds": 2, "world": (("a.b", 1),)}, lambda: work(1)) == {"value": 1}
    again = Stages(str(tmp_path))  # a new process after a kill
    assert again.run("mine", {"rounds": 2, "world": (("a.b", 1),)}, lambda: work(2)) == {"value": 1}
    assert again.reused == ["mine"] and calls == [1]
    assert again.run("mine", {"rounds": 3, "world": (("a.b", 1),)}, lambda: work(3)) == {"value": 3}
    assert Stages(str(tmp_path), fresh=True).run("mine", {"rounds": 3}, lambda: work(4)) == {"value": 4}
    recorded = json.loads((tmp_path / "mine.json").read_text())
    assert recorded["outputs"] == {"value": 4} and not list(tmp_path.glob("*.tmp"))


def test_a_stage_runs_once_per_run_even_when_fresh(tmp_path):
    """A round's traffic is asked for by its round and again by the re-mining after it."""
    Stages(str(tmp_path)).run("round-1-traffic", {}, lambda: {"run": 0})
    stages = Stages(str(tmp_path), fresh=True)
    assert stages.run("round-1-traffic", {}, lambda: {"run": 1}) == {"run": 1}
    assert stages.run("round-1-traffic", {}, lambda: {"run": 2}) == {"run": 1}
    assert stages.ran == ["round-1-traffic"] and stages.reused == []


def test_a_stage_that_fails_leaves_no_marker(tmp_path):
    stages = Stages(str(tmp_path))

    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stages.run("train", {}, boom)
    assert stages.done("train", {}) is None


def test_stage_markers_live_under_a_uri_and_hold_strict_json(tmp_path):
    """Outputs come back as recorded, the first time too: a NaN is null, a tuple a list."""
    stages = Stages(f"file://{tmp_path}/stages")
    first = stages.run("round-1", {"seed": 0}, lambda: {"rate": float("nan"), "pair": (1, 2)})
    assert first == {"rate": None, "pair": [1, 2]}
    assert Stages(f"file://{tmp_path}/stages").run("round-1", {"seed": 0}, lambda: {"rate": 1.0}) == first
    assert "NaN" not in (tmp_path / "stages" / "round-1.json").read_text()


# ---- child jobs ------------------------------------------------------------------------------

FAKE_JOB = """
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--out")
p.add_argument("--exit", type=int)
args = p.parse_args()
print("fake job ran")
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump({"published_version": None if args.exit else "v000001"}, f)
sys.exit(args.exit)
"""


@pytest.fixture
def fake_job(tmp_path, monkeypatch):
    (tmp_path / "fakejob.py").write_text(FAKE_JOB)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "fakejob"


def test_a_child_job_runs_as_a_module_and_its_summary_is_read(fake_job, tmp_path):
    out = str(tmp_path / "jobs" / "policy-0")
    summary = run_job(fake_job, out, ["--exit", str(EXIT_REJECTED)], str(tmp_path / "logs" / "policy-0.log"),
                      ok_codes=(EXIT_OK, EXIT_REJECTED))
    assert summary == {"published_version": None}
    assert "fake job ran" in (tmp_path / "logs" / "policy-0.log").read_text()


def test_a_failed_child_job_is_an_error_with_its_log_tail(fake_job, tmp_path):
    log = f"file://{tmp_path}/logs/mine-0.log"  # a URI: the output is copied there afterwards
    with pytest.raises(UserError, match="exit code 3") as failed:
        run_job(fake_job, str(tmp_path / "out"), ["--exit", str(EXIT_REJECTED)], log)
    assert "fake job ran" in str(failed.value)
    assert "fake job ran" in uri.read_bytes(log).decode()


def test_an_unknown_child_module_fails_with_pythons_message(tmp_path):
    with pytest.raises(UserError, match="No module named"):
        run_job("no_such_job_module", str(tmp_path / "out"), [], str(tmp_path / "x.log"))


def test_the_loop_evaluates_its_policy_on_the_held_out_rows(monkeypatch, tmp_path):
    # jobs.evaluate_policy --held-out keeps only the test split (tests/test_routing_jobs.py
    # checks it against the rows train_policy learned from); the loop must ask for it.
    calls = []

    def fake_run_job(module, out, args, log_file, ok_codes=(EXIT_OK,)):
        calls.append((module, args))
        return {"ope": {}, "decision": {"status": "pass"}, "evaluated_rows": {"rows": "test split", "count": 9}}

    monkeypatch.setattr(child, "run_job", fake_run_job)
    settings = LoopSettings(policy_epochs=2)
    outputs = child.Jobs(str(tmp_path), settings, str(tmp_path / "store")).evaluate_policy("DATA", "v000001")
    [(module, args)] = calls
    assert module == "jobs.evaluate_policy" and "--held-out" in args and args[args.index("--data") + 1] == "DATA"
    assert args[args.index("--epochs") + 1] == "2"  # its reward model trains as long as the policy's networks
    assert outputs["evaluated_rows"] == {"rows": "test split", "count": 9}


# ---- defect rate of the users' requests (raylib.rewrite.evaluate.defect_rates) ---------------


class TableWorld:
    """A world whose defect probability is a lookup table of (text, meant interpretation)."""

    def __init__(self, table):
        self.table = table
        self.asked: list[list[str]] = []

    def defect_probability(self, utterances, intended):
        utterances = list(utterances)
        self.asked.append(utterances)
        return np.array([self.table[(u, h)] for u, h in zip(utterances, intended)])


HAND_TURNS = pa.table({
    "utterance": ["play foo", "play foo", "play foo", "play foo", "stop", "play bar", "play baz", "play zap"],
    "intended_interpretation": ["A", "A", "A", "A", "STOP", "B", "C", "A"],
    "turn_kind": ["first", "first", "followup", "rephrase_good", "interjection", "first", "followup", "rephrase_bad"],
})
HAND_WORLD = {("play foo", "A"): 0.5, ("play bar", "B"): 0.2, ("play baz", "C"): 0.8, ("play food", "A"): 0.1}
# play foo -> play food; play bar served as itself (not a rewrite); play baz not rewritten
HAND_REWRITES = {"play foo": "play food", "play bar": "play bar"}


def test_defect_rates_by_hand():
    """Requests: 3 x play foo (2 first + 1 follow-up), play bar, play baz = 5; the rephrases
    and the interjection are left out. Without: (3*.5 + .2 + .8)/5 = .5; with: (3*.1 + .2 +
    .8)/5 = .26; rewritten: the 3 play foo, .5 -> .1."""
    world = TableWorld(HAND_WORLD)
    seen = []

    def rewrite(utterances):
        seen.extend(utterances)
        return [HAND_REWRITES.get(u) for u in utterances]

    rates = defect_rates(world, HAND_TURNS, rewrite)
    assert sorted(seen) == ["play bar", "play baz", "play foo"]  # each distinct request once
    assert rates == pytest.approx({"requests": 5, "rewritten_requests": 3, "defect_rate_without": 0.5,
                                   "defect_rate_with": 0.26, "rewritten_defect_rate_without": 0.5,
                                   "rewritten_defect_rate_with": 0.1})
    assert round_defect_rates(rates) == pytest.approx({"defect_rate": 0.26, "defect_rate_without_rewrites": 0.5,
                                                       "rewritten_share": 0.6, "requests": 5})


def test_defect_rates_without_rewrites_and_without_requests():
    world = TableWorld(HAND_WORLD)
    none = defect_rates(world, HAND_TURNS)
    assert none["defect_rate_with"] == none["defect_rate_without"] == pytest.approx(0.5)
    assert none["rewritten_requests"] == 0 and none["rewritten_defect_rate_with"] is None
    assert len(world.asked) == 1  # nothing rewritten: no second pass over the world
    empty = defect_rates(world, HAND_TURNS.filter(pa.array([False] * 3 + [True] * 2 + [False] * 3)))
    assert empty["requests"] == 0 and empty["defect_rate_without"] is None
    assert round_defect_rates(empty)["rewritten_share"] is None


def test_replay_measures_the_same_requests():
    """replay of a table = defect_rates with the table's lookup, under its own key names."""
    table = pa.table({"utterance": ["play foo", "play zap"], "rewrite": ["play food", "play zip"]})
    out = replay(table, TableWorld(HAND_WORLD), HAND_TURNS)
    assert out == pytest.approx({
        "heldout_turns": 5, "rewritten_turns": 3, "defect_rate_without": 0.5, "defect_rate_with": 0.26,
        "rewritten_defect_rate_without": 0.5, "rewritten_defect_rate_with": 0.1,
        "defect_reduction": 1 - 0.26 / 0.5, "rewritten_defect_reduction": 0.8})


def test_perfect_rewrites_lower_the_defect_rate(tiny_world):
    """Serving the simulator's own truth (what the speaker meant) as rewrites must lower
    the expected defect rate of real simulated requests; serving none must leave it unchanged."""
    out, world = tiny_world
    interactions = uri.read_table(out, "interactions")
    turns = intended_turns(interactions, uri.read_table(out, "truth_turns"))
    none = defect_rates(world, turns)
    assert 0 < none["requests"] < interactions.num_rows  # rephrases and interjections left out
    assert none["defect_rate_with"] == none["defect_rate_without"] and none["rewritten_requests"] == 0
    truth = uri.read_table(out, "truth_rewrites")
    meant = {normalize_utterance(u): r for u, r in
             zip(truth["utterance"].to_pylist(), truth["intended_utterance"].to_pylist())}
    fixed = defect_rates(world, turns, lambda said: [meant.get(u) for u in said])
    assert fixed["rewritten_requests"] > 0
    assert fixed["defect_rate_with"] < 0.9 * fixed["defect_rate_without"]


# ---- routing measurements and data -----------------------------------------------------------


def test_served_reward_is_the_logged_distributions_true_value_by_hand(tiny_world):
    """served_reward = mean_i sum_k pi(k|x_i) r_ik over ragged candidate lists (padded)."""
    _, world = tiny_world
    log, truth = world.routing(2, seed=3)
    log = log.set_column(log.schema.get_field_index("propensities"), "propensities",
                         pa.array([[0.5, 0.5], [1.0, 0.0, 0.0]], pa.list_(pa.float64())))
    truth = truth.set_column(truth.schema.get_field_index("expected_rewards"), "expected_rewards",
                             pa.array([[0.2, 0.6], [0.1, 0.9, 0.9]], pa.list_(pa.float64())))
    assert logging_true_value(log, truth) == pytest.approx((0.4 + 0.1) / 2)


def test_feedback_joins_onto_decisions_by_request_id(tiny_world):
    """The round's decisions (reward null) with their feedback: the rewarded ones are kept."""
    _, world = tiny_world
    log, truth = world.routing(5, seed=7)
    decisions = log.set_column(log.schema.get_field_index("reward"), "reward", pa.nulls(5, pa.float64()))
    ids = log["request_id"].to_pylist()
    feedback = pa.table({"request_id": [ids[3], ids[0], "unknown"], "reward": [1.0, 0.0, 1.0]}, schema=schema.FEEDBACK)
    data = prepare(decisions, feedback, truth)
    assert data.log["request_id"].to_pylist() == [ids[0], ids[3]] and data.n_unrewarded == 3
    assert data.log["reward"].to_pylist() == [0.0, 1.0]
    assert data.log["context"].to_pylist() == [log["context"][0].as_py(), log["context"][3].as_py()]
    assert data.truth["request_id"].to_pylist() == [ids[0], ids[3]]


def test_route_bodies_are_valid_api_requests(tiny_world):
    _, world = tiny_world
    requests, _ = world.routing(20, seed=1)
    bodies = route_bodies(requests)
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
    copied = target.load("embeddings", copy_artifact(source, target, "embeddings", version))
    assert copied.version == "v000001" and copied.metadata["model"] == "PDRFE"
    assert copied.table("customers").equals(table)
    assert copied.json("manifest") == {"dim": 2} and copied.bytes("raw") == b"\x00\x01"
    assert source.versions("embeddings") == ["v000001", "v000002"]  # the source is untouched


# ---- settings, report, entrypoint ------------------------------------------------------------


def test_overrides_round_trip():
    nested = {"population": {"n_customers": 150}, "traffic": {"turn_gap_s": [2.0, 30.0]}}
    settings = LoopSettings(world=flatten(nested))
    assert settings.world == (("population.n_customers", 150), ("traffic.turn_gap_s", (2.0, 30.0)))
    assert settings.world_overrides() == {"population": {"n_customers": 150}, "traffic": {"turn_gap_s": (2.0, 30.0)}}


def test_user_overrides_merge_over_the_default_world():
    default = {f"{section}.{key}": value for section, keys in DEFAULT_WORLD.items() for key, value in keys.items()}
    assert dict(world_settings({})) == default
    merged = dict(world_settings({"traffic": {"sessions_per_customer": 3.0, "followup_rate": 0.1}}))
    assert merged == {**default, "traffic.sessions_per_customer": 3.0, "traffic.followup_rate": 0.1}


def test_a_measurement_over_nothing_reads_n_a_in_the_report():
    row = {"round": 0, "defect_rate": None, "defect_rate_without_rewrites": 0.25, "rewritten_share": None,
           "true_reward": 0.5, "served_reward": None, "policy_version": "sim-logging", "rewrites_version": None,
           "treatment_defect_rate": 0.1, "holdout_defect_rate": 0.2, "ab_reduction": 0.5,
           "rewritable_treatment_defect_rate": None, "rewritable_holdout_defect_rate": None,
           "rewritable_ab_reduction": None, "online_tested": 0, "online_wins": 0, "online_losses": 0,
           "blacklisted": 0, "withdrawn_stale": 0}
    summary = {"settings": {"eval_requests": 10, "holdout_share": 0.1}, "rounds": [row], "defect_rate_before": None,
               "defect_rate_after": None, "defect_rate_reduction": None, "true_reward_before": 0.5,
               "true_reward_after": 0.5, "pdrfe_router_features": {"measured": False, "reason": "none published"},
               "refreshes": [], "artifacts": {"policy": []}, "stages": {"ran": ["round-0"], "reused": []}}
    report = markdown_report(summary, ["defect_rate.png"])
    assert "| 0 | n/a | 0.2500 | n/a | 0.5000 | n/a | sim-logging | None |" in report
    assert "| 0 | 0.1000 | 0.2000 | 50.0% | n/a | n/a | n/a | 0 | 0 | 0 | 0 | 0 |" in report
    assert "Not measured: none published." in report and "![defect_rate.png](defect_rate.png)" in report


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--config", "/nonexistent/world.yaml"], "cannot read simulator settings"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys, tmp_path):
    assert entry.main(["--out", str(tmp_path / "demo"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_simulator_settings_fail_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("population: {n_customer: 5}\n")
    assert entry.main(["--out", str(tmp_path / "demo"), "--config", str(bad)]) == 2
    assert "unknown simulator setting 'population.n_customer'" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "stages").exists()
