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


@dataclass
class NonEdges:
    """The skills each customer is NOT connected to (section 2's N^-(u)), for exact uniform
    sampling without rejection. From the sorted unique keys ``u * S + s`` of the customer's
    skills ``s_0 < s_1 < ...``, ``shifted = u * S + s_i - i`` is sorted too, and the r-th
    free skill of u is ``r + #{i : s_i - i <= r}``."""

    num_skills: int
    shifted: np.ndarray

    @classmethod
    def of(cls, customers: np.ndarray, skills: np.ndarray, num_skills: int) -> "NonEdges":
        keys = np.unique(customers.astype(np.int64) * num_skills + skills)
        first = np.searchsorted(keys, keys // num_skills * num_skills)
        return cls(num_skills, keys - (np.arange(len(keys)) - first))

    def count(self, customers: np.ndarray) -> np.ndarray:
        """Number of skills each customer is not connected to."""
        base = customers.astype(np.int64) * self.num_skills
        deg = np.searchsorted(self.shifted, base + self.num_skills) - np.searchsorted(self.shifted, base)
        return self.num_skills - deg

    def sample(self, customers: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """``[len(customers), k]`` skills drawn uniformly (with replacement) among those each
        customer is not connected to; -1 for a customer connected to every skill."""
        free = self.count(customers)[:, None]
        r = (rng.random((len(customers), k)) * free).astype(np.int64)
        base = customers.astype(np.int64)[:, None] * self.num_skills
        before = np.searchsorted(self.shifted, base + r, side="right") - np.searchsorted(self.shifted, base)
        return np.where(free > 0, r + before, -1)
