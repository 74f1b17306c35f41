"""The interpretation space H of seed 001 (Section 4.1, Eq. 5) as sparse matrices.

Utterances U and interpretations H are indexed in sorted order (so every execution
path numbers them alike). From the co-occurrence counts c(u, h):

    P(h | u) = c(u, h) / sum_h' c(u, h')        P(u | h) = c(u, h) / sum_u' c(u', h)   (Eq. 5)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class InterpretationSpace:
    """Indexed U and H with the count matrix ``c`` (|U| x |H|, CSR)."""

    utterances: np.ndarray  # object array of str, sorted
    interpretations: np.ndarray  # object array of str, sorted
    c: sp.csr_matrix

    def utterance_index(self, values) -> np.ndarray:
        """Indices of ``values`` in U (-1 where unknown)."""
        return _lookup(self.utterances, values)

    def interpretation_index(self, values) -> np.ndarray:
        """Indices of ``values`` in H (-1 where unknown)."""
        return _lookup(self.interpretations, values)


def _lookup(sorted_values: np.ndarray, values) -> np.ndarray:
    values = np.asarray(values, dtype=object)
    if len(sorted_values) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    pos = np.searchsorted(sorted_values, values)
    pos = np.minimum(pos, len(sorted_values) - 1)
    return np.where(sorted_values[pos] == values, pos, -1).astype(np.int64)


def build_space(utterances: np.ndarray, interpretations: np.ndarray, pair: np.ndarray) -> InterpretationSpace:
    """The space over the sorted ``utterances`` and the chain's sorted H from coded pair
    counts ``[n, 3]`` (u, h, c(u, h); ``raylib.rewrite.codes``)."""
    c = sp.csr_matrix((pair[:, 2].astype(np.float64), (pair[:, 0], pair[:, 1])),
                      shape=(len(utterances), len(interpretations)))
    return InterpretationSpace(utterances, interpretations, c)


def p_h_given_u(space: InterpretationSpace) -> sp.csr_matrix:
    """Eq. 5, left: rows are utterances, each row P(. | u) sums to one."""
    return _normalize_rows(space.c)


def p_u_given_h(space: InterpretationSpace) -> sp.csr_matrix:
    """Eq. 5, right: rows are interpretations (|H| x |U|), each row P(. | h) sums to one."""
    return _normalize_rows(space.c.T.tocsr())


def _normalize_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    totals = np.asarray(m.sum(axis=1)).ravel()
    inv = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    return sp.diags(inv) @ m
