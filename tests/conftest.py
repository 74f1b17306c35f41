"""Fixtures shared by the test modules: a local Ray runtime, one with the HAProxy ingress
environment that the Serve tests need, and an S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import time
import uuid

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def wait_until(condition, timeout_s: float, poll_s: float) -> None:
    """Call ``condition`` every ``poll_s`` seconds until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(poll_s)


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU local Ray runtime for one test module."""
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def serve_ray():
    """A 2-CPU local Ray runtime started with the HAProxy ingress environment (listeners on
    free ports) that ``selflearn serve`` uses; Serve is shut down with it."""
    import ray
    from ray import serve

    from serve_apps.deploy import ingress_env

    ray.shutdown()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ingress_env("haproxy").items():
            mp.setenv(key, value)
        ray.init(num_cpus=2, include_dashboard=False)
        try:
            yield
        finally:
            serve.shutdown()
            ray.shutdown()


class S3:
    """A bucket on a local S3-compatible server; ``uri(path)`` is its pyarrow.fs URI."""

    def __init__(self, endpoint: str, bucket: str):
        import boto3

        self.endpoint, self.bucket = endpoint, bucket
        self.client = boto3.client("s3", endpoint_url=endpoint)
        self.client.create_bucket(Bucket=bucket)

    def uri(self, path: str) -> str:
        host = self.endpoint.removeprefix("http://")
        return f"s3://{self.bucket}/{path}?endpoint_override={host}&scheme=http&region=us-east-1"

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (directory markers left out)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (as Ray's own tests simulate S3), with test
    credentials in the environment; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for key, value in S3_ENV.items():
            mp.setenv(key, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3(s3_server) -> S3:
    """A fresh bucket for one test."""
    return S3(s3_server, f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def s3_module(s3_server) -> S3:
    """A fresh bucket shared by one test module."""
    return S3(s3_server, f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def cluster(s3_server):
    """A multi-node cluster for one test module (``tests/cluster_harness.py``: a 0-CPU head
    and two 2-CPU worker nodes) whose nodes can reach the S3 server, started with the
    HAProxy ingress environment the cluster's start commands set (the loop deploys Serve)."""
    from cluster_harness import Cluster
    from serve_apps.deploy import ingress_env

    c = Cluster(workers=2, cpus=2, extra_env={**S3_ENV, **ingress_env("haproxy")})
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def serve_ray_metrics(request):
    """``serve_ray`` with Ray's metrics reported every second instead of every 10 s; yields
    the URL of the node's Prometheus endpoint (``ray_*`` application metrics included)."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_metrics_report_interval_ms", "1000")
        request.getfixturevalue("serve_ray")
    [node] = ray.nodes()
    yield f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
