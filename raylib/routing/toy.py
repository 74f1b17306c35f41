"""A tiny contextual bandit with known expected rewards, shaped like the simulator's
routing traffic (``routing_log`` + ``truth_routing``), for unit tests and benchmarks.

Each request has a true intent (uniform, or drawn with ``intent_weights``, which also make
a rare intent a rare NLU candidate: the tail intents of seed 002's Sec. 3.5); NLU proposes 2-4 candidates (the true one among them, not
always ranked first); each (intent, skill) pair has a fixed expected reward (the skill
meant for an intent serves it best) and the reward is Bernoulli. The logging policy is a
softmax over NLU confidence (a stochastic "rule-based" baseline) unless ``policy`` is given
with the same signature as ``World.routing``'s.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raylib.schema import ROUTING_LOG, TRUTH_ROUTING

DEVICES = ("speaker", "screen", "phone")


class ToyBandit:
    """A fixed world: intents, skills, expected rewards; ``routing`` draws traffic."""

    def __init__(self, n_intents: int = 6, seed: int = 0, temperature: float = 0.25, intent_weights=None):
        rng = np.random.default_rng(seed)
        self.intent_p = None if intent_weights is None else np.asarray(intent_weights, float) / np.sum(intent_weights)
        self.intents = [f"intent{i}" for i in range(n_intents)]
        self.domains = [f"dom{i % 3}" for i in range(n_intents)]
        self.skills = [f"skill{i}" for i in range(n_intents)] + ["skill_generic"]
        # expected reward of serving intent i with skill k
        self.reward = rng.uniform(0.1, 0.4, size=(n_intents, len(self.skills)))
        self.reward[np.arange(n_intents), np.arange(n_intents)] = rng.uniform(0.7, 0.9, n_intents)
        self.words = [[f"w{i}_{k}" for k in range(4)] for i in range(n_intents)]
        self.temperature = temperature

    def _requests(self, n: int, rng: np.random.Generator) -> tuple[list[dict], list[np.ndarray], list[str]]:
        rows, expected, intended = [], [], []
        n_int = len(self.intents)
        for r in range(n):
            true = int(rng.choice(n_int, p=self.intent_p))
            k = int(rng.integers(2, 5))
            rest = [i for i in range(n_int) if i != true]
            p_rest = None if self.intent_p is None else self.intent_p[rest] / self.intent_p[rest].sum()
            others = rng.choice(rest, size=k - 2, replace=False, p=p_rest).tolist()
            pairs = [(true, true), (int(rng.choice(n_int, p=self.intent_p)), n_int)] + [(o, o) for o in others]
            conf = rng.dirichlet(np.ones(k))
            cands = [
                {
                    "domain": self.domains[i],
                    "intent": self.intents[i],
                    "skill_id": self.skills[s],
                    "nlu_confidence": float(c),
                }
                for (i, s), c in zip(pairs, conf)
            ]
            words = rng.choice(self.words[true], size=3).tolist() + ["please"]
            rows.append(
                {
                    "request_id": f"req-{int(rng.integers(1 << 62))}-{r}",
                    "customer_id": f"c{int(rng.integers(50))}",
                    "timestamp": 1_700_000_000_000 + r,
                    "utterance": " ".join(words),
                    "context": {
                        "device_type": DEVICES[int(rng.integers(3))],
                        "device_status": "on",
                        "asr_confidence": float(rng.uniform(0.5, 1.0)),
                        "hour": int(rng.integers(24)),
                    },
                    "candidates": cands,
                }
            )
            expected.append(np.array([self.reward[true, s] for _, s in pairs]))
            intended.append(self.intents[true])
        return rows, expected, intended

    def logging_distribution(self, table: pa.Table) -> list[np.ndarray]:
        """Softmax of NLU confidence / temperature: the baseline routing rule."""
        out = []
        for cands in table.column("candidates").to_pylist():
            z = np.array([c["nlu_confidence"] for c in cands]) / self.temperature
            p = np.exp(z - z.max())
            out.append(p / p.sum())
        return out

    def routing(self, n: int, seed: int, policy=None) -> tuple[pa.Table, pa.Table]:
        """n requests, logged actions/propensities/rewards and the truth table."""
        rng = np.random.default_rng(seed)
        rows, expected, intended = self._requests(n, rng)
        request_cols = ("request_id", "customer_id", "timestamp", "utterance", "context", "candidates")
        req = pa.Table.from_pylist(rows, schema=pa.schema([ROUTING_LOG.field(c) for c in request_cols]))
        if policy is None:
            dists = self.logging_distribution(req)
            actions = np.array([rng.choice(len(d), p=d) for d in dists])
            props = np.array([d[a] for d, a in zip(dists, actions)])
        else:
            actions, props, dists = policy(req)
        rewards = np.array([float(rng.random() < e[a]) for e, a in zip(expected, actions)])
        log = req.append_column(ROUTING_LOG.field("action"), pa.array(np.asarray(actions, np.int32)))
        log = log.append_column(ROUTING_LOG.field("propensity"), pa.array(np.asarray(props, np.float64)))
        log = log.append_column(
            ROUTING_LOG.field("propensities"),
            pa.array([None if dists is None else [float(x) for x in d] for d in (dists or [None] * n)], pa.list_(pa.float64())),
        )
        log = log.append_column(ROUTING_LOG.field("reward"), pa.array(rewards))
        log = log.append_column(ROUTING_LOG.field("policy_version"), pa.nulls(n, pa.string()))
        truth = pa.table(
            {
                "request_id": req.column("request_id"),
                "expected_rewards": pa.array([e.tolist() for e in expected], pa.list_(pa.float64())),
                "intended_interpretation": pa.array([f"x|{i}|" for i in intended]),
            },
            schema=TRUTH_ROUTING,
        )
        return log.cast(ROUTING_LOG), truth
