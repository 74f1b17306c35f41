"""Every job submitted the way the users run it: ``ray job submit`` with the repository as
working dir, to a multi-node cluster (a 0-CPU head and two worker nodes with their own
disks, ``tests/cluster_harness.py``), with ``--data``, ``--out`` and ``--store`` in an S3
bucket on 127.0.0.1 (moto). Each job must SUCCEED, leave its summary, report, charts,
rejected rows, store versions and Ray Train checkpoints in the bucket, and write nothing
outside temporary directories (no local ``s3:`` folder, no file in the repository). The
self-learning loop runs the same way, stopped once and resubmitted: it resumes, deploys
Serve on the cluster and serves two rounds."""

from __future__ import annotations

import json
import pathlib
import time

import pyarrow as pa
import pytest
import yaml
from ray.job_submission import JobStatus

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


LOOP = ["--rounds", "2", "--route-requests", "300", "--pdrfe-epochs", "1", "--policy-epochs", "2",
        "--eval-requests", "300", "--min-support", "3", "--min-customers", "2"]


def strict_json(constant):
    raise AssertionError(f"summary.json holds {constant}: not strict JSON")


def test_the_loop_on_the_cluster_resumes_after_a_stop(cluster, s3_module, configs):
    """``selflearn demo`` at its smallest scale, submitted with everything in the bucket
    (its settings files too): stopped once mining has finished, submitted again, it reuses
    the finished stages, serves two rounds through the Serve application it deploys on the
    cluster and leaves its report, plots, store versions and decisions in the bucket."""
    bucket = s3_module
    settings = {}
    for name in ("tiny.yaml", "rails.yaml"):
        settings[name] = bucket.uri(f"settings/{name}")
        uri.write_bytes(settings[name], (configs / name).read_bytes())
    out = bucket.uri("loop")
    demo = ("python", "-m", "jobs.cli", "demo", "--out", out, "--config", settings["tiny.yaml"],
            "--guardrails", settings["rails.yaml"], *LOOP)
    first = cluster.submit(*demo, wait=False)
    deadline = time.monotonic() + 400
    while "loop/stages/mine-rewrites.json" not in bucket.keys("loop/stages/"):
        assert cluster.client.get_job_status(first) in (JobStatus.PENDING, JobStatus.RUNNING), cluster.client.get_job_logs(first)[-3000:]
        assert time.monotonic() < deadline, "mining did not finish in time"
        time.sleep(1.0)
    cluster.client.stop_job(first)  # SIGTERM, then SIGKILL, to the loop and the child jobs it started
    assert cluster.wait(first) == JobStatus.STOPPED
    assert "loop/summary.json" not in bucket.keys("loop/")

    second = cluster.submit(*demo, timeout=900)
    output = cluster.client.get_job_logs(second)
    assert "simulate: reused" in output and "mine-rewrites: reused" in output
    summary = json.loads(bucket.read("loop/summary.json"), parse_constant=strict_json)
    assert {"simulate", "mine-rewrites"} <= set(summary["stages"]["reused"])
    assert "simulate" not in summary["stages"]["ran"] and "round-2" in summary["stages"]["ran"]
    assert not set(summary["stages"]["ran"]) & set(summary["stages"]["reused"])
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert 0.0 <= r["defect_rate"] <= 1.0 and 0.0 <= r["true_reward"] <= 1.0 and 0.0 <= r["served_reward"] <= 1.0
    assert rounds[0]["policy_version"] == "sim-logging" and rounds[0]["rewritten_share"] == 0.0
    for r in rounds[1:]:  # the online A/B on the round's own traffic, the rewrites in the simulator's request path
        assert 0.0 <= r["treatment_defect_rate"] <= 1.0 and 0.0 <= r["holdout_defect_rate"] <= 1.0
        assert r["blacklisted"] == r["online_losses"] and r["online_wins"] + r["online_losses"] <= r["online_tested"]
    assert any(k.startswith("loop/rounds/round-1/online_ab/") for k in bucket.keys("loop/rounds/"))
    assert summary["defect_rate_before"] == rounds[0]["defect_rate"]
    assert summary["defect_rate_after"] == rounds[-1]["defect_rate"]
    assert rounds[1]["rewrites_version"] is not None  # rewrites served from round 1
    assert rounds[1]["policy_version"] == "v000001" and rounds[2]["policy_version"] == "v000002"  # /v1/route
    assert summary["initial"]["policy"]["version"] == "v000001"  # the job's published_version
    assert summary["refreshes"][0]["policy"]["version"] == "v000002"
    assert summary["initial"]["rewrites"]["version"] == rounds[1]["rewrites_version"]

    store = Store(uri.join(out, "store"))
    for name in ("rewrites", "embeddings", "policy", "decisions", "loop_report"):
        assert store.versions(name), name
    assert summary["artifacts"]["decisions"] == store.versions("decisions")
    decisions = store.load("decisions")
    assert decisions.metadata["round"] == 2 and decisions.metadata["policy_version"] == "v000002"
    served = decisions.table("routing_log")
    assert served.num_rows == 300 and set(served["policy_version"].to_pylist()) == {"v000002"}
    assert served["reward"].null_count == 0  # feedback joined onto every decision
    assert summary["pdrfe_router_features"]["measured"] is True
    report = bucket.read("loop/report.md").decode()
    assert "| round |" in report and "PDRFE embeddings as router features" in report
    for png in ("defect_rate.png", "true_reward.png"):
        assert bucket.read(f"loop/{png}")[:4] == b"\x89PNG"
    assert any(k.startswith("loop/decision_log/routing_log/part-") for k in bucket.keys("loop/decision_log/"))
    assert local_outputs([pathlib.Path(node.temp_dir) for node in cluster.nodes]) == []
