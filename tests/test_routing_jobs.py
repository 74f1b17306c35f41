"""The train/evaluate policy jobs end to end on Parquet routing logs: summary, report,
chart, publication only on a pass, exit codes that follow the guard-rails."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from jobs import evaluate_policy, train_policy
from raylib.routing.toy import ToyBandit
from raylib.uri import write_table
from raylib.store import Store


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("routing_data")
    log, truth = ToyBandit(n_intents=4, seed=21).routing(900, seed=1)
    rows = log.to_pylist()
    rows[0]["propensity"] = 0.0  # rejected with a reason
    rows[1]["reward"] = None  # no feedback: counted, left out
    write_table(pa.Table.from_pylist(rows, schema=log.schema), str(root), "routing_log")
    write_table(truth, str(root), "truth_routing")
    return str(root)


FAST = ["--num-workers", "0", "--epochs", "4", "--replicates", "30"]


def test_train_then_evaluate(data_dir, tmp_path):
    out, store = tmp_path / "out", tmp_path / "store"
    rails = tmp_path / "rails.yaml"
    rails.write_text("min_replication: 0.0\nmax_reward_regression: 0.2\nips_weight_bounds: [0.3, 3.0]\nmin_ess: 10\n")
    code = train_policy.main(["--data", data_dir, "--out", str(out), "--store", str(store), "--guardrails", str(rails), *FAST])
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0 and summary["decision"]["status"] == "pass"
    assert set(summary["true_value"]) == {"logging", "rp", "lp", "hp"}
    assert {"lo", "hi", "value"} <= set(summary["ope"]["ips"]) and summary["rpdr"]
    assert summary["rejected_rows"] == 1 and summary["data"]["unrewarded_rows"] == 1
    assert summary["input_rows"] == summary["data"]["learnable_rows"] + 1 + 1  # + the unrewarded and the rejected row
    assert (out / "rejected").is_dir() and (out / "replication.png").stat().st_size > 0
    assert "| IPS expected reward |" in (out / "report.md").read_text()
    assert Store(str(store)).latest("policy") == summary["published_version"]

    eval_out = tmp_path / "eval"
    code = evaluate_policy.main(["--data", data_dir, "--out", str(eval_out), "--store", str(store), "--guardrails", str(rails),
                                 "--num-workers", "0", "--epochs", "2", "--replicates", "30"])
    evaluated = json.loads((eval_out / "summary.json").read_text())
    assert code == 0 and evaluated["ope"]["estimator"] == "dr" and "hp" in evaluated["true_value"]


def test_held_out_evaluation_never_sees_the_rows_the_policy_learned_from(data_dir, tmp_path, monkeypatch):
    from raylib.routing import assess, learn

    ids = {"learned": set(), "evaluated": set()}
    learn_hybrid, assess_policy = learn.learn_hybrid, assess.assess

    def spy_learn(train, validation, *args):
        ids["learned"] |= set(train["request_id"].to_pylist()) | set(validation["request_id"].to_pylist())
        return learn_hybrid(train, validation, *args)

    def spy_assess(policy, rows, *args, **kwargs):
        ids["evaluated"] = set(rows["request_id"].to_pylist())
        return assess_policy(policy, rows, *args, **kwargs)

    monkeypatch.setattr(learn, "learn_hybrid", spy_learn)
    monkeypatch.setattr(assess, "assess", spy_assess)
    rails = tmp_path / "rails.yaml"
    rails.write_text("max_reward_regression: 1.0\nips_weight_bounds: [0.0, 100.0]\nmin_ess: 1\nmin_replication: 0.0\n")
    store, out = str(tmp_path / "store"), tmp_path / "eval"
    assert train_policy.main(["--data", data_dir, "--out", str(tmp_path / "train"), "--store", store,
                              "--guardrails", str(rails), *FAST]) == 0
    evaluate_policy.main(["--data", data_dir, "--out", str(out), "--store", store, "--held-out",
                          "--num-workers", "0", "--epochs", "1", "--replicates", "0"])
    summary = json.loads((out / "summary.json").read_text())
    assert ids["learned"] and ids["evaluated"] and ids["evaluated"].isdisjoint(ids["learned"])
    assert summary["evaluated_rows"] == {"rows": "test split", "count": len(ids["evaluated"])}
    assert len(ids["learned"]) + len(ids["evaluated"]) == summary["data"]["learnable_rows"]


def test_failed_guardrails_exit_3_and_publish_nothing(data_dir, tmp_path):
    rails = tmp_path / "strict.yaml"
    rails.write_text("min_ess: 1.0e9\n")
    store = tmp_path / "store"
    code = train_policy.main(["--data", data_dir, "--out", str(tmp_path / "o"), "--store", str(store), "--guardrails", str(rails), *FAST])
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert code == 3 and summary["decision"]["status"] == "fail" and any("ESS" in r for r in summary["decision"]["reasons"])
    assert summary["published_version"] is None and Store(str(store)).latest("policy") is None


def test_bad_input_is_one_line_error(tmp_path, capsys):
    assert train_policy.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert capsys.readouterr().err.startswith("error: no routing_log table")
    assert train_policy.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--kappa-target", "2"]) == 2
    assert evaluate_policy.main(["--data", str(tmp_path), "--out", str(tmp_path / "e"), "--store", str(tmp_path / "s")]) == 2
