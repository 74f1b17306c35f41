"""Direct evidence behind a candidate rewrite u_s -> u_t, gathered from sessions.

A session supports u_s -> u_t when u_t is said after u_s in it (the user reformulated
u_s into u_t, possibly after other turns). Per candidate pair we count the supporting
sessions and the DISTINCT customers behind them; the minimum-customers filter uses the
latter so that a rewrite is served only when several customers reformulated that way,
and never one customer's utterance alone. Counted per batch of whole sessions
(``pair_evidence``) and summed per pair (``evidence_per_pair``), like ``counts``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.rewrite.sessions import mined_sessions

EVIDENCE = pa.schema(
    [
        pa.field("utterance", pa.string(), nullable=False),
        pa.field("rewrite", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("sessions", pa.int64(), nullable=False),
    ]
)
PER_PAIR = pa.schema([pa.field("utterance", pa.string(), nullable=False),
                      pa.field("rewrite", pa.string(), nullable=False),
                      pa.field("support", pa.int64(), nullable=False),
                      pa.field("n_customers", pa.int64(), nullable=False)])


def pair_evidence(sessions: pa.Table, candidates: pa.Table) -> pa.Table:
    """Per (utterance, rewrite, customer): sessions in which the customer said ``rewrite``
    after ``utterance``; only pairs listed in ``candidates`` (columns utterance, rewrite),
    only in ``mined_sessions`` (a session that met a served rewrite is no evidence)."""
    sessions = mined_sessions(sessions)
    if sessions.num_rows == 0 or candidates.num_rows == 0:
        return EVIDENCE.empty_table()
    vocab = np.unique(np.concatenate([
        np.asarray(candidates.column("utterance").to_pylist(), dtype=object),
        np.asarray(candidates.column("rewrite").to_pylist(), dtype=object),
    ]))
    m = len(vocab)
    cand_codes = np.unique(
        np.searchsorted(vocab, np.asarray(candidates.column("utterance").to_pylist(), dtype=object)) * m
        + np.searchsorted(vocab, np.asarray(candidates.column("rewrite").to_pylist(), dtype=object))
    )
    flat = np.asarray(pc.list_flatten(sessions.column("utterances")).to_pylist(), dtype=object)
    parent = pc.list_parent_indices(sessions.column("utterances")).to_numpy()
    pos = np.minimum(np.searchsorted(vocab, flat), m - 1)
    ids = np.where(vocab[pos] == flat, pos, -1)
    found_session, found_code = [], []
    longest = int(pc.max(pc.list_value_length(sessions.column("utterances"))).as_py() or 0)
    for k in range(1, longest):
        a, b = ids[:-k], ids[k:]
        ok = (parent[:-k] == parent[k:]) & (a >= 0) & (b >= 0)
        code = a[ok] * m + b[ok]
        hit = np.isin(code, cand_codes)
        found_session.append(parent[:-k][ok][hit])
        found_code.append(code[hit])
    if not found_session or not sum(len(x) for x in found_session):
        return EVIDENCE.empty_table()
    key = np.unique(np.concatenate(found_session) * (m * m) + np.concatenate(found_code))
    session, code = np.divmod(key, m * m)
    src, dst = np.divmod(code, m)
    customers = sessions.column("customer_id").take(pa.array(session))
    table = pa.table({"utterance": vocab[src].tolist(), "rewrite": vocab[dst].tolist(),
                      "customer_id": customers, "sessions": np.ones(len(key), dtype=np.int64)})
    return reduce_evidence(table)


def reduce_evidence(partials: pa.Table | list[pa.Table]) -> pa.Table:
    """Sum partial evidence by (utterance, rewrite, customer), sorted."""
    table = pa.concat_tables(partials) if isinstance(partials, list) else partials
    if table.num_rows == 0:
        return EVIDENCE.empty_table()
    keys = ["utterance", "rewrite", "customer_id"]
    out = table.group_by(keys).aggregate([("sessions", "sum")])
    out = out.select(keys + ["sessions_sum"]).rename_columns(EVIDENCE.names).cast(EVIDENCE)
    return out.take(pc.sort_indices(out, sort_keys=[(k, "ascending") for k in keys]))


def evidence_per_pair(partials: pa.Table | list[pa.Table]) -> pa.Table:
    """(utterance, rewrite) -> support (sessions) and n_customers (distinct customers) of
    partial evidence tables; exact as long as each pair's rows are all among ``partials``."""
    evidence = reduce_evidence(partials)
    keys = ["utterance", "rewrite"]
    if evidence.num_rows == 0:
        return PER_PAIR.empty_table()
    out = evidence.group_by(keys).aggregate([("sessions", "sum"), ("customer_id", "count")])
    out = out.select(keys + ["sessions_sum", "customer_id_count"]).rename_columns(PER_PAIR.names)
    return out.cast(PER_PAIR)
