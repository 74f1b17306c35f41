"""A multi-node Ray cluster on this machine, the shape the users run: a head that runs no
tasks (``--num-cpus 0``) plus worker nodes, each a separate ``ray start --block`` process
with its own temporary directory (its own "disk"), all on 127.0.0.1 with free ports.

The cluster is ours alone: the job server binds 127.0.0.1, every node keeps its files in
a dedicated ``--temp-dir`` and runs in a child process of the test. Stopping a node sends
SIGTERM to its ``ray start`` process, whose handler tears down exactly that node's
processes (never ``ray stop``, which would stop every Ray instance of this user); killing
one (``kill``) is a node failure. Object-store credentials are in the nodes' environment,
as an instance profile gives them on a cloud.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psutil
import requests
from ray.job_submission import JobStatus, JobSubmissionClient

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
# What the working-dir upload leaves behind (Ray also honours .gitignore).
EXCLUDES = [".git", ".venv", "runs", "**/__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", "benchmarks"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class NodeExited(RuntimeError):
    """A node's ``ray start`` exited before the node joined the cluster."""


def sigkill(processes: list[psutil.Process]) -> None:
    """SIGKILL each of ``processes`` still running."""
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


class Node:
    """One ``ray start --block`` process: the head (``gcs`` None) or a worker joining ``gcs``."""

    def __init__(self, env: dict, num_cpus: int, gcs: str | None = None, resources: dict | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: unix socket paths
        ports = free_ports(9)
        agent, agent_grpc, env_agent, metrics, nm, om = ports[3:]
        self.node_manager_port = nm  # what ``ray.nodes()`` reports as NodeManagerPort: names the node
        self._terminated = False
        self._processes: list[psutil.Process] = []
        self.log = open(os.path.join(self.temp_dir, "ray_start.log"), "w+")
        cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus", str(num_cpus), "--num-gpus", "0",
               "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
               "--node-manager-port", str(nm), "--object-manager-port", str(om), "--temp-dir", self.temp_dir,
               "--disable-usage-stats"]
        if resources:
            cmd += ["--resources", json.dumps(resources)]
        if gcs is None:
            gcs_port, dash, client = ports[:3]
            self.gcs = f"127.0.0.1:{gcs_port}"
            self.dashboard = f"http://127.0.0.1:{dash}"
            cmd += ["--head", "--port", str(gcs_port), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dash), "--ray-client-server-port", str(client)]
        else:
            self.gcs = gcs
            cmd += ["--address", gcs]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.temp_dir,
                                     start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def kill(self) -> None:
        """A node failure: SIGKILL every process of this node at once, its workers outside
        the process group included (a worker that outlived its node would go on running
        from the temporary directory ``stop`` then deletes: a failure no real node has)."""
        if self.proc.poll() is None:
            processes = psutil.Process(self.proc.pid).children(recursive=True)
            os.killpg(self.proc.pid, signal.SIGKILL)
            sigkill(processes)
            self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM the blocking ``ray start`` (once): its handler kills its own node's processes."""
        if self.proc.poll() is None and not self._terminated:
            self._processes = psutil.Process(self.proc.pid).children(recursive=True)  # raylet, GCS, workers
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, grace_s: float = 60.0) -> None:
        """``terminate`` and wait for the node to be gone (SIGKILL after ``grace_s``); its files go."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # only the session we started
                self.proc.wait()
        sigkill(self._processes)  # workers outside the process group outlive the node otherwise
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class Cluster:
    """A 0-CPU head plus ``workers`` worker nodes of ``cpus`` CPUs each."""

    def __init__(self, workers: int = 2, cpus: int = 2, extra_env: dict | None = None):
        # Token auth on (Ray's default for a new local cluster), stated explicitly so the CLI
        # and the nodes agree; the token lives in ~/.ray/auth_token (generated if missing).
        self.env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                        RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", **(extra_env or {}))
        self.env.pop("RAY_ADDRESS", None)
        self.head = Node(self.env, num_cpus=0)
        self.workers: list[Node] = []
        self.cpus = cpus
        try:
            self.wait_ready()
            for _ in range(workers):
                self.add_worker()
        except BaseException:
            self.stop()  # a cluster that failed to come up leaves no node behind
            raise

    @property
    def nodes(self) -> list[Node]:
        return [self.head, *self.workers]

    def add_worker(self, attempts: int = 3) -> Node:
        """Start a worker node and wait until it has joined. A ``ray start`` that exits
        before joining (on a loaded machine its raylet can time out registering with the
        GCS) is replaced by a fresh node, as an autoscaler replaces a node that failed to
        come up."""
        for attempt in range(attempts):
            node = Node(self.env, num_cpus=self.cpus, gcs=self.head.gcs)
            self.workers.append(node)
            try:
                self.wait_for_nodes(len(self.workers) + 1, starting=node)
                return node
            except NodeExited:
                self.workers.remove(node)
                node.stop()
                if attempt == attempts - 1:
                    raise

    def auth_header(self) -> dict[str, str]:
        token = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=self.env,
                               capture_output=True, text=True, check=True).stdout.strip()
        return {"Authorization": f"Bearer {token}"}

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.head.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.head.proc.returncode}:\n{self.head.output()}")
            try:
                self.client = JobSubmissionClient(self.head.dashboard, headers=self.auth_header())
                self.client.list_jobs()
                return
            except (ConnectionError, RuntimeError, requests.RequestException):
                time.sleep(0.5)
        raise TimeoutError(f"the job server at {self.head.dashboard} did not come up:\n{self.head.output()}")

    def run_snippet(self, code: str, timeout: float = 120.0):
        """Run ``code`` in a Python process joined to the cluster (``ray.init`` done, ``ray``
        and ``json`` imported) and return what it passed to ``emit(value)`` (JSON)."""
        prelude = ("import ray, json; ray.init(address='auto')\n"
                   "def emit(value): print('SNIPPET-RESULT ' + json.dumps(value), flush=True)\n")
        out = subprocess.run([sys.executable, "-c", prelude + code], env=dict(self.env, RAY_ADDRESS=self.head.gcs),
                             capture_output=True, text=True, timeout=timeout)
        results = [line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("SNIPPET-RESULT ")]
        if out.returncode != 0 or not results:
            raise RuntimeError(f"snippet failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        return json.loads(results[-1])

    def node_by_id(self, node_id: str) -> Node:
        """Our ``Node`` whose Ray node id is ``node_id`` (matched by node manager port)."""
        ports = self.run_snippet("emit({n['NodeID']: n['NodeManagerPort'] for n in ray.nodes() if n['Alive']})")
        return next(node for node in self.nodes if node.node_manager_port == ports[node_id])

    def replace_worker(self, node: Node) -> Node:
        """A node failure and its replacement: SIGKILL ``node`` (a worker), forget it and
        add a fresh worker node; returns the new one."""
        node.kill()
        node.stop()  # only closes its log and removes its temporary directory now
        self.workers.remove(node)
        new = self.add_worker()
        deadline = time.monotonic() + 120  # the dead node may still count as alive: wait for this one
        while new.node_manager_port not in self.run_snippet(
                "emit([n['NodeManagerPort'] for n in ray.nodes() if n['Alive']])"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the new worker did not join:\n{new.output()}")
            time.sleep(1.0)
        return new

    def alive_nodes(self) -> int:
        """Nodes the GCS reports alive (0 when it cannot be asked within 60 s)."""
        try:
            out = subprocess.run([sys.executable, "-c", "import ray, json; ray.init(address='auto'); "
                                  "print(json.dumps(sum(n['Alive'] for n in ray.nodes())))"],
                                 env=dict(self.env, RAY_ADDRESS=self.head.gcs), capture_output=True, text=True,
                                 timeout=60)
        except subprocess.TimeoutExpired:
            return 0
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0

    def wait_for_nodes(self, n: int, timeout: float = 120.0, starting: Node | None = None) -> None:
        """Wait until ``n`` nodes are alive; NodeExited when the ``starting`` node's
        ``ray start`` exits first."""
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < n:
            if self.head.proc.poll() is not None:
                raise RuntimeError(f"the head exited with {self.head.proc.returncode}:\n{self.head.output()}")
            if starting is not None and starting.proc.poll() is not None:
                raise NodeExited(f"ray start exited with {starting.proc.returncode}:\n{starting.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} nodes alive:\n" + "\n".join(w.output() for w in self.workers))
            time.sleep(1.0)

    def submit(self, *entrypoint: str, wait: bool = True, timeout: float = 600.0) -> str:
        """Submit a job with the repository as working dir; with ``wait``, block until it
        ends and fail unless it SUCCEEDED. Returns the submission id."""
        sid = f"selflearn-{uuid.uuid4().hex[:8]}"
        self.client.submit_job(entrypoint=shlex.join(entrypoint), submission_id=sid,
                               runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES})
        if wait:
            status = self.wait(sid, timeout)
            assert status == JobStatus.SUCCEEDED, (
                f"job {' '.join(entrypoint)} ended {status}: {self.client.get_job_info(sid).message}\n"
                f"{self.client.get_job_logs(sid)[-4000:]}")
        return sid

    def wait(self, sid: str, timeout: float = 600.0) -> JobStatus:
        deadline = time.monotonic() + timeout
        while (status := self.client.get_job_status(sid)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                   JobStatus.STOPPED):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {sid} still {status}:\n{self.client.get_job_logs(sid)[-4000:]}")
            time.sleep(1.0)
        return status

    def stop(self) -> None:
        """Every node at once, SIGKILL after 10 s: the cluster is thrown away (a graceful stop
        after jobs had run took ~32 s on 2 cores)."""
        for node in reversed(self.nodes):
            node.terminate()
        for node in reversed(self.nodes):
            node.stop(grace_s=10.0)
