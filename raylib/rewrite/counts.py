"""Co-occurrence counts of seed 001 gathered from sessions, in one long table.

Every count the model needs is a sum over sessions, so it is computed per batch of
sessions (``session_counts``) and the partial tables are summed (``reduce_counts``);
the result does not depend on how sessions were split into batches.

``COUNTS`` rows, by ``kind``:

* ``transition``: ``key1`` = h_i, ``key2`` = the next state v (an interpretation, or
  ``SUCCESS_STATE`` / ``FAILURE_STATE`` for the absorbing states): c(h_i, v) of Eq. 7.
* ``pair``: ``key1`` = utterance u, ``key2`` = interpretation h: c(u, h) of Eq. 5.
* ``utterance``: ``key1`` = utterance u: how often it was said (``count``) and how often
  that turn was a defect (``defects``), the friction rate used by the Z-test filter.
* ``session``: ``key1`` = a ``SessionStats`` field, ``count`` = its value (turns,
  interjections, sessions), so the stage counts travel with the other sums.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.rewrite.sessions import FAILURE, SessionStats, mined_sessions, session_stats

SUCCESS_STATE, FAILURE_STATE = "<success>", "<failure>"  # never an interpretation key (no '|')

COUNTS = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("key1", pa.string(), nullable=False),
        pa.field("key2", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("defects", pa.int64(), nullable=False),
    ]
)
_KEYS = ["kind", "key1", "key2"]


def session_counts(sessions: pa.Table) -> pa.Table:
    """Partial counts (``COUNTS``) of a batch of whole sessions; only ``mined_sessions``
    reach the chain, pair and utterance counts (every session reaches the stats)."""
    stats = session_stats(sessions).as_dict()
    sessions = mined_sessions(sessions)
    stats_rows = pa.table({"kind": ["session"] * len(stats), "key1": list(stats), "key2": [""] * len(stats),
                           "count": list(stats.values()), "defects": [0] * len(stats)}, schema=COUNTS)
    if pc.sum(pc.list_value_length(sessions.column("utterances"))).as_py() in (None, 0):
        return reduce_counts(stats_rows)
    utt = pc.list_flatten(sessions.column("utterances")).combine_chunks()
    interp = pc.list_flatten(sessions.column("interpretations")).combine_chunks()
    defects = pc.list_flatten(sessions.column("defects")).combine_chunks()
    parent = pc.list_parent_indices(sessions.column("interpretations")).to_numpy()
    n = len(interp)
    is_last = np.ones(n, dtype=bool)
    is_last[:-1] = parent[1:] != parent[:-1]
    failed = (sessions.column("outcome").to_numpy(zero_copy_only=False) == FAILURE)[parent]
    nxt_idx = np.minimum(np.arange(n) + 1, n - 1)
    absorbing = pa.array(np.where(failed, FAILURE_STATE, SUCCESS_STATE))
    nxt = pc.if_else(pa.array(is_last), absorbing, interp.take(pa.array(nxt_idx)))
    ones = pa.array(np.ones(n, dtype=np.int64))
    zeros = pa.array(np.zeros(n, dtype=np.int64))
    parts = [
        pa.table({"kind": pa.array(["transition"] * n), "key1": interp, "key2": nxt, "count": ones, "defects": zeros}),
        pa.table({"kind": pa.array(["pair"] * n), "key1": utt, "key2": interp, "count": ones, "defects": zeros}),
        pa.table({"kind": pa.array(["utterance"] * n), "key1": utt, "key2": pa.array([""] * n),
                  "count": ones, "defects": defects.cast(pa.int64())}),
    ]
    return reduce_counts(pa.concat_tables([stats_rows.cast(parts[0].schema)] + parts))


def reduce_counts(partials: pa.Table | list[pa.Table]) -> pa.Table:
    """Sum partial ``COUNTS`` tables by (kind, key1, key2); rows sorted by the keys."""
    table = pa.concat_tables(partials) if isinstance(partials, list) else partials
    if table.num_rows == 0:
        return COUNTS.empty_table()
    summed = table.group_by(_KEYS).aggregate([("count", "sum"), ("defects", "sum")])
    summed = summed.select(_KEYS + ["count_sum", "defects_sum"]).rename_columns(COUNTS.names).cast(COUNTS)
    return summed.take(pc.sort_indices(summed, sort_keys=[(k, "ascending") for k in _KEYS]))


def of_kind(counts: pa.Table, kind: str) -> pa.Table:
    """The rows of one ``kind``."""
    return counts.filter(pc.equal(counts.column("kind"), kind))


def stats_of(counts: pa.Table) -> SessionStats:
    """The ``SessionStats`` summed into a COUNTS table."""
    rows = of_kind(counts, "session")
    values = dict(zip(rows.column("key1").to_pylist(), rows.column("count").to_pylist()))
    return SessionStats(**{k: int(values.get(k, 0)) for k in SessionStats.__dataclass_fields__})
