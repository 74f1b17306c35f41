"""raylib.validate.validate: every rejection reason of every table, nothing lost, exact conformance."""

from __future__ import annotations

import datetime as dt
import json
import math

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raylib import schema as S
from raylib import uri
from raylib import validate as V

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def candidate(skill: str, confidence: float = 0.5) -> dict:
    return {"domain": "music", "intent": "play", "skill_id": skill, "nlu_confidence": confidence}


def good_row(name: str, i: int = 0) -> dict:
    """A row of table ``name`` that meets its contract."""
    ts = T0 + dt.timedelta(seconds=i)
    return {
        "interactions": {
            "customer_id": f"c{i}",
            "device_id": f"d{i}",
            "timestamp": ts,
            "utterance": "play imagine dragons",
            "domain": "music",
            "intent": "play",
            "slots": "artist=imagine dragons",
            "skill_id": "s1",
            "status": ("ok", "error", "no_match")[i % 3],
            "defect": i % 2 == 1,
        },
        "customers": {"customer_id": f"c{i}", "wbr_cor": "US", "is_prime": True, "is_amu": False, "is_smart_home_cust": True},
        "skills": {
            "skill_id": f"s{i}",
            "skill_category": "music",
            "skill_type": "custom",
            "skill_subcategory": "streaming",
            "reporting_category": "media",
            "domain": "music",
        },
        "routing_log": {
            "request_id": f"r{i}",
            "customer_id": "c1",
            "timestamp": ts,
            "utterance": "play music",
            "context": {"device_type": "echo", "device_status": "idle", "asr_confidence": 0.875, "hour": 12},
            "candidates": [candidate("s1", 0.25), candidate("s2", 0.75)],
            "action": 1,
            "propensity": 0.75,
            "propensities": [0.25, 0.75],
            "reward": 1.0,
            "policy_version": "v000001",
        },
        "feedback": {"request_id": f"r{i}", "reward": 0.5},
        "truth_rewrites": {
            "utterance": "play maj and dragons",
            "intended_utterance": "play imagine dragons",
            "intended_interpretation": "music|play|artist=imagine dragons",
            "cause": "asr",
        },
        "truth_turns": {
            "customer_id": f"c{i}",
            "device_id": f"d{i}",
            "timestamp": ts,
            "intended_utterance": "play imagine dragons",
            "intended_interpretation": "music|play|artist=imagine dragons",
            "turn_kind": "first",
            "defect_probability": 0.125,
        },
        "truth_routing": {"request_id": f"r{i}", "expected_rewards": [0.25, 0.75], "intended_interpretation": "music|play|"},
    }[name]


LOOSE_CONTEXT = pa.struct([(f.name, pa.int64() if f.name == "hour" else f.type) for f in S.CONTEXT])


def loose(schema: pa.Schema) -> pa.Schema:
    """The schema with every field nullable (and a wide context hour) so bad rows can be built."""
    return pa.schema([pa.field(f.name, LOOSE_CONTEXT if f.type == S.CONTEXT else f.type) for f in schema])


def build(name: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=loose(S.SCHEMAS[name]))


# ---- row mutations: (label, tables it applies to, mutate(row) in place, expected reason) ----


def _set(key, value):
    def mutate(row):
        row[key] = value

    return mutate


def _mutations() -> list[tuple[str, tuple[str, ...], object, str]]:
    out = []
    for name, schema in S.SCHEMAS.items():
        for f in schema:
            if not f.nullable:
                reason = "bad timestamp (null)" if pa.types.is_timestamp(f.type) else f"null {f.name}"
                out.append((f"null {f.name}", (name,), _set(f.name, None), reason))
            if f.name.endswith("_id"):
                out.append((f"empty {f.name}", (name,), _set(f.name, ""), f"empty {f.name}"))
                out.append((f"blank {f.name}", (name,), _set(f.name, " \t\u3000"), f"empty {f.name}"))
    with_utterance = tuple(n for n, s in S.SCHEMAS.items() if "utterance" in s.names)
    out += [
        ("empty utterance", with_utterance, _set("utterance", ""), "empty utterance"),
        ("blank utterance", with_utterance, _set("utterance", " \n\xa0 "), "empty utterance"),
        ("oversized utterance", with_utterance, _set("utterance", "é" * 513), "oversized utterance (513 > 512 chars)"),
        ("unknown status", ("interactions",), _set("status", "maybe"), "unknown status 'maybe'"),
        ("candidates empty", ("routing_log",), _set("candidates", []), "candidates empty"),
        ("candidate null", ("routing_log",), _set("candidates", [candidate("s1"), None]), "candidate missing domain/intent/skill_id"),
        ("candidate no skill", ("routing_log",), _set("candidates", [candidate("s1"), {**candidate(""), "skill_id": None}]), "candidate missing domain/intent/skill_id"),
        ("action too big", ("routing_log",), _set("action", 2), "action index 2 out of range for 2 candidates"),
        ("action negative", ("routing_log",), _set("action", -1), "action index -1 out of range for 2 candidates"),
        ("propensity 0", ("routing_log",), _set("propensity", 0.0), "propensity 0.0 not in (0, 1]"),
        ("propensity > 1", ("routing_log",), _set("propensity", 1.5), "propensity 1.5 not in (0, 1]"),
        ("propensity nan", ("routing_log",), _set("propensity", math.nan), "propensity nan not in (0, 1]"),
        ("propensities short", ("routing_log",), _set("propensities", [1.0]), "propensities length differs from candidates"),
        ("propensities sum", ("routing_log",), _set("propensities", [0.25, 0.7]), "propensities are not a probability distribution"),
        ("propensities negative", ("routing_log",), _set("propensities", [-0.25, 1.25]), "propensities are not a probability distribution"),
        ("propensities null", ("routing_log",), _set("propensities", [None, 1.0]), "propensities are not a probability distribution"),
        ("propensities nan", ("routing_log",), _set("propensities", [math.nan, 1.0]), "propensities are not a probability distribution"),
        ("reward nan", ("routing_log", "feedback"), _set("reward", math.nan), "reward not finite"),
        ("reward inf", ("routing_log", "feedback"), _set("reward", -math.inf), "reward not finite"),
        ("context hour", ("routing_log",), _set("context", {"device_type": "echo", "hour": 300}), "wrong type for context: dict"),
    ]
    return out


MUTATIONS = _mutations()
CASES = [(name, label, mutate, reason) for label, names, mutate, reason in MUTATIONS for name in names]


@pytest.mark.parametrize("name,label,mutate,reason", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_each_bad_row_is_rejected_with_its_reason_and_the_rest_kept(name, label, mutate, reason):
    rows = [good_row(name, i) for i in range(4)]
    mutate(rows[2])
    table = build(name, rows)
    result = V.validate(table, name)
    assert result.rejected.column("reason").to_pylist() == [reason]
    assert result.rejected.column("table").to_pylist() == [name]
    assert result.rejected.column("row")[0].as_py() == json.dumps(table.slice(2, 1).to_pylist()[0], default=str, sort_keys=True)
    assert result.good.equals(pa.Table.from_pylist([rows[i] for i in (0, 1, 3)], schema=S.SCHEMAS[name]))


def test_the_good_rows_pass_untouched_in_every_table():
    for name, schema in S.SCHEMAS.items():
        rows = [good_row(name, i) for i in range(5)]
        result = V.validate(build(name, rows), name)
        assert result.n_rejected == 0, (name, V.rejected_counts(result.rejected))
        assert result.good.equals(pa.Table.from_pylist(rows, schema=schema))


@pytest.mark.parametrize("name", list(S.SCHEMAS))
def test_a_missing_required_column_rejects_every_row(name):
    schema = S.SCHEMAS[name]
    for f in (f for f in schema if not f.nullable):
        table = build(name, [good_row(name, i) for i in range(3)]).drop_columns([f.name])
        result = V.validate(table, schema)
        assert result.good.num_rows == 0 and result.good.schema.equals(schema)
        assert result.rejected.column("reason").to_pylist() == [f"missing required column {f.name}"] * 3
        assert result.rejected.column("row").to_pylist() == [json.dumps(r, default=str, sort_keys=True) for r in table.to_pylist()]


def test_missing_nullable_columns_are_filled_with_nulls():
    rows = [good_row("routing_log", i) for i in range(3)]
    table = build("routing_log", rows).drop_columns(["propensities", "reward", "policy_version"])
    result = V.validate(table, "routing_log")
    assert result.n_rejected == 0 and result.good.schema.equals(S.ROUTING_LOG)
    assert result.good.column("reward").null_count == 3 and result.good.column("propensities").null_count == 3


# a column of the wrong type: (table, column, values of another type, Python type in the reason)
WRONG_TYPES = [
    ("interactions", "customer_id", pa.array([1, 2, 3]), "int"),
    ("interactions", "utterance", pa.array([b"a", b"b", b"c"]), "bytes"),
    ("interactions", "defect", pa.array([0, 1, 0]), "int"),
    ("customers", "is_prime", pa.array(["yes", "no", "yes"]), "str"),
    ("skills", "domain", pa.array([1.5, 2.5, 3.5]), "float"),
    ("routing_log", "action", pa.array([1.0, 0.0, 1.0]), "float"),
    ("routing_log", "propensity", pa.array([True, True, False]), "bool"),
    ("routing_log", "propensity", pa.array(["0.5", "0.5", "0.5"]), "str"),
    ("routing_log", "candidates", pa.array(["s1", "s2", "s3"]), "str"),
    ("routing_log", "context", pa.array([1, 2, 3]), "int"),
    ("feedback", "reward", pa.array(["1", "0", "1"]), "str"),
    ("truth_turns", "defect_probability", pa.array([True, False, True]), "bool"),
    ("truth_routing", "expected_rewards", pa.array(["x", "y", "z"]), "str"),
]


@pytest.mark.parametrize("name,column,values,python_type", WRONG_TYPES, ids=[f"{w[0]}.{w[1]}:{w[3]}" for w in WRONG_TYPES])
def test_a_column_of_the_wrong_type_rejects_its_rows(name, column, values, python_type):
    table = build(name, [good_row(name, i) for i in range(3)])
    table = table.set_column(table.schema.get_field_index(column), column, values)
    result = V.validate(table, name)
    assert result.good.num_rows == 0
    assert result.rejected.column("reason").to_pylist() == [f"wrong type for {column}: {python_type}"] * 3


def test_nulls_in_a_wrongly_typed_nullable_column_are_still_good():
    table = build("routing_log", [good_row("routing_log", i) for i in range(3)])
    table = table.set_column(table.schema.get_field_index("reward"), "reward", pa.array(["1", None, None]))
    result = V.validate(table, "routing_log")
    assert V.rejected_counts(result.rejected) == {"wrong type for reward: str": 1}
    assert result.good.num_rows == 2 and result.good.column("reward").null_count == 2


def test_bad_timestamps():
    rows = [good_row("interactions", i) for i in range(3)]
    as_text = build("interactions", rows).set_column(2, "timestamp", pa.array(["2024-05-01"] * 3))
    result = V.validate(as_text, "interactions")
    assert result.rejected.column("reason").to_pylist() == ["bad timestamp (type string)"] * 3
    # a timestamp without a zone is read as UTC, other units are converted
    naive = build("interactions", rows).set_column(
        2, "timestamp", pa.array([r["timestamp"].replace(tzinfo=None) for r in rows], pa.timestamp("s"))
    )
    result = V.validate(naive, "interactions")
    assert result.n_rejected == 0
    assert result.good.column("timestamp").to_pylist() == [r["timestamp"] for r in rows]


def test_the_first_violation_of_a_row_is_its_reason():
    row = good_row("routing_log")
    row.update(timestamp=None, customer_id="", utterance="", candidates=[])
    assert V.validate(build("routing_log", [row]), "routing_log").rejected["reason"].to_pylist() == ["bad timestamp (null)"]
    row["timestamp"] = T0
    assert V.validate(build("routing_log", [row]), "routing_log").rejected["reason"].to_pylist() == ["empty customer_id"]
    row["customer_id"] = "c1"
    assert V.validate(build("routing_log", [row]), "routing_log").rejected["reason"].to_pylist() == ["empty utterance"]


def test_an_utterance_of_exactly_the_limit_is_good():
    row = good_row("interactions")
    row["utterance"] = "x" * S.MAX_UTTERANCE_CHARS
    assert V.validate(build("interactions", [row]), "interactions").n_rejected == 0


def test_good_table_conforms_exactly_to_the_schema():
    """Looser input types (int for float, large or dictionary strings, naive timestamps, int64
    action, extra columns, several chunks) come out in the contract's exact schema."""
    rows = [good_row("routing_log", i) for i in range(4)]
    for row, reward in zip(rows, [1.0, None, 0.0, 1.0]):
        row["reward"] = reward
    table = build("routing_log", rows)
    table = table.set_column(0, "request_id", table["request_id"].cast(pa.large_string()))
    table = table.set_column(1, "customer_id", table["customer_id"].dictionary_encode())
    table = table.set_column(2, "timestamp", table["timestamp"].cast(pa.timestamp("us", tz="UTC")))
    table = table.set_column(6, "action", table["action"].cast(pa.int64()))
    table = table.set_column(9, "reward", pa.array([1, None, 0, 1], pa.int64()))
    table = table.append_column("extra", pa.array(["a", "b", "c", "d"]))
    table = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    result = V.validate(table, S.ROUTING_LOG)
    assert result.n_rejected == 0
    assert result.good.schema.equals(S.ROUTING_LOG, check_metadata=True)
    assert result.good.equals(pa.Table.from_pylist(rows, schema=S.ROUTING_LOG))


def test_empty_input_and_unknown_schema():
    result = V.validate(S.INTERACTIONS.empty_table(), "interactions")
    assert result.good.schema.equals(S.INTERACTIONS) and result.good.num_rows == 0 and result.n_rejected == 0
    assert result.rejected.schema.equals(S.REJECTED)
    with pytest.raises(ValueError, match="schemas in raylib.schema"):
        V.validate(pa.table({"a": [1]}), pa.schema([("a", pa.int64())]))


# ---- nothing is lost: a property over random mixes of good and bad rows -------------------

TABLES_WITH_MUTATIONS = {name: [m for m in MUTATIONS if name in m[1]] for name in S.SCHEMAS}


@st.composite
def mixed_tables(draw):
    name = draw(st.sampled_from(sorted(S.SCHEMAS)))
    choices = draw(st.lists(st.sampled_from([None, *TABLES_WITH_MUTATIONS[name]]), max_size=30))
    rows, reasons = [], []
    for i, mutation in enumerate(choices):
        row = good_row(name, i)
        if mutation is not None:
            mutation[2](row)
        rows.append(row)
        reasons.append(None if mutation is None else mutation[3])
    chunk = draw(st.integers(1, 31))
    table = build(name, rows)
    table = pa.concat_tables([table.slice(k, chunk) for k in range(0, len(rows), chunk)] or [table])
    return name, rows, reasons, table


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_tables())
def test_good_plus_rejected_is_the_input(case):
    name, rows, reasons, table = case
    result = V.validate(table, name)
    assert result.good.num_rows + result.rejected.num_rows == table.num_rows
    assert result.good.schema.equals(S.SCHEMAS[name])
    good_rows = [r for r, why in zip(rows, reasons) if why is None]
    assert result.good.equals(pa.Table.from_pylist(good_rows, schema=S.SCHEMAS[name]))
    assert result.rejected.column("reason").to_pylist() == [why for why in reasons if why is not None]
    bad_input = [r for r, why in zip(table.to_pylist(), reasons) if why is not None]
    assert result.rejected.column("row").to_pylist() == [json.dumps(r, default=str, sort_keys=True) for r in bad_input]


# ---- reporting and quarantine -----------------------------------------------------------


def _some_rejections() -> V.Validated:
    rows = [good_row("interactions", i) for i in range(6)]
    rows[0]["status"] = "maybe"
    rows[2]["customer_id"] = None
    rows[3]["customer_id"] = None
    rows[5]["utterance"] = "  "
    return V.validate(build("interactions", rows), "interactions")


def test_rejected_counts():
    result = _some_rejections()
    assert V.rejected_counts(result.rejected) == {"unknown status 'maybe'": 1, "null customer_id": 2, "empty utterance": 1}
    assert V.rejected_counts(S.REJECTED.empty_table()) == {}


def test_write_rejected_to_a_real_directory(tmp_path):
    root = str(tmp_path)
    assert V.quarantine(S.REJECTED.empty_table(), root) is None
    assert not (tmp_path / "rejected").exists()
    first = _some_rejections().rejected
    second = V.validate(build("feedback", [{"request_id": "r1", "reward": math.inf}]), "feedback").rejected
    path = V.quarantine(first, root)
    V.quarantine(second, root)
    assert "/rejected/part-" in path and path.endswith(".parquet")
    back = uri.read_table(root, "rejected").sort_by([("table", "ascending"), ("reason", "ascending")])
    expected = pa.concat_tables([second, first]).sort_by([("table", "ascending"), ("reason", "ascending")])
    assert back.equals(expected)
    assert V.rejected_counts(back)["reward not finite"] == 1
