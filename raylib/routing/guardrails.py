"""Pre-deployment guard-rails (seed 002, Sec. 3.6): expert-set conditions on the OPE
results that decide whether a new policy may be published.

Defaults live here; a YAML file (see ``jobs/policy_guardrails.yaml``) overrides any of them:

    min_replication: 0.85          # per intent (see replication_check for small intents)
    min_segment_samples: 200       # smaller intents are judged by their interval's upper bound
    max_reward_regression: 0.01    # estimate >= current policy's value - this
    ips_weight_bounds: [0.7, 1.3]  # mean IPS weight (ideally 1.0)
    min_ess: 100                   # effective sample size of the IPS weights
    critical_intents: [PlayMusic]  # intents that must replicate at critical_min_replication
    critical_min_replication: 0.98
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


from raylib import uri
from raylib.errors import UserError


@dataclass
class GuardRails:
    min_replication: float = 0.85
    min_segment_samples: int = 200
    max_reward_regression: float = 0.01
    ips_weight_bounds: tuple[float, float] = (0.7, 1.3)
    min_ess: float = 100.0
    critical_intents: list[str] = field(default_factory=list)
    critical_min_replication: float = 0.98

    @classmethod
    def from_yaml(cls, path: str | None) -> "GuardRails":
        """Defaults overridden by the keys of the YAML file at ``path`` (None: defaults)."""
        if path is None:
            return cls()
        data = uri.read_settings(path, "guard-rails file")
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise UserError(f"guard-rails file {path}: unknown keys {sorted(set(data) - known)}; known: {sorted(known)}")
        if "ips_weight_bounds" in data:
            bounds = data["ips_weight_bounds"]
            if not (isinstance(bounds, list) and len(bounds) == 2 and bounds[0] <= bounds[1]):
                raise UserError(f"guard-rails file {path}: ips_weight_bounds must be [low, high]")
            data["ips_weight_bounds"] = (float(bounds[0]), float(bounds[1]))
        for name in ("min_replication", "max_reward_regression", "min_ess", "critical_min_replication", "min_segment_samples"):
            if name in data:
                try:
                    data[name] = (int if name == "min_segment_samples" else float)(data[name])
                except (TypeError, ValueError):
                    raise UserError(f"guard-rails file {path}: {name} must be a number, got {data[name]!r}") from None
        if not isinstance(data.get("critical_intents", []), list):
            raise UserError(f"guard-rails file {path}: critical_intents must be a list of intents")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def _check(checks: list, name: str, value, threshold, passed: bool, reason: str) -> None:
    checks.append({"name": name, "value": value, "threshold": threshold, "passed": bool(passed), "reason": reason})


def replication_check(intent: str, seg: dict, rails: GuardRails) -> dict:
    """The replication rail of one intent's OPE segment (``seg``: n, replication with its
    95% interval) as a check.

    An intent with at least ``min_segment_samples`` test requests, or a critical one, fails
    when its replication is below the minimum. A smaller (tail) intent's point estimate is
    too noisy for that, but skipping it would let a tail intent the new policy breaks pass
    unseen: it fails when the upper bound of its interval is below the minimum (even the
    most favourable replication the data allow is too low). Without an interval (no
    bootstrap replicates) its point value is judged."""
    critical = intent in rails.critical_intents
    need = rails.critical_min_replication if critical else rails.min_replication
    rep, n = seg["replication"], seg["n"]
    interval = [rep.get("lo"), rep.get("hi")]
    small = n < rails.min_segment_samples and not critical
    by_bound = small and interval[1] is not None and math.isfinite(interval[1])
    judged = interval[1] if by_bound else rep["value"]
    what = f"replication {rep['value']:.3f}" + (f", 95% interval upper bound {judged:.3f}," if by_bound else "")
    label = "critical intent" if critical else ("small intent" if small else "intent")
    return {
        "name": f"replication[{intent}]",
        "value": rep["value"],
        "threshold": need,
        "passed": bool(judged >= need),
        "reason": f"{label} {intent} ({n} requests): {what} below {need}",
        "n": int(n),
        "interval": interval,
        "judged_by": "interval upper bound" if by_bound else "value",
    }


def decide(ope: dict, current_value: float, rails: GuardRails) -> dict:
    """Apply ``rails`` to an OPE result (``ope.evaluate``) of the new policy; the current
    policy's value is ``current_value`` (``raylib.routing.assess.current_value``). Every
    intent is judged (``replication_check``), small ones by their intervals.

    Returns ``{"status": "pass"|"fail", "reasons": [failed checks], "checks": [...]}``."""
    checks: list[dict] = []
    overall = ope["overall"]
    estimate = overall.get("estimate")
    if estimate is None:
        _check(checks, "reward_regression", None, current_value, False, "no trustworthy reward estimate")
    else:
        floor = current_value - rails.max_reward_regression
        _check(
            checks,
            "reward_regression",
            estimate["value"],
            floor,
            estimate["value"] >= floor,
            f"estimated reward {estimate['value']:.4f} ({overall['estimator']}) below current "
            f"{current_value:.4f} - {rails.max_reward_regression}",
        )
    lo, hi = rails.ips_weight_bounds
    mean_w = overall["ips_weight_mean"]["value"]
    _check(checks, "ips_weight_mean", mean_w, [lo, hi], lo <= mean_w <= hi, f"mean IPS weight {mean_w:.3f} outside [{lo}, {hi}]")
    _check(checks, "ess", overall["ess"], rails.min_ess, overall["ess"] >= rails.min_ess, f"ESS {overall['ess']:.1f} below {rails.min_ess}")
    checks += [replication_check(intent, seg, rails) for intent, seg in sorted(ope["segments"].items())]
    failed = [c["reason"] for c in checks if not c["passed"]]
    return {"status": "fail" if failed else "pass", "reasons": failed, "checks": checks}
