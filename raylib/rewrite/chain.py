"""The absorbing Markov chain of seed 001 (Section 4.2-4.4, Eq. 6-10, 15-17).

Transient states are the interpretations H; the two absorbing states are success r+ and
failure r-. From the transition counts c(h_i, v) of Eq. 7:

    Z_i = sum_{v in V} c(h_i, v)                                   (Eq. 6)
    P(h_j | h_i) = c(h_i, h_j) / Z_i                                (Eq. 8)
    P(r+ | h_i) = c(h_i, r+) / Z_i,  P(r- | h_i) = c(h_i, r-) / Z_i (Eq. 9)
    A = [[Q, R], [0, I_2]],  Q = [P(h_j|h_i)],  R = [r+, r-]        (Eq. 10)

``ExactSolver`` is the reference: N = (I - Q)^-1 (Eq. 16) through one sparse LU of
I - Q, and p^(s) = N_s o r+ (Eq. 17) by solving (I - Q)^T x = e_s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from raylib.rewrite.codes import SUCCESS_CODE, Dictionary, as_objects, code_counts


@dataclass(frozen=True)
class Chain:
    """Q (|H| x |H|, CSR) and R (|H| x 2, CSR: columns r+, r-) over sorted states."""

    states: np.ndarray  # interpretations, sorted
    Q: sp.csr_matrix
    R: sp.csr_matrix
    Z: np.ndarray  # Eq. 6, occurrences of each state followed by anything

    @property
    def r_plus(self) -> np.ndarray:
        return np.asarray(self.R[:, 0].todense()).ravel()

    @property
    def n_states(self) -> int:
        return len(self.states)


def build_chain(states: np.ndarray, transition: np.ndarray) -> Chain:
    """Eq. 6-10 over the sorted ``states`` from coded transition counts ``[n, 3]`` (h_i, next
    state or ``SUCCESS_CODE`` / ``FAILURE_CODE``, c(h_i, v); ``raylib.rewrite.codes``)."""
    n = len(states)
    i, j, counts = transition[:, 0], transition[:, 1], transition[:, 2].astype(np.float64)
    absorbing = j < 0
    C = sp.csr_matrix((counts[~absorbing], (i[~absorbing], j[~absorbing])), shape=(n, n))
    col = np.where(j[absorbing] == SUCCESS_CODE, 0, 1)
    A = sp.csr_matrix((counts[absorbing], (i[absorbing], col)), shape=(n, 2))
    Z = np.asarray(C.sum(axis=1)).ravel() + np.asarray(A.sum(axis=1)).ravel()  # Eq. 6
    inv = sp.diags(np.divide(1.0, Z, out=np.zeros_like(Z), where=Z > 0))
    Q = (inv @ C).tocsr()  # Eq. 8
    R = (inv @ A).tocsr()  # Eq. 9
    Q.sort_indices()
    return Chain(states=states, Q=Q, R=R, Z=Z)


def chain_from_counts(counts: pa.Table) -> Chain:
    """``build_chain`` from the ``transition`` rows of a COUNTS table."""
    dictionary = Dictionary.of(counts)
    return build_chain(as_objects(dictionary.states), code_counts(counts, dictionary).transition)


class ExactSolver:
    """Exact p^(s) (Eq. 15-17) from one sparse LU factorization of I - Q."""

    def __init__(self, chain: Chain):
        self.chain = chain
        self._r_plus = chain.r_plus
        eye = sp.identity(chain.n_states, format="csc")
        self._lu = spla.splu((eye - chain.Q).tocsc()) if chain.n_states else None

    def fundamental_row(self, s: int) -> np.ndarray:
        """N_s, row s of N = (I - Q)^-1 (Eq. 16): solves (I - Q)^T x = e_s."""
        e = np.zeros(self.chain.n_states)
        e[s] = 1.0
        return self._lu.solve(e, trans="T")

    def success_row(self, s: int) -> np.ndarray:
        """p^(s) = N_s o r+ (Eq. 17): Phi_inf(h_t) for every target t."""
        return self.fundamental_row(s) * self._r_plus


def success_matrix_dense(chain: Chain) -> np.ndarray:
    """P = (I - Q)^-1 R+_dg (Eq. 15-16) by a dense inverse; for tests on small chains."""
    n = chain.n_states
    N = np.linalg.inv(np.eye(n) - chain.Q.toarray())
    return N * chain.r_plus[None, :]
