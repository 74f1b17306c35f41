"""One refresh of the hybrid policy (seed 002, Fig. 2): train RP (Eq. 1) and LP (Eq. 2, or
SNIPS / DR with a learned reward model) on the modeling split, then compute κ_j (Eq. 3)
and RPDR_j (Eq. 4) per top-NLU-intent segment on the validation split; a tail intent (too
few validation requests, or none) is served by the RP alone (``segment_rpdr``).

Π_0, the production policy the RP replicates (Eq. 1) and κ measures against (Eq. 3), is
``current`` when the policy in production is a HybridPolicy (then the RP distills its exact
distribution on every logged request, whichever policy logged it), else the logging
distribution in the log. The LP learns from every logged row with the propensity it was
logged with, so logs pooled over refreshes all count.

The LP-daily / RP-weekly cadence: pass ``fixed_rp`` (an already published policy) and
only the LP and RPDR values are refreshed; the RP, and the vocabulary it reads, are kept.

PDRFE embeddings (seed 000) as optional inputs: with ``LearnSettings.embeddings`` every
network trained here (RP, LP, reward model) also reads the customer and candidate-skill
embeddings (``model.PolicyNetwork``); a kept ``fixed_rp`` keeps its own inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from raylib.routing.features import EmbeddingTables, Features, Vocabulary, encode, top_intents
from raylib.routing.hybrid import (
    HybridPolicy,
    kappa,
    network_features,
    production_distribution,
    rpdr,
    rpdr_for_imperfect_rp,
)
from raylib.routing.model import NetworkConfig, PolicyNetwork, predict
from raylib.routing.train import TrainResult, TrainSettings, train_network, training_arrays

LP_OBJECTIVES = ("ips", "snips", "dr")


@dataclass
class LearnSettings:
    objective: str = "ips"
    kappa_target: float = 0.9
    min_segment_samples: int = 30  # smaller validation segments (tail intents) get RPDR 1: RP only
    rp_aware: bool = True  # RPDR from RP's measured replication (False: Eq. 4 as printed)
    baseline: float | None = None  # IPS control variate; None = mean logged reward
    rp: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=10))
    lp: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=10))
    reward: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=10))
    num_workers: int = 0  # 0: in-process; >= 1: Ray Train TorchTrainer workers
    use_gpu: bool = False
    storage_path: str | None = None
    max_failures: int = 0  # Ray Train worker-group restarts per network (resumed from the last checkpoint)
    embeddings: EmbeddingTables | None = None  # PDRFE inputs of the new networks (None: none)
    embedding_product: bool = False  # also feed c ⊙ s_k (model.PolicyNetwork)

    def network_config(self, vocab: Vocabulary, train: TrainSettings, **extra) -> NetworkConfig:
        """The network a trained model gets: ``train.sizes`` plus the PDRFE input widths."""
        sizes = dict(train.sizes, **extra)
        if self.embeddings is not None:
            sizes.setdefault("embedding_product", self.embedding_product)
        return NetworkConfig.for_vocabulary(vocab, self.embeddings, **sizes)


@dataclass
class RewardModel:
    """q̂(X, k): a reward-head network, the vocabulary (and embeddings) it reads."""

    vocab: Vocabulary
    network: PolicyNetwork
    embeddings: EmbeddingTables | None = None

    def predict(self, table: pa.Table) -> np.ndarray:
        return predict(self.network, encode(table, self.vocab, self.embeddings))


@dataclass
class Refresh:
    policy: HybridPolicy
    reward_model: RewardModel
    histories: dict[str, list[float]]
    speed: dict[str, dict]  # per network on Ray Train: TrainResult.speed


def logged_columns(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The routing log's ``(action, propensity, reward)`` columns as int64 / float64 arrays."""
    return (
        table.column("action").to_numpy().astype(np.int64),
        table.column("propensity").to_numpy().astype(np.float64),
        table.column("reward").to_numpy().astype(np.float64),
    )


def _train(config: NetworkConfig, arrays: dict, objective: str, train: TrainSettings, s: LearnSettings):
    return train_network(config, arrays, objective, train, s.num_workers, s.use_gpu, s.storage_path,
                         max_failures=s.max_failures)


def fit_reward_model(table: pa.Table, vocab: Vocabulary, s: LearnSettings) -> tuple[RewardModel, TrainResult]:
    """Regress logged rewards on (X, a) with the policy architecture's reward head."""
    feats = encode(table, vocab, s.embeddings)
    actions, _, reward = logged_columns(table)
    config = s.network_config(vocab, s.reward, head="reward")
    result = _train(config, training_arrays(feats, actions, reward=reward), "reward", s.reward, s)
    return RewardModel(vocab, result.network, s.embeddings), result


def reference_policy(
    table: pa.Table, feats: Features, rp: PolicyNetwork, current: HybridPolicy | None = None
) -> np.ndarray:
    """Π_0 on a split (``production_distribution``), else RP's (a good replicator of it)."""
    ref = production_distribution(table, feats.mask.shape[1], current)
    return ref if ref is not None else predict(rp, feats)


def tail_reason(n: int, min_samples: int) -> str | None:
    """Why a segment with ``n`` validation requests is a tail intent (None: it is not).

    κ_j measured on fewer than ``min_samples`` requests cannot be trusted to bound how far
    the LP moves the segment away from Π_0, and a segment's true κ can be far from the
    pooled κ of the others (the LP learns the frequent intents and carries their habits
    over to the rare ones)."""
    if n == 0:
        return "unseen in validation"
    if n < min_samples:
        return f"{n} validation requests < min_segment_samples {min_samples}"
    return None


def segment_rpdr(
    pi_lp: np.ndarray,
    pi_rp: np.ndarray,
    pi_ref: np.ndarray,
    segments: np.ndarray,
    s: LearnSettings,
    known: tuple[str, ...] | list[str] = (),
) -> tuple[dict, dict, dict]:
    """κ_j of the LP (Eq. 3), RPDR_j and the rule it came from, per segment of the
    validation split (``segments``) and per segment in ``known`` (e.g. the training split's)
    that validation never saw.

    RPDR_j is Eq. 4, or with ``s.rp_aware`` its form that uses the RP's own measured
    replication κ_RP,j (``rpdr_for_imperfect_rp``), for a segment with at least
    ``s.min_segment_samples`` validation requests. A tail intent (``tail_reason``: fewer
    requests, or none) gets RPDR_j = 1, the RP alone: the hybrid's job (seed 002, Sec. 3.5)
    is to limit the LP where it cannot be trusted, and a κ that cannot be measured is no
    licence for the LP. Rules: ``{j: {"n", "rule": "eq4" | "rp_only", "reason"?}}``."""
    counts = {str(j): int(c) for j, c in zip(*np.unique(segments, return_counts=True))}
    k_lp = kappa(pi_lp, pi_ref, segments)
    k_rp = kappa(pi_rp, pi_ref, segments)
    rpdrs, rules = {}, {}
    for j in sorted(set(counts) | {str(j) for j in known}):
        n = counts.get(j, 0)
        reason = tail_reason(n, s.min_segment_samples)
        if reason is not None:
            rpdrs[j], rules[j] = 1.0, {"n": n, "rule": "rp_only", "reason": reason}
        else:
            rpdrs[j] = (rpdr_for_imperfect_rp(k_lp[j], k_rp[j], s.kappa_target) if s.rp_aware
                        else rpdr(k_lp[j], s.kappa_target))
            rules[j] = {"n": n, "rule": "eq4"}
    return k_lp, rpdrs, rules


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
    base = encode(train, vocab)
    feats = network_features(base, train, s.embeddings)  # what the new networks read
    actions, propensity, reward = logged_columns(train)
    results: dict[str, TrainResult] = {}

    if fixed_rp is not None:
        rp, rp_embeddings = fixed_rp.rp, fixed_rp.rp_embeddings
        rp_target = "kept (fixed_rp)"
    else:
        rp_target = "logged policy" if current is None else "current policy"
        config = s.network_config(vocab, s.rp)
        target = production_distribution(train, feats.mask.shape[1], current)
        results["rp"] = _train(config, training_arrays(feats, actions, target=target), "rp", s.rp, s)
        rp, rp_embeddings = results["rp"].network, s.embeddings

    reward_model, results["reward"] = fit_reward_model(train, vocab, s)
    predicted = reward_model.predict(train) if s.objective == "dr" else None
    baseline = float(reward.mean()) if s.baseline is None else s.baseline
    lp_settings = replace(s.lp, baseline=baseline)
    config = s.network_config(vocab, s.lp)
    arrays = training_arrays(feats, actions, propensity, reward, predicted)
    results["lp"] = _train(config, arrays, s.objective, lp_settings, s)
    lp = results["lp"].network

    val_base = encode(validation, vocab)
    val_rp = network_features(val_base, validation, rp_embeddings)
    val_lp = network_features(val_base, validation, s.embeddings)
    pi_ref = reference_policy(validation, val_rp, rp, current)
    known = np.unique(top_intents(train)).tolist()
    kappas, rpdrs, rules = segment_rpdr(predict(lp, val_lp), predict(rp, val_rp), pi_ref, top_intents(validation), s, known)
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
            "rpdr_rules": rules,
            "rp_refreshed": fixed_rp is None,
            "rp_target": rp_target,
            **embeddings_info(rp_embeddings, s.embeddings, s.embedding_product),
        },
        rp_embeddings=rp_embeddings,
        lp_embeddings=s.embeddings,
    )
    return Refresh(policy, reward_model, {k: r.history for k, r in results.items()},
                   {k: r.speed for k, r in results.items() if r.speed})


def embeddings_info(rp: EmbeddingTables | None, lp: EmbeddingTables | None, product: bool) -> dict:
    """``{"embeddings": {rp_version, lp_version, product}}``: the PDRFE embeddings version
    each network reads, for the manifest's info; empty when neither reads any (the info of
    a policy without embeddings is unchanged)."""
    if rp is None and lp is None:
        return {}
    return {
        "embeddings": {
            "rp_version": rp.version if rp is not None else None,
            "lp_version": lp.version if lp is not None else None,
            "product": bool(product) if lp is not None else False,
        }
    }


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
