"""Jobs run under `ray job submit` against a real head started with `ray start --head`.

The head is ours alone: its job server binds 127.0.0.1 (Ray maps a loopback
--node-ip-address to the host's address for the GCS and raylet, so we do not pass one), it
uses free ports, keeps its files in a dedicated
--temp-dir, and runs as `ray start --block` in a child process of this test. Stopping it
sends SIGTERM to that process, whose handler tears down exactly the processes of its own
node (never `ray stop`, which would stop every Ray instance of this user on the machine).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
import requests
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from raylib.uri import read_table
from raylib.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
# What the working-dir upload leaves behind (Ray also honours .gitignore).
EXCLUDES = [".git", ".venv", "runs", "**/__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", "benchmarks"]
# A tiny world so each job takes seconds on 2 cores.
TINY_WORLD = {"population": {"n_customers": 300}, "routing": {"n_requests": 1500}, "traffic": {"days": 7}}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Head:
    """`ray start --head --block` on 127.0.0.1, owned (and stopped) by this process."""

    def __init__(self, num_cpus: int = 2):
        self.temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: unix socket paths
        gcs, dash, client, agent, agent_grpc, env_agent, metrics, nm, om = free_ports(9)
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.log = open(os.path.join(self.temp_dir, "ray_start.log"), "w+")
        # Token auth on (Ray's default for a new local cluster), stated explicitly so the CLI
        # and the head agree; the token lives in ~/.ray/auth_token (generated if missing).
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                   RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", str(num_cpus), "--num-gpus", "0",
             "--port", str(gcs),
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
             "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
             "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
             "--metrics-export-port", str(metrics), "--node-manager-port", str(nm),
             "--object-manager-port", str(om), "--temp-dir", self.temp_dir, "--disable-usage-stats"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.temp_dir, start_new_session=True,
        )
        self.env = env

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.output()}")
            try:
                self.client = JobSubmissionClient(self.dashboard, headers=self.auth_header())
                self.client.list_jobs()
                return
            except (ConnectionError, RuntimeError, requests.RequestException):
                time.sleep(0.5)
        raise TimeoutError(f"the job server at {self.dashboard} did not come up:\n{self.output()}")

    def auth_header(self) -> dict[str, str]:
        token = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=self.env,
                               capture_output=True, text=True, check=True).stdout.strip()
        return {"Authorization": f"Bearer {token}"}

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> None:
        """SIGTERM the blocking `ray start`: its handler kills its own node's processes."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # only the session we started
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def submit(self, *entrypoint: str, timeout: float = 480.0) -> tuple[str, str]:
        """`ray job submit` (blocking) with the repository as working dir; returns
        (submission id, job output). Fails the test unless the job SUCCEEDED."""
        sid = f"selflearn-{uuid.uuid4().hex[:8]}"
        done = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--submission-id", sid,
             "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
             "--", *entrypoint],
            capture_output=True, text=True, env=self.env, timeout=timeout,
        )
        info = self.client.get_job_info(sid)
        assert done.returncode == 0 and info.status == JobStatus.SUCCEEDED, (
            f"job {' '.join(entrypoint)} ended {info.status}: {info.message}\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        return sid, done.stdout


@pytest.fixture(scope="module")
def head():
    h = Head(num_cpus=2)
    try:
        h.wait_ready()
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("jobsubmit")
    (d / "tiny.yaml").write_text(yaml.safe_dump(TINY_WORLD))
    return d


def test_simulate_job_writes_the_contract_tables(head, world_dir):
    data = world_dir / "data"
    sid, out = head.submit("python", "-m", "jobs.simulate", "--out", str(data), "--seed", "3",
                           "--config", str(world_dir / "tiny.yaml"))
    assert head.client.get_job_info(sid).entrypoint.startswith("python -m jobs.simulate")
    summary = json.loads((data / "summary.json").read_text())
    assert summary["n_customers"] == 300 and summary["n_interactions"] > 0
    assert read_table(str(data), "interactions").num_rows == summary["n_interactions"]
    assert read_table(str(data), "routing_log").num_rows == 1500


def test_mining_job_publishes_a_rewrite_table(head, world_dir):
    """Ray Data under a submitted job: the mining pipeline on the simulated world."""
    data, out = world_dir / "data", world_dir / "mine"
    head.submit("python", "-m", "jobs.mine_rewrites", "--data", str(data), "--out", str(out),
                "--truth", str(data), "--min-support", "3", "--min-customers", "2")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_sessions"] > 0 and summary["n_sources"] > 0
    assert set(summary["removed_by_filter"]) >= {"min_support", "min_customers", "z_test"}
    art = Store(str(out / "store")).load("rewrites")
    table = art.table("table")
    assert table.num_rows == summary["n_rewrites"]
    assert {"utterance", "rewrite", "score", "n_customers"} <= set(table.column_names)
    assert all(n >= 2 for n in table["n_customers"].to_pylist())


def test_training_job_publishes_embeddings(head, world_dir):
    """Ray Train under a submitted job: PDRFE on the simulated world, one epoch."""
    data, out = world_dir / "data", world_dir / "pdrfe"
    model = "PDRFE (w/ edge attention)"
    head.submit("python", "-m", "jobs.train_pdrfe", "--data", str(data), "--out", str(out), "--models", model,
                "--publish-model", model, "--epochs", "1", "--num-workers", "1", "--dim", "16")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["cross_entropy"][model]) == {"lr", "mlp"}
    assert summary["workers"] == 1 and summary["epochs"] == 1
    art = Store(str(out / "store")).load("embeddings")
    assert art.version == summary["published_version"]
    customers = art.table("customers")
    assert customers.num_rows == 300 and customers["customer_id"].null_count == 0


def test_the_upload_leaves_the_virtualenv_behind(head):
    """The working dir the job sees is the repository without .venv and .git."""
    probe = "import os; print('LISTING', sorted(os.listdir('.')))"
    _, out = head.submit("python", "-c", probe)
    listing = next(line for line in out.splitlines() if line.startswith("LISTING"))
    assert "'jobs'" in listing and "'raylib'" in listing
    assert "'.venv'" not in listing and "'.git'" not in listing
