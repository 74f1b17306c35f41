"""Everything a model trains on, as plain numpy arrays (cheap to put in the Ray object
store once and read zero-copy by every training worker)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raylib.graph.build import CustomerSkillGraph, MessageGraph, csr
from raylib.graph.pinsage import importance_neighbours
from raylib.graph.sampler import NonEdges, integer_weights, popularity_weights


@dataclass
class GraphData:
    """The training graph (80% of the edges) with node feature codes and utterance vectors.
    Message passing sees the training edges only; negative skills avoid every edge of the
    graph (held-out ones included), so no true edge is ever scored as a negative.

    ``node_codes[v]`` are the categorical codes of node v in the joint node space
    (customers first), offset so that all columns of both node types index one embedding
    table of ``num_codes`` rows."""

    num_customers: int
    num_skills: int
    node_codes: np.ndarray
    num_codes: int
    utterance_vectors: np.ndarray  # [unique utterances, utterance_dim] float32
    edge_customer: np.ndarray
    edge_skill: np.ndarray
    edge_utterance: np.ndarray
    train_edges: np.ndarray
    message: MessageGraph  # both directions of the training edges
    non_edges: NonEdges  # skills each customer has NO edge to, train or held-out: the negatives
    customer_neighbours: np.ndarray  # PinSage importance neighbours (customer -> customers)
    customer_weights: np.ndarray
    skill_neighbours: np.ndarray  # (skill -> skills)
    skill_weights: np.ndarray

    @property
    def num_nodes(self) -> int:
        return self.num_customers + self.num_skills

    @property
    def heldout_edges(self) -> np.ndarray:
        """The 20% of the edges outside the training graph (link-prediction test edges)."""
        return np.setdiff1d(np.arange(len(self.edge_customer)), self.train_edges)

    @property
    def utterance_dim(self) -> int:
        return self.utterance_vectors.shape[1]

    def negative_sampler(self, alpha: float) -> NonEdges:
        """The training negatives: the same non-edges as ``non_edges`` (every edge excluded,
        held-out ones included), drawn with probability proportional to
        ``(training degree + 1) ** alpha`` (``popularity_weights``); ``non_edges`` itself
        (uniform) when alpha is 0."""
        if alpha == 0:
            return self.non_edges
        degree = np.bincount(self.edge_skill[self.train_edges], minlength=self.num_skills)
        weights = integer_weights(popularity_weights(degree, alpha), self.num_customers)
        return NonEdges.of(self.edge_customer, self.edge_skill, self.num_skills, weights)

    @classmethod
    def from_graph(cls, graph: CustomerSkillGraph, utterance_vectors: np.ndarray, train_mask: np.ndarray,
                   pinsage_top: int = 10, seed: int = 0) -> "GraphData":
        c_card, s_card = graph.cardinalities()
        offsets = np.cumsum([0] + c_card + s_card)
        n_c = len(c_card)
        codes = np.zeros((graph.num_nodes, max(n_c, len(s_card))), dtype=np.int64)
        codes[: graph.num_customers, :n_c] = graph.customer_features + offsets[:n_c]
        codes[graph.num_customers :, : len(s_card)] = graph.skill_features + offsets[n_c:-1]
        train = np.flatnonzero(train_mask)
        cust, skill = graph.edge_customer[train], graph.edge_skill[train]
        c_csr = _csr_of(cust, train, graph.num_customers)
        s_csr = _csr_of(skill, train, graph.num_skills)
        c_nb, c_w = importance_neighbours(c_csr, s_csr, graph.edge_customer, graph.edge_skill, pinsage_top, seed=seed)
        s_nb, s_w = importance_neighbours(s_csr, c_csr, graph.edge_skill, graph.edge_customer, pinsage_top, seed=seed)
        return cls(
            num_customers=graph.num_customers,
            num_skills=graph.num_skills,
            node_codes=codes,
            num_codes=int(offsets[-1]),
            utterance_vectors=np.ascontiguousarray(utterance_vectors, dtype=np.float32),
            edge_customer=graph.edge_customer,
            edge_skill=graph.edge_skill,
            edge_utterance=graph.edge_utterance,
            train_edges=train,
            message=graph.message_graph(train),
            non_edges=NonEdges.of(graph.edge_customer, graph.edge_skill, graph.num_skills),
            customer_neighbours=c_nb,
            customer_weights=c_w,
            skill_neighbours=s_nb,
            skill_weights=s_w,
        )


def _csr_of(keys: np.ndarray, edge_ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the edges ``edge_ids`` (global ids) grouped by ``keys``."""
    indptr, order = csr(keys, n)
    return indptr, edge_ids[order]
