"""Serving benchmark: the Ray Serve app against a plain FastAPI + uvicorn peer, same client.

Measured in one run on this machine, with one asyncio/aiohttp client (``--concurrency``
keep-alive connections, closed loop). This machine is shared: bursts of background load
lasting seconds cut any server's rate by up to 20x. So the peer and Serve are measured in
``--rounds`` short rounds (``--duration`` seconds per measurement, in a shuffled order per
round), and each side is summarised by its least contended rounds: rps by the 75th
percentile over the rounds, p99 latency by the 25th, and a ratio compares those (a median
of per-round ratios turned a burst on the peer's side into a "pass"). Each server's CPU
time per request (its processes' user+system time over the requests it answered, 10th
percentile over the rounds) says where the time goes.

1. rewrite lookup, one utterance per request: Serve ``/v1/rewrite`` on the HAProxy port
   (the endpoint users call) vs the peer (a plain FastAPI app in its own uvicorn process:
   the same request model, normalization and a dict lookup). Targets: p99 <= 2x the
   peer's, rps >= 0.5x the peer's, zero errors. Diagnostic: the same on the ingress
   replica's own direct-ingress port, i.e. without the HAProxy hop; the peer at the CPU
   priority Ray gives its workers (their niceness), as Serve's processes run.
2. rewrite lookup, ``--batch`` utterances per request: utterances/s >= 10x the peer's
   single-utterance rate.
3. router with ``@serve.batch`` (max 64) vs unbatched (max 1, set through ``user_config``),
   at ``--router-concurrency`` requests in flight over HTTP. Target: >= 3x rps.
   ``--router-rounds`` rounds of ``--router-duration`` s. Diagnostic: the same through a
   DeploymentHandle, one call per request (the router alone).
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


# ---- the servers' processes -----------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far (a process that has exited counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def niceness(pid: int) -> int:
    return int(_stat(pid)[16])


def processes(text: str, parent: int | None = None) -> list[int]:
    """PIDs whose command line contains ``text`` (Ray titles a worker ``ray::<actor>``),
    optionally only the children of ``parent``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
            if text in command and (parent is None or int(_stat(int(pid))[1]) == parent):
                found.append(int(pid))
        except OSError:
            continue
    return found


def serve_processes(haproxy: bool) -> dict[str, list[int]]:
    """The ingress replica's process and the front's: HAProxy (the children of the HAProxy
    manager) or Serve's Python proxy."""
    if haproxy:
        [manager] = processes("ray::HAProxyManager")
        front = processes("haproxy", parent=manager)
    else:
        front = processes("ray::ProxyActor")
    return {"replica": processes("ray::ServeReplica:selflearn:Ingress"), "front": front}


def interleaved(targets: dict[str, tuple[str, list[dict], list[int]]], rounds: int, seconds: float,
                concurrency: int, labels: dict[str, str]) -> dict[str, list[dict]]:
    """``rounds`` rounds of one ``seconds`` load per target (name -> url, bodies, server
    pids), in a shuffled order per round, each reported under ``labels[name]``; each summary
    also carries ``cpu_us``, the server's CPU microseconds per answered request."""
    for url, bodies, _ in targets.values():
        asyncio.run(_load(url, bodies, 2.0, concurrency))  # warm up every path once
    results: dict[str, list[dict]] = {name: [] for name in targets}
    for k in range(rounds):
        order = list(targets)
        random.Random(k).shuffle(order)
        for name in order:
            url, bodies, pids = targets[name]
            before = cpu_seconds(pids)
            r = load(url, bodies, seconds, concurrency, warmup=0.1)
            r["cpu_us"] = (cpu_seconds(pids) - before) / r["requests"] * 1e6
            results[name].append(r)
            report(f"[{k + 1}] {labels[name]}", r)
    return results


# ---- the peer: plain FastAPI + uvicorn ----------------------------------------------------


def run_peer(port: int, table_path: str, nice: int = 0) -> None:
    """A plain FastAPI app answering /v1/rewrite from a dict (one uvicorn process), at
    niceness ``nice`` above the caller's."""
    import pyarrow.parquet as pq
    import uvicorn
    from fastapi import FastAPI

    from raylib.schema import normalize_utterance
    from serve_apps.rewrite_index import best_rewrites

    os.nice(nice)
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
    cpu = f"  CPU {r['cpu_us']:>5.0f} us/request" if "cpu_us" in r else ""
    print(f"{name:<40} {r['rps']:>7.0f} rps  p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms  "
          f"errors {r['errors']}/{r['requests']}{cpu}", flush=True)


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
    parser.add_argument("--rounds", type=int, default=15,
                        help="interleaved rounds of the rewrite measurements; each side is summarised by its least contended rounds")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per rewrite measurement")
    parser.add_argument("--router-rounds", type=int, default=2)
    parser.add_argument("--router-duration", type=float, default=8.0, help="seconds per router measurement")
    parser.add_argument("--sustain", type=float, default=60.0, help="seconds of sustained mixed load")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--router-concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100, help="utterances per batched rewrite request")
    parser.add_argument("--table-size", type=int, default=100_000)
    parser.add_argument("--ingress", choices=("haproxy", "proxy"), default="haproxy")
    args = parser.parse_args(argv)

    from serve_apps.deploy import deploy, free_port, ingress_env, packaged_config, serve_config

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
    haproxy = args.ingress == "haproxy"
    direct = direct_ingress_urls()[0] if haproxy else None
    serving = serve_processes(haproxy)
    worker_nice = niceness(serving["replica"][0]) - os.nice(0)
    print(f"Serve ({args.ingress} ingress) at {url} (the endpoint users call); ingress replica's own port {direct}; "
          f"{table.num_rows} rewrites; {args.concurrency} connections; {args.rounds} rounds of {args.duration:.0f} s "
          f"per measurement; Ray's workers run at niceness +{worker_nice} over this process", flush=True)

    peers, peer_ports = [], {}
    for name, nice in (("peer", 0), ("peer_niced", worker_nice)):
        peer_ports[name] = free_port()
        peers.append(multiprocessing.get_context("spawn").Process(
            target=run_peer, args=(peer_ports[name], f"{work}/table.parquet", nice)))
        peers[-1].start()
    ingress_pids = serving["replica"] + serving["front"]
    targets = {name: (f"http://127.0.0.1:{peer_ports[name]}/v1/rewrite", singles, [p.pid]) for name, p in zip(peer_ports, peers)}
    targets["single"] = (f"{url}/v1/rewrite", singles, ingress_pids)
    if direct:
        targets["direct"] = (f"{direct}/v1/rewrite", singles, serving["replica"])
    targets["batch"] = (f"{url}/v1/rewrite", batches, ingress_pids)
    labels = {"peer": "peer FastAPI+uvicorn, 1 utterance", "peer_niced": f"  same, at niceness +{worker_nice}",
              "single": "Serve /v1/rewrite, 1 utterance", "direct": "  same, replica port (no HAProxy)",
              "batch": f"Serve /v1/rewrite, {args.batch} utterances"}
    try:
        for name in peer_ports:
            wait_http(targets[name][0])
        rounds = interleaved(targets, args.rounds, args.duration, args.concurrency, labels)
    finally:
        for p in peers:
            p.terminate()
            p.join()

    router = serve.get_deployment_handle("HybridRouter", app_name="selflearn")
    handle_loop = asyncio.new_event_loop()  # the handle binds to one loop that keeps running
    threading.Thread(target=handle_loop.run_forever, daemon=True).start()

    def through_handle() -> dict:
        job = _handle_load(router, routes, args.router_duration, args.router_concurrency)
        return asyncio.run_coroutine_threadsafe(job, handle_loop).result()

    routing = {"batched": [], "unbatched": [], "handle_batched": [], "handle_unbatched": []}
    for k in range(args.router_rounds):
        for mode, size in (("batched", 64), ("unbatched", 1)):
            control.apply_user_config("selflearn", "HybridRouter", {"max_batch_size": size})
            routing[mode].append(load(f"{url}/v1/route", routes, args.router_duration, args.router_concurrency))
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

    measured = rounds["single"] + rounds["batch"] + [sustained_rewrite, sustained_route]
    measured += [r for runs in routing.values() for r in runs]

    def quiet(name: str, key: str) -> float:
        """``name``'s ``key`` over its least contended rounds: rps high, latency low."""
        return float(np.percentile([r[key] for r in rounds[name]], 75 if key == "rps" else 25))

    def ratio(name: str, key: str, ref: str = "peer", scale: float = 1.0) -> float:
        return quiet(name, key) * scale / quiet(ref, key)

    def cpu_us(name: str) -> float:
        return float(np.percentile([r["cpu_us"] for r in rounds[name]], 10))

    p99 = ratio("single", "p99_ms")
    rps = ratio("single", "rps")
    batched = ratio("batch", "rps", scale=args.batch)
    router_http = median([b["rps"] / u["rps"] for b, u in zip(routing["batched"], routing["unbatched"])])
    router_handle = median([b["rps"] / u["rps"] for b, u in zip(routing["handle_batched"], routing["handle_unbatched"])])
    print(f"\nratios (each side over its least contended rounds of {args.rounds}: rps 75th, p99 25th percentile):")
    print(f"  peer {quiet('peer', 'rps'):.0f} rps, p99 {quiet('peer', 'p99_ms'):.2f} ms; Serve {quiet('single', 'rps'):.0f} rps, "
          f"p99 {quiet('single', 'p99_ms'):.2f} ms; {args.batch}-utterance requests {quiet('batch', 'rps'):.0f} rps")
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
        print(f"  rewrite on the replica's own port, no HAProxy: rps / peer {ratio('direct', 'rps'):.2f}, "
              f"p99 / peer {ratio('direct', 'p99_ms'):.2f}")
    print(f"  rewrite vs the peer at niceness +{worker_nice} (Ray's workers' CPU priority): "
          f"rps / peer {ratio('single', 'rps', 'peer_niced'):.2f}, p99 / peer {ratio('single', 'p99_ms', 'peer_niced'):.2f}; "
          f"that peer / the peer: rps {ratio('peer_niced', 'rps'):.2f}")
    servers = f"Serve replica + {'HAProxy' if haproxy else 'proxy'} {cpu_us('single'):.0f}"
    if direct:
        servers += f" (replica alone, on its own port: {cpu_us('direct'):.0f})"
    print(f"  server CPU per single-utterance request, us (10th percentile over rounds): peer {cpu_us('peer'):.0f}, {servers}")
    print(f"  router batched / unbatched through a DeploymentHandle, one call per request: {router_handle:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
