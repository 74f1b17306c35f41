"""Every job with ``s3://`` inputs and outputs, against an S3-compatible server on 127.0.0.1:
summaries, reports, plots, rejected rows, store versions and Ray Train checkpoints all
land in the bucket, and nothing is written to the local disk (the working directory
stays empty)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import yaml

from jobs import evaluate_policy, mine_rewrites, simulate, train_pdrfe, train_policy
from raylib import uri
from raylib.job import EXIT_OK
from raylib.schema import INTERACTIONS
from raylib.store import Store

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = {"population": {"n_customers": 150}, "routing": {"n_requests": 600}}
LENIENT = {"min_replication": 0.0, "max_reward_regression": 1.0, "ips_weight_bounds": [0.0, 10.0], "min_ess": 1}
PDRFE = "PDRFE (w/ edge attention)"


def test_join_keeps_a_uri_query_at_the_end():
    root = "s3://b/run?endpoint_override=127.0.0.1:9&scheme=http"
    assert uri.join(root, "store", "rewrites/") == "s3://b/run/store/rewrites?endpoint_override=127.0.0.1:9&scheme=http"
    assert uri.join("/tmp/x/", "a") == "/tmp/x/a" and uri.absolute("rel") != "rel" and uri.absolute(root) == root


def test_every_job_reads_and_writes_the_bucket_only(s3, tmp_path, monkeypatch, local_ray):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    config, rails = tmp_path / "tiny.yaml", tmp_path / "rails.yaml"
    config.write_text(yaml.safe_dump(TINY))
    rails.write_text(yaml.safe_dump(LENIENT))
    data, store = s3.uri("data"), s3.uri("store")

    assert simulate.main(["--out", data, "--config", str(config)]) == EXIT_OK
    good = uri.read_table(data, "interactions").slice(0, 2).to_pylist()
    bad = [dict(good[0], status="exploded"), dict(good[1], customer_id="")]
    uri.write_table(pa.Table.from_pylist(bad, schema=INTERACTIONS), data, "interactions", part=99)

    for engine in ("local", "ray"):
        assert mine_rewrites.main(["--data", data, "--out", s3.uri(f"mine-{engine}"), "--store", store,
                                   "--engine", engine, "--min-support", "3", "--min-customers", "2"]) == EXIT_OK
        assert json.loads(s3.read(f"mine-{engine}/summary.json"))["rejected_rows"] == 2
        assert any(k.startswith(f"mine-{engine}/rejected/part-") for k in s3.keys(f"mine-{engine}/"))
    assert train_pdrfe.main(["--data", data, "--out", s3.uri("pdrfe"), "--store", store, "--models", PDRFE,
                             "--publish-model", PDRFE, "--epochs", "1", "--num-workers", "1", "--dim", "16"]) == EXIT_OK
    assert train_policy.main(["--data", data, "--out", s3.uri("policy"), "--store", store, "--guardrails", str(rails),
                              "--num-workers", "1", "--epochs", "1", "--replicates", "20"]) == EXIT_OK
    assert evaluate_policy.main(["--data", data, "--out", s3.uri("ope"), "--store", store, "--guardrails", str(rails),
                                 "--num-workers", "0", "--epochs", "1", "--replicates", "20"]) == EXIT_OK

    assert list(workdir.iterdir()) == []
    keys = s3.keys()
    for job in ("data", "mine-local", "mine-ray", "pdrfe", "policy", "ope"):
        assert f"{job}/summary.json" in keys, job
    for job, files in {"pdrfe": ["report.md", "ablation.png"], "policy": ["report.md", "replication.png"],
                       "ope": ["report.md", "replication.png"]}.items():
        assert all(f"{job}/{f}" in keys for f in files), job
    assert any(k.startswith("pdrfe/ray_train/") for k in keys)  # Ray Train checkpoints in the bucket
    assert any(k.startswith("policy/ray_train/") for k in keys)
    assert any(k.startswith("pdrfe/utterance_cache/") for k in keys)
    published = Store(store)
    assert published.versions("rewrites") == ["v000001", "v000002"] and published.latest("embeddings") == "v000001"
    assert published.latest("policy") == json.loads(s3.read("policy/summary.json"))["published_version"]
