"""The simulator: determinism, schema conformance, every phenomenon measured, truth consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raylib import schema as S
from raylib import uri
from raylib import validate as V
from raylib.sim import World, resolve, simulate
from raylib.sim import phonetics
from raylib.sim.config import load_overrides

TABLES = ("interactions", "customers", "skills", "routing_log", "truth_rewrites", "truth_turns", "truth_routing")
ROOT = Path(__file__).resolve().parents[1]
TINY = {"population": {"n_customers": 300}, "routing": {"n_requests": 500}}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sim_small"))
    summary = simulate(out, "small", seed=3)
    return out, summary, {name: uri.read_table(out, name) for name in TABLES}


def test_every_table_conforms_to_its_schema(small):
    _, _, tables = small
    for name, table in tables.items():
        assert table.schema.equals(S.SCHEMAS[name]), name
        checked = V.validate(table, name)
        assert checked.n_rejected == 0, (name, V.rejected_counts(checked.rejected))
        assert table.num_rows > 0


def test_summary_names_its_figures(small):
    out, summary, tables = small
    assert summary["n_interactions"] == tables["interactions"].num_rows
    assert summary["n_customers"] == tables["customers"].num_rows
    assert summary["n_skills"] + 1 == tables["skills"].num_rows  # + the system skill
    assert summary["n_routing"] == tables["routing_log"].num_rows
    keys = pc.binary_join_element_wise(tables["interactions"]["domain"], tables["interactions"]["intent"],
                                       tables["interactions"]["slots"], "|")
    assert summary["n_interpretations"] == len(pc.unique(keys))
    assert 0.10 <= summary["defect_rate"] <= 0.20
    assert summary["absorbed_within_5"] >= 0.95


def test_same_seed_same_files_and_traffic_seed_changes_only_traffic(tmp_path):
    a = simulate(str(tmp_path / "a"), "small", seed=7, config=TINY)
    b = simulate(str(tmp_path / "b"), "small", seed=7, config=TINY)
    c = simulate(str(tmp_path / "c"), "small", seed=7, config=TINY, traffic_seed=8)
    assert a == b
    for name in TABLES:
        assert uri.read_table(str(tmp_path / "a"), name).equals(uri.read_table(str(tmp_path / "b"), name)), name
    assert uri.read_table(str(tmp_path / "a"), "customers").equals(uri.read_table(str(tmp_path / "c"), "customers"))
    assert not uri.read_table(str(tmp_path / "a"), "interactions").equals(uri.read_table(str(tmp_path / "c"), "interactions"))
    assert a["n_interactions"] != c["n_interactions"] or a["defect_rate"] != c["defect_rate"]


def test_asr_confusions_are_phonetic_and_recurring(small):
    _, _, t = small
    truth = t["truth_rewrites"].filter(pc.equal(t["truth_rewrites"]["cause"], "asr")).to_pylist()
    assert len(truth) > 50
    # the misheard slot value differs from the meant one in one word, by one phoneme
    world = World.from_dir(small[0])
    one_phoneme = 0
    for row, (heard, _) in zip(truth[:200], world.interpret([r["utterance"] for r in truth[:200]])):
        heard_slots = dict(kv.split("=") for kv in heard.split("|")[2].split(";") if kv)
        meant_slots = dict(kv.split("=") for kv in row["intended_interpretation"].split("|")[2].split(";") if kv)
        for name, value in heard_slots.items():
            said, meant = value.split(), meant_slots.get(name, "").split()
            diff = [(a, b) for a, b in zip(said, meant) if a != b]
            if len(said) == len(meant) and len(diff) == 1 and diff[0][0] in phonetics.neighbours(diff[0][1]):
                one_phoneme += 1
                break
    assert one_phoneme / min(len(truth), 200) > 0.8
    # recurring: the most frequent confusions are said by many distinct customers
    inter = t["interactions"]
    said = inter.filter(pc.is_in(inter["utterance"], pa.array([r["utterance"] for r in truth])))
    per_utt = said.group_by("utterance").aggregate([("customer_id", "count_distinct")])
    assert max(per_utt["customer_id_count_distinct"].to_pylist()) >= 5


def test_nlu_fails_on_unsupported_phrasing_and_unknown_entities():
    world = World.from_preset("small", seed=0, overrides=TINY)
    (h_bad, st_bad), (h_good, st_good) = world.interpret(["don't play this song again", "thumbs down this song"])
    assert st_bad == "no_match" and h_bad.startswith("Unknown|")
    assert st_good == "ok" and h_good == "Music|ThumbsDownIntent|"
    song = world.catalog.entities["song"][0]
    (h, st), = world.interpret([f"play {song}"])
    assert st == "ok" and f"SongName={song}" in h
    (h, st), = world.interpret(["play zzqx nonexistent"])
    assert st == "no_match"


def test_collapsed_fallback_gives_unsupported_phrasings_one_interpretation(tmp_path):
    overrides = load_overrides(str(ROOT / "jobs" / "sim_collapsed_failures.yaml"))
    world = World.from_preset("small", seed=0, overrides={**TINY, **overrides})
    cities = world.catalog.entities["city"][:3]
    said = [f"do i need an umbrella in {c}" for c in cities] + ["is it cold outside in " + cities[0],
                                                                 "don't play this song again"]
    assert set(world.interpret(said)) == {("Unknown|FallbackIntent|", "no_match")}
    meant = [h for h, _ in world.interpret([f"what's the weather in {c}" for c in cities])]
    assert len(set(meant)) == 3  # each phrasing has its own correct reformulation
    # a run recorded before the setting existed rebuilds with its default (text kept)
    config = resolve("small", TINY)
    del config["nlu"]
    (tmp_path / "world.json").write_text(json.dumps({"config": config, "seed": 0}))
    (h, st), = World.from_dir(str(tmp_path)).interpret(["kill the tv"])
    assert st == "no_match" and h == "Unknown|FallbackIntent|Text=kill the tv"


def test_partial_titles_fail_and_full_titles_succeed(small):
    out, _, t = small
    world = World.from_dir(out)
    user = t["truth_rewrites"].filter(pc.equal(t["truth_rewrites"]["cause"], "user")).to_pylist()
    assert len(user) > 10
    statuses = [st for _, st in world.interpret([r["utterance"] for r in user])]
    understood = world.interpret([r["intended_utterance"] for r in user])
    assert statuses.count("no_match") / len(statuses) > 0.8
    assert all(h == r["intended_interpretation"] and st == "ok" for (h, st), r in zip(understood, user))


def _turns(t):
    inter, truth = t["interactions"], t["truth_turns"]
    assert inter["timestamp"].equals(truth["timestamp"]) and inter["device_id"].equals(truth["device_id"])
    return inter, truth


def test_user_behaviour_after_a_defect(small):
    _, _, t = small
    inter, truth = _turns(t)
    kinds = truth["turn_kind"].to_numpy(zero_copy_only=False)
    share = {k: float((kinds == k).mean()) for k in set(kinds)}
    for kind in ("rephrase_good", "rephrase_bad", "generic", "interjection", "followup"):
        assert share.get(kind, 0) > 0.002, kind
    # interjections are Stop/Cancel turns
    inj = inter.filter(pa.array(kinds == "interjection"))
    assert set(inj["intent"].to_pylist()) == {"StopIntent", "CancelIntent"}
    # the generic switch says "play music"-like things
    gen = inter.filter(pa.array(kinds == "generic"))
    assert set(gen["utterance"].to_pylist()) <= {"play music", "play some music", "shuffle my songs"}
    # good rephrases succeed far more often than the defective turns they follow
    d = inter["defect"].to_numpy()
    assert d[kinds == "rephrase_good"].mean() < 0.5 * d[kinds == "rephrase_bad"].mean()


def test_session_gaps_split_at_45_seconds_and_devices_switch(small):
    _, _, t = small
    inter, truth = _turns(t)
    kinds = truth["turn_kind"].to_numpy(zero_copy_only=False)
    ts = inter["timestamp"].cast(pa.int64()).to_numpy() / 1000.0
    cust = inter["customer_id"].to_numpy(zero_copy_only=False)
    rephrase = np.flatnonzero(np.isin(kinds, ["rephrase_good", "rephrase_bad", "generic"]))
    gap = ts[rephrase] - ts[rephrase - 1]
    assert (cust[rephrase] == cust[rephrase - 1]).all()
    assert (gap <= 45).mean() > 0.9  # most rephrases stay in the session
    assert (gap > 45).sum() > 0  # a few come too late and split it
    dev = inter["device_id"].to_numpy(zero_copy_only=False)
    assert (dev[rephrase] != dev[rephrase - 1]).sum() > 0


def test_defects_depend_on_affinity_and_on_the_utterance(small):
    out, _, t = small
    world = World.from_dir(out)
    inter, truth = _turns(t)
    ok = pc.and_(pc.equal(inter["status"], "ok"), pc.not_equal(inter["skill_id"], "sk-system"))
    rows = inter.filter(ok)
    p = truth.filter(ok)["defect_probability"].to_numpy()
    ids = {s: i for i, s in enumerate(world.catalog.skill_ids)}
    cust = {c: i for i, c in enumerate(world.population.ids)}
    c = np.array([cust[x] for x in rows["customer_id"].to_pylist()])
    s = np.array([ids[x] for x in rows["skill_id"].to_pylist()])
    aff = world.population.affinity(c, s, world.catalog)
    assert np.corrcoef(aff, p)[0, 1] < -0.3  # liked skills fail less
    # the same customer and skill fail more for some utterances than for others
    key = pc.binary_join_element_wise(rows["customer_id"], rows["skill_id"], ":").to_numpy(zero_copy_only=False)
    utt = rows["utterance"].to_numpy(zero_copy_only=False)
    spread = [np.ptp(p[(key == k)]) for k in np.unique(key)[:400] if len(set(utt[key == k])) > 1]
    assert np.median(spread) > 0.005


def test_skill_popularity_is_heavy_tailed(small):
    _, _, t = small
    counts = np.sort(t["interactions"].group_by("skill_id").aggregate([("skill_id", "count")])["skill_id_count"].to_numpy())[::-1]
    top = max(1, len(counts) // 20)
    assert counts[:top].sum() / counts.sum() > 0.2  # top 5% of skills take > 20% of traffic


def test_routing_candidates_propensities_and_exploration(small):
    _, _, t = small
    log, truth = t["routing_log"], t["truth_routing"]
    sizes = pc.list_value_length(log["candidates"]).to_numpy()
    assert sizes.min() >= 2 and sizes.max() <= 10
    props = log["propensities"].to_pylist()
    action = log["action"].to_numpy()
    assert np.allclose([sum(p) for p in props], 1.0)
    assert np.allclose([p[a] for p, a in zip(props, action)], log["propensity"].to_numpy())
    explored = np.mean([a != int(np.argmax(p)) for p, a in zip(props, action)])
    assert 0.03 < explored < 0.5
    # the best candidate is often not the NLU's top one: context and taste matter
    exp = truth["expected_rewards"].to_pylist()
    assert np.mean([int(np.argmax(e)) != 0 for e in exp]) > 0.2
    # logged rewards agree with the truth's expected rewards of the logged actions
    chosen = np.array([e[a] for e, a in zip(exp, action)])
    reward = log["reward"].to_numpy()
    assert abs(reward.mean() - chosen.mean()) < 4 * np.sqrt(chosen.mean() * (1 - chosen.mean()) / len(chosen))


def test_ground_truth_is_consistent_with_the_logs(small):
    out, _, t = small
    world = World.from_dir(out)
    truth = t["truth_rewrites"].to_pylist()
    said = set(t["interactions"]["utterance"].to_pylist())
    assert all(r["utterance"] in said for r in truth)
    got = world.interpret([r["utterance"] for r in truth])
    assert all(st != "ok" or h != r["intended_interpretation"] for (h, st), r in zip(got, truth))
    meant = world.interpret([r["intended_utterance"] for r in truth])
    assert all(h == r["intended_interpretation"] and st == "ok" for (h, st), r in zip(meant, truth))
    p_bad = world.defect_probability([r["utterance"] for r in truth], [r["intended_interpretation"] for r in truth])
    p_good = world.defect_probability([r["intended_utterance"] for r in truth], [r["intended_interpretation"] for r in truth])
    assert (p_good < p_bad).all()
    routing_ids = t["routing_log"]["request_id"]
    assert routing_ids.equals(t["truth_routing"]["request_id"])
    assert pc.list_value_length(t["routing_log"]["candidates"]).equals(pc.list_value_length(t["truth_routing"]["expected_rewards"]))


def test_a_custom_policy_gets_its_own_log():
    world = World.from_preset("small", seed=0, overrides=TINY)

    def first_candidate(requests):
        n = requests.num_rows
        sizes = pc.list_value_length(requests["candidates"]).to_numpy()
        return np.zeros(n, int), np.ones(n), [np.eye(k)[0] for k in sizes]

    log, truth = world.routing(200, seed=5, policy=first_candidate)
    assert (log["action"].to_numpy() == 0).all() and V.validate(log, "routing_log").n_rejected == 0
    assert log["request_id"].equals(truth["request_id"])


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "invalid choice"),
    (["--config", "/nonexistent.yaml"], "cannot read simulator settings"),
    ([], "required"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    argv = ["--out", str(tmp_path / "o")] + args if args else []
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "simulate", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_rejects_unknown_settings(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("noise: {no_such_knob: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "simulate", "--out", str(tmp_path / "o"),
                           "--config", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no_such_knob" in proc.stderr and "Traceback" not in proc.stderr
