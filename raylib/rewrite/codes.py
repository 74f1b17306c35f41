"""Count tables with their strings replaced by integer codes: what the model is built from.

A ``COUNTS`` table names states and utterances by their strings (~150 B a transition). The
model only needs their indices in the sorted interpretations H (the chain's states) and the
sorted utterances U (the space's rows), so both mining paths encode the counts first
(``code_counts``) and build the chain and the space from the codes. The Ray path encodes
on the workers, against one ``Dictionary`` made there too, so only integer triplets
(24 B a row) and the dictionary (one string per state and utterance) reach the driver.
Encoding runs in Arrow (``pc.index_in``): no Python string is made per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.rewrite.counts import COUNTS, FAILURE_STATE, SUCCESS_STATE, of_kind, stats_of
from raylib.rewrite.sessions import SessionStats

SUCCESS_CODE, FAILURE_CODE = -1, -2  # the absorbing states r+ and r- as the next state of a transition


def sorted_unique(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The distinct strings of ``values`` in sorted order (byte order of UTF-8, which is code
    point order: the order ``np.unique`` gives the same strings as Python objects)."""
    unique = pc.unique(values)
    return unique.take(pc.array_sort_indices(unique))


def encode(values: pa.ChunkedArray | pa.Array, sorted_values: pa.Array) -> np.ndarray:
    """The index of each of ``values`` in ``sorted_values`` (-1 where absent)."""
    codes = pc.fill_null(pc.index_in(values, value_set=sorted_values), -1)
    return codes.to_numpy(zero_copy_only=False).astype(np.int64) if len(values) else np.zeros(0, np.int64)


def as_objects(values: pa.Array) -> np.ndarray:
    """An Arrow string array as a numpy object array (the index of H or U)."""
    return np.asarray(values.to_pylist() + [None], dtype=object)[:-1]  # the None keeps it 1-d


@dataclass(frozen=True)
class Dictionary:
    """The sorted states H (sources of the transitions) and utterances U (sources of the
    (utterance, interpretation) pairs) of a count table."""

    states: pa.Array
    utterances: pa.Array

    @classmethod
    def of(cls, counts: pa.Table) -> "Dictionary":
        return cls(sorted_unique(of_kind(counts, "transition").column("key1")),
                   sorted_unique(of_kind(counts, "pair").column("key1")))


def _triplets(*columns: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(c, dtype=np.int64) for c in columns], axis=1).reshape(-1, len(columns))


@dataclass(frozen=True)
class Codes:
    """A count table as codes into a ``Dictionary`` (int64 rows):

    * ``transition`` [n, 3]: h_i, the next state (a state's code, ``SUCCESS_CODE`` or
      ``FAILURE_CODE``), c(h_i, v) (Eq. 7);
    * ``pair`` [n, 3]: u, h, c(u, h) (Eq. 5);
    * ``utterance`` [n, 3]: u, times said, times that turn was a defect;

    and the ``SessionStats`` summed into the table."""

    transition: np.ndarray
    pair: np.ndarray
    utterance: np.ndarray
    stats: SessionStats

    @classmethod
    def concat(cls, parts: list["Codes"]) -> "Codes":
        """Codes of count tables that share one dictionary and no (kind, key1, key2) key."""
        if not parts:
            return code_counts(COUNTS.empty_table(), Dictionary.of(COUNTS.empty_table()))
        stats = {k: sum(getattr(p.stats, k) for p in parts) for k in SessionStats.__dataclass_fields__}
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("transition", "pair", "utterance")),
                   SessionStats(**stats))


def code_counts(counts: pa.Table, dictionary: Dictionary) -> Codes:
    """``counts`` (``COUNTS``) as ``Codes`` into ``dictionary``. Raises when a transition
    leads to, or a pair names, a state outside the dictionary."""
    t, p, u = (of_kind(counts, kind) for kind in ("transition", "pair", "utterance"))
    nxt = t.column("key2")
    to_success = pc.equal(nxt, SUCCESS_STATE).to_numpy(zero_copy_only=False)
    to_failure = pc.equal(nxt, FAILURE_STATE).to_numpy(zero_copy_only=False)
    nxt_code = np.where(to_success, SUCCESS_CODE, np.where(to_failure, FAILURE_CODE, encode(nxt, dictionary.states)))
    pair_state = encode(p.column("key2"), dictionary.states)
    if (nxt_code == -1)[~to_success].any():
        raise ValueError("a transition leads to a state that never starts a transition")
    if (pair_state < 0).any():
        raise ValueError("an utterance's interpretation is missing from the chain's states")
    return Codes(
        _triplets(encode(t.column("key1"), dictionary.states), nxt_code, t.column("count").to_numpy()),
        _triplets(encode(p.column("key1"), dictionary.utterances), pair_state, p.column("count").to_numpy()),
        _triplets(encode(u.column("key1"), dictionary.utterances), u.column("count").to_numpy(),
                  u.column("defects").to_numpy()),
        stats_of(counts),
    )
