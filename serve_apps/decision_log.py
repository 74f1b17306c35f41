"""The router's decision log: every routing decision as a ``routing_log`` row in Parquet.

``decision_rows`` turns served requests and the policy's decisions into rows of the
``routing_log`` contract (``reward`` null: feedback is joined later by ``request_id``).
``DecisionLogWriter`` keeps the file writing off the request path: ``append`` only extends
an in-memory buffer; a background thread writes the buffer, in files of at most ``max_rows``
rows, when it holds ``max_rows`` rows or its oldest row is ``max_age_s`` old, and ``close``
writes what is left. Files appear atomically (written under a dot-name that Parquet readers
skip, then renamed), so ``raylib.uri.read_table(root, "routing_log")`` can read the log while
it grows. Rows that break the contract go to ``root/rejected`` with their reason.

Durability: no decision is dropped silently, and none is lost while a local disk takes writes.

* A failed write leaves its rows buffered, in order, and is retried with exponential backoff:
  ``retry_base_s`` doubling per consecutive failure up to ``retry_max_s``, each delay scaled by
  a random factor in [0.5, 1] (replicas that failed together do not retry together). A batch
  is retried under the file names of its first attempt, so an attempt that failed half-way
  (its routing_log file written, its rejected file not) is overwritten, never duplicated.
* The buffer holds at most ``max_buffer_rows`` rows. Rows appended to a full buffer are
  spilled by the background thread to a local fallback directory (``spill_dir``: atomic
  Parquet files, logged with their count) and re-sent to the log, then deleted, once a write
  to the log succeeds again. ``close`` spills what it cannot write, and a writer re-sends what
  an earlier process spilled for the same log (the fallback directory is per log location).
  Rows are lost only when the spill write fails too: counted as ``lost`` and logged as an error.

Every outcome is counted in ``DecisionLogWriter.stats`` and in the
``selflearn_decision_log_*`` metrics (``serve_apps.metrics``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import random
import tempfile
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylib import schema, uri
from raylib.validate import validate
from serve_apps.metrics import instruments

ANONYMOUS_CUSTOMER = "anonymous"
SPILL_ROOT = os.path.join(tempfile.gettempdir(), "selflearn-decision-log-spill")
ROW_OUTCOMES = ("written", "rejected", "retried", "spilled", "resent", "lost")

logger = logging.getLogger(__name__)


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


def spill_dir(root: str, spill_root: str | None = None) -> str:
    """The local fallback directory of the log at ``root``: one per log location under
    ``spill_root`` (default: ``SPILL_ROOT`` in the system's temporary directory), so a writer
    re-sends only rows meant for its own log."""
    key = hashlib.sha1(uri.absolute(root).encode()).hexdigest()[:16]
    return os.path.join(os.path.abspath(spill_root or SPILL_ROOT), key)


def _write_parquet(fs, directory: str, stem: str, table: pa.Table) -> str:
    """Write ``table`` to ``directory/stem.parquet`` so that it appears complete or not at all
    (an existing file of that name is replaced)."""
    fs.create_dir(directory, recursive=True)
    final = f"{directory}/{stem}.parquet"
    tmp = f"{directory}/.{stem}.parquet.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, final)
    return final


class DecisionLogWriter:
    """Buffered, size- and time-rotated Parquet writer on a background thread, with retries,
    a bounded buffer and a local spill (see the module docstring)."""

    def __init__(self, root: str, max_rows: int = 50_000, max_age_s: float = 60.0, max_buffer_rows: int = 100_000,
                 spill_root: str | None = None, retry_base_s: float = 0.5, retry_max_s: float = 30.0):
        if max_buffer_rows < max_rows:
            raise ValueError(f"max_buffer_rows ({max_buffer_rows}) must be at least max_rows ({max_rows})")
        self.fs, self.root = uri.filesystem(root)
        self.spill_dir = spill_dir(root, spill_root)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.max_buffer_rows = max_buffer_rows
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.writer_id = uuid.uuid4().hex[:8]
        self.stats = {**dict.fromkeys(ROW_OUTCOMES, 0), "files": 0, "failed_writes": 0}
        self._metrics = instruments()
        self._local = pafs.LocalFileSystem()
        self._buffer: list[dict] = []
        self._overflow: list[dict] = []  # appended to a full buffer: spilled by the thread
        self._oldest = 0.0
        self._seq = 0
        self._stem: str | None = None  # file stem of the batch being written or retried
        self._failures = 0  # consecutive failed attempts
        self._retry_at = 0.0
        self._spilled = True  # the spill directory may hold rows (also an earlier process's)
        self._lock = threading.Lock()  # guards the buffer and the overflow
        self._write_lock = threading.Lock()  # one writer of files at a time
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def append(self, rows: list[dict]) -> None:
        """Buffer rows (cheap; called on the request path). Rows beyond ``max_buffer_rows``
        go to the overflow, which the background thread spills at once."""
        with self._lock:
            if not self._buffer:
                self._oldest = time.monotonic()
            room = max(self.max_buffer_rows - len(self._buffer), 0)
            self._buffer.extend(rows[:room])
            if len(rows) > room:
                self._overflow.extend(rows[room:])
            wake = len(rows) > room or len(self._buffer) >= self.max_rows
        if wake:
            self._wake.set()

    def buffered(self) -> int:
        """Rows in memory, not yet written or spilled."""
        with self._lock:
            return len(self._buffer) + len(self._overflow)

    def _count(self, outcome: str, n: int) -> None:
        if n:
            self.stats[outcome] += n
            self._metrics.decision_log_rows.inc(n, tags={"outcome": outcome})

    def _new_stem(self) -> str:
        self._seq += 1
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        return f"part-{stamp}-{self.writer_id}-{self._seq:06d}"

    def _due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if not self._buffer or now < self._retry_at:
                return False
            return self._failures > 0 or len(self._buffer) >= self.max_rows or now - self._oldest >= self.max_age_s

    def _wait_s(self) -> float:
        wait = min(self.max_age_s, 1.0)
        if self._failures:
            wait = min(wait, max(self._retry_at - time.monotonic(), 0.01))
        return wait

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=self._wait_s())
            self._wake.clear()
            try:
                with self._write_lock:
                    self._spill_overflow()
                    if self._due():
                        self._write_buffer()
                    if self._spilled and time.monotonic() >= self._retry_at:  # not right after a failure
                        self._resend_spilled()
            except Exception:  # noqa: BLE001 - the thread must outlive any surprise; rows stay buffered
                logger.exception("decision log: unexpected error in the writer thread")
            self._metrics.decision_log_buffered_rows.set(self.buffered())

    def _write(self, table: pa.Table, stem: str) -> list[str]:
        """Validate ``table`` and write its good rows to ``routing_log``, the others to
        ``rejected``, both under ``stem``; the rows are counted once both writes succeeded."""
        checked = validate(table, "routing_log")
        written = []
        if checked.good.num_rows:
            written.append(_write_parquet(self.fs, f"{self.root}/routing_log", stem, checked.good))
        if checked.n_rejected:
            written.append(_write_parquet(self.fs, f"{self.root}/rejected", stem, checked.rejected))
        self._count("written", checked.good.num_rows)
        self._count("rejected", checked.n_rejected)
        self.stats["files"] += len(written)
        return written

    def _failed(self, n_rows: int, what: str, exc: Exception) -> None:
        """Count a failed attempt and schedule the next one (exponential backoff with jitter)."""
        self._failures += 1
        delay = min(self.retry_max_s, self.retry_base_s * 2 ** (self._failures - 1)) * random.uniform(0.5, 1.0)
        self._retry_at = time.monotonic() + delay
        self.stats["failed_writes"] += 1
        self._metrics.decision_log_failed_writes.inc()
        self._count("retried", n_rows)
        logger.warning("decision log: %s (%d rows) failed (attempt %d: %s: %s); kept, next attempt in %.2f s",
                       what, n_rows, self._failures, type(exc).__name__, exc, delay)

    def _succeeded(self) -> None:
        if self._failures:
            logger.warning("decision log: writing to %s works again after %d failed attempts", self.root, self._failures)
        self._failures, self._retry_at = 0, 0.0

    def _write_buffer(self) -> tuple[list[str], bool]:
        """Write the rows buffered now, oldest first, ``max_rows`` per file; stop at the first
        failure (its rows stay first in the buffer). Returns the files written and whether
        every write succeeded."""
        written = []
        with self._lock:
            pending = len(self._buffer)
        while pending > 0:
            with self._lock:
                rows = self._buffer[: min(self.max_rows, pending)]
            self._stem = self._stem or self._new_stem()
            try:
                written += self._write(pa.Table.from_pylist(rows, schema=schema.ROUTING_LOG), self._stem)
            except Exception as exc:  # noqa: BLE001 - any failure of the target is retried
                self._failed(len(rows), f"writing to {self.root}", exc)
                return written, False
            with self._lock:
                del self._buffer[: len(rows)]
            self._stem = None
            pending -= len(rows)
            self._succeeded()
        return written, True

    def _spill(self, rows: list[dict], why: str) -> None:
        """Write ``rows`` to the local fallback directory (counted, logged); counted as lost
        and logged as an error when even that fails."""
        if not rows:
            return
        try:
            table = pa.Table.from_pylist(rows, schema=schema.ROUTING_LOG)
            path = _write_parquet(self._local, self.spill_dir, self._new_stem(), table)
        except Exception as exc:  # noqa: BLE001 - nowhere left to keep them: count and shout
            self._count("lost", len(rows))
            logger.error("decision log: %d rows LOST (%s; spilling to %s failed: %s: %s)",
                         len(rows), why, self.spill_dir, type(exc).__name__, exc)
            return
        self._spilled = True
        self._count("spilled", len(rows))
        logger.warning("decision log: %s: spilled %d rows to %s; re-sent to %s once it takes writes",
                       why, len(rows), path, self.root)

    def _spill_overflow(self) -> None:
        with self._lock:
            rows, self._overflow = self._overflow, []
        self._spill(rows, f"buffer full ({self.max_buffer_rows} rows)")

    def _resend_spilled(self) -> list[str]:
        """Write the spilled files to the log (each under its own stem, so a retry never
        duplicates) and delete them; stop at the first failure."""
        written = []
        try:
            names = sorted(n for n in os.listdir(self.spill_dir) if n.endswith(".parquet") and not n.startswith("."))
        except FileNotFoundError:
            names = []
        for name in names:
            path = os.path.join(self.spill_dir, name)
            try:
                table = pq.read_table(path)
            except FileNotFoundError:  # another writer of the same log re-sent it
                continue
            try:
                written += self._write(table, name.removesuffix(".parquet"))
            except Exception as exc:  # noqa: BLE001 - the file stays in the spill directory
                self._failed(table.num_rows, f"re-sending {path} to {self.root}", exc)
                return written
            try:
                os.remove(path)
            except FileNotFoundError:  # another writer of the same log re-sent it too
                pass
            self._count("resent", table.num_rows)
            self._succeeded()
        self._spilled = False
        return written

    def flush(self) -> list[str]:
        """Write the buffered rows now, whatever the retry delay, then re-send spilled rows
        if the log took the writes; returns the files written. A failure is logged and
        counted, and leaves the rows for the next attempt."""
        with self._write_lock:
            self._spill_overflow()
            written, ok = self._write_buffer()
            if ok and self._spilled:
                written += self._resend_spilled()
        self._metrics.decision_log_buffered_rows.set(self.buffered())
        return written

    def close(self) -> list[str]:
        """Stop the background thread and write what is buffered; what the log does not take
        now is spilled (a later writer of the same log re-sends it)."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        written = self.flush()
        with self._write_lock:
            with self._lock:
                rest, self._buffer = self._buffer, []
            self._spill(rest, f"closing while {self.root} fails")
        self._metrics.decision_log_buffered_rows.set(self.buffered())
        return written
