"""The Ray Data path equals the single-process path, and the job runs under a local Ray."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.mine_rewrites import main
from raylib.schema import INTERACTIONS
from raylib.uri import read_table, write_table
from raylib.sim import simulate
from raylib.store import Store

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small simulated world plus a Parquet part of malformed rows."""
    root = tmp_path_factory.mktemp("sim")
    simulate(str(root), preset="small", seed=3, config={"population": {"n_customers": 300}})
    good = read_table(str(root), "interactions").slice(0, 3).to_pylist()
    bad = [dict(good[0], status="exploded"), dict(good[1], customer_id=""), dict(good[2], utterance="   ")]
    write_table(pa.Table.from_pylist(bad, schema=INTERACTIONS), str(root), "interactions", part=99)
    return str(root)


def run_job(tmp_path, name, *args):
    out = tmp_path / name
    code = main(["--out", str(out), *args])
    return code, out


def test_job_ray_path_equals_local_path_and_reports_truth(local_ray, world, tmp_path):
    code, out_ray = run_job(tmp_path, "ray", "--data", world, "--truth", world, "--engine", "ray", "--min-support", "5")
    assert code == 0
    code, out_local = run_job(tmp_path, "local", "--data", world, "--engine", "local", "--min-support", "5")
    assert code == 0
    ray_table = Store(str(out_ray / "store")).load("rewrites").table("table")
    local_table = Store(str(out_local / "store")).load("rewrites").table("table")
    assert ray_table.num_rows > 0 and ray_table.equals(local_table)
    summary = json.loads((out_ray / "summary.json").read_text())
    local_summary = json.loads((out_local / "summary.json").read_text())
    assert summary["stages"] == local_summary["stages"]
    assert summary["removed_by_filter"] == local_summary["removed_by_filter"]
    assert summary["rejected_rows"] == 3 == local_summary["rejected_rows"]
    assert pq.read_table(out_ray / "rejected").num_rows == 3
    for key in ("n_sessions", "n_interpretations", "n_sources", "n_rewrites", "precision", "win_loss", "coverage"):
        assert key in summary
    assert summary["truth"]["wins"] > summary["truth"]["losses"]
    report = (out_ray / "report.md").read_text()
    assert "Removed by each filter" in report and "Quality against" in report


def test_empty_input_gives_empty_table_and_message(world, tmp_path, capsys):
    data = tmp_path / "empty"
    write_table(INTERACTIONS.empty_table(), str(data), "interactions")
    code, out = run_job(tmp_path, "out", "--data", str(data), "--engine", "local")
    assert code == 0
    assert "no valid interactions" in capsys.readouterr().err
    assert Store(str(out / "store")).load("rewrites").table("table").num_rows == 0
    assert json.loads((out / "summary.json").read_text())["n_rewrites"] == 0


def test_bad_arguments_and_missing_input_exit_with_one_line(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--epsilon", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error:") for line in err)
