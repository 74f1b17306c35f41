"""The router's decision log: every routing decision as a ``routing_log`` row in Parquet.

``decision_rows`` turns served requests and the policy's decisions into rows of the
``routing_log`` contract (``reward`` null: feedback is joined later by ``request_id``).
``DecisionLogWriter`` keeps the file writing off the request path. ``append`` adds rows to the
current *segment*: it appends them to the segment's journal on local disk (an Arrow IPC
stream, one small write per call, in the page cache before ``append`` returns) and keeps them
in memory. A segment is sealed when it holds ``max_rows`` rows or its oldest row is
``max_age_s`` old; a background thread writes each sealed segment to the log, in files of at
most ``max_rows`` rows named after the segment, then deletes its journal. Files appear
atomically (written under a dot-name that Parquet readers skip, then renamed), so
``raylib.uri.read_table(root, "routing_log")`` can read the log while it grows. Rows that
break the contract go to ``root/rejected`` with their reason.

Durability: no decision is dropped silently, and none is lost while a local disk takes writes,
even when the process is killed.

* The journal makes a decision durable before the request is answered. Journals live in a
  local directory per log location (``spill_dir``); a live writer holds an advisory lock
  (``flock``) on ``<writer id>.lock`` there. A writer that finds journals whose writer's lock
  is free (a killed replica; a closed writer whose log refused its last segments) takes that
  lock, writes those journals to the log under their own names and deletes them: at start and
  every ``ORPHAN_CHECK_S`` seconds. A journal cut short by the kill is read up to its last
  whole batch: only the write in progress at the kill, never an answered request's row, is lost.
* A failed write leaves its segment sealed and queued, in order, and is retried with
  exponential backoff: ``retry_base_s`` doubling per consecutive failure up to ``retry_max_s``,
  each delay scaled by a random factor in [0.5, 1] (replicas that failed together do not retry
  together). A segment always goes to the same file names, so an attempt that failed half-way
  (its routing_log file written, its rejected file not) is overwritten, never duplicated, and a
  journal re-sent after a kill overwrites what the dead writer had already written of it.
* Memory is bounded: at most ``max_buffer_rows`` rows are held. Beyond that, whole segments
  are *spilled*: their rows are dropped from memory (counted and logged) and re-read from their
  journal when written (counted as ``resent``).
* Rows are lost only when the journal write fails and the rows can neither be held (memory
  full) nor written: counted as ``lost`` and logged as an error. A journal that cannot be
  written is logged; its rows stay in memory and are still written, but would not survive a kill.

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
import pyarrow.parquet as pq

from raylib import schema, uri
from raylib.validate import validate
from serve_apps.journal import JOURNAL, Segment, close_journal, hold_lock, read_journal, writer_of
from serve_apps.metrics import instruments

ANONYMOUS_CUSTOMER = "anonymous"
SPILL_ROOT = os.path.join(tempfile.gettempdir(), "selflearn-decision-log-spill")
ROW_OUTCOMES = ("written", "rejected", "retried", "spilled", "resent", "lost")
ORPHAN_CHECK_S = 5.0  # how often a writer looks for journals of writers that are gone

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
    """Journaled, size- and time-rotated Parquet writer on a background thread, with retries,
    bounded memory, and recovery of dead writers' journals (see the module docstring)."""

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
        self._current: Segment | None = None
        self._sealed: list[Segment] = []  # oldest first
        self._in_memory = 0
        self._seq = 0
        self._failures = 0  # consecutive failed attempts
        self._retry_at = 0.0
        self._next_orphan_check = 0.0
        self._lock_file = None
        try:
            os.makedirs(self.spill_dir, exist_ok=True)
            self._lock_file = hold_lock(os.path.join(self.spill_dir, f"{self.writer_id}.lock"))
        except OSError as exc:
            logger.error("decision log: journal directory %s unusable (%s: %s); decisions are kept in memory "
                         "only and lost if this process dies", self.spill_dir, type(exc).__name__, exc)
        self._lock = threading.Lock()  # guards the segments
        self._write_lock = threading.Lock()  # one writer of files at a time
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def append(self, rows: list[dict]) -> None:
        """Journal and buffer rows (called on the request path: one small local write)."""
        if not rows:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("decision log writer is closed")
            seg = self._current or self._open_segment()
            if seg.journaled:
                self._journal(seg, rows)
            seg.n += len(rows)
            self._hold(seg, rows)
            full = seg.n >= self.max_rows
            if full:
                self._seal()
        if full:
            self._wake.set()

    def buffered(self) -> int:
        """Rows in memory, not yet written."""
        with self._lock:
            return self._in_memory

    def _count(self, outcome: str, n: int) -> None:
        if n:
            self.stats[outcome] += n
            self._metrics.decision_log_rows.inc(n, tags={"outcome": outcome})

    def _open_segment(self) -> Segment:
        self._seq += 1
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        stem = f"part-{stamp}-{self.writer_id}-{self._seq:06d}"
        self._current = Segment(stem, os.path.join(self.spill_dir, stem + JOURNAL))
        return self._current

    def _journal(self, seg: Segment, rows: list[dict]) -> None:
        try:
            if self._lock_file is None:
                raise OSError(f"no lock held in {self.spill_dir}")
            table = pa.Table.from_pylist(rows, schema=schema.ROUTING_LOG)
            if seg.sink is None:
                seg.file = open(seg.path, "wb", buffering=0)  # each batch reaches the OS at once
                seg.sink = pa.ipc.new_stream(seg.file, schema.ROUTING_LOG)
            seg.sink.write_table(table)
        except Exception as exc:  # noqa: BLE001 - the rows are still held and written; say they are not durable
            seg.journaled = False
            close_journal(seg)
            logger.error("decision log: journal %s failed (%s: %s); segment %s is held in memory only",
                         seg.path, type(exc).__name__, exc, seg.stem)

    def _hold(self, seg: Segment, rows: list[dict]) -> None:
        """Keep ``rows`` of ``seg`` in memory within ``max_buffer_rows``: spill journaled
        segments, oldest first; rows that fit nowhere are lost (counted, logged)."""
        if seg.rows is None:
            self._count("spilled", len(rows))
            return
        seg.rows.extend(rows)
        self._in_memory += len(rows)
        for victim in [*self._sealed, seg]:
            if self._in_memory <= self.max_buffer_rows:
                return
            if victim.rows is not None and victim.journaled:
                self._in_memory -= len(victim.rows)
                self._count("spilled", len(victim.rows))
                logger.warning("decision log: memory full (%d rows): spilled %d rows (segment %s) to its journal; "
                               "written to %s from there", self.max_buffer_rows, len(victim.rows), victim.stem, self.root)
                victim.rows = None
        excess = self._in_memory - self.max_buffer_rows
        if excess > 0:  # no journal to fall back on: the newest rows go
            del seg.rows[-excess:]
            self._in_memory -= excess
            self._count("lost", excess)
            logger.error("decision log: %d rows LOST (memory full and the journal in %s failed)", excess, self.spill_dir)

    def _seal(self) -> None:
        """Close the current segment's journal and queue the segment for writing (under _lock)."""
        if self._current is not None:
            close_journal(self._current)
            self._sealed.append(self._current)
            self._current = None

    def _seal_if_due(self) -> None:
        with self._lock:
            if self._current is not None and time.monotonic() - self._current.opened >= self.max_age_s:
                self._seal()

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
                    self._seal_if_due()
                    if time.monotonic() >= self._retry_at:
                        self._write_sealed()
                    if self._failures == 0 and time.monotonic() >= self._next_orphan_check:
                        self._resend_orphans()
            except Exception:  # noqa: BLE001 - the thread must outlive any surprise; rows stay queued
                logger.exception("decision log: unexpected error in the writer thread")
            self._metrics.decision_log_buffered_rows.set(self.buffered())

    def _write(self, table: pa.Table, stem: str) -> list[str]:
        """Validate ``table`` and write its good rows to ``routing_log``, the others to
        ``rejected``, in files of at most ``max_rows`` rows named ``stem`` (``stem-k`` when
        there are several); the rows are counted once every write succeeded."""
        checked = validate(table, "routing_log")
        written = []
        for folder, part in (("routing_log", checked.good), ("rejected", checked.rejected)):
            chunks = range(0, part.num_rows, self.max_rows)
            for k, offset in enumerate(chunks):
                name = stem if len(chunks) == 1 else f"{stem}-{k:03d}"
                written.append(_write_parquet(self.fs, f"{self.root}/{folder}", name, part.slice(offset, self.max_rows)))
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

    def _write_sealed(self) -> list[str]:
        """Write the sealed segments, oldest first, deleting each one's journal once it is in
        the log; stop at the first failure (that segment stays first in the queue)."""
        written = []
        while True:
            with self._lock:
                if not self._sealed:
                    return written
                seg = self._sealed[0]
            rows = seg.rows
            try:
                table = (read_journal(seg.path) if rows is None
                         else pa.Table.from_pylist(rows, schema=schema.ROUTING_LOG))
                written += self._write(table, seg.stem)
            except Exception as exc:  # noqa: BLE001 - any failure of the target is retried
                self._failed(seg.n, f"writing to {self.root}", exc)
                return written
            if rows is None:
                self._count("resent", table.num_rows)
            self._remove(seg.path)
            with self._lock:
                self._sealed.pop(0)
                self._in_memory -= len(rows or ())
            self._succeeded()

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def _resend_orphans(self) -> list[str]:
        """Write the journals of writers of this log that are gone (their lock is free) to the
        log under their own names, then delete them; stop at the first failure."""
        self._next_orphan_check = time.monotonic() + ORPHAN_CHECK_S
        try:
            names = sorted(n for n in os.listdir(self.spill_dir) if n.endswith(JOURNAL))
        except FileNotFoundError:
            return []
        by_writer: dict[str, list[str]] = {}
        for name in names:
            by_writer.setdefault(writer_of(name), []).append(name)
        by_writer.pop(self.writer_id, None)
        written = []
        for writer, journals in by_writer.items():
            lock_path = os.path.join(self.spill_dir, f"{writer}.lock")
            held = hold_lock(lock_path)
            if held is None:  # that writer is alive
                continue
            try:
                for name in journals:
                    path = os.path.join(self.spill_dir, name)
                    table = read_journal(path)
                    try:
                        written += self._write(table, name.removesuffix(JOURNAL))
                    except Exception as exc:  # noqa: BLE001 - the journal stays for the next attempt
                        self._failed(table.num_rows, f"re-sending {path} to {self.root}", exc)
                        return written
                    self._remove(path)
                    self._count("resent", table.num_rows)
                    logger.warning("decision log: re-sent %d rows of writer %s (gone) from %s", table.num_rows, writer, path)
                    self._succeeded()
                self._remove(lock_path)
            finally:
                held.close()
        return written

    def flush(self) -> list[str]:
        """Seal and write the current segment and everything queued now, whatever the retry
        delay, then re-send gone writers' journals if the log took the writes; returns the
        files written. A failure is logged and counted, and leaves the rows queued."""
        with self._write_lock:
            with self._lock:
                self._seal()
            written = self._write_sealed()
            if self._failures == 0:
                written += self._resend_orphans()
        self._metrics.decision_log_buffered_rows.set(self.buffered())
        return written

    def close(self) -> list[str]:
        """Stop the background thread and write what is queued. What the log does not take now
        stays in its journals, which a later writer of the same log re-sends (counted as
        spilled); rows without a journal are lost (counted, logged)."""
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        written = self.flush()
        with self._write_lock, self._lock:
            for seg in self._sealed:
                held = len(seg.rows or ())
                if seg.journaled:
                    self._count("spilled", held)
                else:
                    self._count("lost", held)
                    logger.error("decision log: %d rows LOST (closing while %s fails, no journal)", held, self.root)
            if self._sealed:
                logger.warning("decision log: closing with %d segments not in %s; their journals in %s are re-sent "
                               "by the next writer of this log", len(self._sealed), self.root, self.spill_dir)
            left, self._sealed, self._in_memory = self._sealed, [], 0
            if self._lock_file is not None:
                if not left:
                    self._remove(self._lock_file.name)
                self._lock_file.close()  # releases the lock: the journals left are anyone's to re-send
                self._lock_file = None
        self._metrics.decision_log_buffered_rows.set(self.buffered())
        return written
