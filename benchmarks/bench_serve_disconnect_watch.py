"""A/B of ``serve_apps.http_middleware`` (``/v1/rewrite`` skips Serve's disconnect watch).

One Ray cluster serves the selflearn application twice, ``/a`` as packaged and ``/b``
without the middleware (its ``runtime_env`` emptied), beside the plain FastAPI + uvicorn
peer of ``bench_serve.py``. All three are measured through HAProxy in ``--rounds``
interleaved rounds (``bench_serve.interleaved``), and each side is summarised by its least
contended rounds, as in ``bench_serve.py``. Printed: rps / peer and the ingress replica's
CPU per request (10th percentile), with and without the middleware.

Run by hand (never in CI): ``.venv/bin/python benchmarks/bench_serve_disconnect_watch.py``.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import random
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_serve as bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--table-size", type=int, default=100_000)
    args = parser.parse_args(argv)

    from serve_apps.deploy import deploy, free_port, ingress_env, packaged_config, serve_config

    os.environ.update(ingress_env("haproxy"))
    import pyarrow.parquet as pq
    import ray

    from raylib.routing.features import Vocabulary
    from raylib.routing.hybrid import HybridPolicy
    from raylib.routing.toy import ToyBandit
    from raylib.store import Store

    work = tempfile.mkdtemp(prefix="bench_watch_")
    table = bench.rewrite_table(args.table_size)
    pq.write_table(table, f"{work}/table.parquet")
    store = Store(f"{work}/store")
    store.publish("rewrites", {"table": table})
    log, _ = ToyBandit(seed=0).routing(500, seed=0)
    store.publish("policy", HybridPolicy.untrained(Vocabulary.fit(log), seed=0).to_files())
    singles = [{"utterance": u} for u in random.Random(1).sample(table.column("utterance").to_pylist(), 5000)]

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    config = serve_config(packaged_config(), {"store_root": f"{work}/store", "decision_log_dir": f"{work}/log"},
                          host="127.0.0.1", port=free_port())
    [app] = config["applications"]
    variants = {"a": "with the middleware", "b": "without it"}
    apps = []
    for name in variants:
        variant = copy.deepcopy(app)
        variant.update(name=name, route_prefix=f"/{name}")
        variant["args"]["decision_log_dir"] = f"{work}/log_{name}"
        if name == "b":
            variant["runtime_env"] = {}
        for deployment in variant["deployments"]:
            deployment["ray_actor_options"]["num_cpus"] = 0.1
        apps.append(variant)
    config["applications"] = apps
    url = deploy(config)

    peer_port = free_port()
    peer = multiprocessing.get_context("spawn").Process(target=bench.run_peer, args=(peer_port, f"{work}/table.parquet"))
    peer.start()
    targets = {"peer": (f"http://127.0.0.1:{peer_port}/v1/rewrite", singles, [peer.pid])}
    for name in variants:
        targets[name] = (f"{url}/{name}/v1/rewrite", singles, bench.processes(f"ray::ServeReplica:{name}:Ingress"))
    labels = {"peer": "peer FastAPI+uvicorn", **{k: f"Serve /v1/rewrite, {v}" for k, v in variants.items()}}
    try:
        bench.wait_http(targets["peer"][0])
        rounds = bench.interleaved(targets, args.rounds, args.duration, args.concurrency, labels)
    finally:
        peer.terminate()
        peer.join()
        ray.shutdown()

    def quiet_rps(name: str) -> float:
        return float(np.percentile([r["rps"] for r in rounds[name]], 75))

    print(f"\nleast contended rounds of {args.rounds} (rps 75th percentile; replica CPU 10th):")
    for name, what in variants.items():
        cpu = float(np.percentile([r["cpu_us"] for r in rounds[name]], 10))
        print(f"  {what:<22} rps / peer {quiet_rps(name) / quiet_rps('peer'):.2f}   replica CPU {cpu:.0f} us/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
