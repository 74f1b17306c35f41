"""cluster.yaml passes Ray's own cluster-launcher validation and keeps its structural promises;
the project image (docker/Dockerfile) and constraints.txt pin what the tests ran with."""

from __future__ import annotations

import copy
import pathlib
import re
import sys
from importlib import metadata

import jsonschema
import pytest
import ray
import yaml
from packaging.utils import canonicalize_name
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
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


def test_worker_types_autoscale_and_serving_is_on_demand(prepared):
    types = prepared["available_node_types"]
    workers = {name: spec for name, spec in types.items() if name != prepared["head_node_type"]}
    assert set(workers) == {"cpu", "gpu", "serve"}
    for name in ("cpu", "gpu"):  # batch capacity scales from zero
        assert workers[name]["min_workers"] == 0 and workers[name]["max_workers"] > 0, name
    serve = workers["serve"]
    assert serve["min_workers"] >= 1 and "InstanceMarketOptions" not in serve["node_config"]
    assert types["cpu"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert sum(spec["max_workers"] for spec in workers.values()) <= prepared["max_workers"]


def test_every_node_type_has_an_image_and_an_instance_profile(prepared):
    docker = prepared["docker"]
    for name, spec in prepared["available_node_types"].items():
        image = spec.get("docker", {}).get("worker_image") or docker["worker_image"]
        assert image.startswith("selflearn/selflearn:") and f"-{PY_TAG}-" in image, name
        assert spec["node_config"]["IamInstanceProfile"]["Name"] == "selflearn-ray-node", name
    assert docker["image"] == docker["head_image"] == docker["worker_image"]
    assert docker["image"].endswith("-cpu")
    assert prepared["available_node_types"]["gpu"]["docker"]["worker_image"].endswith("-gpu")
    assert docker["container_name"]


def test_nodes_boot_from_the_image_without_installing(prepared):
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert prepared[key] == [], key
    assert not prepared["file_mounts"]  # jobs ship their code with --working-dir


def test_nodes_start_with_the_serve_ingress_env_and_the_admin_token(prepared):
    from serve_apps.deploy import HAPROXY_ENV

    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(prepared[key])
        assert all(f"{name}={value}" in start for name, value in HAPROXY_ENV.items()), key
        assert "SELFLEARN_ADMIN_TOKEN=" in start, key


def dockerfile() -> str:
    return (REPO / "docker" / "Dockerfile").read_text()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_are_the_versions_the_tests_run_with():
    pins = constraints()
    assert {"ray", "pyarrow", "torch-geometric", "numpy", "scipy"} <= set(pins) and "torch" not in pins
    installed = {name for name in pins if _installed(name)}
    assert set(pins) - installed == set(), \
        "constraints.txt pins packages outside the dependency set: run scripts/freeze-constraints.sh"
    drift = {name: (version, metadata.version(name)) for name, version in pins.items()
             if metadata.version(name) != version}
    assert drift == {}


def _installed(name):
    try:
        return bool(metadata.version(name))
    except metadata.PackageNotFoundError:
        return False


def test_the_image_builds_the_constraints_dependency_set():
    text = dockerfile()
    assert f"ARG BASE=rayproject/ray:{constraints()['ray']}-{PY_TAG}-cpu" in text
    assert "-c constraints.txt" in text and "COPY --chown=ray:users constraints.txt" in text
    torch = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    assert torch == metadata.version("torch").split("+")[0]
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    assert f"torch=={torch}" in bootstrap and "-c constraints.txt" in bootstrap
    assert f"--build-arg BASE=rayproject/ray:{ray.__version__}-{PY_TAG}-gpu" in text
