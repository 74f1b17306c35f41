"""Every knob of a loop run and the simulated world it runs in; stage markers are reused
only when the settings match, so they are frozen, hashable and JSON-stable."""

from __future__ import annotations

from dataclasses import dataclass

# The default world: the small preset with 2.5x the sessions per customer, so that enough
# defective utterances reach the mining filters' support within a 15-minute loop.
DEFAULT_WORLD = {"traffic": {"sessions_per_customer": 20.0}}


@dataclass(frozen=True)
class LoopSettings:
    """Every knob of a loop run; stage markers are reused only when these match."""

    preset: str = "small"
    seed: int = 0
    rounds: int = 3
    route_requests: int = 2000
    pdrfe_epochs: int = 2
    policy_epochs: int = 6
    eval_requests: int = 3000
    min_customers: int = 5
    min_support: int = 5
    mining_engine: str = "local"
    guardrails: str | None = None  # YAML for the policy jobs (None: their built-in guard-rails)
    world: tuple = ()  # simulator setting overrides, as sorted (key path, value) pairs

    def world_overrides(self) -> dict:
        """The simulator overrides as the nested dict ``simulate`` takes."""
        nested: dict = {}
        for path, value in self.world:
            *parents, leaf = path.split(".")
            node = nested
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return nested


def merge(base: dict, override: dict) -> dict:
    """``override`` deep-merged over ``base``."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def flatten(overrides: dict, prefix: str = "") -> tuple:
    """Nested overrides as sorted (dotted key path, value) pairs (hashable, JSON-stable)."""
    pairs = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs.extend(flatten(value, path + "."))
        else:
            pairs.append((path, tuple(value) if isinstance(value, list) else value))
    return tuple(sorted(pairs))


def world_settings(overrides: dict) -> tuple:
    """``LoopSettings.world`` for simulator ``overrides`` given over ``DEFAULT_WORLD``."""
    return flatten(merge(DEFAULT_WORLD, overrides))
