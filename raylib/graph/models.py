"""PDRFE (seed 000, section 3) with switchable modules, and the graph baselines of Table 3.

Every model here trains on the same link-prediction objective and shares one interface:

- ``make_batch(data, edges, rng, negatives, non_edges)`` -> dict of numpy arrays for a
  batch of training edges (numpy side, so it can run before tensors move to the device),
  its negatives drawn from ``non_edges`` (None: ``data.non_edges``, uniform);
- ``forward(**batch)`` -> ``(positive scores [B], negative scores [B, K])``: the inner
  products ``<h_u, h_s>`` of section 2 (``h_u`` personalized by Eq. 5 when enabled);
- ``embed(data)`` -> ``(customer [U, d], skill [S, d])`` final embeddings of every node;
- ``personalize(h_customer, utterance)`` -> per-edge customer embedding (with the
  personalizer: ``f_p([h_u || utt])`` of Eq. 5; with the concatenating variant
  ``[f_p([h_u || utt]) || utt]``, of which the first ``d`` coordinates score).

A batch's own edges carry no messages into their scores (``sample_subgraph(exclude=)``), and
negatives are drawn among the skills a customer has no edge to at all, held-out edges
included (:class:`~raylib.graph.sampler.NonEdges`), uniformly or by skill popularity
(``GraphData.negative_sampler``).

Variants (Table 4): ``RGCN`` is the backbone; ``EC`` adds the edge convolution of Eq. 1
(``nnconv``, or ``factorized``); ``EAtt`` adds edge attention (Eq. 2-4); ``Per`` adds the
personalizer (Eq. 5). PDRFE (w/ NNConv) = EC+Per, PDRFE (w/ edge attention) = EAtt+Per. The named
variant "PDRFE (w/ edge attention, utterance kept)" concatenates the utterance to the
personalized embedding (same training; its embedding carries the raw utterance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn import RGCNConv

from raylib.graph.data import GraphData
from raylib.graph.layers import EdgeAttention, EdgeConv, FactorizedEdgeConv, Personalizer
from raylib.graph.objective import inner_product_scores
from raylib.graph.pinsage import PinSageConv, output_head
from raylib.graph.sampler import NonEdges, sample_subgraph

CONVS = {"nnconv": EdgeConv, "factorized": FactorizedEdgeConv}


@dataclass(frozen=True)
class ModelSpec:
    """One row of the comparison: a model family and its switches."""

    family: str  # "pdrfe" | "pinsage"
    conv: str = "rgcn"  # rgcn | nnconv | factorized  (pdrfe)
    attention: bool = False
    personalizer: bool = False
    keep_utterance: bool = False  # personalizer in concatenating form: [f_p(...) || utt]
    both_types: bool = False  # pinsage: also convolve skills (revised PinSage)


# Table 5 rows and the Table 4 ablation references, by display name.
SPECS: dict[str, ModelSpec] = {
    "PinSage": ModelSpec("pinsage"),
    "Revised PinSage": ModelSpec("pinsage", both_types=True),
    "RGCN": ModelSpec("pdrfe"),
    "EC": ModelSpec("pdrfe", conv="nnconv"),
    "EAtt": ModelSpec("pdrfe", attention=True),
    "Per": ModelSpec("pdrfe", personalizer=True),
    "PDRFE (w/ NNConv)": ModelSpec("pdrfe", conv="nnconv", personalizer=True),
    "PDRFE (w/ edge attention)": ModelSpec("pdrfe", attention=True, personalizer=True),
    "PDRFE (w/ factorized conv)": ModelSpec("pdrfe", conv="factorized", personalizer=True),
    "PDRFE (w/ edge attention, utterance kept)": ModelSpec("pdrfe", attention=True, personalizer=True,
                                                           keep_utterance=True),
}
BASELINES = ("PinSage", "Revised PinSage", "Raw one-hot", "RGCN")


def build_model(spec: ModelSpec, data: GraphData, dim: int = 64, layers: int = 2,
                fanouts: tuple[int, ...] = (10, 5)) -> nn.Module:
    if spec.family == "pinsage":
        return PinSage(data, dim, layers, spec.both_types)
    return PDRFE(data.num_codes, data.utterance_dim, dim, layers, spec.conv, spec.attention, spec.personalizer,
                 fanouts=fanouts, keep_utterance=spec.keep_utterance)


def training_triples(data: GraphData, edges: np.ndarray, rng: np.random.Generator, negatives: int,
                     non_edges: NonEdges | None = None):
    """``(edges, customers, skills, negative skills [B, negatives])`` of a batch of training
    edges, the negatives drawn from ``non_edges`` (None: ``data.non_edges``); an edge whose
    customer is connected to every skill has no negative and is dropped."""
    sampler = data.non_edges if non_edges is None else non_edges
    neg = sampler.sample(data.edge_customer[edges], negatives, rng)
    keep = neg[:, 0] >= 0
    edges, neg = edges[keep], neg[keep]
    return edges, data.edge_customer[edges], data.edge_skill[edges], neg


class PDRFELayer(nn.Module):
    """One message-passing layer: the RGCN backbone (relations skill->customer and
    customer->skill, mean aggregation, root weight) plus the enabled edge modules."""

    def __init__(self, dim: int, edge_dim: int, conv: str, attention: bool):
        super().__init__()
        self.backbone = RGCNConv(dim, dim, num_relations=2, aggr="mean")
        self.edge_conv = CONVS[conv](dim, edge_dim) if conv in CONVS else None
        self.attention = EdgeAttention(dim, edge_dim) if attention else None

    def forward(self, x, edge_index: Tensor, rel: Tensor, edge_attr: Tensor) -> Tensor:
        out = self.backbone(x, edge_index, rel)
        if self.edge_conv is not None:
            out = out + self.edge_conv(x, edge_index, edge_attr)
        if self.attention is not None:
            out = out + self.attention(x, edge_index, edge_attr)
        return out


class PDRFE(nn.Module):
    """Node input = sum of the embeddings of the node's categorical metadata (Table 2),
    then ``layers`` :class:`PDRFELayer` (ReLU between), then the optional personalizer."""

    def __init__(self, num_codes: int, utterance_dim: int, dim: int = 64, layers: int = 2, conv: str = "rgcn",
                 attention: bool = False, personalizer: bool = False, fanouts: tuple[int, ...] = (10, 5),
                 keep_utterance: bool = False):
        super().__init__()
        self.input = nn.Embedding(num_codes, dim)
        self.layers = nn.ModuleList(PDRFELayer(dim, utterance_dim, conv, attention) for _ in range(layers))
        self.personalizer = Personalizer(dim, utterance_dim, keep_utterance=keep_utterance) if personalizer else None
        self.fanouts = list(fanouts)[:layers] + [fanouts[-1]] * max(0, layers - len(fanouts))

    def make_batch(self, data: GraphData, edges: np.ndarray, rng: np.random.Generator, negatives: int = 5,
                   non_edges: NonEdges | None = None) -> dict:
        u = data.num_customers
        edges, cust, skill, neg = training_triples(data, edges, rng, negatives, non_edges)
        sub = sample_subgraph(data.message, np.concatenate([cust, skill + u, neg.ravel() + u]), self.fanouts, rng,
                              exclude=edges)
        return {
            "codes": data.node_codes[sub.nodes],
            "edge_index": sub.edge_index,
            "rel": sub.rel.astype(np.int64),
            "edge_attr": data.utterance_vectors[data.edge_utterance[sub.eid]],
            "utterance": data.utterance_vectors[data.edge_utterance[edges]],
            "customer": sub.local(cust),
            "positive": sub.local(skill + u),
            "negative": sub.local(neg + u),
        }

    def encode(self, codes: Tensor, edge_index: Tensor, rel: Tensor, edge_attr: Tensor) -> Tensor:
        h = self.input(codes).sum(1)
        for k, layer in enumerate(self.layers):
            h = layer(h, edge_index, rel, edge_attr)
            if k < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    def personalize(self, h_customer: Tensor, utterance: Tensor) -> Tensor:
        return h_customer if self.personalizer is None else self.personalizer(h_customer, utterance)

    def forward(self, codes, edge_index, rel, edge_attr, utterance, customer, positive, negative):
        h = self.encode(codes, edge_index, rel, edge_attr)
        return inner_product_scores(self.personalize(h[customer], utterance), h[positive], h[negative])

    @torch.no_grad()
    def embed(self, data: GraphData, edge_budget: int = 16384) -> tuple[Tensor, Tensor]:
        """Exact full-graph embeddings, layer by layer, in chunks of target nodes whose
        incoming edges number about ``edge_budget`` (every edge of a target in one chunk,
        so the attention softmax stays exact)."""
        device = self.input.weight.device
        mg = data.message
        h = self.input(torch.as_tensor(data.node_codes, device=device)).sum(1)
        bounds = _chunks(mg.indptr, edge_budget)
        for k, layer in enumerate(self.layers):
            out = torch.empty_like(h)
            for a, b in zip(bounds[:-1], bounds[1:]):
                lo, hi = mg.indptr[a], mg.indptr[b]
                dst = np.repeat(np.arange(b - a), np.diff(mg.indptr[a : b + 1]))
                ei = torch.as_tensor(np.stack([mg.src[lo:hi], dst]), device=device)
                attr = torch.as_tensor(data.utterance_vectors[data.edge_utterance[mg.eid[lo:hi]]], device=device)
                rel = torch.as_tensor(mg.rel[lo:hi].astype(np.int64), device=device)
                out[a:b] = layer((h, h[a:b]), ei, rel, attr)
            h = torch.relu(out) if k < len(self.layers) - 1 else out
        return h[: data.num_customers], h[data.num_customers :]


@torch.no_grad()
def personalized(model: nn.Module, h_customer: Tensor, customers: np.ndarray, utterances: np.ndarray,
                 utterance_vectors: np.ndarray, chunk: int = 65536) -> Tensor:
    """``model.personalize`` of customer ``customers[i]`` with utterance ``utterances[i]``
    for every i, in chunks (``h_customer``: the customer embeddings of ``embed``)."""
    device = h_customer.device
    return torch.cat([model.personalize(h_customer[torch.as_tensor(customers[lo:lo + chunk], device=device)],
                                        torch.as_tensor(utterance_vectors[utterances[lo:lo + chunk]], device=device))
                      for lo in range(0, len(customers), chunk)])


def _chunks(indptr: np.ndarray, budget: int) -> list[int]:
    """Node boundaries ``[0, ..., n]`` so that each chunk holds about ``budget`` edges."""
    n = len(indptr) - 1
    marks = np.searchsorted(indptr, np.arange(budget, indptr[-1], budget), side="left")
    return sorted(set([0, n, *marks.tolist()]))


class PinSage(nn.Module):
    """PinSage baseline. ``both_types=False``: only customers are convolved (over their
    random-walk customer neighbours) and passed through the output head of Algorithm 2, a
    skill is its metadata embedding; ``True`` (revised PinSage): skills are convolved over
    their skill neighbours and get their own output head too."""

    def __init__(self, data: GraphData, dim: int = 64, layers: int = 2, both_types: bool = False):
        super().__init__()
        self.input = nn.Embedding(data.num_codes, dim)
        self.customer_convs = nn.ModuleList(PinSageConv(dim) for _ in range(layers))
        self.customer_head = output_head(dim)
        self.skill_convs = nn.ModuleList(PinSageConv(dim) for _ in range(layers)) if both_types else None
        self.skill_head = output_head(dim) if both_types else None
        self.num_customers = data.num_customers
        for name in ("node_codes", "customer_neighbours", "customer_weights", "skill_neighbours", "skill_weights"):
            self.register_buffer(name, torch.as_tensor(getattr(data, name)), persistent=False)

    def make_batch(self, data: GraphData, edges: np.ndarray, rng: np.random.Generator, negatives: int = 5,
                   non_edges: NonEdges | None = None) -> dict:
        _, cust, skill, neg = training_triples(data, edges, rng, negatives, non_edges)
        return {"customer": cust, "positive": skill, "negative": neg}

    def embed_all(self) -> tuple[Tensor, Tensor]:
        h = self.input(self.node_codes).sum(1)
        hc, hs = h[: self.num_customers], h[self.num_customers :]
        for conv in self.customer_convs:
            hc = conv(hc, self.customer_neighbours, self.customer_weights)
        for conv in self.skill_convs or []:
            hs = conv(hs, self.skill_neighbours, self.skill_weights)
        return self.customer_head(hc), hs if self.skill_head is None else self.skill_head(hs)

    def personalize(self, h_customer: Tensor, utterance: Tensor) -> Tensor:
        return h_customer

    def forward(self, customer, positive, negative):
        hc, hs = self.embed_all()
        return inner_product_scores(hc[customer], hs[positive], hs[negative])

    @torch.no_grad()
    def embed(self, data: GraphData) -> tuple[Tensor, Tensor]:
        return self.embed_all()
