"""Stage markers: what lets a killed loop resume where it stopped.

A finished stage leaves ``<directory>/<name>.json`` = {params, outputs, seconds} (strict
JSON, written to a temporary name and moved into place, so a marker is complete or
absent). Running a stage whose marker holds the same params returns the recorded outputs
instead of running it again. ``directory`` is a local path or a ``pyarrow.fs`` URI.
"""

from __future__ import annotations

import json
import time
from typing import Callable

from raylib import uri
from raylib.job import log, to_json


class Stages:
    """The loop's stage markers under ``directory``; ``fresh`` ignores those of earlier runs
    (a stage this run finished is still not redone). ``ran`` and ``reused`` list this run's
    stages by what happened to them."""

    def __init__(self, directory: str, fresh: bool = False):
        self.directory = directory
        self.fresh = fresh
        self.ran: list[str] = []
        self.reused: list[str] = []

    def marker(self, name: str) -> str:
        return uri.join(self.directory, f"{name}.json")

    def done(self, name: str, params: dict) -> dict | None:
        """The outputs recorded for stage ``name`` run with ``params``, or None."""
        if (self.fresh and name not in self.ran) or not uri.exists(self.marker(name)):
            return None
        try:
            recorded = uri.read_json(self.marker(name))
        except json.JSONDecodeError:
            return None
        return recorded["outputs"] if recorded.get("params") == json.loads(to_json(params)) else None

    def run(self, name: str, params: dict, work: Callable[[], dict]) -> dict:
        """``work()``'s outputs, recorded under ``name``; reused when already recorded with
        ``params``. Either way they come back as recorded (JSON values)."""
        outputs = self.done(name, params)
        if outputs is not None:
            if name not in self.ran:
                log.info("%s: reused (finished earlier; %s)", name, self.marker(name))
                self.reused.append(name)
            return outputs
        log.info("%s: running", name)
        started = time.monotonic()
        outputs = work()
        seconds = round(time.monotonic() - started, 1)
        text = to_json({"params": params, "outputs": outputs, "seconds": seconds})
        uri.write_text(self.marker(name), text)  # whole or not at all (uri.write_bytes)
        log.info("%s: done in %.0f s", name, seconds)
        self.ran.append(name)
        return json.loads(text)["outputs"]
