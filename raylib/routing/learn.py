"""One refresh of the hybrid policy (seed 002, Fig. 2): train RP (Eq. 1) and LP (Eq. 2, or
SNIPS / DR with a learned reward model) on the modeling split, then compute κ_j (Eq. 3)
and RPDR_j (Eq. 4) per top-NLU-intent segment on the validation split.

Π_0, the production policy the RP replicates (Eq. 1) and κ measures against (Eq. 3), is
``current`` when the policy in production is a HybridPolicy (then the RP distills its exact
distribution on every logged request, whichever policy logged it), else the logging
distribution in the log. The LP learns from every logged row with the propensity it was
logged with, so logs pooled over refreshes all count.

The LP-daily / RP-weekly cadence: pass ``fixed_rp`` (an already published policy) and
only the LP and RPDR values are refreshed; the RP, and the vocabulary it reads, are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from raylib.routing.features import Features, Vocabulary, encode, top_intents
from raylib.routing.hybrid import (
    HybridPolicy,
    kappa,
    production_distribution,
    replication_rates,
    rpdr,
    rpdr_for_imperfect_rp,
)
from raylib.routing.model import NetworkConfig, PolicyNetwork, predict
from raylib.routing.train import TrainSettings, train_network, training_arrays

LP_OBJECTIVES = ("ips", "snips", "dr")


@dataclass
class LearnSettings:
    objective: str = "ips"
    kappa_target: float = 0.9
    min_segment_samples: int = 30  # smaller validation segments use the pooled κ
    rp_aware: bool = True  # RPDR from RP's measured replication (False: Eq. 4 as printed)
    baseline: float | None = None  # IPS control variate; None = mean logged reward
    rp: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=10))
    lp: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=10))
    reward: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=10))
    num_workers: int = 0  # 0: in-process; >= 1: Ray Train TorchTrainer workers
    use_gpu: bool = False
    storage_path: str | None = None


@dataclass
class RewardModel:
    """q̂(X, k): a reward-head network and the vocabulary it reads."""

    vocab: Vocabulary
    network: PolicyNetwork

    def predict(self, table: pa.Table) -> np.ndarray:
        return predict(self.network, encode(table, self.vocab))


@dataclass
class Refresh:
    policy: HybridPolicy
    reward_model: RewardModel
    histories: dict[str, list[float]]


def _columns(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        table.column("action").to_numpy().astype(np.int64),
        table.column("propensity").to_numpy().astype(np.float64),
        table.column("reward").to_numpy().astype(np.float64),
    )


def _train(config: NetworkConfig, arrays: dict, objective: str, train: TrainSettings, s: LearnSettings):
    return train_network(config, arrays, objective, train, s.num_workers, s.use_gpu, s.storage_path)


def fit_reward_model(table: pa.Table, vocab: Vocabulary, s: LearnSettings) -> tuple[RewardModel, list[float]]:
    """Regress logged rewards on (X, a) with the policy architecture's reward head."""
    feats = encode(table, vocab)
    actions, _, reward = _columns(table)
    config = NetworkConfig.for_vocabulary(vocab, head="reward", **s.reward.sizes)
    result = _train(config, training_arrays(feats, actions, reward=reward), "reward", s.reward, s)
    return RewardModel(vocab, result.network), result.history


def reference_policy(
    table: pa.Table, feats: Features, rp: PolicyNetwork, current: HybridPolicy | None = None
) -> np.ndarray:
    """Π_0 on a split (``production_distribution``), else RP's (a good replicator of it)."""
    ref = production_distribution(table, feats.mask.shape[1], current)
    return ref if ref is not None else predict(rp, feats)


def _pooled_kappa(pi: np.ndarray, pi_ref: np.ndarray, segments: np.ndarray, s: LearnSettings) -> dict[str, float]:
    """κ_j (Eq. 3) per segment; segments with fewer than ``min_segment_samples``
    validation requests get the pooled κ of all requests."""
    per_segment = kappa(pi, pi_ref, segments)
    pooled = float(replication_rates(pi, pi_ref).mean()) if len(segments) else 1.0
    counts = {str(j): int(c) for j, c in zip(*np.unique(segments, return_counts=True))}
    return {j: (k if counts[j] >= s.min_segment_samples else pooled) for j, k in per_segment.items()}


def segment_rpdr(
    pi_lp: np.ndarray, pi_rp: np.ndarray, pi_ref: np.ndarray, segments: np.ndarray, s: LearnSettings
) -> tuple[dict, dict]:
    """κ_j of the LP and RPDR_j per segment: Eq. 4, or with ``s.rp_aware`` its form that
    uses the RP's own measured replication κ_RP,j (``rpdr_for_imperfect_rp``)."""
    k_lp = _pooled_kappa(pi_lp, pi_ref, segments, s)
    if not s.rp_aware:
        return k_lp, {j: rpdr(k, s.kappa_target) for j, k in k_lp.items()}
    k_rp = _pooled_kappa(pi_rp, pi_ref, segments, s)
    return k_lp, {j: rpdr_for_imperfect_rp(k, k_rp[j], s.kappa_target) for j, k in k_lp.items()}


def learn_hybrid(
    train: pa.Table,
    validation: pa.Table,
    settings: LearnSettings | None = None,
    fixed_rp: HybridPolicy | None = None,
    current: HybridPolicy | None = None,
) -> Refresh:
    """Train a new hybrid policy from logged routing data (one refresh). ``current`` is the
    policy in production (None: the logging policy recorded in the log)."""
    s = settings or LearnSettings()
    if s.objective not in LP_OBJECTIVES:
        raise ValueError(f"unknown LP objective {s.objective!r}; expected one of {LP_OBJECTIVES}")
    vocab = fixed_rp.vocab if fixed_rp is not None else Vocabulary.fit(train)
    feats = encode(train, vocab)
    actions, propensity, reward = _columns(train)
    histories: dict[str, list[float]] = {}

    if fixed_rp is not None:
        rp = fixed_rp.rp
    else:
        config = NetworkConfig.for_vocabulary(vocab, **s.rp.sizes)
        target = production_distribution(train, feats.mask.shape[1], current)
        result = _train(config, training_arrays(feats, actions, target=target), "rp", s.rp, s)
        rp, histories["rp"] = result.network, result.history

    reward_model, histories["reward"] = fit_reward_model(train, vocab, s)
    predicted = reward_model.predict(train) if s.objective == "dr" else None
    baseline = float(reward.mean()) if s.baseline is None else s.baseline
    lp_settings = replace(s.lp, baseline=baseline)
    config = NetworkConfig.for_vocabulary(vocab, **s.lp.sizes)
    arrays = training_arrays(feats, actions, propensity, reward, predicted)
    result = _train(config, arrays, s.objective, lp_settings, s)
    lp, histories["lp"] = result.network, result.history

    val_feats = encode(validation, vocab)
    pi_ref = reference_policy(validation, val_feats, rp, current)
    kappas, rpdrs = segment_rpdr(predict(lp, val_feats), predict(rp, val_feats), pi_ref, top_intents(validation), s)
    policy = HybridPolicy(
        vocab,
        rp,
        lp,
        rpdr=rpdrs,
        kappa=kappas,
        kappa_target=s.kappa_target,
        info={
            "objective": s.objective,
            "baseline": baseline,
            "clip": s.lp.clip,
            "train_rows": train.num_rows,
            "validation_rows": validation.num_rows,
            "rp_refreshed": fixed_rp is None,
            "rp_target": "logged policy" if current is None else "current policy",
        },
    )
    return Refresh(policy, reward_model, histories)


@dataclass
class CrossFitRewardModel:
    """q̂ for evaluating on the same logs it learns from: two reward models, each trained on
    one half (by request id) and predicting the other half (2-fold cross-fitting)."""

    halves: tuple[RewardModel, RewardModel]

    @classmethod
    def fit(cls, table: pa.Table, vocab: Vocabulary, s: LearnSettings) -> "CrossFitRewardModel":
        fold = cls._fold(table)
        models = tuple(fit_reward_model(table.filter(pa.array(fold == k)), vocab, s)[0] for k in (0, 1))
        return cls(models)

    @staticmethod
    def _fold(table: pa.Table) -> np.ndarray:
        from raylib.routing.data import split_labels

        return (split_labels(table.column("request_id").to_pylist(), (0.5, 0.5, 0.0), salt="crossfit") != "train").astype(int)

    def predict(self, table: pa.Table) -> np.ndarray:
        fold = self._fold(table)
        a, b = self.halves[1].predict(table), self.halves[0].predict(table)
        return np.where((fold == 0)[:, None], a, b)
