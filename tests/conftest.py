"""Fixtures shared by the test modules: a local Ray runtime, and one with the HAProxy
ingress environment that the Serve tests need."""

from __future__ import annotations

import pytest


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
