"""Consecutive self-learning refreshes in simulation (seed 002, Sec. 4: HP1..HP4).

Round i logs traffic with the deployed policy (round 0: the world's own logging policy),
trains HP_{i+1} on those logs, evaluates it off-policy, applies the guard-rails and deploys
it only when they pass. Every ``rp_every`` rounds (default: every round) the RP is
retrained to replicate the deployed policy, so κ̃ bounds each step away from the policy in
production and the refreshes compound: HP_{i+1} = RPDR·RP(HP_i) + (1-RPDR)·LP. Kept from an
older round (``rp_every`` > 1, the paper's LP-daily / RP-weekly cadence) or from the
baseline (``rp_every=None``, its A/B setup), the RP anchors every HP to that older policy
and the curve flattens (demo world, seed 1, 4000 requests a round: baseline 0.497, then
0.511 / 0.517 / 0.514 with a fixed RP, 0.515 / 0.524 / 0.537 / 0.550 with RP refreshes).
The simulator (any object with ``routing(n, seed, policy)``) knows every policy's true value
on a fixed evaluation traffic sample, which gives the curve.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raylib.routing.assess import assess, logging_true_value, true_value
from raylib.routing.data import prepare, split_labels
from raylib.routing.guardrails import GuardRails
from raylib.routing.learn import LearnSettings, learn_hybrid


def split(log: pa.Table, truth: pa.Table | None = None, salt: str = "") -> dict[str, tuple[pa.Table, pa.Table | None]]:
    """Deterministic train / validation / test split of aligned log and truth tables."""
    labels = split_labels(log.column("request_id").to_pylist(), salt=salt)
    out = {}
    for name in ("train", "validation", "test"):
        keep = pa.array(labels == name)
        out[name] = (log.filter(keep), None if truth is None else truth.filter(keep))
    return out


def refresh_curve(
    world,
    rounds: int = 4,
    n: int = 4000,
    n_eval: int = 4000,
    seed: int = 0,
    settings: LearnSettings | None = None,
    rails: GuardRails | None = None,
    rp_every: int | None = 1,
    replicates: int = 100,
) -> dict:
    """Run ``rounds`` refreshes; returns the true-value curve (baseline, HP1, ...), per round
    OPE estimates, decisions, and the (OPE estimate, true value) pairs of every evaluated
    policy with their correlation."""
    settings = settings or LearnSettings()
    rails = rails or GuardRails()
    eval_log, eval_truth = world.routing(n_eval, seed=10_000 + seed)
    baseline_value = logging_true_value(eval_log, eval_truth)
    deployed = None
    deployed_value = baseline_value
    rows, pairs = [], []
    for r in range(rounds):
        logger = None if deployed is None else deployed.as_logging_policy(seed=seed * 100 + r)
        log, truth = world.routing(n, seed=seed * 100 + r, policy=logger)
        data = prepare(log, truth=truth)
        parts = split(data.log, data.truth, salt=str(r))
        keep_rp = deployed is not None and not (rp_every and r % rp_every == 0)
        fixed_rp = deployed if keep_rp else None
        refresh = learn_hybrid(parts["train"][0], parts["validation"][0], settings, fixed_rp, deployed)
        test_log, test_truth = parts["test"]
        rep = assess(refresh.policy, test_log, rails, refresh.reward_model, test_truth, replicates, seed + r, current=deployed)
        value = true_value(refresh.policy.padded_distribution(eval_log)[0], eval_truth)
        passed = rep["decision"]["status"] == "pass"
        for name in ("rp", "lp", "hp"):
            est = rep["ope_models"][name].get("estimate")
            if est is not None:
                pairs.append({"round": r + 1, "policy": name, "estimate": est["value"], "true": rep["true_value"][name]})
        pairs.append({"round": r + 1, "policy": "logging", "estimate": rep["current_value"], "true": rep["true_value"]["logging"]})
        rows.append(
            {
                "round": r + 1,
                "logged_by_value": deployed_value,
                "hp_true_value": value,
                "test_true_value": rep["true_value"],
                "ope_estimate": rep["ope"]["estimate"],
                "ips": rep["ope"]["ips"],
                "replication": rep["ope"]["replication"]["value"],
                "decision": rep["decision"]["status"],
                "reasons": rep["decision"]["reasons"],
                "rp_refreshed": not keep_rp,
            }
        )
        if passed:
            deployed, deployed_value = refresh.policy, value
    est = np.array([p["estimate"] for p in pairs])
    tru = np.array([p["true"] for p in pairs])
    corr = float(np.corrcoef(est, tru)[0, 1]) if len(pairs) > 2 and est.std() > 0 and tru.std() > 0 else None
    curve = [baseline_value] + [row["hp_true_value"] if row["decision"] == "pass" else None for row in rows]
    deployed_curve = [baseline_value]
    for row in rows:
        deployed_curve.append(row["hp_true_value"] if row["decision"] == "pass" else deployed_curve[-1])
    return {
        "baseline_value": baseline_value,
        "curve": curve,
        "deployed_curve": deployed_curve,
        "rounds": rows,
        "calibration": {"pairs": pairs, "correlation": corr},
        "tolerance": rails.max_reward_regression,
    }
