"""``selflearn store``: list, show, roll back, enable and disable, on a local path and on S3."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raylib.store import Store


def store_cli(*args: str) -> tuple[int, dict | str]:
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "store", *args], capture_output=True, text=True)
    return proc.returncode, (json.loads(proc.stdout) if proc.returncode == 0 else proc.stderr)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_versions_from_the_command_line(where, tmp_path, request):
    root = str(tmp_path / "store") if where == "local" else request.getfixturevalue("s3").uri("store")
    store = Store(root)
    for run in range(3):
        store.publish("policy", {"config": {"run": run}}, metadata={"run": run})
    store.publish("rewrites", {"config": {"run": 0}})

    code, out = store_cli("ls", "--store", root)
    assert code == 0 and out == {"policy": {"latest": "v000003", "versions": 3, "enabled": True},
                                 "rewrites": {"latest": "v000001", "versions": 1, "enabled": True}}
    code, out = store_cli("ls", "--store", root, "policy")
    assert [v["version"] for v in out["versions"]] == ["v000001", "v000002", "v000003"] and out["latest"] == "v000003"
    code, out = store_cli("show", "--store", root, "policy", "v000002")
    assert code == 0 and out["metadata"] == {"run": 1} and out["files"]["config"]["kind"] == "json"

    code, out = store_cli("rollback", "--store", root, "policy")
    assert code == 0 and out == {"name": "policy", "from": "v000003", "latest": "v000002"}
    assert Store(root).latest("policy") == "v000002"
    code, out = store_cli("rollback", "--store", root, "policy", "--to", "v000001")
    assert code == 0 and Store(root).load("policy").json("config") == {"run": 0}
    code, err = store_cli("rollback", "--store", root, "policy")
    assert code == 2 and "oldest version" in err and "Traceback" not in err

    assert store_cli("disable", "--store", root, "rewrites") == (0, {"name": "rewrites", "enabled": False})
    assert not Store(root).enabled("rewrites") and Store(root).enabled("policy")
    assert store_cli("enable", "--store", root, "rewrites")[1]["enabled"] is True


def test_unknown_versions_and_commands_are_one_line_errors(tmp_path):
    Store(str(tmp_path)).publish("policy", {"config": {}})
    code, err = store_cli("show", "--store", str(tmp_path), "policy", "v000007")
    assert code == 2 and "has no version 'v000007'" in err and len(err.strip().splitlines()) == 1
    code, err = store_cli("frobnicate", "--store", str(tmp_path))
    assert code == 2 and "invalid choice" in err
