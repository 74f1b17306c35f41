"""The job kit (``raylib.job``): every job's summary.json is strict JSON with the common
keys, exit codes mean the same thing everywhere, unreadable input is one line."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
import yaml

from jobs import evaluate_policy, mine_rewrites, simulate, train_pdrfe, train_policy
from raylib import uri
from raylib.errors import UserError
from raylib.graph.linkpred import POPULARITY
from raylib.job import COMMON_KEYS, EXIT_BAD_INPUT, EXIT_OK, EXIT_REJECTED, Job, entrypoint, strict
from raylib.schema import INTERACTIONS
from raylib.store import Store

pytestmark = pytest.mark.ray

TINY = {"population": {"n_customers": 150}, "routing": {"n_requests": 600}}
LENIENT = {"min_replication": 0.0, "max_reward_regression": 1.0, "ips_weight_bounds": [0.0, 10.0], "min_ess": 1}
PDRFE = "PDRFE (w/ edge attention)"


def strict_summary(out) -> dict:
    """summary.json parsed so that NaN / Infinity raise."""
    def refuse(constant):
        raise ValueError(f"summary.json holds {constant}")

    summary = json.loads(uri.read_bytes(uri.join(str(out), "summary.json")), parse_constant=refuse)
    assert set(COMMON_KEYS) <= set(summary), sorted(set(COMMON_KEYS) - set(summary))
    assert summary["rejected_rows"] == sum(summary["rejected_by_reason"].values())
    assert summary["input_rows"] >= summary["rejected_rows"] and summary["seconds"] >= 0
    return summary


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny simulated world (through the simulate job) plus three malformed interactions."""
    root = tmp_path_factory.mktemp("kit")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert simulate.main(["--out", str(root / "data"), "--config", str(config)]) == EXIT_OK
    summary = strict_summary(root / "data")
    assert summary["published_version"] is None and summary["input_rows"] == summary["n_interactions"] + 600
    good = uri.read_table(str(root / "data"), "interactions").slice(0, 3).to_pylist()
    bad = [dict(good[0], status="exploded"), dict(good[1], customer_id=""), dict(good[2], utterance="  ")]
    uri.write_table(pa.Table.from_pylist(bad, schema=INTERACTIONS), str(root / "data"), "interactions", part=99)
    rails = root / "rails.yaml"
    rails.write_text(yaml.safe_dump(LENIENT))
    return root, summary["n_interactions"]


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_mine_rewrites_summary(world, engine, local_ray):
    root, n = world
    out = root / f"mine-{engine}"
    argv = ["--data", str(root / "data"), "--out", str(out), "--engine", engine, "--min-support", "3",
            "--min-customers", "2"]
    assert mine_rewrites.main(argv) == EXIT_OK
    summary = strict_summary(out)
    assert summary["input_rows"] == n + 3 and summary["rejected_rows"] == 3
    assert summary["rejected_by_reason"] == {"unknown status 'exploded'": 1, "empty customer_id": 1, "empty utterance": 1}
    assert summary["published_version"] == Store(str(out / "store")).latest("rewrites") == "v000001"
    assert mine_rewrites.main(argv) == EXIT_OK  # a rerun in the same --out counts its own rejects only
    assert strict_summary(out)["rejected_rows"] == 3 and strict_summary(out)["published_version"] == "v000002"


def test_train_pdrfe_summary(world, local_ray):
    root, n = world
    out = root / "pdrfe"
    assert train_pdrfe.main(["--data", str(root / "data"), "--out", str(out), "--models", PDRFE, "--truth",
                             str(root / "data"), "--publish-model", PDRFE, "--epochs", "1", "--num-workers", "1",
                             "--dim", "16"]) == EXIT_OK
    summary = strict_summary(out)
    entities = sum(uri.read_table(str(root / "data"), name).num_rows for name in ("customers", "skills"))
    assert summary["rejected_rows"] == 3 and summary["input_rows"] == n + 3 + entities
    assert summary["published_version"] == Store(str(out / "store")).latest("embeddings")
    assert (out / "report.md").read_text().startswith("# PDRFE") and (out / "ablation.png").stat().st_size > 0
    for table in ("cross_entropy_with_utterance", "cross_entropy_without_utterance"):
        assert set(summary[table][PDRFE]) == {"lr", "mlp"}
    assert set(summary["link_prediction"][PDRFE]["all"]) == {"auc", "mrr", "hits@10", "edges"}
    affinity = summary["affinity"]  # --truth: the simulator's affinity against the graph and the embeddings
    assert 0 < affinity["in_graph"]["pairs_with_affinity"] <= affinity["in_graph"]["pairs"]
    plain = f"{PDRFE} {train_pdrfe.UNPERSONALIZED}"  # the personalizer's model: its h_u alone, as the router gets it
    assert set(affinity["recovery"]) == {PDRFE, plain, POPULARITY}
    assert all(-1 <= affinity["recovery"][name] <= 1 for name in (PDRFE, plain))
    assert set(summary["link_prediction_customer_embedding"]) == {PDRFE}
    assert set(summary["link_prediction_customer_embedding"][PDRFE]["all"]) == {"auc", "mrr", "hits@10", "edges"}
    assert affinity["oracle_link"]["affinity"]["all"]["edges"] <= summary["link_test_edges"]
    assert "## Does the graph carry the customer-skill affinity?" in (out / "report.md").read_text()


def test_policy_jobs_summaries_and_exit_codes(world):
    root, _ = world
    data, store, rails = str(root / "data"), str(root / "policy-store"), str(root / "rails.yaml")
    fast = ["--num-workers", "0", "--epochs", "2", "--replicates", "20"]
    assert train_policy.main(["--data", data, "--out", str(root / "policy"), "--store", store,
                              "--guardrails", rails, *fast]) == EXIT_OK
    trained = strict_summary(root / "policy")
    assert trained["input_rows"] == 600 and trained["published_version"] == Store(store).latest("policy")
    assert evaluate_policy.main(["--data", data, "--out", str(root / "ope"), "--store", store, "--guardrails", rails,
                                 "--num-workers", "0", "--epochs", "2", "--replicates", "20"]) == EXIT_OK
    assert strict_summary(root / "ope")["published_version"] is None
    strict_rails = root / "strict.yaml"
    strict_rails.write_text("min_ess: 1.0e9\n")
    assert train_policy.main(["--data", data, "--out", str(root / "rejected-policy"), "--store", store,
                              "--guardrails", str(strict_rails), *fast]) == EXIT_REJECTED
    assert strict_summary(root / "rejected-policy")["published_version"] is None
    assert Store(store).versions("policy") == [trained["published_version"]]


def test_non_finite_numbers_are_written_as_null(tmp_path):
    job = Job(str(tmp_path / "out"))
    outcome = job.finish({"loss": float("nan"), "nested": {"x": [1.0, math.inf]}, "ok": 0.5})
    summary = strict_summary(tmp_path / "out")
    assert summary["loss"] is None and summary["nested"] == {"x": [1.0, None]} and summary["ok"] == 0.5
    assert outcome.summary == summary and summary["input_rows"] == 0 and summary["published_version"] is None
    assert strict({"a": (1, 2)}) == {"a": [1, 2]}


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_corrupt_files_are_quarantined_and_the_job_goes_on(world, engine, tmp_path, local_ray):
    root, n = world
    data = tmp_path / "data"
    good = uri.write_table(uri.read_table(str(root / "data"), "interactions"), str(data), "interactions")
    garbage = data / "interactions" / "part-00001.parquet"
    garbage.write_bytes(b"not parquet at all")
    truncated = data / "interactions" / "part-00002.parquet"
    truncated.write_bytes(open(good, "rb").read()[:-100])
    out = tmp_path / "out"
    assert mine_rewrites.main(["--data", str(data), "--out", str(out), "--engine", engine]) == EXIT_OK
    summary = strict_summary(out)
    assert [(f["path"], f["table"]) for f in summary["unreadable_files"]] == [
        (str(garbage), "interactions"), (str(truncated), "interactions")]
    assert all(f["reason"] for f in summary["unreadable_files"])
    assert summary["input_rows"] == n + 3 + 2 and summary["rejected_rows"] == 3 + 2
    rejected = uri.read_table(str(out), "rejected").to_pylist()
    files = sorted(json.loads(r["row"])["file"] for r in rejected if r["reason"].startswith("unreadable Parquet file"))
    assert files == [str(garbage), str(truncated)]


def test_unreadable_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "data" / "interactions").mkdir(parents=True)
    (tmp_path / "data" / "interactions" / "part-00000.parquet").write_bytes(b"garbage")
    assert mine_rewrites.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: no readable Parquet file") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and "part-00000.parquet" in err
    assert mine_rewrites.main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "o2")]) == EXIT_BAD_INPUT
    assert "no 'interactions' table" in capsys.readouterr().err


def test_entrypoint_exit_codes(capsys):
    @entrypoint
    def bad_usage(argv, prog):
        raise UserError("--rounds must be >= 1")

    @entrypoint
    def crash(argv, prog):
        raise RuntimeError("a bug")

    assert bad_usage([]) == EXIT_BAD_INPUT and capsys.readouterr().err == "error: --rounds must be >= 1\n"
    with pytest.raises(RuntimeError):  # unexpected: the traceback and exit code 1 of Python itself
        crash([])
