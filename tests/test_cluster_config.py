"""cluster.yaml passes Ray's own cluster-launcher validation and keeps its structural promises."""

from __future__ import annotations

import copy
import pathlib
import sys

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = pathlib.Path(__file__).resolve().parents[1] / "cluster.yaml"
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    """What `ray up` works with: defaults filled in, setup commands merged."""
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def test_ray_validation_accepts_the_file(raw, prepared):
    validate_config(copy.deepcopy(raw))
    assert prepared["provider"]["type"] == "aws"


def test_ray_validation_rejects_a_broken_variant(raw):
    """The validation is real: an unknown node-type key or a missing head type fails."""
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu"]["gpus_please"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)
    headless = copy.deepcopy(raw)
    headless["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(headless)


def test_head_runs_no_tasks(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head.get("max_workers", 0) == 0
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--num-cpus=0" in start
    assert "--dashboard-host=127.0.0.1" in start  # the jobs API is reached through a tunnel


def test_worker_types_autoscale_from_zero(prepared):
    types = prepared["available_node_types"]
    workers = {name: spec for name, spec in types.items() if name != prepared["head_node_type"]}
    assert set(workers) == {"cpu", "gpu"}
    for name, spec in workers.items():
        assert spec["min_workers"] == 0, name
        assert spec["max_workers"] > 0, name
    assert sum(spec["max_workers"] for spec in workers.values()) <= prepared["max_workers"]


def test_images_match_the_installed_ray(prepared):
    docker = prepared["docker"]
    tag = f"rayproject/ray:{ray.__version__}-{PY_TAG}"
    for key in ("image", "head_image", "worker_image"):
        assert docker[key] == f"{tag}-cpu", key
    gpu = prepared["available_node_types"]["gpu"]["docker"]["worker_image"]
    assert gpu == f"{tag}-gpu"
    assert docker["container_name"]


def test_every_node_installs_this_package(prepared):
    """The repository is mounted on every node and each role's setup installs it."""
    (remote, local), = prepared["file_mounts"].items()
    assert local == "."
    install = f"pip install --no-cache-dir -e {remote}"
    assert any(cmd.startswith(install) for cmd in prepared["head_setup_commands"])
    assert any(cmd.startswith(install) for cmd in prepared["worker_setup_commands"])
    cpu = prepared["available_node_types"]["cpu"]["worker_setup_commands"]
    assert any(cmd.startswith(install) for cmd in cpu)
    assert any("whl/cpu" in cmd for cmd in cpu)  # no CUDA wheels on CPU-only workers
    assert ".venv" in prepared["rsync_exclude"]
