"""Pre-deployment evaluation of a hybrid policy on held-out logs: OPE of HP (overall and
per intent), the per-intent replication of RP, LP and HP (the paper's Fig. 7), the
guard-rail decision and, when the simulator's truth is given, the true values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raylib.routing import ope
from raylib.routing.data import logged_distributions, padded
from raylib.routing.features import top_intents
from raylib.routing.guardrails import GuardRails, decide
from raylib.routing.hybrid import HybridPolicy, mixture, production_distribution, replication_rates


def true_value(pi: np.ndarray, truth: pa.Table) -> float:
    """V(Π) = mean_i Σ_k Π(k|X_i) r_ik with r the simulator's expected rewards."""
    rewards = padded(truth.column("expected_rewards").to_pylist(), pi.shape[1])
    return float((pi * rewards).sum(axis=1).mean())


def logging_true_value(log: pa.Table, truth: pa.Table) -> float:
    """The logging policy's true value: Σ_k Π_0 r_k when the log has Π_0, else the mean
    expected reward of the logged actions (an unbiased estimate of the same)."""
    width = max(len(x) for x in truth.column("expected_rewards").to_pylist())
    logged = logged_distributions(log, width)
    if logged is not None:
        return true_value(logged, truth)
    rewards = padded(truth.column("expected_rewards").to_pylist(), width)
    actions = log.column("action").to_numpy()
    return float(rewards[np.arange(len(actions)), actions].mean())


def current_value(reference: np.ndarray | None, args: dict) -> float:
    """The production policy's value on the test logs, which the guard-rails' reward
    regression compares with: its off-policy estimate with the same estimator as the new
    policy's (a paired comparison; on its own logs every IPS weight is 1), or the mean
    logged reward when Π_0 is unknown or no estimate can be trusted."""
    if reference is not None:
        estimate = ope.evaluate_group(
            reference, args["actions"], args["propensity"], args["reward"], predicted=args["predicted"], replicates=0
        )["estimate"]
        if estimate is not None:
            return float(estimate["value"])
    return float(args["reward"].mean())


def assess(
    policy: HybridPolicy,
    test: pa.Table,
    rails: GuardRails,
    reward_model=None,
    truth: pa.Table | None = None,
    replicates: int = 200,
    seed: int = 0,
    defect_threshold: float = 0.5,
    current: HybridPolicy | None = None,
) -> dict:
    """Everything the train/evaluate jobs report about ``policy`` on the ``test`` logs;
    ``current`` is the policy in production (None: the logging policy in the log)."""
    pi_rp, pi_lp, w, _ = policy.model_distributions(test)
    pi_hp = mixture(pi_rp, pi_lp, w)
    actions = test.column("action").to_numpy().astype(np.int64)
    propensity = test.column("propensity").to_numpy().astype(np.float64)
    reward = test.column("reward").to_numpy().astype(np.float64)
    reference = production_distribution(test, pi_hp.shape[1], current)
    predicted = reward_model.predict(test) if reward_model is not None else None
    segments = top_intents(test)
    args = dict(
        actions=actions,
        propensity=propensity,
        reward=reward,
        segments=segments,
        reference=reference,
        predicted=predicted,
        defect_threshold=defect_threshold,
        replicates=replicates,
        seed=seed,
    )
    result_hp = ope.evaluate(pi_hp, **args)
    models = {"rp": pi_rp, "lp": pi_lp, "hp": pi_hp}
    overall = {"hp": result_hp["overall"]}
    for name in ("rp", "lp"):
        overall[name] = ope.evaluate(pi=models[name], **{**args, "replicates": 0 if replicates == 0 else 50})["overall"]
    ref = ope.reference_distribution(reference, actions, pi_hp.shape[1])
    replication = {}
    for j in np.unique(segments):
        rows = segments == j
        replication[str(j)] = {
            "n": int(rows.sum()),
            **{name: float(replication_rates(pi[rows], ref[rows]).mean()) for name, pi in models.items()},
        }
    value_now = current_value(reference, args)
    report = {
        "rows": int(test.num_rows),
        "current_value": value_now,
        "ope": result_hp["overall"],
        "ope_segments": result_hp["segments"],
        "ope_models": overall,
        "replication": replication,
        "kappa_target": policy.kappa_target,
        "rpdr": policy.rpdr,
        "kappa": policy.kappa,
        "rpdr_rules": policy.info.get("rpdr_rules", {}),
        "decision": decide(result_hp, value_now, rails),
    }
    if truth is not None:
        report["true_value"] = {
            "logging": logging_true_value(test, truth),
            **({"current": true_value(reference, truth)} if current is not None else {}),
            **{name: true_value(pi, truth) for name, pi in models.items()},
        }
    return report
