"""Ray Train link-prediction training (2 CPU workers, kill + resume) and the job end to end."""

import json
import os

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch

from jobs.train_pdrfe import main
from raylib.graph.build import build_graph, split_edges
from raylib.graph.data import GraphData
from raylib.graph.encoders import HashingNgramEncoder
from raylib.graph.models import SPECS
from raylib.graph.synthetic import synthetic_tables
from raylib.graph.train import TrainConfig, fit, shard
from raylib.schema import write_table
from raylib.store import Store

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_shards_are_disjoint_and_equal():
    edges = np.arange(101)
    a, b = shard(edges, 0, 0, 2, 7), shard(edges, 0, 1, 2, 7)
    assert len(a) == len(b) == 50 and not set(a) & set(b)
    assert len(shard(edges, 1, 0, 2, 7, cap=20)) == 10


def test_two_workers_loss_falls_and_a_killed_run_resumes(tmp_path):
    inter, cust, skills = synthetic_tables(150, 20, 3000, seed=2)
    g = build_graph(inter, cust, skills)
    data = GraphData.from_graph(g, HashingNgramEncoder(32).encode(g.utterances), split_edges(g.num_edges))
    marker = str(tmp_path / "killed")
    cfg = TrainConfig(dim=16, epochs=3, batch_size=256, lr=1e-2, crash_after_epoch=0, crash_marker=marker)
    trained = fit(SPECS["PDRFE (w/ factorized conv)"], ray.put(data), cfg, data, num_workers=2,
                  storage_path=str(tmp_path / "runs"), name="resume", max_failures=1)
    m = trained.metrics
    assert os.path.exists(marker)  # a worker was killed after epoch 0 ...
    assert m["start_epoch"] == 1  # ... and the restarted group resumed from its checkpoint
    assert len(m["loss_history"]) == 3 and m["loss_history"][-1] < m["loss_history"][0]
    assert m["world_size"] == 2 and all(n > 0 for n in m["edges_per_worker"])
    assert sum(m["edges_per_worker"]) == 2 * (len(data.train_edges) // 2)


def _write_inputs(root, n_edges=1500):
    inter, cust, skills = synthetic_tables(60, 10, n_edges, seed=4)
    rows = inter.to_pylist()
    rows.append({**rows[0], "utterance": "   "})  # empty utterance: rejected
    rows.append({**rows[1], "customer_id": "nobody"})  # no metadata: default features
    write_table(pa.Table.from_pylist(rows, schema=inter.schema), root, "interactions")
    write_table(cust, root, "customers")
    write_table(skills, root, "skills")


def test_job_end_to_end(tmp_path):
    data_dir, out = str(tmp_path / "data"), str(tmp_path / "out")
    _write_inputs(data_dir)
    rc = main(["--data", data_dir, "--out", out, "--num-workers", "1", "--epochs", "2", "--dim", "16",
               "--encoder-dim", "32", "--models", "Raw one-hot,RGCN,Per", "--publish-model", "Per"])
    assert rc == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert set(summary["cross_entropy"]) == {"Raw one-hot", "RGCN", "Per"}
    assert all(set(v) == {"lr", "mlp"} and v["lr"] > 0 for v in summary["cross_entropy"].values())
    assert summary["edges"] == 1501 and summary["workers"] == 1 and summary["epochs"] == 2
    assert summary["input_counts"]["interactions_rejected"] == 1
    assert summary["input_counts"]["customers_without_metadata"] == 1
    assert summary["input_counts"]["edges_with_default_features"] == 1
    assert summary["ablation"][0]["module"] == "Personalizer"
    report = open(os.path.join(out, "report.md")).read()
    assert "| Per |" in report and "ablation.png" in report
    assert os.path.getsize(os.path.join(out, "ablation.png")) > 1000
    art = Store(os.path.join(out, "store")).load("embeddings")
    assert art.table("customers").num_rows == summary["customers"]
    assert art.table("personalized").num_rows >= summary["customers"]
    assert art.metadata["model"] == "Per"


def test_job_bad_input_is_one_line_error(tmp_path, capsys):
    data_dir = str(tmp_path / "data")
    inter, cust, skills = synthetic_tables(5, 2, 10)
    write_table(inter.slice(0, 0), data_dir, "interactions")
    write_table(cust, data_dir, "customers")
    write_table(skills, data_dir, "skills")
    assert main(["--data", data_dir, "--out", str(tmp_path / "o")]) == 2
    assert "empty graph" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["--data", data_dir, "--out", str(tmp_path / "o"), "--models", "GAT"]) == 2
    assert "unknown model" in capsys.readouterr().err
