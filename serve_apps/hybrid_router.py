"""``HybridRouter``: the Serve deployment that routes a request to one of its candidates.

Each replica serves one version of the ``policy`` artifact (``HybridPolicy``: RP, LP and the
per-intent RPDR of seed 002), chosen by ``user_config = {"version": ..., "max_batch_size":
..., "batch_wait_timeout_s": ...}``; ``version: latest`` follows the store's ``LATEST``
pointer, re-read every ``latest_poll_s`` seconds (``serve_apps.control.LatestFollower``).
Concurrent requests are grouped by ``@serve.batch`` and decided with one vectorized
``HybridPolicy.decide`` call. Every decision gets a fresh
``request_id`` and goes to the decision log (``serve_apps.decision_log``) with its mixture
propensity, full mixture distribution and the policy version, off the request path.
A version swap loads the new policy off the event loop and replaces it with one
assignment; a batch decides with the policy it started with, and logs that version.
Metrics (``serve_apps.metrics``): decisions per intent and per model that acted (``decided_by``
of ``HybridPolicy.decide``) and the propensities, recorded once per batch; the served policy
version, re-set every ``REPORT_S``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
import zlib
from collections import Counter

import numpy as np
from ray import serve

from raylib.routing.hybrid import HybridPolicy
from raylib.store import Store
from serve_apps.control import LatestFollower
from serve_apps.decision_log import DecisionLogWriter, decision_rows
from serve_apps.metrics import instruments, report_every, version_number
from serve_apps.settings import ServeSettings, autoscaling

OTHER_INTENT = "other"


def _confidence(candidate: dict) -> float:
    return candidate["nlu_confidence"]


def intent_label(request: dict, known: frozenset[str]) -> str:
    """The metric label of a request's segment: the intent of its highest-confidence
    candidate (the first one on ties, as ``raylib.routing.features.top_intents``), or
    ``other`` when the policy does not know that intent, so that clients cannot create
    label values."""
    intent = max(request["candidates"], key=_confidence)["intent"]
    return intent if intent in known else OTHER_INTENT


def known_intents(policy: HybridPolicy) -> frozenset[str]:
    """The intents a policy was trained on (its vocabulary) or has an RPDR for."""
    return frozenset(policy.vocab.tables.get("intent", ())) | frozenset(policy.rpdr)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=256,
    autoscaling_config=autoscaling(64),
    user_config={"version": "latest", "max_batch_size": 64, "batch_wait_timeout_s": 0.005},
)
class HybridRouter:
    async def __init__(self, settings: dict):
        """``settings``: ``ServeSettings`` fields (store, policy name, decision log, seed)."""
        config = ServeSettings(**settings)
        self.store = Store(config.store_root)
        self.name = config.policy_name
        self.policy: HybridPolicy | None = None
        self.version: str | None = None
        self.intents: frozenset[str] = frozenset()
        self.max_batch_size = 64
        replica = zlib.crc32(serve.get_replica_context().replica_id.unique_id.encode())
        self.rng = np.random.default_rng([config.seed, replica])
        self.log = (
            DecisionLogWriter(
                config.decision_log_dir,
                max_rows=config.decision_log_max_rows,
                max_age_s=config.decision_log_max_age_s,
                max_buffer_rows=config.decision_log_max_buffer_rows,
                spill_root=config.decision_log_spill_dir,
                retry_max_s=config.decision_log_retry_max_s,
            )
            if config.decision_log_dir
            else None
        )
        self.metrics = instruments()
        self.follower = LatestFollower(self.store, self.name, config.latest_poll_s, self._swap_to)
        self._reporter = asyncio.get_running_loop().create_task(report_every(self._report))

    async def reconfigure(self, user_config: dict) -> None:
        self.max_batch_size = int(user_config.get("max_batch_size", 64))
        self._decide.set_max_batch_size(self.max_batch_size)
        self._decide.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.005)))
        await self.follower.configure(user_config.get("version", "latest"))  # none published yet: 503s

    async def _swap_to(self, version: str) -> None:
        """Load policy ``version`` off the event loop and swap it in (batches in flight
        finish with the policy they started with), unless it is served already."""
        if version == self.version:
            return
        art = await asyncio.to_thread(self.store.load, self.name, version)
        policy = await asyncio.to_thread(HybridPolicy.from_artifact, art)
        self.policy, self.version, self.intents = policy, art.version, known_intents(policy)

    async def route(self, request: dict) -> dict | None:
        """Decide one request (utterance, candidates, context, customer_id); None while no
        policy version has been loaded (nothing published yet)."""
        if self.policy is None:
            return None
        return await self._decide(request)

    async def route_many(self, requests: list[dict]) -> list[dict | None]:
        """``route`` for each request (in order); each still joins ``@serve.batch``."""
        return list(await asyncio.gather(*(self.route(r) for r in requests)))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _decide(self, requests: list[dict]) -> list[dict]:
        policy, version, intents = self.policy, self.version, self.intents
        decisions = await asyncio.to_thread(policy.decide, requests, self.rng)
        request_ids = [uuid.uuid4().hex for _ in requests]
        if self.log is not None:
            now = dt.datetime.now(dt.timezone.utc)
            self.log.append(decision_rows(requests, decisions, request_ids, version, now))
        self._record(requests, decisions, intents)
        return [
            {
                "request_id": rid,
                "action": d["action"],
                "propensity": d["propensity"],
                "decided_by": d["decided_by"],
                "policy_version": version,
            }
            for rid, d in zip(request_ids, decisions)
        ]

    def _report(self) -> None:
        self.metrics.served_version.set(version_number(self.version), tags={"artifact": "policy"})

    def _record(self, requests: list[dict], decisions: list[dict], intents: frozenset[str]) -> None:
        """One batch's metrics: a counter increment per (intent, model) pair, a histogram
        observation per propensity."""
        pairs = Counter((intent_label(r, intents), d["decided_by"]) for r, d in zip(requests, decisions))
        for (intent, decided_by), n in pairs.items():
            self.metrics.route_decisions.inc(n, tags={"intent": intent, "decided_by": decided_by})
        for d in decisions:
            self.metrics.route_propensity.observe(d["propensity"])

    def flush_log(self) -> list[str]:
        """Write the buffered decisions now (operations and tests)."""
        return self.log.flush() if self.log is not None else []

    def version_choice(self) -> dict:
        """The served version and the one ``user_config`` pins (``pinned``; None: following ``LATEST``)."""
        return {"version": self.version, "pinned": self.follower.pinned}

    def describe(self) -> dict:
        return {
            "version": self.version,
            "max_batch_size": self.max_batch_size,
            "decision_log": dict(self.log.stats) if self.log is not None else None,
        }

    def __del__(self):
        if self.log is not None:
            self.log.close()
        self._reporter.cancel()
        self.follower.stop()
