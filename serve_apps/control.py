"""Which version a deployment serves, and changing it.

The store's ``LATEST`` pointer decides. A deployment whose ``user_config`` says
``version: latest`` (the packaged config) follows it: each replica re-reads the pointer every
``latest_poll_s`` seconds (``LatestFollower``: one small object read) and swaps to the version
it names through the deployment's own load-and-swap path, so a publish or a rollback reaches
every replica without a restart and without a failed request, and a restarted replica or a
redeployed config serves the same version. A deployment whose ``user_config`` names a version
(``version: v000003``, from ``rewrites_version`` / ``policy_version``) keeps that version.

``move_latest`` is what ``POST /v1/admin/reload`` does to the store: point ``LATEST`` at a
given version, one version back (``Store.rollback``, as ``selflearn store rollback``), or
leave it. ``apply_user_config`` changes other ``user_config`` keys (the router's batch
settings, swept by ``benchmarks/bench_serve.py``) through the Serve controller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from raylib.errors import UserError
from raylib.store import Store

LATEST = "latest"

logger = logging.getLogger(__name__)


class VersionNotFound(UserError):
    """Nothing to serve: no version has been published yet."""


def move_latest(store: Store, name: str, version: str | None, rollback: bool) -> str:
    """Point artifact ``name``'s ``LATEST`` at ``version`` (it must exist), or one version
    back with ``rollback`` (the one published before the current latest), or, with neither,
    leave it; returns the version ``LATEST`` names now."""
    if rollback:
        return store.rollback(name)
    if version is not None:
        return version if store.latest(name) == version else store.rollback(name, to=version)
    latest = store.latest(name)
    if latest is None:
        raise VersionNotFound(f"nothing has been published as {name!r} yet")
    return latest


class LatestFollower:
    """The version one replica serves, from its ``user_config``'s ``version``.

    ``configure(version)`` (from ``reconfigure``) serves a pinned version id, or for
    ``latest`` what the store's ``LATEST`` names, and from the first call on re-reads the
    pointer every ``poll_s`` seconds while not pinned. ``serve(version)`` is the deployment's
    load-and-swap; it must return at once when ``version`` is served already. A failed poll
    or load is logged and the replica keeps serving what it served; the next poll retries.
    """

    def __init__(self, store: Store, name: str, poll_s: float, serve: Callable[[str], Awaitable[None]]):
        self.store = store
        self.name = name
        self.poll_s = poll_s
        self.pinned: str | None = None
        self._serve = serve
        self._lock = asyncio.Lock()  # one choice at a time: a poll never undoes a newer pin
        self._poller: asyncio.Task | None = None

    async def configure(self, version: str) -> None:
        """Serve ``version`` (a version id: pinned) or ``latest`` (follow ``LATEST``)."""
        self.pinned = None if version == LATEST else version
        await self._update()
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _update(self) -> None:
        async with self._lock:
            version = self.pinned or await asyncio.to_thread(self.store.latest, self.name)
            if version is not None:  # None: nothing published yet, serve nothing until a publish
                await self._serve(version)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if self.pinned is not None:
                continue
            try:
                await self._update()
            except Exception:  # noqa: BLE001 - keep serving the current version, retry next poll
                logger.exception("following %s LATEST failed; still serving the current version", self.name)

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()


def _serve_client():
    from ray.serve.context import _get_global_client

    return _get_global_client()


def deployed_config(details: dict) -> dict:
    """The declarative config (``ServeDeploySchema`` fields) of the running applications."""
    apps = details.get("applications", {})
    configs = [app.get("deployed_app_config") for app in apps.values()]
    if not configs or any(c is None for c in configs):
        raise UserError("user_config changes need applications deployed from a config (serve deploy / selflearn serve)")
    config = {"applications": configs}
    for key in ("http_options", "grpc_options", "proxy_location"):
        if details.get(key) is not None:
            config[key] = details[key]
    return config


def with_user_config(config: dict, app_name: str, deployment: str, user_config: dict) -> dict:
    """``config`` with one deployment's ``user_config`` set to ``user_config``."""
    for app in config["applications"]:
        if app["name"] != app_name:
            continue
        entries = app.setdefault("deployments", [])
        entry = next((d for d in entries if d["name"] == deployment), None)
        if entry is None:
            entry = {"name": deployment}
            entries.append(entry)
        entry["user_config"] = user_config
        return config
    raise UserError(f"no application {app_name!r} is running")


def _current_user_config(details: dict, app_name: str, deployment: str) -> dict:
    deployment_details = details["applications"][app_name]["deployments"][deployment]
    return deployment_details["deployment_config"].get("user_config") or {}


def apply_user_config(app_name: str, deployment: str, update: dict, timeout_s: float = 60.0) -> dict:
    """Merge ``update`` into the deployment's running ``user_config`` through the Serve
    controller (the running declarative config, re-applied with that one change: Serve keeps
    every replica and calls ``reconfigure``) and wait until every replica has reconfigured.
    Returns the new ``user_config``."""
    from ray.serve.schema import ServeDeploySchema

    client = _serve_client()
    details = client.get_serve_details()
    current = _current_user_config(details, app_name, deployment)
    wanted = {**current, **update}
    if current == wanted:
        return wanted
    config = with_user_config(deployed_config(details), app_name, deployment, wanted)
    client.deploy_apps(ServeDeploySchema.model_validate(config))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        details = client.get_serve_details()
        state = details["applications"][app_name]["deployments"][deployment]
        if state["deployment_config"].get("user_config") == wanted and state["status"] == "HEALTHY":
            return wanted
        time.sleep(0.1)
    raise TimeoutError(f"{deployment} did not finish reconfiguring within {timeout_s:.0f} s")
