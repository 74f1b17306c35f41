"""``RewriteLookup``: the Serve deployment that answers utterance -> rewrite.

Each replica serves one version of the ``rewrites`` artifact, chosen by
``user_config = {"version": "v000003" | "latest"}``. ``reconfigure`` loads the new version
off the event loop and swaps it in with one assignment, so requests keep being answered
(by the old table, then the new one) while a version swap is in progress. Utterances are
normalized with ``raylib.schema.normalize_utterance``, the normalization mining used.
The store's feature flag for the artifact is re-read at most every ``flag_poll_s``
seconds (off the request path); while it is off no rewrite is returned.
"""

from __future__ import annotations

import asyncio
import time

from ray import serve

from raylib.schema import normalize_utterance
from raylib.store import Store
from serve_apps.rewrite_index import MemoryRewriteIndex, RedisRewriteIndex, RewriteIndex
from serve_apps.settings import autoscaling


def load_index(store: Store, name: str, version: str, backend: str, redis_url: str) -> RewriteIndex:
    """The rewrite index of one artifact version, in the chosen backend."""
    art = store.load(name, version)
    table = art.table("table")
    if backend == "redis":
        return RedisRewriteIndex(redis_url, name, art.version).load(table)
    return MemoryRewriteIndex(table, art.version)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=200,
    autoscaling_config=autoscaling(32),
    user_config={"version": "latest"},
)
class RewriteLookup:
    def __init__(self, store_root: str, name: str = "rewrites", backend: str = "memory",
                 redis_url: str = "redis://127.0.0.1:6379/0", flag_poll_s: float = 5.0):
        self.store = Store(store_root)
        self.name = name
        self.backend = backend
        self.redis_url = redis_url
        self.flag_poll_s = flag_poll_s
        self.index: RewriteIndex | None = None
        self.enabled = self.store.enabled(name)
        self._flag_read_at = time.monotonic()
        self._reload_lock = asyncio.Lock()

    async def reconfigure(self, user_config: dict) -> None:
        version = user_config.get("version", "latest")
        async with self._reload_lock:
            if version == "latest":
                version = self.store.latest(self.name)
                if version is None:
                    return  # nothing published yet: serve no rewrites until a reload
            if self.index is not None and version == self.index.version:
                return
            new = await asyncio.to_thread(load_index, self.store, self.name, version, self.backend, self.redis_url)
            old, self.index = self.index, new
            if isinstance(new, RedisRewriteIndex):
                new.drop_other_versions({new.version} | ({old.version} if old else set()))
            if old is not None:
                await old.close()
            self.enabled = await asyncio.to_thread(self.store.enabled, self.name)

    def _maybe_refresh_flag(self) -> None:
        now = time.monotonic()
        if now - self._flag_read_at >= self.flag_poll_s:
            self._flag_read_at = now
            asyncio.get_running_loop().create_task(self._refresh_flag())

    async def _refresh_flag(self) -> None:
        self.enabled = await asyncio.to_thread(self.store.enabled, self.name)

    async def rewrite(self, utterances: list[str]) -> dict:
        """Rewrites of ``utterances`` (in order) from the served version."""
        self._maybe_refresh_flag()
        index, enabled = self.index, self.enabled
        normalized = [normalize_utterance(u) for u in utterances]
        if index is not None and enabled:
            hits = await index.lookup(normalized)
        else:
            hits = [(None, None)] * len(normalized)
        return {
            "version": index.version if index is not None else None,
            "enabled": enabled,
            "results": [
                {"utterance": u, "normalized": n, "rewrite": r, "score": s}
                for u, n, (r, s) in zip(utterances, normalized, hits)
            ],
        }

    def describe(self) -> dict:
        index = self.index
        return {
            "version": index.version if index is not None else None,
            "enabled": self.enabled,
            "backend": self.backend,
            "size": index.size() if index is not None else None,
        }
