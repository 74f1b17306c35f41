"""The simulated world: catalog, customers, NLU and the ground truth that follows from them.

A ``World`` is a pure function of (configuration, seed): ``World.from_dir`` rebuilds the
one a ``simulate`` run used from its ``world.json``, so evaluation code can ask it what
any utterance means and how likely it is to fail, without storing those answers.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
from scipy.special import ndtri

from raylib.errors import UserError
from raylib.schema import interpretation_key, normalize_utterance
from raylib.uri import filesystem
from raylib.sim import config as sim_config
from raylib.sim.catalog import DOMAINS, N_SKILL_CATEGORY, build_catalog
from raylib.sim.nlu import NLU
from raylib.sim.population import DEVICE_TYPES, build_population
from raylib.sim.traffic import TrafficModel, sigmoid

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
AFFINITY_SAMPLE = 512


def utterance_difficulty(texts, sd: float) -> np.ndarray:
    """d_u: a fixed N(0, sd^2) shift of the defect log-odds per utterance text (hash-seeded)."""
    h = np.array([zlib.crc32(normalize_utterance(t).encode()) for t in texts], dtype=np.float64)
    return sd * ndtri((h + 0.5) / 2.0**32)


def similar_request_types(rt_intent: np.ndarray, rt_entity: np.ndarray) -> np.ndarray:
    """The request type a user who changes their mind asks for instead: the same intent with
    the neighbouring entity of the catalog (the next one, the previous for the last); -1 for
    slot-less intents and for an intent with one entity."""
    n = len(rt_intent)
    nxt, prv = np.arange(n) + 1, np.arange(n) - 1
    same_next = (nxt < n) & (rt_intent[np.minimum(nxt, n - 1)] == rt_intent)
    same_prev = (prv >= 0) & (rt_intent[np.maximum(prv, 0)] == rt_intent)
    out = np.where(same_next, nxt, np.where(same_prev, prv, -1))
    return np.where(rt_entity >= 0, out, -1)


def outage_request_types(rt_entity: np.ndarray, rt_share: np.ndarray, share: float, rng) -> np.ndarray:
    """Which request types the outage hits: round(share x entity request types) of them,
    drawn without replacement with probability proportional to their traffic share."""
    if not 0.0 <= share <= 1.0:
        raise UserError(f"noise.outage_share must be in [0, 1], got {share}")
    entity = np.flatnonzero(rt_entity >= 0)
    k = int(round(share * len(entity)))
    out = np.zeros(len(rt_entity), dtype=bool)
    if k:
        out[rng.choice(entity, size=k, replace=False, p=rt_share[entity] / rt_share[entity].sum())] = True
    return out


class World:
    def __init__(self, config: dict, seed: int):
        self.config = config
        self.seed = seed
        self.start_ms = START_MS
        rng = np.random.default_rng([seed, 0])
        self.catalog = cat = build_catalog(config, rng)
        self.population = build_population(config, cat, rng)
        self.nlu = NLU(cat, config["nlu"]["fallback_keeps_text"])
        self.interpretations: list[str] = []
        index: dict[str, int] = {}

        def intern(key: str) -> int:
            if key not in index:
                index[key] = len(self.interpretations)
                self.interpretations.append(key)
            return index[key]

        parses = [self.nlu.parse(u) for u in cat.vocab]
        self.utt_interp = np.array([intern(interpretation_key(d, i, s)) for d, i, s, _ in parses])
        self.utt_status = np.array([0 if st == "ok" else 2 for *_, st in parses])
        self.utt_domain = np.array([DOMAINS.index(d) if d in DOMAINS else -1 for d, *_ in parses])
        self.utt_difficulty = utterance_difficulty(cat.vocab, config["noise"]["utterance_difficulty_sd"])
        self.rt_interp_key = [cat.interpretation_of(i, e) for i, e in zip(cat.rt_intent, cat.rt_entity)]
        self.rt_interp = np.array([intern(k) for k in self.rt_interp_key])
        self.similar_rt = similar_request_types(cat.rt_intent, cat.rt_entity)
        self.outage_rt = outage_request_types(cat.rt_entity, cat.rt_share, config["noise"]["outage_share"],
                                              np.random.default_rng([seed, 4]))  # own stream: rng above unchanged
        self.traffic = TrafficModel(self)
        self.skill_quality = rng.normal(0.0, 0.5, len(cat.skill_ids))
        self.context_effect = rng.normal(0.0, config["routing"]["context_effect"], (len(DEVICE_TYPES), N_SKILL_CATEGORY))
        # affinities of (customer, chosen skill) pairs per domain, for expected defect rates
        c = rng.integers(0, self.population.n, AFFINITY_SAMPLE)
        self._affinity_sample = []
        for d in range(len(DOMAINS)):
            s = self.traffic.choose_skill(c, np.full(len(c), d), rng)
            self._affinity_sample.append(self.population.affinity(c, s, cat))

    @classmethod
    def from_dir(cls, path: str) -> "World":
        """Rebuild the world a ``simulate`` run wrote to ``path`` (reads its world.json)."""
        fs, root = filesystem(path)
        try:
            with fs.open_input_stream(f"{root}/world.json") as f:
                spec = json.loads(f.read())
        except (FileNotFoundError, OSError) as exc:
            raise UserError(f"{path} holds no simulator world (world.json): {exc}") from exc
        # a run recorded before a setting existed gets that setting's default
        return cls(sim_config.resolve("small", spec["config"]), spec["seed"])

    @classmethod
    def from_preset(cls, preset: str = "small", seed: int = 0, overrides: dict | None = None) -> "World":
        return cls(sim_config.resolve(preset, overrides), seed)

    def interpret(self, utterances) -> list[tuple[str, str]]:
        """The simulated NLU: (``domain|intent|slots``, status) for each utterance."""
        out = []
        for u in utterances:
            d, i, s, st = self.nlu.parse(u)
            out.append((interpretation_key(d, i, s), st))
        return out

    def defect_probability(self, utterances, intended_interpretations) -> np.ndarray:
        """Expected defect rate when a user who means ``intended`` says ``utterance``.

        NLU failure -> 1; a different interpretation -> the wrong-interpretation rate;
        otherwise e + (1 - e) * E_c[sigmoid(b + d_u - w a(c, s))] over customers and their
        skills for the domain, with e the skill error rate.
        """
        dcfg, e = self.config["defect"], self.config["noise"]["skill_error_rate"]
        utterances = list(utterances)
        diff = utterance_difficulty(utterances, self.config["noise"]["utterance_difficulty_sd"])
        out = np.empty(len(utterances))
        for j, (u, want) in enumerate(zip(utterances, intended_interpretations)):
            d, i, s, st = self.nlu.parse(u)
            if st != "ok":
                out[j] = 1.0
            elif interpretation_key(d, i, s) != want:
                out[j] = dcfg["wrong_interpretation"]
            else:
                aff = self._affinity_sample[DOMAINS.index(d)] if d in DOMAINS else np.zeros(1)
                p_ok = sigmoid(dcfg["base_logit"] + diff[j] - dcfg["affinity_weight"] * aff).mean()
                out[j] = e + (1.0 - e) * p_ok
        return out

    def routing(self, n: int, seed: int, policy=None):
        """``n`` fresh routing requests decided by ``policy`` (default: the logging policy).

        Returns ``(routing_log, truth_routing)``; see ``raylib.sim.routing``.
        """
        from raylib.sim.routing import generate_routing

        return generate_routing(self, n, np.random.default_rng([self.seed, 2, seed]), policy, id_prefix=f"rq{seed}")
