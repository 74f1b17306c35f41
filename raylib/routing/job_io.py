"""What the routing jobs share: read and quarantine the input logs, write summary.json
and report.md, publish a policy only when the guard-rails pass."""

from __future__ import annotations

import json
import os

import numpy as np

from raylib.routing.data import RoutingData, load
from raylib.routing.report import write_report
from raylib.schema import write_rejected


def load_inputs(data_dir: str, out: str) -> RoutingData:
    """Routing data from ``data_dir``; rejected rows quarantined under ``out/rejected``."""
    data = load(data_dir)
    write_rejected(data.rejected, out)
    return data


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_outputs(out: str, summary: dict, title: str) -> dict:
    """summary.json (JSON-safe: NaN -> null) and report.md with charts; returns the
    summary as written."""
    summary = _plain(summary)
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
    write_report(out, summary, title)
    return summary
