"""Locations that are URIs: ``raylib.uri`` keeps a URI's query (an S3 endpoint) through
joins. Every job against ``s3://`` is tested where it runs, submitted to a multi-node
cluster: ``tests/test_cluster_jobs.py``."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylib import uri
from raylib.errors import UserError


def test_join_keeps_a_uri_query_at_the_end():
    root = "s3://b/run?endpoint_override=127.0.0.1:9&scheme=http"
    assert uri.join(root, "store", "rewrites/") == "s3://b/run/store/rewrites?endpoint_override=127.0.0.1:9&scheme=http"
    assert uri.join("/tmp/x/", "a") == "/tmp/x/a" and uri.absolute("rel") != "rel" and uri.absolute(root) == root


def test_local_writes_replace_the_file_whole(tmp_path):
    target = str(tmp_path / "d" / "f.json")
    uri.write_text(target, "old")
    uri.write_text(target, "new")
    assert uri.read_bytes(target) == b"new" and sorted(p.name for p in (tmp_path / "d").iterdir()) == ["f.json"]
    assert uri.create_exclusive(str(tmp_path / "claim"), b"a") and not uri.create_exclusive(str(tmp_path / "claim"), b"b")
    assert uri.read_bytes(str(tmp_path / "claim")) == b"a"


def test_a_table_whose_first_file_is_still_being_written_is_not_there_yet(tmp_path):
    """A reader polling a log directory between ``create_dir`` and the writer's rename of
    its first file sees no table, not a table without columns."""
    (tmp_path / "log").mkdir()
    pq.write_table(pa.table({"request_id": ["a"]}), tmp_path / "log" / ".part-0.parquet.tmp")
    with pytest.raises(FileNotFoundError, match="no Parquet file yet"):
        uri.read_table(str(tmp_path), "log")
    uri.write_table(pa.table({"request_id": ["a"]}), str(tmp_path), "log")
    assert uri.read_table(str(tmp_path), "log")["request_id"].to_pylist() == ["a"]


def test_settings_are_read_from_a_path_or_a_bucket_with_one_line_errors(tmp_path, s3):
    location = s3.uri("conf/rails.yaml")
    uri.write_text(location, "min_ess: 5\n")
    assert uri.read_settings(location, "guard-rails file") == {"min_ess": 5}
    (tmp_path / "empty.yaml").write_text("")
    assert uri.read_settings(str(tmp_path / "empty.yaml"), "x") == {}
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    for name, message in (("list.yaml", "must hold a mapping"), ("bad.yaml", "is not valid YAML"),
                          ("missing.yaml", "cannot read simulator settings")):
        with pytest.raises(UserError, match=message) as err:
            uri.read_settings(str(tmp_path / name), "simulator settings")
        assert "\n" not in str(err.value)
