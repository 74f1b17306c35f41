"""Training objectives of seed 002 (Sec. 3.4), as losses to minimize over a mini-batch.

Notation: ``probs`` (B, T) = Π_θ(· | X) over sorted slots, ``slot`` (B,) the sorted slot of
the logged action a, ``propensity`` (B,) = Π_0(a | X), ``reward`` (B,) = r.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def _logged(probs: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    return probs.gather(1, slot.unsqueeze(1)).squeeze(1)


def rp_loss(probs: torch.Tensor, slot: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1 (replication policy): L_RP = E_{X,a ~ D} Σ_i -1[a = i] log Π_θ(i | X),
    the cross-entropy against the logged action.

    When the log carries the logging policy's whole distribution, ``target`` (B, T) = Π_0(·|X)
    replaces the one-hot 1[a = i] (the soft-distillation variant the paper mentions): the
    same minimizer, Π_θ = Π_0, with far less variance than one sampled action."""
    if target is None:
        return -torch.log(_logged(probs, slot) + EPS).mean()
    return -(target * torch.log(probs + EPS)).sum(dim=1).mean()


def ips_weights(probs: torch.Tensor, slot: torch.Tensor, propensity: torch.Tensor, clip: float | None) -> torch.Tensor:
    """w = Π_θ(a|X) / Π_0(a|X), with 1/Π_0 capped at ``clip`` when given (weight clipping)."""
    inverse = 1.0 / propensity
    if clip is not None:
        inverse = torch.clamp(inverse, max=clip)
    return _logged(probs, slot) * inverse


def lp_ips_loss(
    probs: torch.Tensor,
    slot: torch.Tensor,
    propensity: torch.Tensor,
    reward: torch.Tensor,
    clip: float | None = None,
    baseline: float = 0.0,
) -> torch.Tensor:
    """Eq. 2 (learning policy): L_LP = -E_{X,a,r ~ D}[ (r - b) Π_θ(a|X) / Π_0(a|X) ].

    The paper's objective is the IPS estimate of the expected reward (maximized, hence the
    sign). ``baseline`` b is a constant control variate: since E_{Π_0}[Π_θ(a|X)/Π_0(a|X)] = 1
    it shifts the objective by a constant in expectation (b = 0 is the vanilla Eq. 2) but
    stops a 0/1 reward from pulling mass only toward logged actions (BanditNet's
    translation, Joachims et al. 2018). ``clip`` caps 1/Π_0."""
    return -((reward - baseline) * ips_weights(probs, slot, propensity, clip)).mean()


def lp_snips_loss(
    probs: torch.Tensor, slot: torch.Tensor, propensity: torch.Tensor, reward: torch.Tensor, clip: float | None = None
) -> torch.Tensor:
    """Self-normalized IPS: L = -Σ w_i r_i / Σ w_i over the mini-batch."""
    w = ips_weights(probs, slot, propensity, clip)
    return -(w * reward).sum() / (w.sum() + EPS)


def lp_dr_loss(
    probs: torch.Tensor,
    slot: torch.Tensor,
    propensity: torch.Tensor,
    reward: torch.Tensor,
    predicted: torch.Tensor,
    clip: float | None = None,
) -> torch.Tensor:
    """Doubly robust: L = -E[ Σ_k Π_θ(k|X) q̂(X,k) + w (r - q̂(X,a)) ] with q̂ (B, T) the
    reward model's predictions (fixed, zero on padding)."""
    direct = (probs * predicted).sum(dim=1)
    correction = ips_weights(probs, slot, propensity, clip) * (reward - _logged(predicted, slot))
    return -(direct + correction).mean()


def reward_model_loss(predicted: torch.Tensor, slot: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """Squared error of the reward model on the logged action: E[(q̂(X,a) - r)^2]."""
    return ((_logged(predicted, slot) - reward) ** 2).mean()
