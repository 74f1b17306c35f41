"""Downstream evaluation of seed 000, sections 2 and 4.2.2: defect prediction.

Each interaction becomes one row ``[personalized customer embedding || skill embedding]``
(the customer embedding itself when a model has no personalizer, ``f_p([h_u || utt])`` of
Eq. 5 with it; raw one-hot metadata for the non-graph baseline). Every model is scored
twice with the same inputs beyond its embeddings: with the interaction's utterance vector
appended to the row of every model, and with it appended to none
(:func:`fair_cross_entropy`), so each table isolates what the representation adds. Rows
are split 6:2:2; a logistic regression and a 2-layer network (hidden 32, ReLU) are
trained on the train part with early stopping on the validation cross-entropy ("when
validation loss is stable", Table 6) and scored by

    CE = -1/|E_test| sum_e [y_e log p_e + (1 - y_e) log(1 - p_e)]

on the test part.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from raylib.graph.data import GraphData
from raylib.graph.models import personalized


@torch.no_grad()
def edge_features(model: nn.Module, data: GraphData, edges: np.ndarray | None = None) -> np.ndarray:
    """``[len(edges), width]``: personalized customer embedding (Eq. 5) and skill embedding of
    interaction edges ``edges`` (None: every edge, training and held-out alike); no
    utterance vector unless the model's embedding itself carries one (the concatenating
    personalizer)."""
    model.eval()
    edges = np.arange(len(data.edge_customer)) if edges is None else edges
    hc, hs = model.embed(data)
    hp = personalized(model, hc, data.edge_customer[edges], data.edge_utterance[edges], data.utterance_vectors)
    skill = torch.as_tensor(data.edge_skill[edges], device=hs.device)
    return torch.cat([hp, hs[skill]], -1).cpu().numpy().astype(np.float32)


def one_hot_features(data: GraphData) -> np.ndarray:
    """Raw one-hot baseline: one-hot metadata of the customer and of the skill, no training."""
    codes = np.concatenate([data.node_codes[data.edge_customer], data.node_codes[data.num_customers + data.edge_skill]], 1)
    out = np.zeros((len(codes), data.num_codes), dtype=np.float32)
    np.put_along_axis(out, codes, 1.0, axis=1)
    return out


def utterance_features(data: GraphData, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), utterance_dim]``: the utterance vector of each interaction in ``rows``."""
    return data.utterance_vectors[data.edge_utterance[rows]]


def split_622(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random 6:2:2 train/validation/test row indices."""
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(0.6 * n), int(0.8 * n)
    return perm[:a], perm[a:b], perm[b:]


def make_classifier(kind: str, n_in: int) -> nn.Module:
    """``lr``: logistic regression; ``mlp``: 2-layer network, hidden 32, ReLU (section 4.3)."""
    if kind == "lr":
        return nn.Linear(n_in, 1)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(n_in, 32), nn.ReLU(), nn.Linear(32, 1))
    raise ValueError(f"unknown classifier {kind!r}")


def standardise(x: np.ndarray, train: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """``(x - mean) / std`` with the mean and deviation of the ``train`` rows; a column
    whose training deviation is at most ``tol`` becomes 0 (it carries nothing the
    classifier can learn, and dividing by a near-zero deviation would turn its values on
    other rows into unbounded logits)."""
    mean, std = x[train].mean(0), x[train].std(0)
    live = std > tol
    return np.where(live, (x - mean) / np.where(live, std, 1.0), 0.0)


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y))


def heldout_cross_entropy(kind: str, x: np.ndarray, y: np.ndarray, seed: int = 0, lr: float = 1e-3,
                       batch_size: int = 256, max_epochs: int = 100, patience: int = 5) -> float:
    """Train classifier ``kind`` on the 6:2:2 split of ``(x, y)``; return test cross-entropy."""
    train, val, test = split_622(len(y), seed)
    xt = torch.as_tensor(standardise(x, train), dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    torch.manual_seed(seed)
    model = make_classifier(kind, x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, stale = np.inf, copy.deepcopy(model.state_dict()), 0
    tr = torch.as_tensor(train)
    for _ in range(max_epochs):
        for idx in tr[torch.randperm(len(tr), generator=gen)].split(batch_size):
            loss = nn.functional.binary_cross_entropy_with_logits(model(xt[idx]).squeeze(-1), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        current = _cross_entropy(model, xt[val], yt[val])
        if current < best - 1e-4:
            best, best_state, stale = current, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    return _cross_entropy(model, xt[test], yt[test])


def defect_cross_entropy(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Test cross-entropy of both classifiers: ``{"lr": ..., "mlp": ...}``."""
    return {kind: heldout_cross_entropy(kind, x, y, seed) for kind in ("lr", "mlp")}


def fair_cross_entropy(x: np.ndarray, utterance: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, dict]:
    """A model's row of the two fair tables: ``{"with_utterance": defect_cross_entropy of
    [x || utterance], "without_utterance": defect_cross_entropy of x}``."""
    return {"with_utterance": defect_cross_entropy(np.concatenate([x, utterance], 1), y, seed),
            "without_utterance": defect_cross_entropy(x, y, seed)}
