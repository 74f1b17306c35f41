"""Row validation and quarantine of bad rows.

``validate`` splits a table into the rows that satisfy its contract (``raylib.schema``)
and a ``rejected`` table that keeps every other row (as JSON text, so a row of any shape
survives) with one reason per row:

    good.num_rows + rejected.num_rows == table.num_rows      (always)

``quarantine`` writes rejected rows under ``<out>/rejected`` (from the driver or from Ray
Data workers alike); ``rejected_counts`` counts them per reason for a job's summary.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib import uri
from raylib.schema import MAX_UTTERANCE_CHARS, REJECTED, SCHEMAS, STATUSES, TIMESTAMP


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
    id, an empty or oversized utterance, an empty applied rewrite, a bad timestamp, an
    unknown status, and for routing logs empty candidates, an out-of-range action, a
    propensity outside (0, 1] and a non-finite reward. Rows are never dropped: good + rejected = input.

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
        reasons.add(_blank(columns["rewrite"]), "empty rewrite")  # null (no rewrite applied) passes
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


def quarantine(rejected: pa.Table, out: str) -> str | None:
    """Write rejected rows as a part of ``<out>/rejected`` named by their content (a hash
    of each row's table, JSON and reason); nothing is written for none. Returns the file.

    Content naming makes the write idempotent: a Ray Data task that is re-executed (a retry,
    or lineage reconstruction after a lost node) rewrites the same file instead of adding a
    second copy of its rows, and concurrent writers of different rows never collide. (Two
    batches whose rejected rows are identical, e.g. a duplicated input file, share a file.)"""
    if rejected.num_rows == 0:
        return None
    digest = hashlib.sha1()
    for column in ("table", "row", "reason"):
        for value in rejected.column(column).to_pylist():
            digest.update(value.encode())
            digest.update(b"\x00")
    return uri.write_table(rejected, out, "rejected", part=digest.hexdigest()[:24])


def rejected_counts(rejected: pa.Table) -> dict[str, int]:
    """How many rows were rejected for each reason (for job summaries)."""
    if rejected.num_rows == 0:
        return {}
    counts = rejected.group_by("reason").aggregate([("reason", "count")])
    return dict(zip(counts["reason"].to_pylist(), counts["reason_count"].to_pylist()))
