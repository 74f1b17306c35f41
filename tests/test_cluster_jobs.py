"""The self-learning loop submitted the way the users run it: ``ray job submit`` with the
repository as working dir, to a multi-node cluster (a 0-CPU head and two worker nodes with
their own disks, ``tests/cluster_harness.py``), with ``--out`` and its settings files in an
S3 bucket on 127.0.0.1 (moto). The loop runs every job (simulate, mine-rewrites on the Ray
Data engine, train-pdrfe, train-policy, evaluate-policy) as a child on the cluster, deploys
Serve there and serves two rounds; stopped once and resubmitted, it resumes. Every job must
leave its summary, report, charts, store versions and Ray Train checkpoints in the bucket,
and nothing may be written outside temporary directories (no local ``s3:`` folder, no file
in the repository). Rejected rows written from Ray Data workers into the bucket are checked
by ``tests/test_cluster_faults.py``."""

from __future__ import annotations

import json
import pathlib
import time

import pytest
import yaml
from ray.job_submission import JobStatus

from raylib import uri
from raylib.store import Store
from cluster_harness import REPO

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TINY_WORLD = {"population": {"n_customers": 300}, "routing": {"n_requests": 1500}, "traffic": {"days": 7}}
LENIENT = {"min_replication": 0.0, "max_reward_regression": 1.0, "ips_weight_bounds": [0.0, 10.0], "min_ess": 1}


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
            "--guardrails", settings["rails.yaml"], "--mining-engine", "ray", *LOOP)
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
    keys = bucket.keys("loop/jobs/")
    for job, files in {"mine-0": ["summary.json", "report.md"], "pdrfe": ["summary.json", "report.md", "ablation.png"],
                       "policy-0": ["summary.json", "report.md", "replication.png"],
                       "ope": ["summary.json", "report.md", "replication.png"]}.items():
        assert all(f"loop/jobs/{job}/{f}" in keys for f in files), (job, [k for k in keys if f"/{job}/" in k])
    for job in ("pdrfe", "policy-0", "ope"):  # Ray Train checkpoints in the bucket, not on a worker's disk
        assert any(k.startswith(f"loop/jobs/{job}/ray_train/") and "checkpoint" in k for k in keys), job
    assert store.load("rewrites", summary["initial"]["rewrites"]["version"]).metadata["engine"] == "ray"
    assert local_outputs([pathlib.Path(node.temp_dir) for node in cluster.nodes]) == []
