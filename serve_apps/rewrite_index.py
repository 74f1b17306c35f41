"""Rewrite indexes: normalized utterance -> (rewrite, score), in memory or in Redis.

Both backends are built from the same rewrite-table artifact (columns utterance,
rewrite, score) through ``best_rewrites`` and answer ``lookup`` on utterances already
normalized with ``raylib.schema.normalize_utterance`` (the mining normalization).
"""

from __future__ import annotations

import json
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from raylib.store import Store

Hit = tuple[str | None, float | None]
REDIS_LOAD_CHUNK = 10_000


def best_rewrites(table: pa.Table) -> tuple[list[str], list[str], list[float]]:
    """The highest-scoring rewrite of every source utterance in a rewrite table.

    Rows with a null utterance or rewrite are skipped; when a source has several
    targets, the one with the largest score wins (ties: the later row).
    """
    table = table.select(["utterance", "rewrite", "score"])
    keep = pc.and_(pc.is_valid(table["utterance"]), pc.is_valid(table["rewrite"]))
    table = table.filter(keep).sort_by([("score", "ascending")])
    best: dict[str, tuple[str, float]] = dict(
        zip(table["utterance"].to_pylist(), zip(table["rewrite"].to_pylist(), table["score"].to_pylist()))
    )
    return list(best), [r for r, _ in best.values()], [s for _, s in best.values()]


class RewriteIndex(Protocol):
    version: str
    backend: str

    def size(self) -> int: ...

    async def lookup(self, normalized: list[str]) -> list[Hit]: ...

    async def close(self) -> None: ...


class MemoryRewriteIndex:
    """The rewrite table as a Python dict inside each replica."""

    backend = "memory"

    def __init__(self, table: pa.Table, version: str):
        utterances, rewrites, scores = best_rewrites(table)
        self.version = version
        self._hits: dict[str, Hit] = dict(zip(utterances, zip(rewrites, scores)))

    def size(self) -> int:
        return len(self._hits)

    async def lookup(self, normalized: list[str]) -> list[Hit]:
        miss = (None, None)
        return [self._hits.get(u, miss) for u in normalized]

    async def close(self) -> None:
        self._hits = {}


class RedisRewriteIndex:
    """The rewrite table as one Redis hash per version, shared by all replicas.

    For tables too large to copy into every replica. ``load`` writes the hash once per
    version (later replicas find the ``ready`` marker and skip it); lookups are one
    ``HMGET`` per request.
    """

    backend = "redis"

    def __init__(self, url: str, name: str, version: str):
        import redis
        import redis.asyncio

        self.version = version
        self._prefix = f"selflearn:{name}"
        self.key = f"{self._prefix}:{version}"
        self._ready_key = f"{self.key}:ready"
        self._sync = redis.Redis.from_url(url)
        self._async = redis.asyncio.Redis.from_url(url)

    def load(self, table: pa.Table) -> "RedisRewriteIndex":
        """Write the table into Redis unless this version is already there; returns self."""
        if self._sync.exists(self._ready_key):
            return self
        utterances, rewrites, scores = best_rewrites(table)
        self._sync.delete(self.key)
        for start in range(0, len(utterances), REDIS_LOAD_CHUNK):
            stop = start + REDIS_LOAD_CHUNK
            mapping = {u: json.dumps([r, s]) for u, r, s in zip(utterances[start:stop], rewrites[start:stop], scores[start:stop])}
            self._sync.hset(self.key, mapping=mapping)
        self._sync.set(self._ready_key, len(utterances))
        return self

    def size(self) -> int:
        return int(self._sync.hlen(self.key))

    async def lookup(self, normalized: list[str]) -> list[Hit]:
        if not normalized:
            return []
        values = await self._async.hmget(self.key, normalized)
        return [tuple(json.loads(v)) if v is not None else (None, None) for v in values]

    def drop_other_versions(self, keep: set[str]) -> None:
        """Delete the hashes of versions other than ``keep`` (the swap's old and new)."""
        for key in self._sync.scan_iter(match=f"{self._prefix}:*"):
            version = key.decode().removeprefix(self._prefix + ":").removesuffix(":ready")
            if version not in keep:
                self._sync.delete(key)

    async def close(self) -> None:
        self._sync.close()
        await self._async.aclose()


def load_index(store: Store, name: str, version: str, backend: str, redis_url: str) -> RewriteIndex:
    """The rewrite index of one artifact version, in the chosen backend."""
    art = store.load(name, version)
    table = art.table("table")
    if backend == "redis":
        return RedisRewriteIndex(redis_url, name, art.version).load(table)
    return MemoryRewriteIndex(table, art.version)
