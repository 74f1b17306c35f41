"""Serving on a cluster the way an operator does it: ``selflearn serve deploy`` (a separate
process that joins the cluster, deploys and exits) with the store and the decision log in an
S3 bucket (moto on 127.0.0.1), then ``selflearn serve status``, real HTTP requests, and the
decisions appearing as Parquet files in the bucket. The cluster is a 0-CPU head plus one
2-CPU worker (``tests/cluster_harness.py``) started with the HAProxy ingress environment,
as the cluster's start commands set it (serve_apps/README.md, "Run")."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pyarrow as pa
import pytest
import requests

from raylib import uri
from raylib.routing.features import Vocabulary
from raylib.routing.hybrid import HybridPolicy
from raylib.routing.toy import ToyBandit
from raylib.store import Store
from serve_apps.deploy import free_port, ingress_env
from cluster_harness import Cluster
from conftest import S3_ENV

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROUTES = 20


@pytest.fixture(scope="module")
def cluster(s3_server):
    c = Cluster(workers=1, cpus=2, extra_env={**S3_ENV, **ingress_env("haproxy")})
    try:
        yield c
    finally:
        # Serve first: the nodes then stop in seconds (measured 8 s, against 52 s with Serve running)
        subprocess.run([sys.executable, "-c", "import ray; from ray import serve; ray.init(); serve.shutdown()"],
                       env=dict(c.env, RAY_ADDRESS=c.head.gcs), capture_output=True, timeout=120)
        c.stop()


def selflearn_serve(cluster: Cluster, *args: str) -> dict:
    """Run ``selflearn serve ARGS`` as its own process, joined to ``cluster`` through
    RAY_ADDRESS; its JSON output."""
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "serve", *args], capture_output=True, text=True,
                          env=dict(cluster.env, RAY_ADDRESS=cluster.head.gcs), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_deploy_with_s3_store_and_decision_log_then_status_and_traffic(cluster, s3):
    store = Store(s3.uri("store"))
    store.publish("rewrites", {"table": pa.table({"utterance": ["turn of the lights"], "rewrite": ["turn off the lights"],
                                                  "score": [0.9], "n_customers": [5]})})
    log, _ = ToyBandit(seed=0).routing(300, seed=0)
    store.publish("policy", HybridPolicy.untrained(Vocabulary.fit(log), seed=1).to_files())

    port = free_port()
    deployed = selflearn_serve(cluster, "deploy", "--store", s3.uri("store"), "--port", str(port),
                               "--set", f"decision_log_dir={s3.uri('log')}", "--set", "decision_log_max_age_s=1")
    url = f"http://127.0.0.1:{port}"
    assert deployed["url"] == url and deployed["applications"]["selflearn"]["status"] == "RUNNING"

    status = selflearn_serve(cluster, "status", "--url", url)
    deployments = status["applications"]["selflearn"]["deployments"]
    assert {name: d["replicas"] for name, d in deployments.items()} == {
        name: {"RUNNING": 1} for name in ("RewriteLookup", "HybridRouter", "Ingress")}
    assert all(d["status"] == "HEALTHY" for d in deployments.values())
    assert status["versions"]["rewrites"]["version"] == "v000001" and status["versions"]["policy"]["version"] == "v000001"

    rewrite = requests.post(f"{url}/v1/rewrite", json={"utterance": "Turn of the lights"}, timeout=30).json()
    assert rewrite["results"][0]["rewrite"] == "turn off the lights"
    ids = set()
    for row in log.slice(0, ROUTES).to_pylist():
        body = {"utterance": row["utterance"], "candidates": row["candidates"], "context": row["context"]}
        answer = requests.post(f"{url}/v1/route", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        ids.add(answer.json()["request_id"])

    deadline = time.monotonic() + 60  # the writer flushes rows once they are 1 s old
    while len(logged := _logged_ids(s3)) < ROUTES and time.monotonic() < deadline:
        time.sleep(0.5)
    assert logged == ids
    assert all(key.endswith(".parquet") for key in s3.keys("log/routing_log/"))


def _logged_ids(s3) -> set[str]:
    if not s3.keys("log/routing_log/"):
        return set()
    return set(uri.read_table(s3.uri("log"), "routing_log").column("request_id").to_pylist())
