"""`selflearn demo` end to end at a tiny scale: killed after a few stages, started again,
it reuses the finished stages and completes with its report, plots and store versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from raylib.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TINY = {"population": {"n_customers": 300}, "routing": {"n_requests": 1500}}
# Tiny logs make OPE too noisy for the production guard-rails; the loop's mechanics are
# under test here (a policy is published, served through /v1/route and refreshed).
LENIENT = {"min_replication": 0.0, "max_reward_regression": 1.0, "ips_weight_bounds": [0.0, 10.0], "min_ess": 1}
ARGS = ["--rounds", "2", "--route-requests", "300", "--pdrfe-epochs", "1", "--policy-epochs", "2",
        "--eval-requests", "300", "--min-support", "3", "--min-customers", "2"]


def demo(out, config, **popen):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    rails = config.parent / "guardrails.yaml"
    rails.write_text(yaml.safe_dump(LENIENT))
    return subprocess.Popen([sys.executable, "-m", "jobs.self_learning_loop", "--out", str(out), "--config",
                             str(config), "--guardrails", str(rails), *ARGS], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **popen)


def strict_json(constant):
    raise AssertionError(f"summary.json holds {constant}: not strict JSON")


def test_demo_resumes_after_a_kill_and_reports(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "demo"
    first = demo(out, config)
    marker = out / "stages" / "mine-rewrites.json"
    try:
        deadline = time.monotonic() + 400
        while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marker.exists(), first.communicate(timeout=30)[0][-3000:] if first.poll() is not None else "too slow"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the loop and the jobs it started: one session
        first.wait()
    assert not (out / "summary.json").exists()

    second = demo(out, config)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output[-4000:]
    assert "simulate: reused" in output and "mine-rewrites: reused" in output
    assert f"report: {out / 'report.md'}" in output

    summary = json.loads((out / "summary.json").read_text(), parse_constant=strict_json)
    assert {"simulate", "mine-rewrites"} <= set(summary["stages"]["reused"])
    assert "simulate" not in summary["stages"]["ran"] and "round-2" in summary["stages"]["ran"]
    assert not set(summary["stages"]["ran"]) & set(summary["stages"]["reused"])
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert 0.0 <= r["defect_rate"] <= 1.0 and 0.0 <= r["true_reward"] <= 1.0 and 0.0 <= r["served_reward"] <= 1.0
    assert rounds[0]["policy_version"] == "sim-logging" and rounds[0]["rewritten_share"] == 0.0
    assert summary["defect_rate_before"] == rounds[0]["defect_rate"]
    assert summary["defect_rate_after"] == rounds[-1]["defect_rate"]
    assert rounds[1]["rewrites_version"] is not None  # rewrites served from round 1
    assert rounds[1]["policy_version"] == "v000001" and rounds[2]["policy_version"] == "v000002"  # /v1/route
    assert summary["initial"]["policy"]["version"] == "v000001"  # the job's published_version
    assert summary["refreshes"][0]["policy"]["version"] == "v000002"
    assert summary["initial"]["rewrites"]["version"] == rounds[1]["rewrites_version"]

    store = Store(str(out / "store"))
    for name in ("rewrites", "embeddings", "policy", "decisions", "loop_report"):
        assert store.versions(name), name
    assert summary["artifacts"]["decisions"] == store.versions("decisions")
    decisions = store.load("decisions")
    assert decisions.metadata["round"] == 2 and decisions.metadata["policy_version"] == "v000002"
    served = decisions.table("routing_log")
    assert served.num_rows == 300 and set(served["policy_version"].to_pylist()) == {"v000002"}
    assert served["reward"].null_count == 0  # feedback joined onto every decision
    assert summary["pdrfe_router_features"]["measured"] is True
    report = (out / "report.md").read_text()
    assert "| round |" in report and "PDRFE embeddings as router features" in report
    for png in ("defect_rate.png", "true_reward.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
