"""``RewriteLookup``: the Serve deployment that owns the served rewrite-table version.

Each replica serves one version of the ``rewrites`` artifact, chosen by
``user_config = {"version": "v000003" | "latest"}``: ``latest`` follows the store's ``LATEST``
pointer, re-read every ``latest_poll_s`` seconds (``serve_apps.control.LatestFollower``). It answers ``rewrite`` through its ``DeploymentHandle`` and
announces its version to the ``Ingress`` replicas through ``watch`` (a long poll): each
ingress replica keeps a copy of the announced version and answers ``/v1/rewrite`` in its own
process. Table, flag and normalization live in ``serve_apps.served_rewrites.ServedRewrites``,
shared with the ingress.
"""

from __future__ import annotations

import asyncio

from ray import serve

from raylib.store import Store
from serve_apps.control import LatestFollower
from serve_apps.served_rewrites import ServedRewrites
from serve_apps.settings import autoscaling


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=200,
    autoscaling_config=autoscaling(32),
    user_config={"version": "latest"},
)
class RewriteLookup:
    def __init__(self, store_root: str, name: str = "rewrites", backend: str = "memory",
                 redis_url: str = "redis://127.0.0.1:6379/0", flag_poll_s: float = 5.0, latest_poll_s: float = 5.0):
        self.served = ServedRewrites(Store(store_root), name, backend, redis_url, flag_poll_s)
        self.follower = LatestFollower(self.served.store, name, latest_poll_s, self._swap_to)
        self._changed = asyncio.Event()

    async def reconfigure(self, user_config: dict) -> None:
        await self.follower.configure(user_config.get("version", "latest"))

    async def _swap_to(self, version: str) -> None:
        """Swap in ``version`` unless it is served already, and announce it to ``watch``."""
        if version == self.served.version:
            return
        await self.served.swap(version, drop_others=True)
        self._changed.set()
        self._changed = asyncio.Event()

    async def rewrite(self, utterances: list[str]) -> dict:
        """Rewrites of ``utterances`` (in order) from the served version."""
        return await self.served.answer(utterances)

    async def watch(self, known: str | None, timeout_s: float) -> str | None:
        """The served version, as soon as it differs from ``known`` or after ``timeout_s``."""
        if self.served.version == known and timeout_s > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout_s)
            except TimeoutError:
                pass
        return self.served.version

    def describe(self) -> dict:
        return self.served.describe()

    def version_choice(self) -> dict:
        """The served version and the one ``user_config`` pins (``pinned``; None: following ``LATEST``)."""
        return {"version": self.served.version, "pinned": self.follower.pinned}

    def __del__(self):
        self.follower.stop()
