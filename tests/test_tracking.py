"""Experiment tracking against a real local ``mlflow server`` (sqlite backend) started here:
every job's parameters, metrics, summary, report and charts, the store versions and the
guard-rail decision as tags, and a released policy registered under its alias."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
import requests
import yaml

from jobs import mine_rewrites, simulate, train_policy
from raylib.job import EXIT_OK, EXIT_REJECTED
from raylib.store import Store
from raylib.tracking import metrics_of
from serve_apps.deploy import free_port

mlflow = pytest.importorskip("mlflow")

TINY = {"population": {"n_customers": 150}, "routing": {"n_requests": 600}}
LENIENT = {"min_replication": 0.0, "max_reward_regression": 1.0, "ips_weight_bounds": [0.0, 10.0], "min_ess": 1}


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with a sqlite backend and served artifacts."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
           "--workers", "1"]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{url}/health", timeout=10).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, 9)
            raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
    log.close()


def test_metrics_of_flattens_finite_numbers_only():
    summary = {"a": 1, "b": {"c": 0.5, "d": math.nan, "e": "text", "f": True}, "g h(i)": 2.0}
    assert metrics_of(summary) == {"a": 1.0, "b.c": 0.5, "g h_i_": 2.0}


def test_jobs_log_runs_and_a_released_policy_is_registered(tracking_server, tmp_path):
    from mlflow import MlflowClient

    config, rails, strict = tmp_path / "tiny.yaml", tmp_path / "rails.yaml", tmp_path / "strict.yaml"
    config.write_text(yaml.safe_dump(TINY))
    rails.write_text(yaml.safe_dump(LENIENT))
    strict.write_text("min_ess: 1.0e9\n")
    data, store = str(tmp_path / "data"), str(tmp_path / "store")
    track = ["--tracking-uri", tracking_server, "--experiment", "tracking-test"]
    assert simulate.main(["--out", data, "--config", str(config)]) == EXIT_OK
    assert mine_rewrites.main(["--data", data, "--out", str(tmp_path / "mine"), "--store", store, "--engine", "local",
                               "--min-support", "3", "--min-customers", "2", *track]) == EXIT_OK
    fast = ["--num-workers", "0", "--epochs", "2", "--replicates", "20", "--store", store, *track]
    assert train_policy.main(["--data", data, "--out", str(tmp_path / "policy"), "--guardrails", str(rails), *fast]) == EXIT_OK
    assert train_policy.main(["--data", data, "--out", str(tmp_path / "rejected"), "--guardrails", str(strict),
                              *fast]) == EXIT_REJECTED

    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("tracking-test")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])}
    assert set(runs) == {"mine-rewrites", "train-policy"} or len(runs) >= 2
    by_id = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    summaries = {name: json.loads((tmp_path / name / "summary.json").read_text()) for name in ("mine", "policy", "rejected")}
    for name, summary in summaries.items():
        run = by_id[summary["tracking"]["run_id"]]
        assert run.data.params["out"] == str(tmp_path / name)
        assert run.data.tags["published_version"] == str(summary["published_version"])
        assert run.data.tags["store"] == store and run.data.tags["exit_code"] == str(
            EXIT_REJECTED if name == "rejected" else EXIT_OK)
        assert run.data.metrics.get("input_rows") == summary["input_rows"], (name, len(run.data.metrics), sorted(run.data.metrics)[:8])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"summary.json", "report.md"} <= artifacts
    mine = by_id[summaries["mine"]["tracking"]["run_id"]]
    assert mine.data.tags["store.rewrites"] == Store(store).latest("rewrites")
    policy = by_id[summaries["policy"]["tracking"]["run_id"]]
    assert policy.data.tags["guardrails"] == "pass" and "replication.png" in {a.path for a in client.list_artifacts(policy.info.run_id)}
    assert by_id[summaries["rejected"]["tracking"]["run_id"]].data.tags["guardrails"] == "fail"

    released = client.get_model_version_by_alias("selflearn-policy", "production")
    assert released.run_id == policy.info.run_id and released.tags["store_version"] == summaries["policy"]["published_version"]
    assert len(client.search_model_versions("name = 'selflearn-policy'")) == 1  # the rejected policy was not registered
    files = {a.path for a in client.list_artifacts(policy.info.run_id, "policy")}
    stored = Store(store).load("policy", summaries["policy"]["published_version"])
    assert files == {f"policy/{spec['file']}" for spec in stored.files.values()}


def test_an_unreachable_tracking_server_is_reported_not_fatal(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        code = simulate.main(["--out", str(tmp_path / "data"), "--config", str(config),
                              "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    summary = json.loads((tmp_path / "data" / "summary.json").read_text())
    assert code == EXIT_OK and summary["tracking"]["error"]
