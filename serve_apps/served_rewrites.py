"""``ServedRewrites``: one process's served rewrite table, its feature flag and the answer
to a rewrite request.

Both ``RewriteLookup`` (the deployment that owns the served version) and every ``Ingress``
replica (which keeps its own copy, so ``/v1/rewrite`` never leaves the ingress process)
hold one. Utterances are normalized with ``raylib.schema.normalize_utterance``, the
normalization mining used. ``swap`` loads a version off the event loop and replaces the
index with one assignment, so requests keep being answered (by the old table, then the new
one) during a swap. The store's feature flag is re-read at most every ``flag_poll_s``
seconds, off the request path; while it is off no rewrite is returned.
"""

from __future__ import annotations

import asyncio
import time

from raylib.schema import normalize_utterance
from raylib.store import Store
from serve_apps.rewrite_index import RedisRewriteIndex, RewriteIndex, load_index


class ServedRewrites:
    def __init__(self, store: Store, name: str, backend: str, redis_url: str, flag_poll_s: float):
        self.store = store
        self.name = name
        self.backend = backend
        self.redis_url = redis_url
        self.flag_poll_s = flag_poll_s
        self.index: RewriteIndex | None = None
        self.enabled = store.enabled(name)
        self._flag_read_at = time.monotonic()
        self._lock = asyncio.Lock()

    @property
    def version(self) -> str | None:
        index = self.index
        return index.version if index is not None else None

    async def swap(self, version: str, drop_others: bool = False) -> None:
        """Serve ``version`` (a concrete version name). ``drop_others``: with the Redis
        backend, delete the hashes of versions other than the old and the new one (the
        version's owner does this; copies only read)."""
        async with self._lock:
            if version == self.version:
                return
            new = await asyncio.to_thread(load_index, self.store, self.name, version, self.backend, self.redis_url)
            old, self.index = self.index, new
            if drop_others and isinstance(new, RedisRewriteIndex):
                await asyncio.to_thread(new.drop_other_versions, {new.version} | ({old.version} if old else set()))
            if old is not None:
                await old.close()
            self.enabled = await asyncio.to_thread(self.store.enabled, self.name)

    def refresh_flag_if_due(self) -> None:
        """Re-read the feature flag off the event loop when the last read is ``flag_poll_s`` old
        (called by every answer, and by the ingress replica's metrics report so that the flag
        is read without traffic too)."""
        now = time.monotonic()
        if now - self._flag_read_at >= self.flag_poll_s:
            self._flag_read_at = now
            asyncio.get_running_loop().create_task(self._refresh_flag())

    async def _refresh_flag(self) -> None:
        self.enabled = await asyncio.to_thread(self.store.enabled, self.name)

    async def answer(self, utterances: list[str]) -> dict:
        """Rewrites of ``utterances`` (in order) from the served version: the body of a
        ``/v1/rewrite`` response."""
        self.refresh_flag_if_due()
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
