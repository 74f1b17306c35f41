"""Serving benchmark: the Ray Serve app against a plain FastAPI + uvicorn peer, same client.

Measured in one run on this machine, with one asyncio/aiohttp client (``--concurrency``
keep-alive connections, closed loop):

1. rewrite lookup, one utterance per request: Serve ``/v1/rewrite`` vs the peer (a plain
   FastAPI app in its own uvicorn process: the same request model, normalization and a dict
   lookup). Targets: p99 <= 2x the peer's, rps >= 0.5x the peer's, zero errors.
2. rewrite lookup, ``--batch`` utterances per request: utterances/s >= 10x the peer's
   single-utterance rate.
3. router with ``@serve.batch`` (max 64) vs unbatched (max 1, set through ``user_config``),
   at ``--router-concurrency`` requests in flight, over HTTP and through a DeploymentHandle
   (the router alone). Target: >= 3x rps.
4. ``--sustain`` seconds of mixed rewrite/route traffic: zero errors.

Run by hand (never in CI): ``.venv/bin/python benchmarks/bench_serve.py``;
``--ingress proxy`` measures Serve's default Python proxy instead of HAProxy direct ingress.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa

from serve_apps.models import RewriteRequest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the client ---------------------------------------------------------------------------


def load_summary(latencies: list[float], elapsed: float, errors: int) -> dict:
    """Requests, rps, p50/p99 latency (ms) and errors of one closed-loop load run."""
    lat = np.array(latencies) * 1e3
    return {"requests": len(lat), "rps": len(lat) / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": errors}


async def _load(url: str, bodies: list[dict], seconds: float, concurrency: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop = time.perf_counter() + seconds

        async def worker(k: int):
            nonlocal errors
            i = k
            while time.perf_counter() < stop:
                body = bodies[i % len(bodies)]
                i += concurrency
                start = time.perf_counter()
                try:
                    async with session.post(url, json=body) as response:
                        await response.read()
                        if response.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    return load_summary(latencies, elapsed, errors)


async def _handle_load(handle, bodies: list[dict], seconds: float, concurrency: int) -> dict:
    """The same closed loop through a DeploymentHandle (no HTTP): the router alone."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(k: int):
        nonlocal errors
        i = k
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                if await handle.route.remote(bodies[i % len(bodies)]) is None:
                    errors += 1
            except Exception:  # noqa: BLE001 - any failure counts as an error
                errors += 1
            latencies.append(time.perf_counter() - start)
            i += concurrency

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - began
    return load_summary(latencies, elapsed, errors)


def load(url: str, bodies: list[dict], seconds: float, concurrency: int, warmup: float = 2.0) -> dict:
    """Closed-loop load: ``concurrency`` keep-alive connections posting ``bodies`` in turn."""
    asyncio.run(_load(url, bodies, warmup, concurrency))
    return asyncio.run(_load(url, bodies, seconds, concurrency))


# ---- the peer: plain FastAPI + uvicorn ----------------------------------------------------


def run_peer(port: int, table_path: str) -> None:
    """A plain FastAPI app answering /v1/rewrite from a dict (one uvicorn process)."""
    import pyarrow.parquet as pq
    import uvicorn
    from fastapi import FastAPI

    from raylib.schema import normalize_utterance
    from serve_apps.rewrite_index import best_rewrites

    utterances, rewrites, scores = best_rewrites(pq.read_table(table_path))
    hits = dict(zip(utterances, zip(rewrites, scores)))
    api = FastAPI()

    @api.post("/v1/rewrite")
    async def rewrite(body: RewriteRequest) -> dict:
        results = []
        for text in body.texts():
            normalized = normalize_utterance(text)
            rewrite, score = hits.get(normalized, (None, None))
            results.append({"utterance": text, "normalized": normalized, "rewrite": rewrite, "score": score})
        return {"version": "peer", "enabled": True, "results": results}

    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_http(url: str, timeout: float = 30.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.post(url, json={"utterance": "warm up"}, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise TimeoutError(url)


# ---- data ---------------------------------------------------------------------------------


def rewrite_table(n: int, seed: int = 0) -> pa.Table:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(2000)]
    utterances = sorted({" ".join(rng.choices(words, k=4)) for _ in range(n)})
    return pa.table({
        "utterance": utterances,
        "rewrite": [u.upper() for u in utterances],
        "score": [rng.random() for _ in utterances],
        "n_customers": [rng.randint(3, 50) for _ in utterances],
    })


def report(name: str, r: dict) -> None:
    print(f"{name:<34} {r['rps']:>9.0f} rps  p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms  "
          f"errors {r['errors']}/{r['requests']}", flush=True)


def verdict(name: str, value: float, target: str, ok: bool) -> bool:
    print(f"  {name:<52} {value:>8.2f}   target {target:<8} {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--sustain", type=float, default=60.0, help="seconds of sustained mixed load")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--router-concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100, help="utterances per batched rewrite request")
    parser.add_argument("--table-size", type=int, default=100_000)
    parser.add_argument("--ingress", choices=("haproxy", "proxy"), default="haproxy")
    args = parser.parse_args(argv)

    from serve_apps.run import deploy, ingress_env, packaged_config, serve_config

    os.environ.update(ingress_env(args.ingress))
    import pyarrow.parquet as pq
    import ray
    from ray import serve

    from raylib.routing.features import Vocabulary
    from raylib.routing.hybrid import HybridPolicy
    from raylib.routing.toy import ToyBandit
    from raylib.store import Store
    from serve_apps import control

    work = tempfile.mkdtemp(prefix="bench_serve_")
    table = rewrite_table(args.table_size)
    pq.write_table(table, f"{work}/table.parquet")
    store = Store(f"{work}/store")
    store.publish("rewrites", {"table": table})
    log, _ = ToyBandit(seed=0).routing(2000, seed=0)
    store.publish("policy", HybridPolicy.untrained(Vocabulary.fit(log), seed=0).to_files())
    rng = random.Random(1)
    utterances = table.column("utterance").to_pylist()
    singles = [{"utterance": u} for u in rng.sample(utterances, 5000)]
    batches = [{"utterances": rng.sample(utterances, args.batch)} for _ in range(200)]
    routes = [{"utterance": r["utterance"], "candidates": r["candidates"], "context": r["context"],
               "customer_id": r["customer_id"]} for r in log.to_pylist()]

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    settings = {"store_root": f"{work}/store", "decision_log_dir": f"{work}/log"}
    url = deploy(serve_config(packaged_config(), settings, host="127.0.0.1", port=port))
    print(f"Serve ({args.ingress} ingress) at {url}; {table.num_rows} rewrites; "
          f"{args.concurrency} connections, {args.duration:.0f} s per measurement", flush=True)

    peer_port = free_port()
    peer = multiprocessing.get_context("spawn").Process(target=run_peer, args=(peer_port, f"{work}/table.parquet"))
    peer.start()
    try:
        wait_http(f"http://127.0.0.1:{peer_port}/v1/rewrite")
        peer_single = load(f"http://127.0.0.1:{peer_port}/v1/rewrite", singles, args.duration, args.concurrency)
    finally:
        peer.terminate()
        peer.join()
    report("peer FastAPI+uvicorn, 1 utterance", peer_single)
    serve_single = load(f"{url}/v1/rewrite", singles, args.duration, args.concurrency)
    report("Serve /v1/rewrite, 1 utterance", serve_single)
    serve_batch = load(f"{url}/v1/rewrite", batches, args.duration, args.concurrency)
    report(f"Serve /v1/rewrite, {args.batch} utterances", serve_batch)

    router = serve.get_deployment_handle("HybridRouter", app_name="selflearn")
    handle_loop = asyncio.new_event_loop()  # the handle binds to one loop that keeps running
    threading.Thread(target=handle_loop.run_forever, daemon=True).start()

    def through_handle() -> dict:
        job = _handle_load(router, routes, args.duration, args.router_concurrency)
        return asyncio.run_coroutine_threadsafe(job, handle_loop).result()

    batched = load(f"{url}/v1/route", routes, args.duration, args.router_concurrency)
    report("Serve /v1/route, @serve.batch 64", batched)
    handle_batched = through_handle()
    report("HybridRouter handle, @serve.batch 64", handle_batched)
    control.apply_user_config("selflearn", "HybridRouter", {"max_batch_size": 1})
    unbatched = load(f"{url}/v1/route", routes, args.duration, args.router_concurrency)
    report("Serve /v1/route, unbatched", unbatched)
    handle_unbatched = through_handle()
    report("HybridRouter handle, unbatched", handle_unbatched)
    control.apply_user_config("selflearn", "HybridRouter", {"max_batch_size": 64})

    async def sustain():
        return await asyncio.gather(
            _load(f"{url}/v1/rewrite", singles, args.sustain, max(1, args.concurrency // 2)),
            _load(f"{url}/v1/route", routes, args.sustain, max(1, args.concurrency // 2)),
        )

    sustained_rewrite, sustained_route = asyncio.run(sustain())
    report(f"sustained {args.sustain:.0f} s: rewrite", sustained_rewrite)
    report(f"sustained {args.sustain:.0f} s: route", sustained_route)
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    measured = (serve_single, serve_batch, batched, unbatched, handle_batched, handle_unbatched, sustained_rewrite, sustained_route)
    print("\nratios (Serve / peer measured above):")
    ok = all([
        verdict("rewrite p99 / peer p99", serve_single["p99_ms"] / peer_single["p99_ms"], "<= 2", serve_single["p99_ms"] <= 2 * peer_single["p99_ms"]),
        verdict("rewrite rps / peer rps", serve_single["rps"] / peer_single["rps"], ">= 0.5", serve_single["rps"] >= 0.5 * peer_single["rps"]),
        verdict("batched utterances/s / peer single rps", serve_batch["rps"] * args.batch / peer_single["rps"], ">= 10",
                serve_batch["rps"] * args.batch >= 10 * peer_single["rps"]),
        verdict("router batched rps / unbatched rps (HTTP)", batched["rps"] / unbatched["rps"], ">= 3", batched["rps"] >= 3 * unbatched["rps"]),
        verdict("router batched rps / unbatched rps (handle)", handle_batched["rps"] / handle_unbatched["rps"], ">= 3",
                handle_batched["rps"] >= 3 * handle_unbatched["rps"]),
        verdict("errors (all Serve measurements)", sum(r["errors"] for r in measured),
                "== 0", all(r["errors"] == 0 for r in measured)),
    ])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
