"""``HybridRouter``: the Serve deployment that routes a request to one of its candidates.

Each replica serves one version of the ``policy`` artifact (``HybridPolicy``: RP, LP and the
per-intent RPDR of seed 002), chosen by ``user_config = {"version": ..., "max_batch_size":
..., "batch_wait_timeout_s": ...}``. Concurrent requests are grouped by ``@serve.batch``
and decided with one vectorized ``HybridPolicy.decide`` call. Every decision gets a fresh
``request_id`` and goes to the decision log (``serve_apps.decision_log``) with its mixture
propensity, full mixture distribution and the policy version, off the request path.
A version swap loads the new policy off the event loop and replaces it with one
assignment; a batch decides with the policy it started with, and logs that version.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
import zlib

import numpy as np
from ray import serve

from raylib.routing.hybrid import HybridPolicy
from raylib.store import Store
from serve_apps.decision_log import DecisionLogWriter, decision_rows
from serve_apps.settings import autoscaling


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=256,
    autoscaling_config=autoscaling(64),
    user_config={"version": "latest", "max_batch_size": 64, "batch_wait_timeout_s": 0.005},
)
class HybridRouter:
    def __init__(self, store_root: str, name: str = "policy", decision_log_dir: str | None = None,
                 decision_log_max_rows: int = 50_000, decision_log_max_age_s: float = 60.0, seed: int = 0):
        self.store = Store(store_root)
        self.name = name
        self.policy: HybridPolicy | None = None
        self.version: str | None = None
        self.max_batch_size = 64
        replica = zlib.crc32(serve.get_replica_context().replica_id.unique_id.encode())
        self.rng = np.random.default_rng([seed, replica])
        self.log = (
            DecisionLogWriter(decision_log_dir, decision_log_max_rows, decision_log_max_age_s)
            if decision_log_dir
            else None
        )
        self._reload_lock = asyncio.Lock()

    async def reconfigure(self, user_config: dict) -> None:
        self.max_batch_size = int(user_config.get("max_batch_size", 64))
        self._decide.set_max_batch_size(self.max_batch_size)
        self._decide.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.005)))
        version = user_config.get("version", "latest")
        async with self._reload_lock:
            if version == "latest":
                version = self.store.latest(self.name)
                if version is None:
                    return  # nothing published yet: /v1/route answers 503 until a reload
            if version == self.version:
                return
            art = await asyncio.to_thread(self.store.load, self.name, version)
            policy = await asyncio.to_thread(HybridPolicy.from_artifact, art)
            self.policy, self.version = policy, art.version

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
        policy, version = self.policy, self.version
        decisions = await asyncio.to_thread(policy.decide, requests, self.rng)
        request_ids = [uuid.uuid4().hex for _ in requests]
        if self.log is not None:
            now = dt.datetime.now(dt.timezone.utc)
            self.log.append(decision_rows(requests, decisions, request_ids, version, now))
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

    def flush_log(self) -> list[str]:
        """Write the buffered decisions now (operations and tests)."""
        return self.log.flush() if self.log is not None else []

    def describe(self) -> dict:
        return {
            "version": self.version,
            "max_batch_size": self.max_batch_size,
            "decision_log": dict(self.log.stats) if self.log is not None else None,
        }

    def __del__(self):
        if self.log is not None:
            self.log.close()
