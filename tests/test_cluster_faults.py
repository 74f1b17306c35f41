"""Node failures on the multi-node cluster (``tests/cluster_harness.py``: a 0-CPU head that
runs the job drivers, two 2-CPU worker nodes), with every job reading and writing an S3
bucket (moto), and "nothing lost" as the assertion:

- a worker node SIGKILLed while the Ray Data mining pipeline sessionizes: the job still
  succeeds and publishes the same rewrite table (no row lost, none added), with the same
  stage, input and rejected row counts, as the undisturbed run of the same input (the
  single-process path, equal to the Ray path: tests/test_rewrite_ray.py);
- the node of the Ray Train worker SIGKILLed mid-training: the job still succeeds, its final
  attempt resumed from the checkpoint in the bucket (``start_epoch`` > 0), not from scratch.

Every killed node is replaced (``Cluster.replace_worker``) before the next test. The
figures (rows lost, wall times, epochs redone) are printed (``pytest -s``); with
``SELFLEARN_FAULTS_BASELINE=1`` each test first submits the same job undisturbed, for its
wall time.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections import Counter

import pyarrow as pa
import pytest
import torch
from ray.job_submission import JobStatus

from cluster_harness import Cluster
from jobs.mine_rewrites import main as mine_rewrites
from raylib import uri
from raylib.schema import INTERACTIONS
from raylib.sim import simulate
from raylib.store import Store
from raylib.trainer import STATE_FILE

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Small Parquet parts (chunk_customers) so that the pipeline's tasks spread over both workers.
WORLD = {"population": {"n_customers": 400}, "routing": {"n_requests": 1500}, "traffic": {"days": 7},
         "chunk_customers": 50}
MINE = ["--min-support", "3", "--min-customers", "2"]
PDRFE = "PDRFE (w/ edge attention)"
EPOCHS = 12
BASELINE = os.environ.get("SELFLEARN_FAULTS_BASELINE") == "1"


@pytest.fixture(scope="module")
def data(s3_module):
    """A simulated world in the bucket, plus malformed rows in three extra parts."""
    root = s3_module.uri("data")
    simulate(root, preset="small", seed=5, config=WORLD)
    good = uri.read_table(root, "interactions").slice(0, 6).to_pylist()
    for part, rows in enumerate([good[0:2], good[2:4], good[4:6]]):
        bad = [dict(rows[0], status="exploded"), dict(rows[1], utterance="  ")]
        uri.write_table(pa.Table.from_pylist(bad, schema=INTERACTIONS), root, "interactions", part=90 + part)
    return root


def wait_for_log(cluster: Cluster, sid: str, text: str, timeout: float = 300.0) -> float:
    """Poll the job's log until it contains ``text``; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while text not in cluster.client.get_job_logs(sid):
        status = cluster.client.get_job_status(sid)
        assert status in (JobStatus.PENDING, JobStatus.RUNNING), (
            f"job ended {status} before logging {text!r}:\n{cluster.client.get_job_logs(sid)[-4000:]}")
        assert time.monotonic() < deadline, f"no {text!r} in the log of {sid}"
        time.sleep(0.2)
    return time.monotonic()


def rows(table: pa.Table) -> Counter:
    """A table's rows as a multiset."""
    return Counter(tuple(sorted(r.items())) for r in table.to_pylist())


def baseline(cluster: Cluster, *entrypoint: str) -> str:
    """With SELFLEARN_FAULTS_BASELINE=1: the wall time of the job run undisturbed."""
    if not BASELINE:
        return "not measured"
    t0 = time.monotonic()
    cluster.submit(*entrypoint)
    return f"{time.monotonic() - t0:.1f} s"


def finished(cluster: Cluster, sid: str, timeout: float = 600.0) -> None:
    status = cluster.wait(sid, timeout)
    assert status == JobStatus.SUCCEEDED, (
        f"job ended {status}: {cluster.client.get_job_info(sid).message}\n{cluster.client.get_job_logs(sid)[-6000:]}")


def test_mining_survives_a_lost_worker_node(cluster, s3_module, data):
    """The reference is the single-process path in this process (the Ray path publishes the
    same table, tests/test_rewrite_ray.py); the job under test runs the Ray Data pipeline."""
    bucket = s3_module
    t0 = time.monotonic()
    assert mine_rewrites(["--data", data, "--out", bucket.uri("calm"), "--store", bucket.uri("calm-store"),
                          "--engine", "local", *MINE]) == 0
    calm_wall = time.monotonic() - t0
    calm = json.loads(bucket.read("calm/summary.json"))

    calm_ray = baseline(cluster, "python", "-m", "jobs.mine_rewrites", "--data", data, "--out", bucket.uri("calm-ray"),
                        "--store", bucket.uri("calm-ray-store"), "--engine", "ray", *MINE)
    t0 = time.monotonic()
    sid = cluster.submit("python", "-m", "jobs.mine_rewrites", "--data", data, "--out", bucket.uri("hit"),
                         "--store", bucket.uri("hit-store"), "--engine", "ray", *MINE, wait=False)
    wait_for_log(cluster, sid, "mining: sessionize started")
    killed_at = time.monotonic() - t0
    stage = [line.split("mining: ")[1] for line in cluster.client.get_job_logs(sid).splitlines()
             if "mining: " in line][-1]
    cluster.replace_worker(cluster.workers[0])  # either worker: both hold blocks and run tasks
    finished(cluster, sid)
    hit_wall = time.monotonic() - t0
    hit = json.loads(bucket.read("hit/summary.json"))
    logs = cluster.client.get_job_logs(sid)

    calm_table = Store(bucket.uri("calm-store")).load("rewrites").table("table")
    hit_table = Store(bucket.uri("hit-store")).load("rewrites").table("table")
    lost = sum((rows(calm_table) - rows(hit_table)).values())
    extra = sum((rows(hit_table) - rows(calm_table)).values())
    recovered = [line.split("info_message: ")[-1][:60] for line in logs.splitlines() if "lost objects" in line]
    print(f"\n[mining] local reference {calm_wall:.1f} s; Ray job undisturbed {calm_ray}, with a worker killed at "
          f"{killed_at:.1f} s (during {stage!r}) done in {hit_wall:.1f} s (job {hit['seconds']:.1f} s); "
          f"recoveries {recovered}; "
          f"rewrites {calm_table.num_rows} vs {hit_table.num_rows}: {lost} lost, {extra} extra; input rows "
          f"{calm['input_rows']} vs {hit['input_rows']}, rejected {calm['rejected_rows']} vs {hit['rejected_rows']}")
    assert calm_table.num_rows > 0 and hit_table.equals(calm_table) and lost == extra == 0
    assert hit["rejected_rows"] == calm["rejected_rows"] == 6
    assert hit["input_rows"] == calm["input_rows"] and hit["stages"] == calm["stages"]


def latest_epoch(bucket, prefix: str) -> int | None:
    """The epoch of the newest checkpoint under ``prefix`` (checkpoint dirs sort by time)."""
    states = [k for k in bucket.keys(prefix) if "/checkpoint_" in k and k.endswith("/" + STATE_FILE)]
    if not states:
        return None
    return int(torch.load(io.BytesIO(bucket.read(max(states))), weights_only=True)["epoch"])


def test_training_resumes_after_losing_the_workers_node(cluster, s3_module, data):
    bucket = s3_module
    args = ["--models", PDRFE, "--publish-model", PDRFE, "--num-workers", "1", "--dim", "16", "--epochs", str(EPOCHS),
            "--downstream-rows", "1000"]  # and the default --max-failures 3
    calm = baseline(cluster, "python", "-m", "jobs.train_pdrfe", "--data", data, "--out", bucket.uri("pdrfe-calm"),
                    *args)
    t0 = time.monotonic()
    sid = cluster.submit("python", "-m", "jobs.train_pdrfe", "--data", data, "--out", bucket.uri("pdrfe"), *args,
                         wait=False)
    # Kill once epoch 1's checkpoint is in the bucket: by then the controller, which polls its
    # workers every 2 s, has registered epoch 0's, so a resume cannot be from scratch.
    deadline = time.monotonic() + 300
    while (latest_epoch(bucket, "pdrfe/ray_train/") or 0) < 1:
        assert cluster.client.get_job_status(sid) in (JobStatus.PENDING, JobStatus.RUNNING), (
            cluster.client.get_job_logs(sid)[-4000:])
        assert time.monotonic() < deadline, "no checkpoint in the bucket"
        time.sleep(0.5)
    [node_id] = cluster.run_snippet(
        "from ray.util.state import list_actors\n"
        "emit([a.node_id for a in list_actors(filters=[('class_name', '=', 'RayTrainWorker'), "
        "('state', '=', 'ALIVE')])])")
    victim = cluster.node_by_id(node_id)
    done = latest_epoch(bucket, "pdrfe/ray_train/")
    killed_at = time.monotonic() - t0
    cluster.replace_worker(victim)
    finished(cluster, sid)
    wall = time.monotonic() - t0
    summary = json.loads(bucket.read("pdrfe/summary.json"))
    training = summary["training"][PDRFE]
    print(f"\n[training] killed the Train worker's node after epoch {done} at {killed_at:.1f} s; final attempt "
          f"started at epoch {training['start_epoch']}, epochs redone {done + 1 - training['start_epoch']}; "
          f"done in {wall:.1f} s (job {summary['seconds']:.1f} s); undisturbed {calm}")
    assert 0 < training["start_epoch"] <= done + 1 < EPOCHS  # resumed from a checkpoint, mid-run
    assert len(training["loss_history"]) == EPOCHS and summary["published_version"] == "v000001"
