"""Publishing a mining run: recency, withdrawal of stale rewrites per reason, keeping
rewrites of sources today's traffic does not hold (``raylib.rewrite.publish``)."""

import datetime as dt

import pyarrow as pa
import pytest

from raylib.rewrite.filters import FILTERS, FilterParams, apply_filters
from raylib.rewrite.mining import MiningParams, mine_local
from raylib.rewrite.publish import (BLACKLISTED, SELF_PARTITION, WITHDRAW_REASONS, merge_today, publish_rewrites,
                                    unrewritten_sources)
from raylib.schema import INTERACTIONS
from raylib.store import Store

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def rewrites(pairs, score=0.5):
    n = len(pairs)
    return pa.table({"utterance": [p[0] for p in pairs], "rewrite": [p[1] for p in pairs], "score": [score] * n,
                     "n_customers": [5] * n, "support": [5] * n, "p_value": [0.5] * n,
                     "source_friction": [1.0] * n, "target_friction": [0.0] * n,
                     "source_interpretation": ["h"] * n, "target_interpretation": ["g"] * n})


def unrewritten(pairs):
    return pa.table({"utterance": [p[0] for p in pairs], "reason": [p[1] for p in pairs]})


def as_dict(t):
    return dict(zip(t.column("utterance").to_pylist(), t.column("rewrite").to_pylist()))


def test_newest_wins_withdraws_per_reason_and_keeps_unseen_sources():
    previous = rewrites([("a", "old"), ("b", "keep"), ("c", "x"), ("d", "x"), ("e", "x"), ("f", "x"), ("g", "x"),
                         ("h", "lost")])
    today = unrewritten([("c", SELF_PARTITION), ("d", "min_support"), ("e", "z_test"), ("f", "generic_target"),
                         ("g", "min_customers"), ("never", SELF_PARTITION)])
    blacklist = pa.table({"utterance": ["h", "k"], "rewrite": ["lost", "bad"]})
    merged, withdrawn = merge_today(previous, rewrites([("a", "new"), ("z", "y"), ("k", "bad")]), today, blacklist)
    assert as_dict(merged) == {"a": "new", "b": "keep", "z": "y"}  # "k" -> "bad" mined again: never published
    assert merged.column("utterance").to_pylist() == ["a", "b", "z"]
    assert withdrawn == {reason: 1 for reason in WITHDRAW_REASONS}
    assert WITHDRAW_REASONS == (SELF_PARTITION, *FILTERS, BLACKLISTED)


def test_first_version_is_today_table_with_nothing_withdrawn():
    merged, withdrawn = merge_today(None, rewrites([("b", "y"), ("a", "x")]), unrewritten([("c", "z_test")]))
    assert merged.column("utterance").to_pylist() == ["a", "b"] and sum(withdrawn.values()) == 0


def test_unrewritten_sources_take_the_filter_else_self_partition():
    filtered = pa.table({"utterance": ["b", "c"], "rewrite": ["x", "y"], "filter": ["z_test", "min_customers"]})
    out = unrewritten_sources(["a", "b", "c", "d"], rewrites([("a", "t")]), filtered)
    assert out.to_pylist() == [{"utterance": "b", "reason": "z_test"}, {"utterance": "c", "reason": "min_customers"},
                               {"utterance": "d", "reason": SELF_PARTITION}]


# ---- end to end: mine_local then publish into one store, day after day ------------------------

def turn(customer, seconds, utterance, interp, ok=True):
    domain, intent, slots = interp.split("|")
    return dict(customer_id=customer, device_id="d1", timestamp=T0 + dt.timedelta(seconds=seconds),
                utterance=utterance, domain=domain, intent=intent, slots=slots, skill_id="s",
                status="ok" if ok else "no_match", defect=not ok)


def misheard(customers, prefix="c"):
    """``customers`` say "play maj" (fails) then "play imagine" (succeeds)."""
    rows = []
    for k in range(customers):
        rows += [turn(f"{prefix}{k}", 0, "play maj", "M|P|a=maj", ok=False),
                 turn(f"{prefix}{k}", 5, "play imagine", "M|P|a=imagine")]
    return rows


def other_traffic():
    return [turn(f"o{k}", 0, "what time is it", "I|Time|") for k in range(12)]


PARAMS = MiningParams(filters=FilterParams(min_support=5, min_customers=3))


def day(store, rows):
    mined = mine_local(pa.Table.from_pylist(rows, schema=INTERACTIONS), PARAMS)
    _, merged, withdrawn = publish_rewrites(store, mined, metadata={})
    return as_dict(merged), {k: v for k, v in withdrawn.items() if v}


@pytest.fixture()
def store(tmp_path):
    s = Store(str(tmp_path / "store"))
    assert day(s, misheard(10) + other_traffic()) == ({"play maj": "play imagine"}, {})
    return s


def test_source_absent_from_today_traffic_keeps_its_rewrite(store):
    assert day(store, other_traffic()) == ({"play maj": "play imagine"}, {})
    assert store.load("rewrites").metadata["withdrawn_by_reason"] == dict.fromkeys(WITHDRAW_REASONS, 0)
    assert day(store, []) == ({"play maj": "play imagine"}, {})  # no valid traffic at all


def test_source_that_now_succeeds_as_spoken_is_withdrawn(store):
    fixed = [turn(f"c{k}", 0, "play maj", "M|P|a=maj") for k in range(10)]
    assert day(store, fixed + other_traffic()) == ({}, {SELF_PARTITION: 1})


def test_source_that_lost_its_support_is_withdrawn(store):
    assert day(store, misheard(3) + other_traffic()) == ({}, {"min_support": 1})


def test_rewrite_said_by_too_few_customers_today_is_withdrawn(store):
    one_customer = []
    for k in range(10):  # one customer, ten sessions an hour apart
        one_customer += [turn("solo", 3600 * k, "play maj", "M|P|a=maj", ok=False),
                         turn("solo", 3600 * k + 5, "play imagine", "M|P|a=imagine")]
    assert day(store, one_customer + other_traffic()) == ({}, {"min_customers": 1})


def test_friction_significantly_worse_today_is_withdrawn():
    candidate = pa.table({"utterance": ["play maj"], "rewrite": ["play imagine"], "source_count": [40],
                         "source_defects": [2], "target_count": [40], "target_defects": [30], "n_customers": [9]})
    _, removed, rejected = apply_filters(candidate, FilterParams())  # friction 0.05 -> 0.75
    assert removed["z_test"] == 1
    merged, withdrawn = merge_today(rewrites([("play maj", "play imagine")]), rewrites([]),
                                    unrewritten_sources(["play maj"], rewrites([]), rejected))
    assert merged.num_rows == 0 and withdrawn["z_test"] == 1
