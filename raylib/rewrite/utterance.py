"""Utterance-level rewrites (seed 001, Eq. 20) with sparse products.

    u_t* = argmax_{u_t} sum_{h_s} sum_{h_t} P(u_t | h_t) . Phi_inf(h_t | h_s) . P(h_s | u_s)   (Eq. 20)

In matrices: S = P(H|U) . P . P(U|H), with P(H|U) (|U| x |H|) and P(U|H) (|H| x |U|) from
Eq. 5 and P (|H| x |H|) holding the per-source results p^(s) (Eq. 17). A rewrite exists
only where the best target beats the source's own entry S[u_s, u_s] (the self-partition
carried over to U) and scores above zero (a source whose every path fails has none).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from raylib.rewrite.space import InterpretationSpace, p_h_given_u, p_u_given_h

CANDIDATES = pa.schema(
    [
        pa.field("source", pa.int64(), nullable=False),  # index into U
        pa.field("target", pa.int64(), nullable=False),  # index into U
        pa.field("score", pa.float64(), nullable=False),  # S[u_s, u_t*] (Eq. 20)
        pa.field("self_score", pa.float64(), nullable=False),  # S[u_s, u_s]
    ]
)


def success_matrix(results: pa.Table, n_states: int) -> sp.csr_matrix:
    """The sparse |H| x |H| matrix P with P[s, t] = p^(s)_t from per-source results."""
    return sp.csr_matrix(
        (results.column("p").to_numpy(), (results.column("source").to_numpy(), results.column("target").to_numpy())),
        shape=(n_states, n_states),
    )


def utterance_scores(space: InterpretationSpace, P: sp.csr_matrix, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """S = P(H|U) P P(U|H) (Eq. 20), restricted to source utterances ``rows`` (all if None)."""
    left = p_h_given_u(space)
    if rows is not None:
        left = left[rows]
    return (left @ P @ p_u_given_h(space)).tocsr()


def best_rewrites(space: InterpretationSpace, P: sp.csr_matrix, rows: np.ndarray | None = None) -> pa.Table:
    """Eq. 20's argmax per source utterance, kept where it beats the source's own score."""
    rows = np.arange(len(space.utterances)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return CANDIDATES.empty_table()
    S = utterance_scores(space, P, rows)
    S.eliminate_zeros()
    best = np.asarray(S.argmax(axis=1)).ravel()
    score = np.asarray(S[np.arange(len(rows)), best]).ravel()
    self_score = np.asarray(S[np.arange(len(rows)), rows]).ravel()
    keep = (score > self_score) & (score > 0) & (best != rows)
    return pa.table(
        {"source": rows[keep], "target": best[keep].astype(np.int64), "score": score[keep], "self_score": self_score[keep]},
        schema=CANDIDATES,
    )
