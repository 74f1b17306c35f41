"""The Redis-backed rewrite index against a real redis-server started on a free loopback
port (skipped only when the redis-server binary is absent: `apt-get install -y redis-server`)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pyarrow as pa
import pytest

from raylib.store import Store
from serve_apps.deploy import free_port
from serve_apps.rewrite_index import MemoryRewriteIndex, RedisRewriteIndex
from serve_apps.rewrite_lookup import RewriteLookup

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server not installed (apt-get install -y redis-server)")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    import redis

    port = free_port()
    proc = subprocess.Popen(
        [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _table(pairs: dict[str, tuple[str, float]]) -> pa.Table:
    return pa.table({"utterance": list(pairs), "rewrite": [r for r, _ in pairs.values()],
                     "score": [s for _, s in pairs.values()], "n_customers": [3] * len(pairs)})


def test_redis_index_answers_like_the_memory_index(redis_url):
    table = pa.table({"utterance": ["a b", "a b", "c", "d"], "rewrite": ["x", "y", "z", None], "score": [0.1, 0.8, 0.5, 0.9]})
    memory = MemoryRewriteIndex(table, "v000001")
    index = RedisRewriteIndex(redis_url, "rw_same", "v000001").load(table)
    queries = ["a b", "c", "d", "missing", "a b"]
    assert index.size() == memory.size() == 2

    async def both():
        answers = await index.lookup(queries), await memory.lookup(queries)
        await index.close()
        return answers

    from_redis, from_memory = asyncio.run(both())
    assert from_redis == from_memory


def test_a_version_is_written_once_and_old_versions_are_dropped(redis_url):
    first = RedisRewriteIndex(redis_url, "rw_versions", "v000001").load(_table({"q": ("one", 1.0)}))
    # a second replica loading the same version finds it ready and does not rewrite it
    again = RedisRewriteIndex(redis_url, "rw_versions", "v000001").load(_table({"q": ("other", 1.0)}))
    assert asyncio.run(again.lookup(["q"])) == [("one", 1.0)]
    RedisRewriteIndex(redis_url, "rw_versions", "v000002").load(_table({"q": ("two", 1.0)}))
    third = RedisRewriteIndex(redis_url, "rw_versions", "v000003").load(_table({"q": ("three", 1.0)}))
    third.drop_other_versions({"v000002", "v000003"})
    assert first.size() == 0
    assert asyncio.run(RedisRewriteIndex(redis_url, "rw_versions", "v000002").lookup(["q"])) == [("two", 1.0)]
    assert asyncio.run(third.lookup(["q"])) == [("three", 1.0)]


def test_rewrite_lookup_with_the_redis_backend_swaps_versions(redis_url, tmp_path):
    store = Store(str(tmp_path / "store"))
    store.publish("rewrites", {"table": _table({"turn of the lights": ("turn off the lights", 0.9)})})
    store.publish("rewrites", {"table": _table({"turn of the lights": ("lights off", 0.7)})})
    lookup = RewriteLookup.func_or_class(str(tmp_path / "store"), "rewrites", "redis", redis_url, 60.0)

    async def scenario():
        await lookup.reconfigure({"version": "v000001"})
        one = await lookup.rewrite(["Turn OF the lights", "hello"])
        await lookup.reconfigure({"version": "latest"})
        two = await lookup.rewrite(["turn of the lights"])
        return one, two

    one, two = asyncio.run(scenario())
    assert one["version"] == "v000001" and [r["rewrite"] for r in one["results"]] == ["turn off the lights", None]
    assert two["version"] == "v000002" and two["results"][0]["rewrite"] == "lights off"
    assert lookup.describe() == {"version": "v000002", "enabled": True, "backend": "redis", "size": 1}
