"""Off-policy evaluation of a target policy Π on logs of Π_0 (seed 002, Sec. 3.6, Table 1).

Per request i with logged action a_i, logging propensity p_i = Π_0(a_i|X_i), reward r_i,
target distribution Π(·|X_i) and (optionally) reward-model predictions q̂(X_i, ·):

    w_i    = Π(a_i|X_i) / p_i                                   (IPS weight)
    IPS    = (1/n) Σ w_i r_i
    SNIPS  = Σ w_i r_i / Σ w_i
    DM     = (1/n) Σ Σ_k Π(k|X_i) q̂(X_i, k)
    DR     = (1/n) Σ [ Σ_k Π(k|X_i) q̂(X_i, k) + w_i (r_i - q̂(X_i, a_i)) ]
    ESS    = (Σ w_i)^2 / Σ w_i^2
    replication_i = 1 - |Π(X_i) - Π_0(X_i)|_1 / 2   (Π_0 = the production policy's
                    distribution when known, else the one-hot of the logged action)
    exploration_i = 1 - max_k Π(k|X_i)   (probability of not taking the top action)

Intervals: 95% percentile intervals of a Poisson bootstrap (each row resampled with a
Poisson(1) count) over requests. A deterministic logging policy (every propensity 1) gives
IPS no support outside the logged actions: the result says IPS cannot be trusted and the
estimate falls back to the direct method (DM).
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def ips_weights(pi: np.ndarray, actions: np.ndarray, propensity: np.ndarray) -> np.ndarray:
    """w_i = Π(a_i|X_i) / Π_0(a_i|X_i)."""
    return pi[np.arange(len(actions)), actions] / propensity


def ips(w: np.ndarray, reward: np.ndarray) -> float:
    """IPS = (1/n) Σ w_i r_i."""
    return float(np.mean(w * reward))


def snips(w: np.ndarray, reward: np.ndarray) -> float:
    """SNIPS = Σ w_i r_i / Σ w_i."""
    return float(np.sum(w * reward) / np.sum(w))


def direct_terms(pi: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-request DM terms Σ_k Π(k|X_i) q̂(X_i, k)."""
    return (pi * predicted).sum(axis=1)


def dr_terms(pi: np.ndarray, predicted: np.ndarray, actions: np.ndarray, w: np.ndarray, reward: np.ndarray) -> np.ndarray:
    """Per-request DR terms Σ_k Π(k|X_i) q̂(X_i,k) + w_i (r_i - q̂(X_i, a_i))."""
    logged = predicted[np.arange(len(actions)), actions]
    return direct_terms(pi, predicted) + w * (reward - logged)


def effective_sample_size(w: np.ndarray) -> float:
    """ESS = (Σ w)^2 / Σ w^2 (n when every weight is equal)."""
    sq = float(np.sum(w * w))
    return float(np.sum(w) ** 2 / sq) if sq > 0 else 0.0


def reference_distribution(reference: np.ndarray | None, actions: np.ndarray, width: int) -> np.ndarray:
    """Π_0 for replication: the production policy's distribution when known, else one-hot(a_i)."""
    if reference is not None:
        return reference
    ref = np.zeros((len(actions), width))
    ref[np.arange(len(actions)), actions] = 1.0
    return ref


def _poisson_counts(n: int, replicates: int, rng: np.random.Generator, chunk: int = 64):
    for start in range(0, replicates, chunk):
        yield rng.poisson(1.0, size=(min(chunk, replicates - start), n)).astype(np.float64)


def bootstrap_interval(
    numerator: np.ndarray,
    denominator: np.ndarray | None = None,
    replicates: int = 200,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """95% percentile interval of Σ c_i x_i / Σ c_i d_i over Poisson(1) counts c (d = 1 when
    ``denominator`` is None: the mean)."""
    if replicates <= 0 or len(numerator) == 0:
        return (float("nan"), float("nan"))
    rng = rng or np.random.default_rng(0)
    den = np.ones_like(numerator) if denominator is None else denominator
    stats = []
    for counts in _poisson_counts(len(numerator), replicates, rng):
        d = counts @ den
        stats.append(np.where(d > 0, counts @ numerator / np.where(d > 0, d, 1.0), np.nan))
    values = np.concatenate(stats)
    values = values[np.isfinite(values)]
    if not len(values):
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(values, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return float(lo), float(hi)


def _interval(point: float, interval: tuple[float, float]) -> dict:
    return {"value": point, "lo": interval[0], "hi": interval[1]}


def deterministic_logging(propensity: np.ndarray, tol: float = 1e-9) -> bool:
    """True when every logged propensity is 1 (a deterministic logging policy)."""
    return bool(len(propensity)) and bool(np.all(propensity >= 1.0 - tol))


def evaluate_group(
    pi: np.ndarray,
    actions: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    reference: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    defect: np.ndarray | None = None,
    replicates: int = 200,
    rng: np.random.Generator | None = None,
    min_ess_fraction: float = 0.01,
) -> dict:
    """Table-1 metrics (and more) with bootstrap intervals for one set of requests.

    ``pi``/``reference``/``predicted`` are (n, T) zero-padded in candidate order (``reference``
    = Π_0, the production policy replication is measured against); ``defect``
    marks defective requests (low reward) for the defect/non-defect splits."""
    rng = rng or np.random.default_rng(0)
    n = len(actions)
    if n == 0:
        return {"n": 0}
    w = ips_weights(pi, actions, propensity)
    ref = reference_distribution(reference, actions, pi.shape[1])
    l1 = np.abs(pi - ref).sum(axis=1)
    replication = 1.0 - l1 / 2.0
    exploration = 1.0 - pi.max(axis=1)
    defect = np.zeros(n, bool) if defect is None else np.asarray(defect, bool)
    ess = effective_sample_size(w)
    out: dict = {
        "n": int(n),
        "logged_reward": _interval(float(reward.mean()), bootstrap_interval(reward, None, replicates, rng)),
        "ips": _interval(ips(w, reward), bootstrap_interval(w * reward, None, replicates, rng)),
        "snips": _interval(snips(w, reward), bootstrap_interval(w * reward, w, replicates, rng)),
        "replication": _interval(float(replication.mean()), bootstrap_interval(replication, None, replicates, rng)),
        "replication_defect": float(replication[defect].mean()) if defect.any() else None,
        "replication_nondefect": float(replication[~defect].mean()) if (~defect).any() else None,
        "l1_mean": float(l1.mean()),
        "l1_std": float(l1.std()),
        "ips_weight_mean": _interval(float(w.mean()), bootstrap_interval(w, None, replicates, rng)),
        "ips_weight_max": float(w.max()),
        "ess": ess,
        "ess_fraction": ess / n,
        "exploration": float(exploration.mean()),
        "exploration_defect": float(exploration[defect].mean()) if defect.any() else None,
        "exploration_nondefect": float(exploration[~defect].mean()) if (~defect).any() else None,
    }
    if predicted is not None:
        dm_rows = direct_terms(pi, predicted)
        dr_rows = dr_terms(pi, predicted, actions, w, reward)
        out["dm"] = _interval(float(dm_rows.mean()), bootstrap_interval(dm_rows, None, replicates, rng))
        out["dr"] = _interval(float(dr_rows.mean()), bootstrap_interval(dr_rows, None, replicates, rng))
    reasons = []
    if deterministic_logging(propensity):
        reasons.append("logging policy is deterministic (all propensities are 1): IPS sees only logged actions")
    elif ess / n < min_ess_fraction:
        reasons.append(f"effective sample size {ess:.1f} is below {min_ess_fraction:.0%} of {n} requests")
    out["ips_trusted"] = not reasons
    out["ips_untrusted_reasons"] = reasons
    if reasons:
        out["estimator"] = "dm" if predicted is not None else "none"
    else:
        out["estimator"] = "dr" if predicted is not None else "snips"
    out["estimate"] = out[out["estimator"]] if out["estimator"] != "none" else None
    return out


def evaluate(
    pi: np.ndarray,
    actions: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    segments: np.ndarray,
    reference: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    defect_threshold: float = 0.5,
    replicates: int = 200,
    seed: int = 0,
) -> dict:
    """OPE overall and per segment (top NLU intent): ``{"overall": {...}, "segments":
    {intent: {...}}}``. A request is a defect when its reward is below ``defect_threshold``."""
    rng = np.random.default_rng(seed)
    defect = reward < defect_threshold
    segments = np.asarray(segments)

    def group(rows):
        return evaluate_group(
            pi[rows],
            actions[rows],
            propensity[rows],
            reward[rows],
            None if reference is None else reference[rows],
            None if predicted is None else predicted[rows],
            defect[rows],
            replicates,
            rng,
        )

    return {
        "overall": group(np.arange(len(actions))),
        "segments": {str(j): group(np.flatnonzero(segments == j)) for j in np.unique(segments)},
    }
