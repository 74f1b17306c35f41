"""Ray Train link-prediction training (2 CPU workers, Ray Data shards) and the job end to end
(kill and resume: test_train_resume.py)."""

import json
import os

import pyarrow as pa
import pytest

from jobs.train_pdrfe import main
from raylib.graph.build import build_graph, split_edges
from raylib.graph.data import GraphData
from raylib.graph.encoders import HashingNgramEncoder
from raylib.graph.linkpred import POPULARITY
from raylib.graph.models import SPECS
from raylib.graph.synthetic import synthetic_tables
from raylib.graph.train import TrainConfig, fit
from raylib.store import Store
from raylib.uri import write_table

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_two_workers_get_equal_shards_and_the_loss_falls(tmp_path):
    inter, cust, skills = synthetic_tables(150, 20, 3000, seed=2)
    g = build_graph(inter, cust, skills)
    data = GraphData.from_graph(g, HashingNgramEncoder(32).encode(g.utterances), split_edges(g.num_edges))
    cfg = TrainConfig(dim=16, epochs=3, batch_size=256, lr=1e-2)
    trained = fit(SPECS["PDRFE (w/ factorized conv)"], data, cfg, num_workers=2, storage_path=str(tmp_path / "runs"))
    m = trained.metrics
    assert m["start_epoch"] == 0 and m["world_size"] == 2 and m["device"] == "cpu"
    assert len(m["loss_history"]) == 3 and m["loss_history"][-1] < m["loss_history"][0]
    # Ray Data's equal split: both ranks train the same number of edges, the remainder dropped
    assert m["edges_per_worker"] == [len(data.train_edges) // 2] * 2
    assert m["edges_per_s"] > 0 and trained.checkpoint_path.startswith(str(tmp_path / "runs"))


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
    for table in ("with_utterance", "without_utterance"):
        ce = summary[f"cross_entropy_{table}"]
        assert set(ce) == {"Raw one-hot", "RGCN", "Per"}
        assert all(set(v) == {"lr", "mlp"} and v["lr"] > 0 for v in ce.values())
        assert summary["ablation"][table][0]["module"] == "Personalizer"
    links = summary["link_prediction"]
    assert set(links) == {"RGCN", "Per", POPULARITY} and links["Per"]["all"]["edges"] == summary["link_test_edges"]
    assert all(0 <= v["all"]["auc"] <= 1 and set(v["all"]) == {"auc", "mrr", "hits@10", "edges"} for v in links.values())
    assert summary["edges"] == 1501 and summary["workers"] == 1 and summary["epochs"] == 2
    assert summary["rejected_rows"] == 1 and summary["rejected_by_reason"] == {"empty utterance": 1}
    assert summary["graph"]["customers_without_metadata"] == 1
    assert summary["graph"]["edges_with_default_features"] == 1
    report = open(os.path.join(out, "report.md")).read()
    assert "| Per |" in report and "ablation.png" in report and "## Link prediction" in report
    assert "## Where PDRFE stands" in report
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
    assert main(["--data", data_dir, "--out", str(tmp_path / "o"), "--negative-alpha", "3"]) == 2
    assert "--negative-alpha within [0, 2]" in capsys.readouterr().err
