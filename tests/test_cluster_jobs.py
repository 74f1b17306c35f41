"""Every job submitted the way the users run it: ``ray job submit`` with the repository as
working dir, to a multi-node cluster (a 0-CPU head and two worker nodes with their own
disks, ``tests/cluster_harness.py``), with ``--data``, ``--out`` and ``--store`` in an S3
bucket on 127.0.0.1 (moto). Each job must SUCCEED, leave its summary, report, charts,
rejected rows, store versions and Ray Train checkpoints in the bucket, and write nothing
outside temporary directories (no local ``s3:`` folder, no file in the repository)."""

from __future__ import annotations

import json
import pathlib

import pyarrow as pa
import pytest
import yaml

from raylib import uri
from raylib.schema import INTERACTIONS
from raylib.store import Store
from cluster_harness import REPO

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TINY_WORLD = {"population": {"n_customers": 300}, "routing": {"n_requests": 1500}, "traffic": {"days": 7}}
LENIENT = {"min_replication": 0.0, "max_reward_regression": 1.0, "ips_weight_bounds": [0.0, 10.0], "min_ess": 1}
PDRFE = "PDRFE (w/ edge attention)"


def local_outputs(nodes: list[pathlib.Path]) -> list[pathlib.Path]:
    """What a job that mistook a URI for a local path leaves: an ``s3:`` folder or any job
    output file on a node's disk (the jobs' working directories live there), or an ``s3:``
    folder in the repository."""
    names = ("s3:*", "summary.json", "report.md", "checkpoint_*")
    return [p for root in nodes for name in names for p in root.rglob(name)] + list(REPO.glob("s3:*"))


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster-configs")
    (d / "tiny.yaml").write_text(yaml.safe_dump(TINY_WORLD))
    (d / "rails.yaml").write_text(yaml.safe_dump(LENIENT))
    return d


def test_every_job_on_a_multi_node_cluster_with_s3(cluster, s3_module, configs):
    bucket = s3_module
    data, store = bucket.uri("data"), bucket.uri("store")
    cluster.submit("python", "-m", "jobs.simulate", "--out", data, "--seed", "3", "--config", str(configs / "tiny.yaml"))
    summary = json.loads(bucket.read("data/summary.json"))
    assert summary["n_customers"] == 300 and uri.read_table(data, "routing_log").num_rows == 1500
    good = uri.read_table(data, "interactions").slice(0, 2).to_pylist()
    uri.write_table(pa.Table.from_pylist([dict(good[0], status="exploded"), dict(good[1], utterance=" ")],
                                         schema=INTERACTIONS), data, "interactions", part=99)

    cluster.submit("python", "-m", "jobs.mine_rewrites", "--data", data, "--out", bucket.uri("mine"), "--store", store,
                   "--engine", "ray", "--truth", data, "--min-support", "3", "--min-customers", "2")
    mined = json.loads(bucket.read("mine/summary.json"))
    assert mined["n_sessions"] > 0 and mined["rejected_rows"] == 2 and mined["published_version"] == "v000001"
    assert any(k.startswith("mine/rejected/part-") for k in bucket.keys("mine/"))
    table = Store(store).load("rewrites").table("table")
    assert table.num_rows == mined["n_rewrites"] and all(n >= 2 for n in table["n_customers"].to_pylist())

    cluster.submit("python", "-m", "jobs.train_pdrfe", "--data", data, "--out", bucket.uri("pdrfe"), "--store", store,
                   "--models", PDRFE, "--publish-model", PDRFE, "--epochs", "1", "--num-workers", "1", "--dim", "16")
    pdrfe = json.loads(bucket.read("pdrfe/summary.json"))
    assert pdrfe["published_version"] == Store(store).latest("embeddings") == "v000001"
    assert Store(store).load("embeddings").table("customers").num_rows == 300

    rails = ["--guardrails", str(configs / "rails.yaml"), "--replicates", "20"]
    cluster.submit("python", "-m", "jobs.train_policy", "--data", data, "--out", bucket.uri("policy"), "--store", store,
                   "--num-workers", "1", "--epochs", "2", *rails)
    policy = json.loads(bucket.read("policy/summary.json"))
    assert policy["decision"]["status"] == "pass" and policy["published_version"] == Store(store).latest("policy")
    assert {net: speed["workers"] for net, speed in policy["training_speed"].items()} == {"rp": 1, "reward": 1, "lp": 1}
    cluster.submit("python", "-m", "jobs.evaluate_policy", "--data", data, "--out", bucket.uri("ope"), "--store", store,
                   "--num-workers", "1", "--epochs", "2", *rails)
    assert json.loads(bucket.read("ope/summary.json"))["policy_version"] == policy["published_version"]

    keys = bucket.keys()
    for job, files in {"mine": ["report.md"], "pdrfe": ["report.md", "ablation.png"],
                       "policy": ["report.md", "replication.png"], "ope": ["report.md", "replication.png"]}.items():
        assert all(f"{job}/{f}" in keys for f in files), (job, [k for k in keys if k.startswith(job)])
    for job in ("pdrfe", "policy", "ope"):  # Ray Train checkpoints in the bucket, not on a worker's disk
        assert any(k.startswith(f"{job}/ray_train/") and "checkpoint" in k for k in keys), job
    assert local_outputs([pathlib.Path(node.temp_dir) for node in cluster.nodes]) == []


def test_the_upload_leaves_the_virtualenv_behind(cluster):
    """The working dir the job sees is the repository without .venv and .git."""
    sid = cluster.submit("python", "-c", "import os; print('LISTING', sorted(os.listdir('.')))")
    listing = next(line for line in cluster.client.get_job_logs(sid).splitlines() if line.startswith("LISTING"))
    assert "'jobs'" in listing and "'raylib'" in listing
    assert "'.venv'" not in listing and "'.git'" not in listing
