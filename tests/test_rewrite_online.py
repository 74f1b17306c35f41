"""The closed loop and the online A/B (issue 15, items 3 and 4): served rewrites in the
simulator's request path, logs with the applied rewrite, the holdout, rewritten traffic
re-mined without chains or self-partition, the online blacklist and the intent-changing
rewrites it exists for."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raylib import uri
from raylib.rewrite.mining import REWRITES, MiningParams, mine_local
from raylib.rewrite.filters import FilterParams
from raylib.rewrite.online import LOSS, WIN, SaidTurns, in_holdout, online_ab, online_win_loss
from raylib.rewrite.publish import SELF_PARTITION, load_blacklist, merge_today, publish_rewrites, withdraw_blacklisted
from raylib.rewrite.sessions import sessionize
from raylib.schema import INTERACTIONS
from raylib.sim import World, simulate
from raylib.sim.catalog import ASR
from raylib.store import Store

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
SMALL = {"catalog": {"n_songs": 150, "n_artists": 60, "n_stations": 20, "n_cities": 30, "n_products": 60,
                     "n_topics": 40, "n_skills": 60},
         "population": {"n_customers": 1200}, "traffic": {"sessions_per_customer": 12.0},
         "routing": {"n_requests": 10}}
PARAMS = MiningParams(filters=FilterParams(min_support=5, min_customers=3))


# ---- hand-made logs ------------------------------------------------------------------------------

def turn(customer, seconds, utterance, interp, ok=True, rewrite=None):
    domain, intent, slots = interp.split("|")
    return dict(customer_id=customer, device_id="d1", timestamp=T0 + dt.timedelta(seconds=seconds),
                utterance=utterance, domain=domain, intent=intent, slots=slots, skill_id="s",
                status="ok" if ok else "no_match", defect=not ok, rewrite=rewrite)


def table(rows):
    return pa.Table.from_pylist(rows, schema=INTERACTIONS)


def misheard(n, prefix):
    """Holdout speakers: "play maj" fails, then "play imagine" succeeds."""
    return [r for k in range(n) for r in (turn(f"{prefix}{k}", 0, "play maj", "M|P|a=maj", ok=False),
                                          turn(f"{prefix}{k}", 5, "play imagine", "M|P|a=imagine"))]


def served_then_fixed(n, prefix):
    """Treatment speakers: "play maj" served as "play imagine" fails for them, they then say
    "play imagine dragons", which succeeds."""
    return [r for k in range(n) for r in (
        turn(f"{prefix}{k}", 0, "play maj", "M|P|a=imagine", ok=False, rewrite="play imagine"),
        turn(f"{prefix}{k}", 5, "play imagine dragons", "M|P|a=imagine dragons"))]


def test_rewritten_traffic_remined_creates_no_chain_and_no_served_target():
    rows = misheard(10, "h") + served_then_fixed(30, "t")
    mined = mine_local(table(rows), PARAMS)
    pairs = dict(zip(mined.table["utterance"].to_pylist(), mined.table["rewrite"].to_pylist()))
    assert pairs == {"play maj": "play imagine"}  # learned from the holdout; no "play imagine" -> ... chain
    assert mined.stage_counts()["rewritten_sessions"] == 30 and mined.stage_counts()["n_sessions"] == 10
    # the same turns read as if the served text had been said: the chain the rule prevents
    naive = [dict(r, utterance=r["rewrite"], rewrite=None) if r["rewrite"] else r for r in rows]
    naive_pairs = dict(zip(*[mine_local(table(naive), PARAMS).table[c].to_pylist() for c in ("utterance", "rewrite")]))
    assert naive_pairs.get("play imagine") == "play imagine dragons"


def test_stale_withdrawal_with_rewritten_traffic(tmp_path):
    store = Store(str(tmp_path / "store"))
    publish_rewrites(store, mine_local(table(misheard(10, "h")), PARAMS), metadata={})
    assert store.load("rewrites").table("table")["utterance"].to_pylist() == ["play maj"]
    # today every treatment speaker succeeds through the rewrite: no evidence against it, kept
    works = [turn(f"t{k}", 0, "play maj", "M|P|a=imagine", rewrite="play imagine") for k in range(30)]
    _, merged, withdrawn = publish_rewrites(store, mine_local(table(works), PARAMS), metadata={})
    assert merged["utterance"].to_pylist() == ["play maj"] and sum(withdrawn.values()) == 0
    # the holdout now succeeds as spoken: the source self-partitions, withdrawn as stale
    fixed = [turn(f"h{k}", 0, "play maj", "M|P|a=maj") for k in range(10)]
    _, merged, withdrawn = publish_rewrites(store, mine_local(table(fixed + works), PARAMS), metadata={})
    assert merged.num_rows == 0 and withdrawn[SELF_PARTITION] == 1


def test_rewrite_column_is_optional_and_must_not_be_blank():
    from raylib.validate import validate

    old = table(misheard(1, "h")).drop_columns(["rewrite"])
    assert validate(old, "interactions").good["rewrite"].null_count == 2
    assert len(sessionize(old)) == 1
    blank = table([turn("c", 0, "play maj", "M|P|a=imagine", rewrite=" ")])
    assert validate(blank, "interactions").rejected["reason"].to_pylist() == ["empty rewrite"]


# ---- the simulator with served rewrites ------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    return World.from_preset("small", 0, SMALL)


def popular_pair(world):
    """(X's canonical, the similar entity's canonical, an ASR variant of X) for the most popular
    request type that has an ASR variant and a similar entity."""
    cat = world.catalog
    for r in np.argsort(-cat.rt_share):
        kinds = cat.var_kind[cat.var_offsets[r]:cat.var_offsets[r + 1]]
        if world.similar_rt[r] >= 0 and (kinds == ASR).any():
            asr = cat.var_utterance[cat.var_offsets[r] + np.flatnonzero(kinds == ASR)[0]]
            return (cat.vocab[cat.rt_intended[r]], cat.vocab[cat.rt_intended[world.similar_rt[r]]], cat.vocab[asr])
    raise AssertionError("no request type with a similar entity")


def test_holdout_is_served_no_rewrites_and_logs_carry_said_and_applied(world, tmp_path):
    x, y, asr = popular_pair(world)
    served = {asr: x, x: y}
    summary = simulate(str(tmp_path), "small", 0, SMALL, traffic_seed=5, period=1, rewrites=served, holdout_share=0.3)
    inter = uri.read_table(str(tmp_path), "interactions")
    period_1 = dt.datetime(2026, 1, 15, tzinfo=dt.timezone.utc)  # the world starts 2026-01-01, 14 days a period
    assert summary["rewritten_turns"] > 0 and pc.min(inter["timestamp"]).as_py() >= period_1
    said = inter.filter(pc.is_in(inter["utterance"], pa.array([asr, x])))
    hold = in_holdout(said["customer_id"].to_pylist(), 0.3)
    rewrite = np.array(said["rewrite"].to_pylist(), dtype=object)
    assert hold.any() and (~hold).any()
    assert all(r is None for r in rewrite[hold])  # the holdout is served nothing
    expected = [served[u] for u in np.array(said["utterance"].to_pylist(), dtype=object)[~hold]]
    assert list(rewrite[~hold]) == expected  # one hop: x is served y, asr is served x (never y)
    y_slots = world.interpret([y])[0][0].split("|")[2]
    treated_x = said.filter(pa.array(~hold & (np.array(said["utterance"].to_pylist(), dtype=object) == x)))
    assert set(treated_x["slots"].to_pylist()) == {y_slots}  # the NLU read the rewrite
    assert in_holdout(["a", "b"], 0.5).tolist() == in_holdout(["a", "b"], 0.5).tolist()
    assert abs(in_holdout([f"c{k}" for k in range(4000)], 0.1).mean() - 0.1) < 0.02


def test_intent_changing_rewrite_is_caught_online_and_blacklisted(world, tmp_path):
    x, y, asr = popular_pair(world)
    served = {x: y, asr: x}  # x -> y changes the entity the user wanted; asr -> x fixes an ASR error
    simulate(str(tmp_path / "r1"), "small", 0, SMALL, traffic_seed=7, period=1, rewrites=served, holdout_share=0.2)
    ab = online_ab(SaidTurns.of(uri.read_table(str(tmp_path / "r1"), "interactions"), 0.2), served)
    verdict = dict(zip(ab["utterance"].to_pylist(), ab["verdict"].to_pylist()))
    assert verdict == {x: LOSS, asr: WIN}
    assert online_win_loss(ab) == {"online_tested": 2, "online_wins": 1, "online_losses": 1, "online_win_loss": 1.0}
    store = Store(str(tmp_path / "store"))
    store.publish("rewrites", {"table": rewrites([(asr, x), (x, y)])})
    done = withdraw_blacklisted(store, ab.filter(pc.equal(ab["verdict"], LOSS)), rnd=1)
    assert done["withdrawn"] == 1
    latest = store.load("rewrites").table("table")
    assert dict(zip(latest["utterance"].to_pylist(), latest["rewrite"].to_pylist())) == {asr: x}
    assert load_blacklist(store).select(["utterance", "rewrite"]).to_pylist() == [{"utterance": x, "rewrite": y}]
    # mined again later (here: the pair is today's candidate again): never published again
    none = pa.table({"utterance": pa.array([], pa.string()), "reason": pa.array([], pa.string())})
    again, _ = merge_today(latest, rewrites([(x, y)]), none, load_blacklist(store))
    assert dict(zip(again["utterance"].to_pylist(), again["rewrite"].to_pylist())) == {asr: x}


def rewrites(pairs):
    """Rows of the rewrites table for (source, target) ``pairs``."""
    n = len(pairs)
    return pa.table({"utterance": [p[0] for p in pairs], "rewrite": [p[1] for p in pairs], "score": [0.5] * n,
                     "n_customers": [5] * n, "support": [5] * n, "p_value": [0.5] * n,
                     "source_friction": [1.0] * n, "target_friction": [0.0] * n,
                     "source_interpretation": ["h"] * n, "target_interpretation": ["g"] * n}, schema=REWRITES)


def test_outage_makes_users_switch_entity_and_mining_learns_the_switch(tmp_path):
    config = {**SMALL, "noise": {"outage_share": 0.02}, "behaviour": {"switch_entity": 0.8}}
    w = World.from_preset("small", 0, config)
    summary = simulate(str(tmp_path), "small", 0, config, period=0)
    assert summary["outage"] is True
    truth = uri.read_table(str(tmp_path), "truth_turns")
    assert "switch_entity" in truth["turn_kind"].to_pylist()
    mined = mine_local(uri.read_table(str(tmp_path), "interactions"), PARAMS)
    cat = w.catalog
    outage = {cat.vocab[cat.rt_intended[r]]: cat.vocab[cat.rt_intended[w.similar_rt[r]]]
              for r in np.flatnonzero(w.outage_rt)}
    pairs = set(zip(mined.table["utterance"].to_pylist(), mined.table["rewrite"].to_pylist()))
    assert pairs & set(outage.items())  # the outage taught "play x" -> "play y": a rewrite that changes intent
