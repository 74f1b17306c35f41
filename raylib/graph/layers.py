"""The layers of seed 000, section 3, one class per equation, on PyTorch Geometric.

Every convolution takes ``x`` as one tensor (a homogeneous sampled subgraph) or as a pair
``(x_src, x_dst)`` (bipartite, used by exact layer-wise inference in chunks of target
nodes), ``edge_index`` ``[2, E]`` (row 0 source, row 1 target) and per-edge utterance
vectors ``edge_attr`` ``[E, edge_dim]``. Parallel edges are simply several columns of
``edge_index`` with their own ``edge_attr``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing, NNConv
from torch_geometric.utils import softmax


def _pair(x: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return x if isinstance(x, tuple) else (x, x)


class EdgeConv(nn.Module):
    """Eq. 1, edge-conditioned convolution (NNConv of Gilmer et al.):

        h_i^{l+1} = h_i^l + mean_{j in N(i)} (W_e e_ij + b_e) h_j^l

    where ``W_e e_ij + b_e`` is reshaped to a ``dim x dim`` matrix per edge. Built on PyG
    ``NNConv`` (mean aggregation, no root weight, no bias) plus the identity residual.
    Costs ``O(E dim^2)`` memory: see :class:`FactorizedEdgeConv` for the scalable form."""

    def __init__(self, dim: int, edge_dim: int):
        super().__init__()
        self.conv = NNConv(dim, dim, nn.Linear(edge_dim, dim * dim), aggr="mean", root_weight=False, bias=False)

    def forward(self, x, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        return _pair(x)[1] + self.conv(x, edge_index, edge_attr)


class FactorizedEdgeConv(MessagePassing):
    """Eq. 1 with a diagonal edge transform, the variant that scales to 10^8 edges:

        h_i^{l+1} = h_i^l + mean_{j in N(i)} (W_e e_ij + b_e) ⊙ h_j^l

    ``W_e e_ij + b_e`` is a ``dim`` vector per edge (``O(E dim)`` instead of ``O(E dim^2)``)."""

    def __init__(self, dim: int, edge_dim: int):
        super().__init__(aggr="mean")
        self.edge_gate = nn.Linear(edge_dim, dim)

    def forward(self, x, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        x_src, x_dst = _pair(x)
        out = self.propagate(edge_index, x=(x_src, x_dst), gate=self.edge_gate(edge_attr),
                             size=(x_src.size(0), x_dst.size(0)))
        return x_dst + out

    def message(self, x_j: Tensor, gate: Tensor) -> Tensor:
        return gate * x_j


class EdgeAttention(MessagePassing):
    """Eq. 2-4, edge-based attention:

        h_i^{l+1} = sum_{j in N(i)} alpha_ij W^l h_j^l                            (2)
        alpha_ij  = softmax_j(k_ij)   over the incoming edges of i                 (3)
        k_ij      = LeakyReLU(a^T [W_a [h_i || e_ij] || W_a [h_j || e_ij]])         (4)

    The utterance ``e_ij`` enters both attention keys, so parallel edges with different
    utterances get different weights."""

    def __init__(self, dim: int, edge_dim: int, att_dim: int | None = None, negative_slope: float = 0.2):
        super().__init__(aggr="add", node_dim=0)
        att_dim = att_dim or dim
        self.w_a = nn.Linear(dim + edge_dim, att_dim, bias=False)
        self.a = nn.Parameter(torch.empty(2 * att_dim))
        self.w = nn.Linear(dim, dim, bias=False)
        self.negative_slope = negative_slope
        nn.init.normal_(self.a, std=att_dim ** -0.5)

    def attention_logits(self, h_i: Tensor, h_j: Tensor, edge_attr: Tensor) -> Tensor:
        """Eq. 4: ``k_ij`` for every edge."""
        q = torch.cat([self.w_a(torch.cat([h_i, edge_attr], -1)), self.w_a(torch.cat([h_j, edge_attr], -1))], -1)
        return nn.functional.leaky_relu(q @ self.a, self.negative_slope)

    def forward(self, x, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        x_src, x_dst = _pair(x)
        return self.propagate(edge_index, x=(x_src, x_dst), edge_attr=edge_attr, size=(x_src.size(0), x_dst.size(0)))

    def message(self, x_i: Tensor, x_j: Tensor, edge_attr: Tensor, index: Tensor, size_i: int) -> Tensor:
        alpha = softmax(self.attention_logits(x_i, x_j, edge_attr), index, num_nodes=size_i)  # Eq. 3
        return alpha.unsqueeze(-1) * self.w(x_j)  # Eq. 2


class Personalizer(nn.Module):
    """Eq. 5, the personalizer: a 2-layer network over the customer embedding and the
    utterance, ``h_p = f_p([h^L || utt]) = W_2 ReLU(W_1 [h^L || utt] + b_1) + b_2``, applied
    per edge, so a customer has one personalized embedding per utterance.

    ``keep_utterance=True`` is the concatenating variant ``h_p = [f_p([h^L || utt]) || utt]``:
    only the first ``dim`` coordinates enter the link score, so training is unchanged, but
    the embedding handed to downstream tasks carries the raw utterance (an input the fair
    downstream tables give every model or none)."""

    def __init__(self, dim: int, utterance_dim: int, hidden: int | None = None, keep_utterance: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + utterance_dim, hidden or dim), nn.ReLU(), nn.Linear(hidden or dim, dim))
        self.keep_utterance = keep_utterance

    def forward(self, h_customer: Tensor, utterance: Tensor) -> Tensor:
        out = self.net(torch.cat([h_customer, utterance], -1))
        return torch.cat([out, utterance], -1) if self.keep_utterance else out
