"""Serving benchmark: the Ray Serve app against a plain FastAPI + uvicorn peer, same client.

Measured in one run on this machine, with one asyncio/aiohttp client (``--concurrency``
keep-alive connections, closed loop). The peer and Serve are measured alternately
``--rounds`` times and every ratio is the median of the per-round ratios, so both sides see
the same background load (this machine is shared).

1. rewrite lookup, one utterance per request: Serve ``/v1/rewrite`` on the HAProxy port
   (the endpoint users call) vs the peer (a plain FastAPI app in its own uvicorn process:
   the same request model, normalization and a dict lookup). Targets: p99 <= 2x the
   peer's, rps >= 0.5x the peer's, zero errors. Diagnostic: the same on the ingress
   replica's own direct-ingress port, i.e. without the HAProxy hop.
2. rewrite lookup, ``--batch`` utterances per request: utterances/s >= 10x the peer's
   single-utterance rate.
3. router with ``@serve.batch`` (max 64) vs unbatched (max 1, set through ``user_config``),
   at ``--router-concurrency`` requests in flight over HTTP. Target: >= 3x rps.
   Diagnostic: the same through a DeploymentHandle, one call per request (the router alone).
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
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa

from serve_apps.models import RewriteRequest


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


def direct_ingress_urls() -> list[str]:
    """The ingress replicas' own HTTP ports (direct ingress): what HAProxy forwards to
    (this benchmark runs on one node, so on loopback)."""
    import ray
    from ray.serve.context import _get_global_client

    groups = ray.get(_get_global_client()._controller.get_target_groups.remote(from_proxy_manager=True))
    return [f"http://127.0.0.1:{t.port}" for g in groups if str(g.protocol).endswith("HTTP") for t in g.targets]


def median(values: list[float]) -> float:
    return float(np.median(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="peer and Serve are measured alternately this many times; ratios are per-round medians")
    parser.add_argument("--sustain", type=float, default=60.0, help="seconds of sustained mixed load")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--router-concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100, help="utterances per batched rewrite request")
    parser.add_argument("--table-size", type=int, default=100_000)
    parser.add_argument("--ingress", choices=("haproxy", "proxy"), default="haproxy")
    args = parser.parse_args(argv)

    from serve_apps.run import deploy, free_port, ingress_env, packaged_config, serve_config

    os.environ.update(ingress_env(args.ingress))  # HAProxy's stats/metrics listeners on free ports
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
    direct = direct_ingress_urls()[0] if args.ingress == "haproxy" else None
    print(f"Serve ({args.ingress} ingress) at {url} (the endpoint users call); ingress replica's own port {direct}; "
          f"{table.num_rows} rewrites; {args.concurrency} connections, {args.duration:.0f} s per measurement", flush=True)

    peer_port = free_port()
    peer_url = f"http://127.0.0.1:{peer_port}/v1/rewrite"
    peer = multiprocessing.get_context("spawn").Process(target=run_peer, args=(peer_port, f"{work}/table.parquet"))
    peer.start()
    rounds = []
    try:
        wait_http(peer_url)
        for k in range(args.rounds):
            r = {"peer": load(peer_url, singles, args.duration, args.concurrency)}
            report(f"[{k + 1}] peer FastAPI+uvicorn, 1 utterance", r["peer"])
            r["single"] = load(f"{url}/v1/rewrite", singles, args.duration, args.concurrency)
            report(f"[{k + 1}] Serve /v1/rewrite, 1 utterance", r["single"])
            if direct:
                r["direct"] = load(f"{direct}/v1/rewrite", singles, args.duration, args.concurrency)
                report(f"[{k + 1}]   same, replica port (no HAProxy)", r["direct"])
            r["batch"] = load(f"{url}/v1/rewrite", batches, args.duration, args.concurrency)
            report(f"[{k + 1}] Serve /v1/rewrite, {args.batch} utterances", r["batch"])
            rounds.append(r)
    finally:
        peer.terminate()
        peer.join()

    router = serve.get_deployment_handle("HybridRouter", app_name="selflearn")
    handle_loop = asyncio.new_event_loop()  # the handle binds to one loop that keeps running
    threading.Thread(target=handle_loop.run_forever, daemon=True).start()

    def through_handle() -> dict:
        job = _handle_load(router, routes, args.duration, args.router_concurrency)
        return asyncio.run_coroutine_threadsafe(job, handle_loop).result()

    routing = {"batched": [], "unbatched": [], "handle_batched": [], "handle_unbatched": []}
    for k in range(max(1, args.rounds - 1)):
        for mode, size in (("batched", 64), ("unbatched", 1)):
            control.apply_user_config("selflearn", "HybridRouter", {"max_batch_size": size})
            routing[mode].append(load(f"{url}/v1/route", routes, args.duration, args.router_concurrency))
            report(f"[{k + 1}] Serve /v1/route, max_batch_size {size}", routing[mode][-1])
            routing[f"handle_{mode}"].append(through_handle())
            report(f"[{k + 1}] HybridRouter handle, max_batch_size {size}", routing[f"handle_{mode}"][-1])
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

    measured = [r[key] for r in rounds for key in ("single", "batch")] + [sustained_rewrite, sustained_route]
    measured += [r for runs in routing.values() for r in runs]
    p99 = median([r["single"]["p99_ms"] / r["peer"]["p99_ms"] for r in rounds])
    rps = median([r["single"]["rps"] / r["peer"]["rps"] for r in rounds])
    batched = median([r["batch"]["rps"] * args.batch / r["peer"]["rps"] for r in rounds])
    router_http = median([b["rps"] / u["rps"] for b, u in zip(routing["batched"], routing["unbatched"])])
    router_handle = median([b["rps"] / u["rps"] for b, u in zip(routing["handle_batched"], routing["handle_unbatched"])])
    print(f"\nratios (Serve / peer measured alternately, median of {args.rounds} rounds):")
    ok = all([
        verdict("rewrite p99 / peer p99", p99, "<= 2", p99 <= 2),
        verdict("rewrite rps / peer rps", rps, ">= 0.5", rps >= 0.5),
        verdict("batched utterances/s / peer single rps", batched, ">= 10", batched >= 10),
        verdict("router batched rps / unbatched rps (HTTP)", router_http, ">= 3", router_http >= 3),
        verdict("errors (all Serve measurements)", sum(r["errors"] for r in measured), "== 0",
                all(r["errors"] == 0 for r in measured)),
    ])
    print("diagnostics (no target):")
    if direct:
        print(f"  rewrite on the replica's own port, no HAProxy: rps / peer {median([r['direct']['rps'] / r['peer']['rps'] for r in rounds]):.2f}, "
              f"p99 / peer {median([r['direct']['p99_ms'] / r['peer']['p99_ms'] for r in rounds]):.2f}")
    print(f"  router batched / unbatched through a DeploymentHandle, one call per request: {router_handle:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
