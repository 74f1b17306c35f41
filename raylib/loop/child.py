"""The child jobs the loop runs, as ``python -m jobs.<name>`` subprocesses (a process
boundary, not an import: raylib never imports jobs).

A child runs on the loop's Ray runtime (it inherits RAY_ADDRESS), writes under
``<out>/jobs/<name>``, publishes to the loop's store, and leaves its output in
``<out>/logs/<name>.log``; the loop reads back its ``summary.json`` (the job kit's common
keys, ``published_version`` among them). Exit codes are the job kit's: 0 done, 3 a
candidate rejected by its guard-rails (an outcome, not a failure, for the policy jobs),
anything else a failure.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile

from raylib import uri
from raylib.errors import UserError
from raylib.job import EXIT_OK, EXIT_REJECTED
from raylib.loop.settings import LoopSettings

PDRFE_MODEL = "PDRFE (w/ edge attention)"
OPE_REPLICATES = "50"  # bootstrap replicates of the policy jobs' intervals (their default: 200)
GUARDED = (EXIT_OK, EXIT_REJECTED)  # the policy jobs' outcomes: published, or rejected by the guard-rails


@contextlib.contextmanager
def output_file(location: str):
    """A binary file for a child's output: ``location`` itself when it is a local path
    (readable while the child runs), else a temporary file copied there afterwards."""
    if not uri.is_uri(location):
        os.makedirs(os.path.dirname(location), exist_ok=True)
        with open(location, "w+b") as f:
            yield f
        return
    with tempfile.TemporaryFile() as f:
        try:
            yield f
        finally:
            f.seek(0)
            uri.write_bytes(location, f.read())


def run_job(module: str, out: str, args: list[str], log_file: str, ok_codes: tuple[int, ...] = (EXIT_OK,)) -> dict:
    """Run ``python -m <module> --out <out> <args>`` with its output in ``log_file``; returns the
    summary.json it wrote. An exit code outside ``ok_codes`` is a UserError carrying the
    tail of its output."""
    with output_file(log_file) as f:
        rc = subprocess.call([sys.executable, "-m", module, "--out", out, *args], stdout=f, stderr=subprocess.STDOUT)
        if rc not in ok_codes:
            f.seek(0)
            tail = f.read()[-1500:].decode(errors="replace")
            raise UserError(f"{module} failed with exit code {rc} (log: {log_file}):\n{tail}")
    return uri.read_json(uri.join(out, "summary.json"))


class Jobs:
    """The four child jobs with the loop's settings; each returns what the loop records of
    it (stage outputs: JSON values)."""

    def __init__(self, out: str, settings: LoopSettings, store_root: str):
        self.out = out
        self.s = settings
        self.store_root = store_root

    def _run(self, module: str, name: str, args: list[str], ok_codes: tuple[int, ...] = (EXIT_OK,)) -> tuple[str, dict]:
        """Run ``module`` as child job ``name``; its --out and summary."""
        out = uri.join(self.out, "jobs", name)
        return out, run_job(module, out, args, uri.join(self.out, "logs", f"{name}.log"), ok_codes)

    def _guardrails(self) -> list[str]:
        return ["--guardrails", self.s.guardrails] if self.s.guardrails else []

    def mine(self, data: str, name: str) -> dict:
        """Mine rewrites from the traffic under ``data`` (its own truth for the quality
        metrics); the rewrites version published (merged with the previous), or None."""
        out, summary = self._run("jobs.mine_rewrites", name, [
            "--data", data, "--store", self.store_root, "--truth", data, "--min-customers", str(self.s.min_customers),
            "--min-support", str(self.s.min_support), "--engine", self.s.mining_engine])
        return {"version": summary["published_version"], "summary": summary, "out": out}

    def train_pdrfe(self, data: str) -> dict:
        """Train PDRFE on ``data`` and publish its customer/skill embeddings."""
        out, summary = self._run("jobs.train_pdrfe", "pdrfe", [
            "--data", data, "--store", self.store_root, "--models", PDRFE_MODEL, "--publish-model", PDRFE_MODEL,
            "--epochs", str(self.s.pdrfe_epochs), "--num-workers", "1",
            "--dim", "64"])  # the demo's width: the job's default (Table 6's 128) makes this stage ~1.5x slower
        return {"version": summary["published_version"], "out": out,
                "cross_entropy": {"with_utterance": summary.get("cross_entropy_with_utterance"),
                                  "without_utterance": summary.get("cross_entropy_without_utterance")}}

    def train_policy(self, data: str, name: str, store_root: str | None = None, extra: tuple[str, ...] = (),
                     workers: int = 1) -> dict:
        """Train the hybrid policy on the routing logs under ``data``; it is published to
        ``store_root`` (default: the loop's store) only when the guard-rails pass (exit 0;
        3: rejected, ``version`` None). ``workers``: Ray Train workers per network (0:
        in-process, the same loop and seeds)."""
        out, summary = self._run("jobs.train_policy", name, [
            "--data", data, "--store", store_root or self.store_root, "--epochs", str(self.s.policy_epochs),
            "--num-workers", str(workers), "--replicates", OPE_REPLICATES, *self._guardrails(), *extra], GUARDED)
        return {"version": summary["published_version"], "data": data, "decision": summary.get("decision"),
                "true_value": summary.get("true_value"), "current_policy": summary.get("current_policy"), "out": out}

    def evaluate_policy(self, data: str, version: str) -> dict:
        """Off-policy evaluation and the guard-rail decision of policy ``version``, trained
        on ``data``, on the held-out rows of ``data`` only (``--held-out``): the test split
        of ``raylib.routing.refresh.split``, which jobs.train_policy kept out of both the
        networks' training (train split) and the RPDR values (validation split). Fresh
        traffic is no alternative: the next round's is routed by this very policy (nothing
        off-policy to estimate) and comes after this stage."""
        out, summary = self._run("jobs.evaluate_policy", "ope", [
            "--data", data, "--held-out", "--store", self.store_root, "--version", version,
            "--epochs", str(self.s.policy_epochs),  # its reward model trains like the policy's networks
            "--replicates", OPE_REPLICATES, *self._guardrails()], GUARDED)
        return {"ope": summary.get("ope"), "decision": summary.get("decision"),
                "evaluated_rows": summary.get("evaluated_rows"), "out": out}
