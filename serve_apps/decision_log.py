"""The router's decision log: every routing decision as a ``routing_log`` row in Parquet.

``decision_rows`` turns served requests and the policy's decisions into rows of the
``routing_log`` contract (``reward`` null: feedback is joined later by ``request_id``).
``DecisionLogWriter`` keeps the file writing off the request path: ``append`` only extends
an in-memory buffer; a background thread writes the buffer as one new Parquet file when
it holds ``max_rows`` rows or its oldest row is ``max_age_s`` old, and ``close`` writes
what is left. Files are rotated by construction (one bounded file per flush) and appear
atomically (written under a dot-name that Parquet readers skip, then renamed), so
``raylib.uri.read_table(root, "routing_log")`` can read the log while it grows.
Rows that break the contract go to ``root/rejected`` with their reason, never dropped.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from raylib import schema, uri
from raylib.validate import validate

ANONYMOUS_CUSTOMER = "anonymous"


def decision_rows(requests: list[dict], decisions: list[dict], request_ids: list[str], policy_version: str, now: dt.datetime) -> list[dict]:
    """One routing_log row per (request, decision): the request as served, the chosen
    action, its mixture propensity, the full mixture distribution and the policy version."""
    return [
        {
            "request_id": rid,
            "customer_id": req.get("customer_id") or ANONYMOUS_CUSTOMER,
            "timestamp": now,
            "utterance": req["utterance"],
            "context": req["context"],
            "candidates": req["candidates"],
            "action": dec["action"],
            "propensity": dec["propensity"],
            "propensities": dec["probabilities"],
            "reward": None,
            "policy_version": policy_version,
        }
        for req, dec, rid in zip(requests, decisions, request_ids)
    ]


def _write_parquet(fs, directory: str, stem: str, table: pa.Table) -> str:
    """Write ``table`` to ``directory/stem.parquet`` so that it appears complete or not at all."""
    fs.create_dir(directory, recursive=True)
    final = f"{directory}/{stem}.parquet"
    tmp = f"{directory}/.{stem}.parquet.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, final)
    return final


class DecisionLogWriter:
    """Buffered, size- and time-rotated Parquet writer on a background thread."""

    def __init__(self, root: str, max_rows: int = 50_000, max_age_s: float = 60.0):
        self.fs, self.root = uri.filesystem(root)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.writer_id = uuid.uuid4().hex[:8]
        self.stats = {"rows": 0, "rejected": 0, "files": 0}
        self._buffer: list[dict] = []
        self._oldest = 0.0
        self._seq = 0
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one flush at a time
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def append(self, rows: list[dict]) -> None:
        """Buffer rows (cheap; called on the request path)."""
        with self._lock:
            if not self._buffer:
                self._oldest = time.monotonic()
            self._buffer.extend(rows)
            full = len(self._buffer) >= self.max_rows
        if full:
            self._wake.set()

    def _due(self) -> bool:
        with self._lock:
            if not self._buffer:
                return False
            return len(self._buffer) >= self.max_rows or time.monotonic() - self._oldest >= self.max_age_s

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=min(self.max_age_s, 1.0))
            self._wake.clear()
            if self._due():
                self.flush()

    def flush(self) -> list[str]:
        """Write the buffered rows now; returns the files written (none for an empty buffer)."""
        with self._write_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
            if not rows:
                return []
            self._seq += 1
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            stem = f"part-{stamp}-{self.writer_id}-{self._seq:06d}"
            checked = validate(pa.Table.from_pylist(rows, schema=schema.ROUTING_LOG), "routing_log")
            written = []
            if checked.good.num_rows:
                written.append(_write_parquet(self.fs, f"{self.root}/routing_log", stem, checked.good))
            if checked.n_rejected:
                written.append(_write_parquet(self.fs, f"{self.root}/rejected", stem, checked.rejected))
            self.stats["rows"] += checked.good.num_rows
            self.stats["rejected"] += checked.n_rejected
            self.stats["files"] += len(written)
            return written

    def close(self) -> list[str]:
        """Stop the background thread and write what is buffered."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        return self.flush()
