"""Version swaps: pick the target version, then change one deployment's ``user_config``.

A swap is exactly what an operator does with ``serve deploy`` and an edited
``user_config``: the running applications' declarative config is read back from the
Serve controller, the deployment's ``user_config`` gets the new version, and the config is
applied again. The code version of the application does not change, so Serve keeps every
replica and calls ``reconfigure(user_config)`` on each (a "lightweight update"): no
replica restarts and no request fails. ``apply_user_config`` returns once the deployment
reports the new ``user_config`` and is HEALTHY again, i.e. every replica has reconfigured.
"""

from __future__ import annotations

import time

from raylib.errors import UserError


class VersionNotFound(UserError):
    """The requested version (or the one a rollback needs) does not exist."""


def target_version(versions: list[str], latest: str | None, current: str | None, version: str | None, rollback: bool) -> str:
    """The version a reload should serve.

    ``version`` given: that version (it must exist). ``rollback``: the version published
    just before the one served now. Neither: the store's latest.
    """
    if rollback:
        if current is None or current not in versions:
            raise VersionNotFound(f"cannot roll back: the served version {current!r} is not in the store")
        position = versions.index(current)
        if position == 0:
            raise VersionNotFound(f"cannot roll back: {current} is the oldest version")
        return versions[position - 1]
    if version is not None:
        if version not in versions:
            raise VersionNotFound(f"no version {version!r} (versions: {', '.join(versions) or 'none'})")
        return version
    if latest is None:
        raise VersionNotFound("nothing has been published yet")
    return latest


def _serve_client():
    from ray.serve.context import _get_global_client

    return _get_global_client()


def deployed_config(details: dict) -> dict:
    """The declarative config (``ServeDeploySchema`` fields) of the running applications."""
    apps = details.get("applications", {})
    configs = [app.get("deployed_app_config") for app in apps.values()]
    if not configs or any(c is None for c in configs):
        raise UserError("version swaps need applications deployed from a config (serve deploy / selflearn serve)")
    config = {"applications": configs}
    for key in ("http_options", "grpc_options", "proxy_location"):
        if details.get(key) is not None:
            config[key] = details[key]
    return config


def with_user_config(config: dict, app_name: str, deployment: str, update: dict) -> tuple[dict, dict]:
    """``config`` with ``update`` merged into one deployment's ``user_config``; also
    returns the deployment's new ``user_config``."""
    for app in config["applications"]:
        if app["name"] != app_name:
            continue
        entries = app.setdefault("deployments", [])
        entry = next((d for d in entries if d["name"] == deployment), None)
        if entry is None:
            entry = {"name": deployment}
            entries.append(entry)
        entry["user_config"] = {**(entry.get("user_config") or {}), **update}
        return config, entry["user_config"]
    raise UserError(f"no application {app_name!r} is running")


def _current_user_config(details: dict, app_name: str, deployment: str) -> dict:
    deployment_details = details["applications"][app_name]["deployments"][deployment]
    return deployment_details["deployment_config"].get("user_config") or {}


def apply_user_config(app_name: str, deployment: str, update: dict, timeout_s: float = 60.0) -> dict:
    """Merge ``update`` into the deployment's ``user_config`` through the Serve controller
    and wait until every replica has reconfigured. Returns the new ``user_config``."""
    from ray.serve.schema import ServeDeploySchema

    client = _serve_client()
    details = client.get_serve_details()
    current = _current_user_config(details, app_name, deployment)
    config, wanted = with_user_config(deployed_config(details), app_name, deployment, update)
    if current == wanted:
        return wanted
    client.deploy_apps(ServeDeploySchema.model_validate(config))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        details = client.get_serve_details()
        state = details["applications"][app_name]["deployments"][deployment]
        if state["deployment_config"].get("user_config") == wanted and state["status"] == "HEALTHY":
            return wanted
        time.sleep(0.1)
    raise TimeoutError(f"{deployment} did not finish reconfiguring within {timeout_s:.0f} s")
