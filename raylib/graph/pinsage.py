"""PinSage (Ying et al., KDD 2018), the baseline of seed 000 Table 3: neighbours chosen by
random-walk importance and an importance-pooled convolution.

A walk from a node of one type hops to a node of the other type and back (customer ->
skill -> customer ...); the ``T`` same-type nodes it visits most often are the node's
neighbours, weighted by their normalised visit counts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def importance_neighbours(
    own_csr: tuple[np.ndarray, np.ndarray],
    other_csr: tuple[np.ndarray, np.ndarray],
    own_of_edge: np.ndarray,
    other_of_edge: np.ndarray,
    top: int = 10,
    walks: int = 20,
    hops: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top`` random-walk neighbours of every node of one type.

    ``own_csr``/``other_csr`` are ``(indptr, edge ids)`` of the two node types and
    ``own_of_edge``/``other_of_edge`` the endpoint of each edge. From every node,
    ``walks`` walks of ``hops`` round trips; returns ``(neighbours [n, top], weights
    [n, top])`` where weights are visit counts / total visits (0 for padding, which
    points at the node itself)."""
    rng = np.random.default_rng(seed)
    indptr, edges = own_csr
    o_indptr, o_edges = other_csr
    n = len(indptr) - 1
    start = np.repeat(np.arange(n, dtype=np.int64), walks)
    start = start[(indptr[start + 1] - indptr[start]) > 0]
    node = start.copy()
    visits_from, visits_to = [], []
    for _ in range(hops):
        deg = indptr[node + 1] - indptr[node]
        other = other_of_edge[edges[indptr[node] + (rng.random(len(node)) * deg).astype(np.int64)]]
        o_deg = o_indptr[other + 1] - o_indptr[other]
        node = own_of_edge[o_edges[o_indptr[other] + (rng.random(len(other)) * o_deg).astype(np.int64)]]
        keep = node != start
        visits_from.append(start[keep])
        visits_to.append(node[keep])
    keys, counts = np.unique(np.concatenate(visits_from) * n + np.concatenate(visits_to), return_counts=True)
    src, dst = keys // n, keys % n
    order = np.lexsort((-counts, src))
    src, dst, counts = src[order], dst[order], counts[order]
    rank = np.arange(len(src)) - np.searchsorted(src, src)
    keep = rank < top
    neighbours = np.repeat(np.arange(n, dtype=np.int64)[:, None], top, axis=1)
    weights = np.zeros((n, top), dtype=np.float32)
    neighbours[src[keep], rank[keep]] = dst[keep]
    weights[src[keep], rank[keep]] = counts[keep]
    weights /= np.maximum(weights.sum(1, keepdims=True), 1.0)
    return neighbours, weights


class PinSageConv(nn.Module):
    """One PinSage convolution (Algorithm 1 of Ying et al.):

        n_u = sum_v w_uv ReLU(Q h_v + q)           (importance pooling, w = visit weights)
        z_u = normalize(ReLU(W [h_u || n_u] + w))
    """

    def __init__(self, dim: int):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.w = nn.Linear(2 * dim, dim)

    def forward(self, h: Tensor, neighbours: Tensor, weights: Tensor) -> Tensor:
        pooled = (torch.relu(self.q(h))[neighbours] * weights.unsqueeze(-1)).sum(1)
        return nn.functional.normalize(torch.relu(self.w(torch.cat([h, pooled], -1))), dim=-1)


def output_head(dim: int) -> nn.Module:
    """The dense output layers after the last convolution (Algorithm 2 of Ying et al.):

        z_u = G_2 ReLU(G_1 h_u + g)

    Without it the embedding is the last convolution's ``normalize(ReLU(.))`` output: a
    non-negative unit vector whose coordinates are mostly dead (measured: 97 of 128 with
    a training deviation below 1e-3 for revised PinSage), which the downstream
    classifiers' standardisation blows up into outliers."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim, bias=False))
