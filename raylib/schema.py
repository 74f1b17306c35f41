"""Arrow schemas of every table, row validation and quarantine of bad rows.

Every table the project reads or writes is declared here once. ``validate`` splits a
table into the rows that satisfy the contract and a ``rejected`` table that keeps every
other row (as JSON text, so a row of any shape survives) with one reason per row:

    good.num_rows + rejected.num_rows == table.num_rows      (always)

Tables on disk are directories of Parquet files, one directory per table
(``<root>/<table>/part-*.parquet``); ``read_table``/``write_table`` handle local paths and
any ``pyarrow.fs`` URI (``file://``, ``s3://``, ``gs://``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TIMESTAMP = pa.timestamp("ms", tz="UTC")
MAX_UTTERANCE_CHARS = 512
STATUSES = ("ok", "error", "no_match")

INTERACTIONS = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("utterance", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("intent", pa.string(), nullable=False),
        pa.field("slots", pa.string(), nullable=False),  # canonical "name=value;..." sorted by name
        pa.field("skill_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok / error / no_match
        pa.field("defect", pa.bool_(), nullable=False),
    ]
)

# Seed 000, Table 2: categorical metadata used to initialise node embeddings.
CUSTOMERS = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("wbr_cor", pa.string(), nullable=False),
        pa.field("is_prime", pa.bool_(), nullable=False),
        pa.field("is_amu", pa.bool_(), nullable=False),
        pa.field("is_smart_home_cust", pa.bool_(), nullable=False),
    ]
)

SKILLS = pa.schema(
    [
        pa.field("skill_id", pa.string(), nullable=False),
        pa.field("skill_category", pa.string(), nullable=False),
        pa.field("skill_type", pa.string(), nullable=False),
        pa.field("skill_subcategory", pa.string(), nullable=False),
        pa.field("reporting_category", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),  # the domain whose intents the skill serves
    ]
)

CONTEXT = pa.struct(
    [
        pa.field("device_type", pa.string()),
        pa.field("device_status", pa.string()),
        pa.field("asr_confidence", pa.float32()),
        pa.field("hour", pa.int8()),
    ]
)
CANDIDATE = pa.struct(
    [
        pa.field("domain", pa.string()),
        pa.field("intent", pa.string()),
        pa.field("skill_id", pa.string()),
        pa.field("nlu_confidence", pa.float32()),
    ]
)

# Seed 002: one routing decision. ``propensity`` is the logging probability of ``action``;
# ``propensities`` the full distribution when known (null otherwise). ``reward`` is null
# while the user's feedback has not been joined yet (a live decision log); learning code
# keeps only rows with a reward and counts the others.
ROUTING_LOG = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("utterance", pa.string(), nullable=False),
        pa.field("context", CONTEXT, nullable=False),
        pa.field("candidates", pa.list_(CANDIDATE), nullable=False),
        pa.field("action", pa.int32(), nullable=False),
        pa.field("propensity", pa.float64(), nullable=False),
        pa.field("propensities", pa.list_(pa.float64()), nullable=True),
        pa.field("reward", pa.float64(), nullable=True),
        pa.field("policy_version", pa.string(), nullable=True),
    ]
)

# Feedback observed after a decision, joined onto a decision log by request_id.
FEEDBACK = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
    ]
)

# ---- simulator ground truth: read only by evaluation code -------------------------------

# One row per systematically defective utterance: what the speakers meant.
TRUTH_REWRITES = pa.schema(
    [
        pa.field("utterance", pa.string(), nullable=False),
        pa.field("intended_utterance", pa.string(), nullable=False),
        pa.field("intended_interpretation", pa.string(), nullable=False),  # domain|intent|slots
        pa.field("cause", pa.string(), nullable=False),  # asr / nlu / user
    ]
)

# One row per interaction (keyed by customer_id, device_id, timestamp): the request the
# user meant and how the turn came about.
TRUTH_TURNS = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("intended_utterance", pa.string(), nullable=False),
        pa.field("intended_interpretation", pa.string(), nullable=False),
        pa.field("turn_kind", pa.string(), nullable=False),
        pa.field("defect_probability", pa.float64(), nullable=False),
    ]
)

# One row per routing request: the expected reward of every candidate (same order as
# ``routing_log.candidates``), so the true value of any policy is sum_k pi(k|x) r_k.
TRUTH_ROUTING = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("expected_rewards", pa.list_(pa.float64()), nullable=False),
        pa.field("intended_interpretation", pa.string(), nullable=False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "interactions": INTERACTIONS,
    "customers": CUSTOMERS,
    "skills": SKILLS,
    "routing_log": ROUTING_LOG,
    "feedback": FEEDBACK,
    "truth_rewrites": TRUTH_REWRITES,
    "truth_turns": TRUTH_TURNS,
    "truth_routing": TRUTH_ROUTING,
}

REJECTED = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("row", pa.string(), nullable=False),  # the original row as JSON
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def interpretation_key(domain: str, intent: str, slots: str) -> str:
    """The interpretation h of seed 001 as one string: ``domain|intent|slots``."""
    return f"{domain}|{intent}|{slots}"


def canonical_slots(slots: dict[str, str]) -> str:
    """Slots as the canonical ``name=value;...`` string (sorted by name)."""
    return ";".join(f"{k}={slots[k]}" for k in sorted(slots))


def normalize_utterance(text: str) -> str:
    """The one utterance normalisation used by mining, serving and evaluation alike:
    lower-case, whitespace collapsed, surrounding whitespace stripped."""
    return " ".join(text.lower().split())


# ---- validation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Validated:
    """The result of ``validate``: rows that meet the contract and rows that do not."""

    good: pa.Table
    rejected: pa.Table

    @property
    def n_rejected(self) -> int:
        return self.rejected.num_rows


def _row_reason(name: str, row: dict, schema: pa.Schema) -> str | None:
    """The first contract violation of one row, or None when the row is good."""
    for field in schema:
        if field.name not in row:  # timestamps are checked column-wise
            continue
        value = row[field.name]
        if value is None:
            if not field.nullable:
                return f"null {field.name}"
            continue
        if pa.types.is_string(field.type):
            if not isinstance(value, str):
                return f"wrong type for {field.name}: {type(value).__name__}"
            if field.name.endswith("_id") and not value.strip():
                return f"empty {field.name}"
        elif pa.types.is_floating(field.type):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"wrong type for {field.name}: {type(value).__name__}"
        elif pa.types.is_integer(field.type):
            if isinstance(value, bool) or not isinstance(value, int):
                return f"wrong type for {field.name}: {type(value).__name__}"
        elif pa.types.is_boolean(field.type):
            if not isinstance(value, bool):
                return f"wrong type for {field.name}: {type(value).__name__}"
    if "utterance" in row and row.get("utterance") is not None:
        text = row["utterance"]
        if not text.strip():
            return "empty utterance"
        if len(text) > MAX_UTTERANCE_CHARS:
            return f"oversized utterance ({len(text)} > {MAX_UTTERANCE_CHARS} chars)"
    if name == "interactions" and row["status"] not in STATUSES:
        return f"unknown status {row['status']!r}"
    if name == "routing_log":
        return _routing_reason(row)
    if name in ("feedback",) and not math.isfinite(row["reward"]):
        return "reward not finite"
    return None


def _routing_reason(row: dict) -> str | None:
    candidates = row["candidates"]
    if not isinstance(candidates, list) or not candidates:
        return "candidates empty"
    for cand in candidates:
        if not isinstance(cand, dict) or any(cand.get(k) is None for k in ("domain", "intent", "skill_id")):
            return "candidate missing domain/intent/skill_id"
    if not 0 <= row["action"] < len(candidates):
        return f"action index {row['action']} out of range for {len(candidates)} candidates"
    if not (isinstance(row["propensity"], (int, float)) and 0.0 < row["propensity"] <= 1.0):
        return f"propensity {row['propensity']} not in (0, 1]"
    props = row.get("propensities")
    if props is not None:
        if len(props) != len(candidates):
            return "propensities length differs from candidates"
        if any(p is None or not (0.0 <= p <= 1.0) for p in props) or abs(sum(props) - 1.0) > 1e-6:
            return "propensities are not a probability distribution"
    reward = row.get("reward")
    if reward is not None and not math.isfinite(reward):
        return "reward not finite"
    return None


def _timestamp_column(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Cast a timestamp column to the contract's type; None marks an uncastable column."""
    if pa.types.is_timestamp(column.type):
        tz = column.type.tz
        col = column if tz else pc.assume_timezone(column, "UTC")
        return col.cast(TIMESTAMP)
    return None


def validate(table: pa.Table, schema: pa.Schema | str) -> Validated:
    """Split ``table`` into rows that satisfy ``schema`` and a rejected table.

    ``schema`` is an Arrow schema from this module or its table name. Reasons cover a
    missing required column, a missing/null required value, a wrong type, a null or empty
    id, an empty or oversized utterance, a bad timestamp, an unknown status, and for
    routing logs empty candidates, an out-of-range action, a propensity outside (0, 1]
    and a non-finite reward. Rows are never dropped: good + rejected = input.
    """
    name = schema if isinstance(schema, str) else _schema_name(schema)
    schema = SCHEMAS[name]
    n = table.num_rows
    missing = [f.name for f in schema if f.name not in table.column_names and not f.nullable]
    if missing:
        reason = f"missing required column {missing[0]}"
        return Validated(schema.empty_table(), _rejected_rows(name, table.to_pylist(), [reason] * n))

    reasons: list[str | None] = [None] * n
    columns = {}
    for field in schema:
        if field.name not in table.column_names:
            columns[field.name] = pa.nulls(n, field.type)
            continue
        col = table.column(field.name)
        if pa.types.is_timestamp(field.type):
            cast = _timestamp_column(col)
            if cast is None:
                reasons = [r or f"bad timestamp (type {col.type})" for r in reasons]
                cast = pa.nulls(n, field.type)
            else:
                for i, valid in enumerate(cast.is_valid().to_pylist()):
                    if not valid and reasons[i] is None:
                        reasons[i] = "bad timestamp (null)"
            columns[field.name] = cast
        else:
            columns[field.name] = col
    rows = table.to_pylist()
    checked = pa.table({k: v for k, v in columns.items() if not pa.types.is_timestamp(v.type)})
    for i, row in enumerate(checked.to_pylist()):
        if reasons[i] is None:
            reasons[i] = _row_reason(name, row, schema)

    ok = np.array([r is None for r in reasons], dtype=bool)
    good = _conform(pa.table(columns), schema, ok)
    bad_rows = [rows[i] for i in np.flatnonzero(~ok)]
    bad_reasons = [reasons[i] for i in np.flatnonzero(~ok)]
    return Validated(good, _rejected_rows(name, bad_rows, bad_reasons))


def _conform(table: pa.Table, schema: pa.Schema, keep: np.ndarray) -> pa.Table:
    """Rows ``keep`` of ``table`` cast to ``schema`` (column order and types)."""
    kept = table.filter(pa.array(keep))
    arrays = [kept.column(f.name).cast(f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _schema_name(schema: pa.Schema) -> str:
    for name, known in SCHEMAS.items():
        if known.equals(schema):
            return name
    raise ValueError("validate() needs one of the schemas in raylib.schema")


def _rejected_rows(name: str, rows: list[dict], reasons: list[str]) -> pa.Table:
    return pa.table(
        {
            "table": [name] * len(rows),
            "row": [json.dumps(r, default=str, sort_keys=True) for r in rows],
            "reason": reasons,
        },
        schema=REJECTED,
    )


# ---- I/O ------------------------------------------------------------------------------------


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A ``pyarrow.fs`` filesystem and path for a local path or any URI it understands."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(uri)


def table_path(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def read_table(root: str, name: str, columns: list[str] | None = None) -> pa.Table:
    """Read table ``name`` (a directory of Parquet files) under ``root``."""
    fs, path = filesystem(table_path(root, name))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no table {name!r} under {root}")
    return ds.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns)


def write_table(table: pa.Table, root: str, name: str, part: int = 0) -> str:
    """Write ``table`` as part ``part`` of table ``name`` under ``root``; returns the file path."""
    fs, path = filesystem(table_path(root, name))
    fs.create_dir(path, recursive=True)
    file = f"{path}/part-{part:05d}.parquet"
    pq.write_table(table, file, filesystem=fs)
    return file


def write_rejected(rejected: pa.Table, root: str, part: int = 0) -> str | None:
    """Quarantine rejected rows under ``root/rejected``; nothing is written for none."""
    if rejected.num_rows == 0:
        return None
    return write_table(rejected, root, "rejected", part)


def rejected_counts(rejected: pa.Table) -> dict[str, int]:
    """How many rows were rejected for each reason (for job summaries)."""
    if rejected.num_rows == 0:
        return {}
    counts = rejected.group_by("reason").aggregate([("reason", "count")])
    return dict(zip(counts["reason"].to_pylist(), counts["reason_count"].to_pylist()))
