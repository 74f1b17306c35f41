"""Vectorized neighbour sampling on a CSR :class:`~raylib.graph.build.MessageGraph` and
negative skill sampling for the link-prediction objective (seed 000, section 2).

PyG's ``NeighborLoader`` needs ``pyg-lib``/``torch-sparse`` (not on PyPI for current
torch), so this is a small numpy sampler with the same contract: seeds, one fan-out per
layer, and a relabelled subgraph whose first nodes are the seeds' positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raylib.graph.build import MessageGraph


def sample_positions(indptr: np.ndarray, nodes: np.ndarray, fanout: int, rng: np.random.Generator) -> np.ndarray:
    """CSR positions of up to ``fanout`` incoming edges of every node in ``nodes``: all of
    them when a node has at most ``fanout``, else ``fanout`` uniform draws with replacement.
    ``fanout < 0`` takes every edge."""
    start, deg = indptr[nodes], indptr[nodes + 1] - indptr[nodes]
    take_all = deg <= fanout if fanout >= 0 else np.ones(len(nodes), bool)
    s_all, d_all = start[take_all], deg[take_all]
    total = int(d_all.sum())
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(d_all) - d_all, d_all)
    every = np.repeat(s_all, d_all) + offsets
    s_few, d_few = start[~take_all], deg[~take_all]
    drawn = s_few[:, None] + (rng.random((len(s_few), max(fanout, 0))) * d_few[:, None]).astype(np.int64)
    return np.concatenate([every, drawn.reshape(-1)])


@dataclass
class Subgraph:
    """A sampled subgraph: ``nodes`` (global ids, sorted), local ``edge_index`` [2, E]
    (source, target), interaction edge ids ``eid`` and relations ``rel`` of its edges."""

    nodes: np.ndarray
    edge_index: np.ndarray
    eid: np.ndarray
    rel: np.ndarray

    def local(self, global_ids: np.ndarray) -> np.ndarray:
        """Local index of nodes given by global id (they must be in the subgraph)."""
        return np.searchsorted(self.nodes, global_ids)


def sample_subgraph(graph: MessageGraph, seeds: np.ndarray, fanouts: list[int], rng: np.random.Generator,
                    exclude: np.ndarray | None = None) -> Subgraph:
    """The ``len(fanouts)``-hop sampled neighbourhood of ``seeds``; hop k expands the nodes
    first reached at hop k-1 with ``fanouts[k]`` edges each. Message edges of the
    interaction edges ``exclude`` (a batch's own training edges) are left out, so an edge
    never carries messages into its own score."""
    frontier = np.unique(seeds)
    seen = frontier
    positions = []
    for fanout in fanouts:
        pos = sample_positions(graph.indptr, frontier, fanout, rng)
        if exclude is not None:
            pos = pos[~np.isin(graph.eid[pos], exclude)]
        positions.append(pos)
        new = np.unique(graph.src[pos])
        frontier = new[~np.isin(new, seen, assume_unique=True)]
        seen = np.union1d(seen, frontier)
    pos = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    dst = np.searchsorted(graph.indptr, pos, side="right") - 1
    nodes = seen
    edge_index = np.stack([np.searchsorted(nodes, graph.src[pos]), np.searchsorted(nodes, dst)])
    return Subgraph(nodes, edge_index, graph.eid[pos], graph.rel[pos])


MAX_MASS = 2**62  # bound on (customers + 1) * total skill weight: every coordinate stays an int64


def integer_weights(weights: np.ndarray, num_customers: int) -> np.ndarray:
    """Skill weights as positive integers proportional to ``weights`` (all > 0), scaled so
    that ``(num_customers + 1) * sum`` stays below ``MAX_MASS``: the largest weight becomes
    ``Q = MAX_MASS // ((num_customers + 1) * S)``, every other ``max(1, round(w / max w * Q))``
    (relative error <= 1 / (2 * its integer weight)); equal weights give exactly 1 each."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) and np.all(weights == weights[0]):
        return np.ones(len(weights), np.int64)
    q = MAX_MASS // ((num_customers + 1) * len(weights))
    return np.maximum(1, np.rint(weights / weights.max() * q)).astype(np.int64)


def popularity_weights(degree: np.ndarray, alpha: float) -> np.ndarray:
    """Negative-sampling weight of each skill, ``(degree + 1) ** alpha`` (word2vec's unigram
    ``count ** 0.75`` with alpha = 0.75; the + 1 keeps a skill without training edges
    drawable, and alpha = 0 is uniform)."""
    return (np.asarray(degree, dtype=np.float64) + 1.0) ** alpha


@dataclass
class NonEdges:
    """The skills each customer is NOT connected to (section 2's N^-(u)), for exact
    sampling without rejection, uniformly or with probability proportional to integer
    skill weights ``w`` (uniform: all 1).

    Lay the skills on a line, skill s occupying ``[C(s), C(s) + w_s)`` with ``C`` the
    prefix sums of ``w``; removing a customer's skills ``s_0 < s_1 < ...`` leaves its
    free line of length ``F_u = C(S) - sum_i w_{s_i}``. Edge i sits at free coordinate
    ``C(s_i) - R_i`` (``R_i = sum_{j<i} w_{s_j}``, non-decreasing in i), stored in
    ``shifted`` as ``u * C(S) + C(s_i) - R_i`` so that one sorted array serves every
    customer, with ``removed = R_i + w_{s_i}``. A free coordinate ``r in [0, F_u)`` lies
    past exactly the edges with ``shifted <= u * C(S) + r``; with ``j`` of them it is the
    skill at line coordinate ``r + R_j``. With unit weights this is ``r + #{i : s_i - i <= r}``,
    the r-th free skill."""

    cumulative: np.ndarray  # [S + 1] prefix sums of the integer skill weights
    shifted: np.ndarray
    removed: np.ndarray

    @classmethod
    def of(cls, customers: np.ndarray, skills: np.ndarray, num_skills: int,
           weights: np.ndarray | None = None) -> "NonEdges":
        """Non-edges of the customer-skill pairs ``(customers[i], skills[i])`` (repeats
        allowed); ``weights`` (positive integers, ``integer_weights``) None: uniform."""
        w = np.ones(num_skills, np.int64) if weights is None else np.asarray(weights, np.int64)
        cumulative = np.concatenate([[0], np.cumsum(w)])
        keys = np.unique(customers.astype(np.int64) * num_skills + skills)
        u, s = keys // num_skills, keys % num_skills
        first = np.searchsorted(keys, u * num_skills)
        through = np.cumsum(w[s])  # weight of the edges up to and including each, over all customers
        removed = through - np.concatenate([[0], through])[first]
        return cls(cumulative, u * cumulative[-1] + cumulative[s] - (removed - w[s]), removed)

    @property
    def num_skills(self) -> int:
        return len(self.cumulative) - 1

    def _edges(self, customers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(base, lo, hi)`` of each customer: its offset ``u * C(S)`` in ``shifted`` and
        the range ``[lo, hi)`` of its edges there."""
        total = self.cumulative[-1]
        base = customers.astype(np.int64) * total
        return base, np.searchsorted(self.shifted, base), np.searchsorted(self.shifted, base + total)

    def count(self, customers: np.ndarray) -> np.ndarray:
        """Number of skills each customer is not connected to."""
        _, lo, hi = self._edges(customers)
        return self.num_skills - (hi - lo)

    def sample(self, customers: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """``[len(customers), k]`` skills drawn (with replacement) among those each customer
        is not connected to, with probability proportional to their weights; -1 for a
        customer connected to every skill."""
        base, lo, hi = self._edges(customers)
        free = self.cumulative[-1] - np.where(hi > lo, self.removed[np.maximum(hi - 1, 0)], 0)  # F_u
        r = (rng.random((len(customers), k)) * free[:, None]).astype(np.int64)
        past = np.searchsorted(self.shifted, base[:, None] + r, side="right")
        line = r + np.where(past > lo[:, None], self.removed[np.maximum(past - 1, 0)], 0)
        skill = np.searchsorted(self.cumulative, line, side="right") - 1
        return np.where(free[:, None] > 0, skill, -1)
