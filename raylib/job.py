"""The job kit: what every job in ``jobs/`` does, done one way.

A job is ``main(argv, prog) -> int`` wrapped by :func:`entrypoint`. Inside, it opens a
:class:`Job` on its ``--out`` location (a local path or any ``pyarrow.fs`` URI) and

- reads contract tables with :meth:`Job.read` (validated; bad rows quarantined under
  ``<out>/rejected`` and counted), or quarantines through ``raylib.validate.quarantine``
  from Ray Data workers (counted on the driver when the job finishes);
- publishes artifacts to :attr:`Job.store` (``--store``, default ``<out>/store``);
- ends with :meth:`Job.finish`, which writes ``summary.json`` (strict JSON: a non-finite
  number becomes null), ``report.md`` and PNG charts under ``--out`` and returns an
  :class:`Outcome`.

Every summary carries the same keys: ``input_rows``, ``rejected_rows``,
``rejected_by_reason``, ``published_version`` (null when nothing was published),
``unreadable_files`` (path and reason of each input file that could not be read: the job
went on with the rest) and ``seconds``. Exit codes: 0 done, 1 anything unexpected (with its traceback),
2 bad usage or unreadable input (one line, no traceback), 3 a candidate rejected by its
guard-rails (nothing published).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from raylib import uri
from raylib.errors import UserError
from raylib.schema import REJECTED
from raylib.store import Store
from raylib.validate import quarantine, rejected_counts, validate

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_REJECTED = 0, 1, 2, 3
COMMON_KEYS = ("input_rows", "rejected_rows", "rejected_by_reason", "published_version", "unreadable_files", "seconds")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
log = logging.getLogger("selflearn")
# Unreadable input: a missing or unreadable path, a corrupt Parquet file.
INPUT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, pa.ArrowInvalid)


def strict(value):
    """``value`` with numpy scalars and arrays as Python values and every non-finite float
    as None, so ``json.dumps(..., allow_nan=False)`` accepts it."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [strict(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def to_json(value) -> str:
    """Strict JSON text of ``value`` (see :func:`strict`)."""
    return json.dumps(strict(value), indent=2, sort_keys=True, allow_nan=False)


def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def parser(prog: str | None, doc: str) -> argparse.ArgumentParser:
    """A job's argument parser: ``doc`` as its description, the common ``--log-level`` and
    the experiment-tracking options (``raylib.tracking``)."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="logging threshold (default INFO)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="MLflow tracking server: log this run there (default: $MLFLOW_TRACKING_URI; none: off)")
    p.add_argument("--experiment", default="selflearn", help="MLflow experiment (default selflearn)")
    return p


def add_max_failures(p: argparse.ArgumentParser) -> None:
    """``--max-failures``: what a training job's Ray Train runs survive (``raylib.trainer``)."""
    p.add_argument("--max-failures", type=int, default=3,
                   help="Ray Train worker-group restarts allowed per trained network after a lost worker or node "
                   "(e.g. a reclaimed spot instance), each resuming from the latest checkpoint; 0: fail at the "
                   "first loss (default %(default)s)")


def add_torch_threads(p: argparse.ArgumentParser) -> None:
    """``--torch-threads``: torch threads per training process (a CPU worker's share of its node)."""
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads per training process, a CPU worker's share of its node's cores (default 1)")


def configure_logging(argv: list[str]) -> None:
    """Log through ``logging`` to stderr at the ``--log-level`` found in ``argv``."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--log-level", default="INFO", type=str.upper)
    level = pre.parse_known_args(argv)[0].log_level
    level = level if level in LOG_LEVELS else "INFO"
    logging.basicConfig(level=level, force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpcore"):  # a line per HTTP request (the loop's Serve client)
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def ensure_ray(**local) -> None:
    """Join the cluster a job was submitted to (``RAY_ADDRESS``, set by ``ray job submit``)
    or, without one, start a local runtime with ``local`` (``ray.init`` arguments)."""
    import ray

    if ray.is_initialized():
        return
    ray.init(**({} if os.environ.get("RAY_ADDRESS") else local))


@dataclass(frozen=True)
class Outcome:
    """What a finished job returns: its summary as written, its exit code and where it wrote."""

    summary: dict
    exit_code: int
    out: str


class Job:
    """One run of a job writing under ``out``; see the module docstring. ``name``, ``params``
    and ``tracking`` ((tracking URI, experiment) or None) are for experiment tracking."""

    def __init__(self, out: str, store: str | None = None, name: str = "job", params: dict | None = None,
                 tracking: tuple[str, str] | None = None):
        self.out = uri.absolute(out)
        self.store = Store(uri.absolute(store) if store else uri.join(self.out, "store"))
        self.name, self.params, self.tracking = name, params or {}, tracking
        self.started = time.monotonic()
        self.good_rows = 0
        self.unreadable_files: list[dict] = []
        uri.delete_dir(self.path("rejected"))  # bad rows of an earlier run in the same --out are not ours

    @classmethod
    def from_args(cls, name: str, args: argparse.Namespace) -> "Job":
        """The job a parsed command line (``parser``'s options, ``--out``, ``--store``) describes."""
        tracking = (args.tracking_uri, args.experiment) if getattr(args, "tracking_uri", None) else None
        return cls(args.out, getattr(args, "store", None), name, vars(args), tracking)

    def path(self, *parts: str) -> str:
        """A location under ``--out``."""
        return uri.join(self.out, *parts)

    @property
    def train_storage(self) -> str:
        """Where Ray Train keeps this job's runs and checkpoints (``<out>/ray_train``)."""
        return self.path("ray_train")

    def readable_files(self, data: str, name: str) -> tuple[pafs.FileSystem, list[str]]:
        """The Parquet files of table ``name`` under ``data`` that can be read. Each unreadable
        one (garbage, truncated) is quarantined as a rejected row naming its path and reason,
        listed in the summary's ``unreadable_files``, and the job goes on with the rest. A
        missing table, or one with no readable file, is a UserError."""
        if not uri.exists(uri.join(data, name)):
            raise UserError(f"no {name!r} table under {data}")
        fs, good, bad = uri.parquet_files(data, name)
        if bad:
            self.unreadable_files += [{"table": name, "path": path, "reason": reason} for path, reason in bad]
            rows = [json.dumps({"file": path}) for path, _ in bad]
            quarantine(pa.table({"table": [name] * len(bad), "row": rows,
                                 "reason": [f"unreadable Parquet file: {reason}" for _, reason in bad]},
                                schema=REJECTED), self.out)
        if not good:
            raise UserError(f"no readable Parquet file in table {name!r} under {data}"
                            + (f" ({len(bad)} unreadable; first: {bad[0][0]}: {bad[0][1]})" if bad else ""))
        return fs, good

    def read_unvalidated(self, data: str, name: str, columns: list[str] | None = None) -> pa.Table:
        """Table ``name`` under ``data`` from its readable files, for a loader that validates
        it itself (it then quarantines and counts, see :meth:`count_good`)."""
        fs, files = self.readable_files(data, name)
        return ds.dataset(files, filesystem=fs, format="parquet").to_table(columns=columns)

    def read(self, data: str, name: str, columns: list[str] | None = None) -> pa.Table:
        """Contract table ``name`` under ``data`` from its readable files, validated: its
        good rows are returned, its bad rows (and unreadable files) quarantined and counted."""
        checked = validate(self.read_unvalidated(data, name, columns), name)
        quarantine(checked.rejected, self.out)
        self.count_good(checked.good.num_rows)
        return checked.good

    def count_good(self, rows: int) -> None:
        """Count good input rows validated outside :meth:`read` (by a library loader or by Ray
        Data workers). ``input_rows`` = good rows + every row under ``<out>/rejected``."""
        self.good_rows += rows

    def rejected_by_reason(self) -> dict[str, int]:
        """Rows under ``<out>/rejected`` per reason, whoever wrote them (driver or workers)."""
        if not uri.exists(self.path("rejected")):
            return {}
        return rejected_counts(uri.read_table(self.out, "rejected", ["reason"]))

    def write(self, name: str, data: bytes | str) -> str:
        """Write one file under ``--out``."""
        return uri.write_bytes(self.path(name), data.encode() if isinstance(data, str) else data)

    def finish(self, summary: dict, report: Callable[[dict], str] | None = None, plots: dict[str, bytes] | None = None,
               published_version: str | None = None, exit_code: int = EXIT_OK,
               register: tuple[str, str, dict[str, bytes]] | None = None) -> Outcome:
        """Write ``summary.json`` (``summary`` with the common keys added), ``report.md``
        (``report(summary)`` of that final summary) and ``plots`` (file name -> PNG bytes);
        with tracking on, log the run (``register``: (model, alias, files) of a released
        policy) and record its run id, or the error that stopped it, under ``tracking``."""
        reasons = self.rejected_by_reason()
        summary = strict({
            **summary,
            "input_rows": self.good_rows + sum(reasons.values()),
            "rejected_rows": sum(reasons.values()),
            "rejected_by_reason": reasons,
            "published_version": published_version,
            "unreadable_files": self.unreadable_files,
            "seconds": round(time.monotonic() - self.started, 1),
        })
        files = dict(plots or {})
        if report is not None:
            files["report.md"] = report(summary).encode()
        if self.tracking is not None:
            summary["tracking"] = self._track(summary, files, exit_code, register)
        files["summary.json"] = to_json(summary).encode()
        for name, data in files.items():  # summary.json last: its presence means the job finished
            self.write(name, data)
        return Outcome(summary, exit_code, self.out)

    def _track(self, summary: dict, files: dict[str, bytes], exit_code: int, register) -> dict:
        from raylib.tracking import track

        tags = {"exit_code": str(exit_code), "published_version": str(summary["published_version"]),
                "store": self.store.root, **{f"store.{n}": str(self.store.latest(n)) for n in self.store.names()}}
        if isinstance(summary.get("decision"), dict):
            tags["guardrails"] = str(summary["decision"].get("status"))
        uri_, experiment = self.tracking
        try:
            run_id = track(uri_, experiment, self.name, self.params, summary,
                           {**files, "summary.json": to_json(summary).encode()}, tags, register)
        except Exception as exc:  # the job's work is done and published: report, do not fail it
            log.error("experiment tracking at %s failed: %s", uri_, exc)
            return {"uri": uri_, "error": str(exc)}
        return {"uri": uri_, "experiment": experiment, "run_id": run_id}


def entrypoint(run: Callable[[list[str] | None, str | None], Outcome | int]) -> Callable[..., int]:
    """Wrap a job's ``run(argv, prog)`` into ``main(argv=None, prog=None) -> exit code``:
    logging configured from ``--log-level``; bad input ends as one ``error: ...`` line and
    exit code 2, never a traceback; a finished job logs where its summary is."""

    @functools.wraps(run)
    def main(argv: list[str] | None = None, prog: str | None = None) -> int:
        configure_logging(sys.argv[1:] if argv is None else argv)
        try:
            result = run(argv, prog)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except INPUT_ERRORS as exc:
            print(f"error: cannot read input: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if not isinstance(result, Outcome):
            return int(result)
        log.info("exit %d; published %s; summary %s", result.exit_code, result.summary["published_version"],
                 uri.join(result.out, "summary.json"))
        return result.exit_code

    return main
