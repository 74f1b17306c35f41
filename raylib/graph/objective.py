"""The link-prediction objective of seed 000, section 2."""

from __future__ import annotations

import torch
from torch import Tensor


def max_margin_loss(positive: Tensor, negative: Tensor, margin: float = 1.0) -> Tensor:
    """Section 2, max-margin link prediction, averaged over the (positive, negative) pairs:

        L = mean_{u, s in N+(u), s' in N-(u)} max(M - <h_u, h_s> + <h_u, h_s'>, 0)

    ``positive`` ``[B]`` holds ``<h_u, h_s>`` of the training edges, ``negative`` ``[B, K]``
    the scores of their K noise skills."""
    return torch.clamp(margin - positive.unsqueeze(-1) + negative, min=0.0).mean()


def inner_product_scores(customer: Tensor, positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
    """Section 2's link score ``<h_u, h_s>``: ``(positive [B], negative [B, K])`` for customer
    embeddings ``[B, d']``, positive skills ``[B, d]`` and negative skills ``[B, K, d]``. Only
    the first ``d`` customer coordinates score (the concatenating personalizer's utterance
    coordinates meet zeros on the skill side)."""
    h = customer[:, : positive.size(-1)]
    return (h * positive).sum(-1), torch.einsum("bd,bkd->bk", h, negative)
