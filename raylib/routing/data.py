"""Routing logs as the learners read them: validated (bad rows rejected with a reason),
feedback joined onto rewardless decision logs, unrewarded rows counted and set aside,
and a deterministic train / validation / test split by request id."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.errors import UserError
from raylib.uri import exists, join, read_table
from raylib.validate import quarantine, validate

SPLITS = ("train", "validation", "test")


@dataclass
class RoutingData:
    """Learnable routing rows plus the bookkeeping the job summary reports."""

    log: pa.Table  # valid rows with a reward
    rejected: pa.Table
    n_input: int
    n_unrewarded: int
    truth: pa.Table | None = None  # simulator truth_routing, aligned with ``log`` when present
    counts: dict = field(default_factory=dict)

    @property
    def n_valid(self) -> int:
        """Input rows (routing log and feedback) that passed validation."""
        return self.n_input + self.counts.get("feedback_rows", 0) - self.rejected.num_rows

    def summary(self) -> dict:
        """The job summary's ``data`` section (input and rejected rows are the job kit's)."""
        return {"learnable_rows": self.log.num_rows, "unrewarded_rows": self.n_unrewarded, **self.counts}


def join_feedback(log: pa.Table, feedback: pa.Table) -> pa.Table:
    """Fill null rewards of a decision log from a ``feedback`` table (request_id, reward);
    a reward already in the log wins. The last feedback per request is used."""
    if feedback.num_rows == 0:
        return log
    ids = feedback.column("request_id").to_pylist()
    rewards = feedback.column("reward").to_numpy(zero_copy_only=False)
    latest = dict(zip(ids, rewards))
    joined = [latest.get(rid) for rid in log.column("request_id").to_pylist()]
    filled = pc.coalesce(log.column("reward"), pa.array(joined, pa.float64()))
    return log.set_column(log.schema.get_field_index("reward"), log.schema.field("reward"), filled)


def prepare(log: pa.Table, feedback: pa.Table | None = None, truth: pa.Table | None = None) -> RoutingData:
    """Validate a routing log (``raylib.validate.validate``: empty candidates, action out of
    range, propensity outside (0, 1], ...), join feedback, keep the rewarded rows."""
    checked = validate(log, "routing_log")
    rejected = checked.rejected
    good = checked.good
    counts = {}
    if feedback is not None:
        fb = validate(feedback, "feedback")
        rejected = pa.concat_tables([rejected, fb.rejected])
        counts["feedback_rows"] = feedback.num_rows
        good = join_feedback(good, fb.good)
    has_reward = pc.is_valid(good.column("reward"))
    n_unrewarded = good.num_rows - pc.sum(has_reward).as_py() if good.num_rows else 0
    good = good.filter(has_reward)
    aligned = None
    if truth is not None:
        aligned = align_truth(good, truth)
    return RoutingData(good, rejected, log.num_rows, int(n_unrewarded), aligned, counts)


def align_truth(log: pa.Table, truth: pa.Table) -> pa.Table | None:
    """``truth_routing`` rows in the order of ``log`` (None when any request lacks truth)."""
    index = pc.index_in(log.column("request_id"), value_set=truth.column("request_id"))
    if index.null_count:
        return None
    return truth.take(index)


def load(root: str, read=read_table) -> RoutingData:
    """Read ``routing_log`` (+ ``feedback`` and simulator ``truth_routing`` when present)
    with ``read(root, name)`` (default ``raylib.uri.read_table``)."""
    if not exists(join(root, "routing_log")):
        raise UserError(f"no routing_log table under {root}")
    log = read(root, "routing_log")
    feedback, truth = (read(root, name) if exists(join(root, name)) else None for name in ("feedback", "truth_routing"))
    if log.num_rows == 0:
        raise UserError(f"routing_log under {root} is empty")
    return prepare(log, feedback, truth)


def read_routing(job, root: str, min_rows: int) -> RoutingData:
    """``load(root)`` for a job (``raylib.job.Job``): unreadable files and rejected rows
    quarantined under its ``--out``, valid rows counted; fewer than ``min_rows`` learnable
    rows is a UserError."""
    data = load(root, job.read_unvalidated)
    quarantine(data.rejected, job.out)
    job.count_good(data.n_valid)
    if data.log.num_rows < min_rows:
        raise UserError(f"only {data.log.num_rows} learnable routing rows in {root}; need at least {min_rows}")
    return data


def split_labels(request_ids: list[str], fractions=(0.7, 0.15, 0.15), salt: str = "") -> np.ndarray:
    """A stable split label per request (crc32 of the id): 'train' / 'validation' / 'test'."""
    u = np.array([zlib.crc32((salt + rid).encode()) for rid in request_ids], dtype=np.float64) / 2**32
    edges = np.cumsum(fractions)
    return np.array(SPLITS, dtype=object)[np.searchsorted(edges / edges[-1], u, side="right").clip(0, 2)]


def padded(lists: list, width: int) -> np.ndarray:
    """A list of equal-or-shorter float lists as a zero-padded (n, width) matrix."""
    out = np.zeros((len(lists), width))
    for i, values in enumerate(lists):
        out[i, : len(values)] = values
    return out


def logged_distributions(log: pa.Table, width: int) -> np.ndarray | None:
    """The logged Π_0(·|X) as a (n, width) matrix, or None unless every row has it."""
    col = log.column("propensities")
    if col.null_count:
        return None
    return padded(col.to_pylist(), width)
