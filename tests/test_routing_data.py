"""Bad routing rows are rejected with reasons; feedback fills null rewards; rows without a
reward are counted and left out of learning."""

from __future__ import annotations

import pyarrow as pa

from raylib.routing.data import prepare, split_labels
from raylib.routing.toy import ToyBandit
from raylib.schema import FEEDBACK
from raylib.validate import rejected_counts


def _log(n=12):
    log, truth = ToyBandit(seed=1).routing(n, seed=3)
    return log, truth


def test_bad_rows_rejected_with_reasons():
    log, _ = _log()
    rows = log.to_pylist()
    rows[0]["propensity"] = 0.0
    rows[1]["propensity"] = 1.5
    rows[2]["action"] = 17
    rows[3]["candidates"] = []
    data = prepare(pa.Table.from_pylist(rows, schema=log.schema))
    reasons = rejected_counts(data.rejected)
    assert data.log.num_rows == len(rows) - 4 and data.rejected.num_rows == 4
    assert reasons["propensity 0.0 not in (0, 1]"] == 1 and reasons["propensity 1.5 not in (0, 1]"] == 1
    assert any(r.startswith("action index 17 out of range") for r in reasons) and reasons["candidates empty"] == 1


def test_feedback_join_and_unrewarded_rows():
    log, truth = _log()
    rows = log.to_pylist()
    for r in rows[:5]:
        r["reward"] = None
    fed = pa.table({"request_id": [rows[0]["request_id"], rows[1]["request_id"]], "reward": [1.0, 0.0]}, schema=FEEDBACK)
    data = prepare(pa.Table.from_pylist(rows, schema=log.schema), feedback=fed, truth=truth)
    assert data.n_unrewarded == 3 and data.log.num_rows == len(rows) - 3
    got = dict(zip(data.log.column("request_id").to_pylist(), data.log.column("reward").to_pylist()))
    assert got[rows[0]["request_id"]] == 1.0 and got[rows[1]["request_id"]] == 0.0
    assert data.truth.column("request_id").to_pylist() == data.log.column("request_id").to_pylist()
    assert data.summary()["unrewarded_rows"] == 3


def test_split_is_stable_and_covers_all_rows():
    ids = [f"r{i}" for i in range(2000)]
    labels = split_labels(ids)
    assert (labels == split_labels(ids)).all()
    share = {k: (labels == k).mean() for k in ("train", "validation", "test")}
    assert 0.65 < share["train"] < 0.75 and 0.12 < share["test"] < 0.18
