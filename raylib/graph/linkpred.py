"""Link prediction on the held-out 20% of the edges (seed 000, section 4.2.1), scored the
same way for every model: each held-out edge ``(u, s, utt)`` against the same ``K`` sampled
negative skills (drawn once, with a fixed seed, among the skills ``u`` has no edge to,
training or held-out), by the model's link score ``<h_p(u, utt), h_s>`` of section 2
computed from the training graph only.

A held-out edge whose customer-skill pair also has a training edge (a repeat use) is far
easier than a new pair, so the metrics are reported over all held-out edges and over the
new pairs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raylib.graph.data import GraphData
from raylib.graph.models import personalized
from raylib.graph.objective import inner_product_scores


def ranking_metrics(positive: np.ndarray, negative: np.ndarray, hits_at: int = 10) -> dict[str, float]:
    """AUC, MRR and Hits@``hits_at`` of ``positive`` scores ``[N]`` against their own
    ``negative`` scores ``[N, K]``, ties counted half:

        AUC     = mean_{i,k} (1[p_i > n_ik] + 1/2 1[p_i = n_ik])
        rank_i  = 1 + #{k : n_ik > p_i} + 1/2 #{k : n_ik = p_i}
        MRR     = mean_i 1 / rank_i
        Hits@10 = mean_i 1[rank_i <= 10]
    """
    p = positive[:, None]
    above, tied = (negative > p).sum(1), (negative == p).sum(1)
    rank = 1.0 + above + 0.5 * tied
    k = negative.shape[1]
    return {"auc": float(np.mean((k - above - 0.5 * tied) / k)), "mrr": float(np.mean(1.0 / rank)),
            f"hits@{hits_at}": float(np.mean(rank <= hits_at)), "edges": int(len(positive))}


@dataclass
class LinkTestSet:
    """Held-out edges, their negative skills ``[N, K]`` and whether each edge's customer-skill
    pair also has a training edge (``seen_pair``)."""

    edges: np.ndarray
    negatives: np.ndarray
    seen_pair: np.ndarray

    @classmethod
    def of(cls, data: GraphData, negatives: int = 100, seed: int = 0) -> "LinkTestSet":
        """The held-out edges of ``data`` with ``negatives`` skills each, drawn uniformly
        (seeded) among the customer's non-edges; an edge whose customer is connected to
        every skill has no negative and is left out."""
        edges = data.heldout_edges
        neg = data.non_edges.sample(data.edge_customer[edges], negatives, np.random.default_rng(seed))
        keep = neg[:, 0] >= 0
        edges, neg = edges[keep], neg[keep]
        s = data.num_skills
        train_keys = np.unique(data.edge_customer[data.train_edges] * s + data.edge_skill[data.train_edges])
        return cls(edges, neg, np.isin(data.edge_customer[edges] * s + data.edge_skill[edges], train_keys))


@torch.no_grad()
def link_scores(model: nn.Module, data: GraphData, test: LinkTestSet, personalize: bool = True,
                chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``(positive [N], negative [N, K])`` link scores of ``model`` on ``test``, from the
    full-graph embeddings of the training graph (each edge personalized with its own
    utterance when the model has the personalizer; ``personalize`` False: the customer
    embedding ``h_u`` itself, as the store's "customers" table holds it)."""
    model.eval()
    hc, hs = model.embed(data)
    e = test.edges
    hp = (personalized(model, hc, data.edge_customer[e], data.edge_utterance[e], data.utterance_vectors)
          if personalize else hc[torch.as_tensor(data.edge_customer[e], device=hc.device)])
    skill, negatives = (torch.as_tensor(a, device=hs.device) for a in (data.edge_skill[e], test.negatives))
    scores = [inner_product_scores(hp[lo:lo + chunk], hs[skill[lo:lo + chunk]], hs[negatives[lo:lo + chunk]])
              for lo in range(0, len(e), chunk)]  # chunks bound the [chunk, K, d] negative embeddings
    return tuple(torch.cat(part).cpu().numpy() for part in zip(*scores))


POPULARITY = "Skill popularity (reference)"


def popularity_scores(data: GraphData, test: LinkTestSet) -> tuple[np.ndarray, np.ndarray]:
    """The no-learning reference: a skill's score is its number of training edges."""
    degree = np.bincount(data.edge_skill[data.train_edges], minlength=data.num_skills).astype(np.float64)
    return degree[data.edge_skill[test.edges]], degree[test.negatives]


def link_prediction(positive: np.ndarray, negative: np.ndarray, test: LinkTestSet) -> dict[str, dict]:
    """:func:`ranking_metrics` over all held-out edges and over the new pairs alone (None
    when every held-out pair also has a training edge)."""
    new = ~test.seen_pair
    return {"all": ranking_metrics(positive, negative),
            "new_pairs": ranking_metrics(positive[new], negative[new]) if new.any() else None}
