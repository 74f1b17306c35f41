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
from dataclasses import dataclass
from typing import Callable

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


def validate(table: pa.Table, schema: pa.Schema | str) -> Validated:
    """Split ``table`` into rows that satisfy ``schema`` and a rejected table.

    ``schema`` is an Arrow schema from this module or its table name. Reasons cover a
    missing required column, a missing/null required value, a wrong type, a null or empty
    id, an empty or oversized utterance, a bad timestamp, an unknown status, and for
    routing logs empty candidates, an out-of-range action, a propensity outside (0, 1]
    and a non-finite reward. Rows are never dropped: good + rejected = input.

    Each row gets its first violation in this order: timestamps, then the fields in schema
    order (null, type, empty id), then utterance, status and the routing-log checks. The
    checks run column-wise (pyarrow.compute); only rejected rows are converted to Python.
    Types follow Python's view of a value: an integer column is a valid float column, a
    bool column is not a number; a nested column (struct, list) must cast to its type.
    """
    name = schema if isinstance(schema, str) else _schema_name(schema)
    schema = SCHEMAS[name]
    n = table.num_rows
    missing = [f.name for f in schema if f.name not in table.column_names and not f.nullable]
    if missing:
        reason = f"missing required column {missing[0]}"
        return Validated(schema.empty_table(), _rejected_rows(name, table.to_pylist(), [reason] * n))

    reasons = _Reasons(n)
    columns = {}
    for field in schema:  # timestamps first: their reason wins over any other
        if pa.types.is_timestamp(field.type) and field.name in table.column_names:
            col = table.column(field.name)
            cast = _timestamp_column(col)
            if cast is None:
                reasons.add(np.ones(n, dtype=bool), f"bad timestamp (type {col.type})")
                cast = _nulls(n, field.type)
            else:
                reasons.add(_mask(cast.is_null()), "bad timestamp (null)")
            columns[field.name] = cast
    for field in schema:
        if field.name not in table.column_names:
            columns[field.name] = _nulls(n, field.type)
        elif field.name not in columns:
            columns[field.name] = _field_reasons(field, table.column(field.name), reasons)
    _table_reasons(name, columns, reasons)

    ok = reasons.open
    good = _conform(pa.table(columns), schema, ok)
    bad = np.flatnonzero(~ok)
    return Validated(good, _rejected_rows(name, _rows(table, bad), reasons.reason[bad].tolist()))


class _Reasons:
    """The first contract violation of every row; ``open`` marks rows with none so far."""

    def __init__(self, n: int):
        self.reason = np.full(n, None, dtype=object)
        self.open = np.ones(n, dtype=bool)

    def add(self, mask: np.ndarray, reason: str | Callable[[np.ndarray], list[str]]) -> None:
        """Give ``reason`` (or ``reason(rows)``, one text per row) to the open rows of ``mask``."""
        rows = np.flatnonzero(self.open & mask)
        if len(rows):
            self.reason[rows] = reason if isinstance(reason, str) else reason(rows)
            self.open[rows] = False


def _mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow column as numpy, null counted as False."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _nulls(n: int, kind: pa.DataType) -> pa.ChunkedArray:
    return pa.chunked_array([pa.nulls(n, kind)])


def _rows(table: pa.Table, rows: np.ndarray) -> list[dict]:
    """Rows ``rows`` of ``table`` as Python dicts."""
    try:
        return table.take(pa.array(rows, type=pa.int64())).to_pylist()
    except pa.ArrowNotImplementedError:  # a column type without a take kernel (e.g. string_view)
        every = table.to_pylist()
        return [every[i] for i in rows]


def _values(column: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> list:
    return column.take(pa.array(rows, type=pa.int64())).to_pylist()


# str.strip()'s whitespace (29 code points, all below U+3001) as an RE2 class: a blank text
# matches ^[...]*$ exactly when Python's text.strip() is empty.
_BLANK = "^[" + "".join(f"\\x{{{ord(c):x}}}" for c in map(chr, range(0x3001)) if c.isspace()) + "]*$"


def _blank(column: pa.ChunkedArray) -> np.ndarray:
    """Rows whose text is empty or whitespace only."""
    return _mask(pc.match_substring_regex(column, _BLANK))


def _field_reasons(field: pa.Field, column: pa.ChunkedArray, reasons: _Reasons) -> pa.ChunkedArray:
    """Null, type and empty-id checks of one column; returns the column to keep, in the
    field's type where a row's value has the wrong type (null there: such rows are rejected)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    null = _mask(column.is_null())
    if not field.nullable:
        reasons.add(null, f"null {field.name}")
    typed, wrong = _typed_column(column, field.type)
    wrong &= ~null
    if wrong.any():
        python_type = type(column[int(np.flatnonzero(wrong)[0])].as_py()).__name__
        reasons.add(wrong, f"wrong type for {field.name}: {python_type}")
    if pa.types.is_string(field.type) and field.name.endswith("_id"):
        reasons.add(_blank(typed), f"empty {field.name}")
    return typed


def _typed_column(column: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.ChunkedArray, np.ndarray]:
    """``column`` in a type the checks can use, and the rows whose value has the wrong type
    (Python's view: an int is a float, a bool is not a number; nested values must cast)."""
    kind = column.type
    if pa.types.is_string(target):
        ok = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    elif pa.types.is_floating(target):
        ok = pa.types.is_integer(kind) or pa.types.is_floating(kind)
    elif pa.types.is_integer(target):
        ok = pa.types.is_integer(kind)
    elif pa.types.is_boolean(target):
        ok = pa.types.is_boolean(kind)
    else:  # struct / list: rows whose value does not cast (e.g. an int8 out of range)
        try:
            column.slice(0, 0).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return _nulls(len(column), target), np.ones(len(column), dtype=bool)
        return _cast_rows(column, target)
    ok = ok or pa.types.is_null(kind)
    if not ok:
        return _nulls(len(column), target), np.ones(len(column), dtype=bool)
    return (column.cast(pa.string()) if pa.types.is_string(target) else column), np.zeros(len(column), dtype=bool)


def _cast_rows(column: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Cast ``column`` to ``target``, bisecting to the rows that fail (null in the result)."""
    try:
        return column.cast(target), np.zeros(len(column), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        if len(column) == 1:
            return _nulls(1, target), np.ones(1, dtype=bool)
    half = len(column) // 2
    (head, head_bad), (tail, tail_bad) = _cast_rows(column.slice(0, half), target), _cast_rows(column.slice(half), target)
    return pa.chunked_array(head.chunks + tail.chunks, type=target), np.concatenate([head_bad, tail_bad])


def _table_reasons(name: str, columns: dict[str, pa.ChunkedArray], reasons: _Reasons) -> None:
    """The table-specific checks: utterance, status, routing log, feedback reward."""
    if "utterance" in columns:
        utterance = columns["utterance"]
        reasons.add(_blank(utterance), "empty utterance")
        length = pc.utf8_length(utterance)
        reasons.add(
            _mask(pc.greater(length, MAX_UTTERANCE_CHARS)),
            lambda rows: [f"oversized utterance ({k} > {MAX_UTTERANCE_CHARS} chars)" for k in _values(length, rows)],
        )
    if name == "interactions":
        status = columns["status"]
        unknown = _mask(pc.invert(pc.is_in(status, value_set=pa.array(STATUSES))))
        reasons.add(unknown, lambda rows: [f"unknown status {s!r}" for s in _values(status, rows)])
    if name == "routing_log":
        _routing_reasons(columns, reasons)
    if name == "feedback":
        reasons.add(_not_finite(columns["reward"]), "reward not finite")


def _not_finite(column: pa.ChunkedArray) -> np.ndarray:
    """Non-null values that are nan or infinite (integers are always finite)."""
    if not pa.types.is_floating(column.type):
        return np.zeros(len(column), dtype=bool)
    return _mask(pc.invert(pc.is_finite(column)))


def _routing_reasons(columns: dict[str, pa.ChunkedArray], reasons: _Reasons) -> None:
    """Candidates, action, propensity, propensities and reward of a routing log."""
    n = len(reasons.open)
    candidates = columns["candidates"].combine_chunks()
    n_candidates = pc.fill_null(pc.list_value_length(candidates), 0).to_numpy(zero_copy_only=False)
    reasons.add(n_candidates == 0, "candidates empty")

    flat = pc.list_flatten(candidates)
    incomplete = np.zeros(len(flat), dtype=bool)
    for key in ("domain", "intent", "skill_id"):
        incomplete |= np.asarray(pc.is_null(pc.struct_field(flat, key)).to_numpy(zero_copy_only=False))
    parent = pc.list_parent_indices(candidates).to_numpy(zero_copy_only=False)
    reasons.add(np.bincount(parent[incomplete], minlength=n) > 0, "candidate missing domain/intent/skill_id")

    action = columns["action"]
    action_np = pc.fill_null(action, 0).to_numpy(zero_copy_only=False)
    reasons.add(
        (action_np < 0) | (action_np >= n_candidates),
        lambda rows: [
            f"action index {a} out of range for {k} candidates" for a, k in zip(_values(action, rows), n_candidates[rows])
        ],
    )

    propensity = columns["propensity"]
    in_range = pc.and_(pc.greater(propensity, 0.0), pc.less_equal(propensity, 1.0))
    reasons.add(~_mask(in_range), lambda rows: [f"propensity {p} not in (0, 1]" for p in _values(propensity, rows)])

    propensities = columns["propensities"].combine_chunks()
    present = _mask(propensities.is_valid())
    n_propensities = pc.fill_null(pc.list_value_length(propensities), 0).to_numpy(zero_copy_only=False)
    reasons.add(present & (n_propensities != n_candidates), "propensities length differs from candidates")
    values = pc.list_flatten(propensities)
    owner = pc.list_parent_indices(propensities).to_numpy(zero_copy_only=False)
    outside = ~_mask(pc.and_(pc.greater_equal(values, 0.0), pc.less_equal(values, 1.0)))
    total = np.bincount(owner, weights=pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False), minlength=n)
    not_distribution = (np.bincount(owner[outside], minlength=n) > 0) | (np.abs(total - 1.0) > 1e-6)
    reasons.add(present & not_distribution, "propensities are not a probability distribution")

    reasons.add(_not_finite(columns["reward"]), "reward not finite")


def _timestamp_column(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Cast a timestamp column to the contract's type; None marks an uncastable column."""
    if pa.types.is_timestamp(column.type):
        tz = column.type.tz
        col = column if tz else pc.assume_timezone(column, "UTC")
        return col.cast(TIMESTAMP)
    return None


def _conform(table: pa.Table, schema: pa.Schema, keep: np.ndarray) -> pa.Table:
    """Rows ``keep`` of ``table`` cast to ``schema`` (column order and types)."""
    kept = table.filter(pa.array(keep, type=pa.bool_()))
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


def vector_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """The rows of an (N, D) matrix as a float32 fixed-size-list column (the ``embedding``
    column of the PDRFE embeddings artifact's tables)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(matrix, np.float32).ravel()), matrix.shape[1])


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
