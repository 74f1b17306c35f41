"""Deploying the selflearn Serve application: its packaged config, settings overrides,
the local runtime's ingress environment, ``deploy`` and ``status`` (the commands are
``jobs/serve.py``).

``deploy`` applies the declarative config the way ``serve deploy`` does (Serve started with
the config's cluster-wide options, then the applications deployed from ``import_path`` +
``args``), through the connected driver: the local runtime of ``selflearn serve``, or the
cluster ``selflearn serve deploy`` joins. Ray 2.60 has no public Python call for this:
``serve.run`` deploys an application built in the caller's process (the config's
per-deployment options and application ``runtime_env`` would have to be re-applied by hand,
and the application would have no declarative config for ``serve config`` / ``serve
deploy``), and the REST endpoint behind ``serve deploy`` (``PUT /api/serve/applications/``)
needs the dashboard, which local runtimes such as the tests' do not start. So one call,
``deploy_apps`` on the Serve client, is private: the call Ray's own ``serve run CONFIG``
makes. Starting Serve, waiting and ``status`` use public APIs (``serve.start``,
``serve.status``).

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
import json
import os
import socket
import time
import urllib.request
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


def base_url(config: dict) -> str:
    """The HTTP address of the applications of ``config`` (its ``http_options``)."""
    http = config.get("http_options", {})
    return f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"


def deploy(config: dict, timeout_s: float = 120.0) -> str:
    """Deploy ``config`` (a ServeDeploySchema dict) on the Ray runtime this process is
    connected to, starting Serve with the config's proxy location, HTTP, gRPC and logging
    options if it is not running; returns the base URL once every application is RUNNING.
    UserError when an application fails to deploy."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    http = config.get("http_options", {})
    serve.start(proxy_location=schema.proxy_location, grpc_options=schema.grpc_options.model_dump(),
                logging_config=schema.logging_config,
                http_options={"host": http.get("host", "127.0.0.1"), "port": http.get("port", 8000)})
    _get_global_client().deploy_apps(schema)  # private, see the module docstring
    _wait_running([app.name for app in schema.applications], timeout_s)
    return base_url(config)


def _wait_running(names: list[str], timeout_s: float) -> None:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        failed = {n: apps[n].message for n in names if n in apps and apps[n].status == ApplicationStatus.DEPLOY_FAILED}
        if failed:
            raise UserError("; ".join(f"deploying {n} failed: {message}" for n, message in failed.items()))
        if all(n in apps and apps[n].status == ApplicationStatus.RUNNING for n in names):
            return
        if time.monotonic() > deadline:
            states = {n: apps[n].status if n in apps else "absent" for n in names}
            raise TimeoutError(f"applications not RUNNING after {timeout_s:.0f} s: {states}")
        time.sleep(0.5)


def status(url: str | None = None) -> dict:
    """Serve on the connected cluster (``serve.status()``): the proxies, and per application
    its status, message and deployments with their status and replica counts by state.
    With ``url``: the selflearn application's served versions (``GET url/v1/versions``)
    under ``versions``, or why they could not be read under ``versions_error``."""
    from ray import serve

    current = serve.status()  # statuses are str enums (JSON: their names), replica states str
    out = {
        "proxies": dict(current.proxies),
        "applications": {
            name: {
                "status": app.status,
                "message": app.message,
                "deployments": {
                    dep_name: {"status": dep.status, "message": dep.message, "replicas": dict(dep.replica_states)}
                    for dep_name, dep in app.deployments.items()
                },
            }
            for name, app in current.applications.items()
        },
    }
    if url is not None:
        out["url"] = url
        try:
            with urllib.request.urlopen(f"{url}/v1/versions", timeout=10) as response:
                out["versions"] = json.load(response)
        except (OSError, ValueError) as exc:  # unreachable, refused, an HTTP error, not JSON
            out["versions"], out["versions_error"] = None, f"{type(exc).__name__}: {exc}"
    return out
