"""Decision-log durability without Serve: real write failures (a regular file sits where the
writer needs a directory; tests run as root, so permissions would not stop a write), retries
with backoff, bounded memory with segments spilled to their journals, re-sending once the log
takes writes again, and a killed writer's journals re-sent by the next writer. Every appended
row must end up in the log exactly once."""

from __future__ import annotations

import datetime as dt
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from raylib.routing.toy import ToyBandit
from raylib.uri import read_table
from serve_apps.decision_log import DecisionLogWriter, decision_rows, spill_dir
from serve_apps.settings import ServeSettings
from conftest import wait_until

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _rows(n: int, start: int = 0) -> list[dict]:
    """``n`` valid routing_log rows with request ids ``req<start>`` ..."""
    rows = ToyBandit(seed=0).routing(n, seed=start + 1)[0].to_pylist()
    requests = [{"utterance": r["utterance"], "candidates": r["candidates"], "context": r["context"],
                 "customer_id": r["customer_id"]} for r in rows]
    decisions = [{"action": 0, "propensity": 0.5, "decided_by": "lp",
                  "probabilities": [0.5] + [0.5 / (len(r["candidates"]) - 1)] * (len(r["candidates"]) - 1)}
                 for r in requests]
    return decision_rows(requests, decisions, [f"req{start + i:05d}" for i in range(n)], "v000001", NOW)


def _block(path: Path) -> Path:
    """Make writes under directory ``path`` fail for real: a regular file takes its place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a file where the writer needs a directory")
    return path


def _wait(condition, timeout_s: float = 10.0) -> None:
    wait_until(condition, timeout_s, poll_s=0.02)


def _logged_ids(root: Path) -> list[str]:
    """request_ids of routing_log in file-name order (files are named by time of first attempt)."""
    files = sorted((root / "routing_log").glob("part-*.parquet"))
    return [rid for f in files for rid in pq.read_table(f).column("request_id").to_pylist()]


def test_an_outage_loses_no_row_retries_with_backoff_and_spills_to_the_journal(tmp_path, caplog):
    root, spill_root = tmp_path / "log", tmp_path / "spill"
    caplog.set_level(logging.WARNING, logger="serve_apps.decision_log")
    blocker = _block(root / "routing_log")
    writer = DecisionLogWriter(str(root), max_rows=10, max_age_s=0.05, max_buffer_rows=30, spill_root=str(spill_root),
                               retry_base_s=0.05, retry_max_s=0.2)
    rows = _rows(100)
    for k in range(0, 100, 20):  # traffic while the log fails: five segments of 20; 30 rows fit in memory
        writer.append(rows[k:k + 20])
        time.sleep(0.05)
    _wait(lambda: writer.stats["failed_writes"] >= 4)
    assert writer.stats["spilled"] == 80 and writer.buffered() == 20  # the four oldest segments spilled
    assert writer.stats["written"] == 0 and writer.stats["lost"] == 0
    assert len(list(Path(writer.spill_dir).glob("part-*.arrows"))) == 5  # every row is journaled

    blocker.unlink()  # the log takes writes again: the buffer, then the spill, without any call
    _wait(lambda: writer.stats["written"] == 100)
    assert _logged_ids(root) == [r["request_id"] for r in rows]  # every row once, in order
    assert writer.stats["resent"] == 80 and writer.stats["lost"] == 0 and writer.buffered() == 0
    assert writer.stats["retried"] >= 4 * 20 and list(Path(writer.spill_dir).glob("*.arrows")) == []

    # backoff: each delay in [0.5, 1] x min(0.2, 0.05 * 2^(k-1)) for the k-th consecutive failure
    attempts = [(int(m[1]), float(m[2])) for rec in caplog.records
                if (m := re.search(r"attempt (\d+): .*next attempt in ([\d.]+) s", rec.getMessage()))]
    assert len(attempts) == writer.stats["failed_writes"]
    for k, delay in attempts:
        cap = min(0.2, 0.05 * 2 ** (k - 1))
        assert 0.5 * cap - 0.005 <= delay <= cap + 0.005, (k, delay)
    spilled = [int(m[1]) for rec in caplog.records if (m := re.search(r"spilled (\d+) rows", rec.getMessage()))]
    assert sum(spilled) == 80  # each spill logged with its count
    writer.close()
    assert list(Path(writer.spill_dir).iterdir()) == []  # a clean close leaves nothing behind


def test_a_write_that_fails_half_way_is_retried_under_the_same_names(tmp_path):
    """The good rows' file is written, the rejected rows' file fails: the retry rewrites both
    under the segment's names, so no good row is logged twice."""
    root = tmp_path / "log"
    blocker = _block(root / "rejected")
    rows = _rows(4)
    rows[2]["propensity"] = 0.0  # breaks the contract: goes to rejected/
    writer = DecisionLogWriter(str(root), max_rows=100, max_age_s=3600, spill_root=str(tmp_path / "spill"),
                               retry_base_s=60)  # no automatic retry during the test
    writer.append(rows)
    assert writer.flush() == []
    assert len(_logged_ids(root)) == 3 and writer.stats["written"] == 0 and writer.buffered() == 4
    blocker.unlink()
    writer.append(_rows(2, start=4))
    written = writer.flush()  # explicit flush ignores the retry delay
    assert len(written) == 3 and writer.stats["failed_writes"] == 1 and writer.stats["retried"] == 4
    assert sorted(_logged_ids(root)) == ["req00000", "req00001", "req00003", "req00004", "req00005"]
    assert read_table(str(root), "rejected").num_rows == 1
    assert writer.stats["written"] == 5 and writer.stats["rejected"] == 1
    writer.close()


def test_close_leaves_what_the_log_refuses_in_journals_and_the_next_writer_resends_it(tmp_path):
    root, spill_root = tmp_path / "log", tmp_path / "spill"
    blocker = _block(root / "routing_log")
    writer = DecisionLogWriter(str(root), max_rows=100, max_age_s=3600, spill_root=str(spill_root))
    writer.append(_rows(7))
    assert writer.close() == []
    assert writer.stats["spilled"] == 7 and writer.stats["lost"] == 0
    blocker.unlink()
    successor = DecisionLogWriter(str(root), max_rows=100, max_age_s=3600, spill_root=str(spill_root))
    _wait(lambda: successor.stats["resent"] == 7)  # its thread looks for journals of gone writers at start
    assert sorted(_logged_ids(root)) == [f"req{i:05d}" for i in range(7)]
    other = DecisionLogWriter(str(tmp_path / "other_log"), spill_root=str(spill_root))
    assert other.spill_dir != successor.spill_dir == spill_dir(str(root), str(spill_root))  # one spill per log
    successor.close()
    other.close()


def test_rows_that_can_neither_be_journaled_nor_held_are_counted_lost_and_logged(tmp_path, caplog):
    root = tmp_path / "log"
    _block(root / "routing_log")
    spill_root = _block(tmp_path / "spill")
    writer = DecisionLogWriter(str(root), max_rows=5, max_age_s=3600, max_buffer_rows=5, spill_root=str(spill_root))
    with caplog.at_level(logging.ERROR, logger="serve_apps.decision_log"):
        writer.append(_rows(8))
        _wait(lambda: writer.stats["lost"] == 3)
        assert any("3 rows LOST" in rec.getMessage() and rec.levelno == logging.ERROR for rec in caplog.records)
    assert writer.buffered() == 5 and writer.stats["spilled"] == 0
    writer.close()
    assert writer.stats["lost"] == 8


def test_the_buffer_bound_is_a_setting_and_holds_a_full_file(tmp_path):
    assert ServeSettings(decision_log_max_buffer_rows=10, decision_log_max_rows=10).decision_log_max_buffer_rows == 10
    with pytest.raises(ValidationError, match="at least decision_log_max_rows"):
        ServeSettings(decision_log_max_buffer_rows=10, decision_log_max_rows=11)
    with pytest.raises(ValidationError, match="local directory"):
        ServeSettings(decision_log_spill_dir="s3://bucket/spill")
    with pytest.raises(ValueError, match="at least max_rows"):
        DecisionLogWriter(str(tmp_path), max_rows=11, max_buffer_rows=10)


KILLED_WRITER = """
import os, signal, sys
sys.path[:0] = [{repo!r}, os.path.join({repo!r}, "tests")]  # the package, and conftest as pytest sees it
from tests.test_decision_log import _rows
from serve_apps.decision_log import DecisionLogWriter
writer = DecisionLogWriter({root!r}, max_rows=1000, max_age_s=3600, spill_root={spill!r})
for k in range(0, 50, 10):
    writer.append(_rows(10, start=k))
print(writer.writer_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush: the process is gone
"""


def test_a_killed_writers_journal_is_resent_by_the_next_writer(tmp_path):
    """A writer killed with 50 rows appended and none written: the next writer of the same
    log finds the journal (its writer's lock is free) and writes every row once; a journal cut
    in the middle of a write keeps every whole batch before the cut."""
    root, spill = str(tmp_path / "log"), str(tmp_path / "spill")
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER.format(repo=repo, root=root, spill=spill)],
                          capture_output=True, text=True, timeout=120, cwd=repo)
    assert proc.returncode == -9, proc.stderr[-2000:]
    journals = list(Path(spill_dir(root, spill)).glob("part-*.arrows"))
    assert len(journals) == 1 and not (tmp_path / "log").exists()
    with open(journals[0], "ab") as f:  # a batch cut by the kill: its first bytes only
        f.write(b"\xff\xff\xff\xff\x10\x01\x00\x00")
    successor = DecisionLogWriter(root, max_rows=1000, max_age_s=3600, spill_root=spill)
    _wait(lambda: successor.stats["resent"] == 50, timeout_s=30)
    assert _logged_ids(tmp_path / "log") == [f"req{i:05d}" for i in range(50)]
    assert list(Path(successor.spill_dir).glob("*.arrows")) == []
    assert not (Path(successor.spill_dir) / f"{proc.stdout.strip()}.lock").exists()
    successor.close()
