"""Deploying the selflearn Serve application: its packaged config, settings overrides,
the local runtime's ingress environment, and ``deploy`` (the command is ``jobs/serve.py``).

``deploy`` runs the same declarative config ``serve deploy`` would (so
``POST /v1/admin/reload`` can swap versions through ``user_config``).

Ingress: with the local runtime the HAProxy ingress is switched on
(``RAY_SERVE_ENABLE_HA_PROXY=1`` + ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``, plus
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` and ``RAY_SERVE_HAPROXY_METRICS_ENABLED=0``),
measured several times faster than the default Python proxy on 2 cores (see
serve_apps/README.md);
``--ingress proxy`` keeps the default proxy. On an existing cluster the ingress is
whatever the cluster was started with.
"""

from __future__ import annotations

import copy
import os
import socket
from importlib import resources

import yaml
from pydantic import ValidationError

from raylib.errors import UserError
from serve_apps.settings import ServeSettings

APP_NAME = "selflearn"
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",  # gRPC between deployments, user code on the replica's loop
    # No per-request log datagram from HAProxy to a Python parser (HAProxy's request-count and
    # latency metrics); the replicas' own request metrics stay. Measured faster on 2 cores.
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
}
# Local runs: ingress replicas drain for 2 s on shutdown instead of the 30 s a cluster
# behind a load balancer needs; the HAProxy manager gets 30 s (not 5 s) to report ready,
# so a busy 2-core machine does not see it killed and restarted during serve.start.
LOCAL_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}


def packaged_config() -> dict:
    """The ``serve_config.yaml`` shipped in this package."""
    return yaml.safe_load(resources.files("serve_apps").joinpath("serve_config.yaml").read_text())


HAPROXY_LISTENER_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ingress_env(ingress: str) -> dict[str, str]:
    """Environment a local Ray runtime needs for the chosen ingress ("haproxy" | "proxy").

    HAProxy's stats and Prometheus listeners get free ports unless the environment names
    them: Ray's fixed defaults (8404, 9101) make a second local Serve on the same machine
    (a test, a benchmark, the demo) fail at start-up."""
    if ingress != "haproxy":
        return {}
    ports = {name: os.environ.get(name) or str(free_port()) for name in HAPROXY_LISTENER_PORTS}
    return {**HAPROXY_ENV, **LOCAL_ENV, **ports}


def serve_config(base: dict, args: dict, host: str | None = None, port: int | None = None) -> dict:
    """``base`` (a ServeDeploySchema dict) with the selflearn app's ``args`` updated and
    its settings checked; local paths in args become absolute (replicas run elsewhere)."""
    config = copy.deepcopy(base)
    app = next((a for a in config["applications"] if a["name"] == APP_NAME), None)
    if app is None:
        raise UserError(f"the config has no application named {APP_NAME!r}")
    merged = {**(app.get("args") or {}), **args}
    for key in ("store_root", "decision_log_dir", "decision_log_spill_dir"):
        if merged.get(key) and "://" not in merged[key]:
            merged[key] = os.path.abspath(merged[key])
    try:
        ServeSettings(**merged)
    except ValidationError as exc:
        raise UserError(f"bad serving settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
    app["args"] = merged
    http = config.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = port
    return config


def deploy(config: dict, timeout_s: float = 120.0) -> str:
    """Start Serve (Ray must be initialised) and deploy ``config``; returns the base URL
    once every application is RUNNING."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    http = config.get("http_options", {})
    serve.start(http_options={"host": http.get("host", "127.0.0.1"), "port": http.get("port", 8000)})
    client = _get_global_client()
    client.deploy_apps(schema)
    for app in schema.applications:
        client._wait_for_application_running(app.name, timeout_s=timeout_s)
    return f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
