"""Segment journals of the decision log (``serve_apps.decision_log``): a segment's rows as an
Arrow IPC stream in a local file, written batch by batch, readable up to the last whole batch
after a kill; and the ``flock`` a live writer holds so that others know its journals are its own."""

from __future__ import annotations

import fcntl
import time

import pyarrow as pa

from raylib import schema

JOURNAL = ".arrows"  # a segment's journal: <spill_dir>/<segment stem>.arrows


class Segment:
    """Rows appended between two seals: one journal file, one group of log files, one stem."""

    def __init__(self, stem: str, path: str):
        self.stem, self.path = stem, path
        self.rows: list[dict] | None = []  # None: spilled (dropped from memory, journal only)
        self.n = 0
        self.opened = time.monotonic()
        self.journaled = True  # every row is in the journal
        self.sink = None  # the open journal stream while the segment takes rows
        self.file = None


def close_journal(seg: Segment) -> None:
    """Close a segment's journal stream and file (it takes no more rows)."""
    for closeable in (seg.sink, seg.file):
        try:
            if closeable is not None:
                closeable.close()
        except Exception:  # noqa: BLE001 - a journal that cannot be closed is read up to its last batch
            pass
    seg.sink = seg.file = None


def read_journal(path: str) -> pa.Table:
    """The rows of a segment journal, up to its last whole batch (a writer killed in the middle
    of a write leaves a cut batch, or an empty file, behind)."""
    batches = []
    try:
        with pa.ipc.open_stream(pa.memory_map(path)) as reader:
            for batch in reader:
                batches.append(batch)
    except (pa.ArrowInvalid, EOFError, OSError):
        pass
    return pa.Table.from_batches(batches, schema=schema.ROUTING_LOG)


def hold_lock(path: str):
    """Take the ``flock`` on ``path`` (created if missing) without waiting: the open file,
    which holds the lock until it is closed or its process dies, or None when another
    process holds it."""
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def writer_of(stem: str) -> str:
    """The writer id in a segment stem ``part-<time>-<writer id>-<seq>``."""
    return stem.split("-")[2]
