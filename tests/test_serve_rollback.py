"""A rollback is the store's LATEST pointer, and Serve follows it: real Serve (HAProxy
ingress), real HTTP. ``selflearn store rollback`` reaches a running application within a
LATEST poll, and the rolled-back version survives a redeploy of the packaged config and
killed replicas; the admin rollback endpoint moves LATEST in the store, replicas that a
redeploy starts afresh serve the rolled-back version, and a version pinned in the config
stays (its admin rollback is refused)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pyarrow as pa
import pytest
import requests

from raylib.routing.features import Vocabulary
from raylib.routing.hybrid import HybridPolicy
from raylib.routing.toy import ToyBandit
from raylib.store import Store
from serve_apps.deploy import deploy, free_port, packaged_config, serve_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOKEN = "rollback-test-token"
LATEST_POLL_S = 0.5
UTTERANCE = "play maj and dragons"
REWRITES = {"v000001": "play imagine dragons", "v000002": "play imagine dragons live", "v000003": "play dragons"}
DEPLOYMENTS = ("RewriteLookup", "HybridRouter", "Ingress")


def _publish_rewrites(store: Store, version: str) -> None:
    table = pa.table({"utterance": [UTTERANCE], "rewrite": [REWRITES[version]], "score": [0.9], "n_customers": [5]})
    assert store.publish("rewrites", {"table": table}) == version


def _publish_policy(store: Store, seed: int) -> None:
    log, _ = ToyBandit(seed=0).routing(300, seed=0)
    store.publish("policy", HybridPolicy.untrained(Vocabulary.fit(log), seed=seed).to_files())


@pytest.fixture(scope="module")
def app(serve_ray, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rollback") / "store")
    store = Store(root)
    for version in ("v000001", "v000002"):
        _publish_rewrites(store, version)
    for seed in (1, 2):
        _publish_policy(store, seed)
    args = {"store_root": root, "decision_log_dir": None, "admin_token": TOKEN, "latest_poll_s": LATEST_POLL_S}
    config = serve_config(packaged_config(), args, host="127.0.0.1", port=free_port())
    url = deploy(config)
    return {"url": url, "store": store, "root": root, "config": config}


def _route_body() -> dict:
    row = ToyBandit(seed=0).routing(1, seed=3)[0].to_pylist()[0]
    return {"utterance": row["utterance"], "candidates": row["candidates"], "context": row["context"]}


def _served(url: str) -> dict:
    """What the application answers with: each deployment's version (GET /v1/versions), the
    version and rewrite of a /v1/rewrite answer, and the policy version of a /v1/route answer."""
    versions = requests.get(f"{url}/v1/versions", timeout=30).json()
    rewrite = requests.post(f"{url}/v1/rewrite", json={"utterance": UTTERANCE}, timeout=30).json()
    route = requests.post(f"{url}/v1/route", json=_route_body(), timeout=30).json()
    return {"rewrites": versions["rewrites"]["version"], "policy": versions["policy"]["version"],
            "answered": rewrite["version"], "rewrite": rewrite["results"][0]["rewrite"],
            "decided": route["policy_version"]}


def _expected(rewrites: str, policy: str) -> dict:
    return {"rewrites": rewrites, "policy": policy, "answered": rewrites, "rewrite": REWRITES[rewrites],
            "decided": policy}


def _wait_served(url: str, expected: dict, timeout_s: float = 60.0) -> float:
    """Seconds until the application answers ``expected``; fails after ``timeout_s``.
    Failed requests count as "not yet" (replicas may be starting)."""
    began = time.monotonic()
    while True:
        try:
            seen = _served(url)
        except (requests.RequestException, KeyError, ValueError) as exc:
            seen = repr(exc)
        if seen == expected:
            return time.monotonic() - began
        assert time.monotonic() - began < timeout_s, seen
        time.sleep(0.1)


def _store_cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "store", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _replicas() -> dict[str, list[str]]:
    """The live replica actors' names of each selflearn deployment."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "serve"]
    return {d: sorted(n for n in names if n.startswith(f"SERVE_REPLICA::selflearn#{d}#")) for d in DEPLOYMENTS}


def _wait_replaced(before: dict[str, list[str]], timeout_s: float = 120.0) -> None:
    """Wait until no replica of ``before`` is alive and each deployment runs one new replica."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        now = _replicas()
        states = {d: dict(dep.replica_states) for d, dep in serve.status().applications["selflearn"].deployments.items()}
        if all(now[d] and not set(now[d]) & set(before[d]) and states[d] == {"RUNNING": 1} for d in DEPLOYMENTS):
            return
        assert time.monotonic() < deadline, (before, now, states)
        time.sleep(0.5)


def _kill_every_replica() -> None:
    """Kill every replica of the application (the actors are not restarted: Serve's
    controller has to start replacements) and wait for the replacements."""
    import ray

    before = _replicas()
    for names in before.values():
        for name in names:
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    _wait_replaced(before)


def _handle_versions() -> dict:
    """The versions the owning deployments report through their handles."""
    from ray import serve

    return {d: serve.get_deployment_handle(d, app_name="selflearn").describe.remote().result()["version"]
            for d in ("RewriteLookup", "HybridRouter")}


def test_store_cli_rollback_is_served_and_survives_a_redeploy_and_killed_replicas(app):
    url, root = app["url"], app["root"]
    _wait_served(url, _expected("v000002", "v000002"))

    for name in ("rewrites", "policy"):
        assert _store_cli("rollback", "--store", root, name) == {"name": name, "from": "v000002", "latest": "v000001"}
    took = _wait_served(url, _expected("v000001", "v000001"), timeout_s=LATEST_POLL_S + 30)
    print(f"the rollback was served {took:.2f} s after the CLI returned (LATEST poll {LATEST_POLL_S} s)")

    assert deploy(app["config"]) == url  # the packaged config again: its deployments serve "latest"
    assert _served(url) == _expected("v000001", "v000001")

    _kill_every_replica()
    assert _handle_versions() == {"RewriteLookup": "v000001", "HybridRouter": "v000001"}
    _wait_served(url, _expected("v000001", "v000001"))  # the new ingress replica behind HAProxy


def test_admin_rollback_moves_latest_in_the_store_and_fresh_replicas_serve_it(app):
    url, store = app["url"], app["store"]
    _publish_rewrites(store, "v000003")
    store.rollback("policy", to="v000002")
    _wait_served(url, _expected("v000003", "v000002"))

    headers = {"Authorization": f"Bearer {TOKEN}"}
    for artifact, previous, version in (("rewrites", "v000003", "v000002"), ("policy", "v000002", "v000001")):
        answer = requests.post(f"{url}/v1/admin/reload", json={"artifact": artifact, "rollback": True}, headers=headers,
                               timeout=120)
        assert answer.json() == {"artifact": artifact, "previous": previous, "version": version}
        assert store.latest(artifact) == version
    assert _served(url) == _expected("v000002", "v000001")

    # A redeploy that changes the args replaces every replica. The new ones read LATEST, unless
    # the config pins a version: here the policy, whose admin rollback is then refused.
    before = _replicas()
    assert deploy(serve_config(app["config"], {"flag_poll_s": 1.0, "policy_version": "v000002"})) == url
    _wait_replaced(before)
    _wait_served(url, _expected("v000002", "v000002"))
    assert _handle_versions() == {"RewriteLookup": "v000002", "HybridRouter": "v000002"}
    refused = requests.post(f"{url}/v1/admin/reload", json={"artifact": "policy", "rollback": True}, headers=headers,
                            timeout=120)
    assert refused.status_code == 409 and "pinned" in refused.json()["detail"]
    assert store.latest("policy") == "v000001"
