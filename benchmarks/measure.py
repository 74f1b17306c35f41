"""Run one ``selflearn`` command in this process; print its exit code, wall time and this
process's peak RSS (VmHWM: the driver's, not Ray workers') as one JSON line, last.

    .venv/bin/python benchmarks/measure.py simulate --out /tmp/w --interactions 1000000

The scale benchmarks start each measured command through this script in a fresh process,
so each size's peak memory is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


def measured(argv: list[str], python: str = sys.executable) -> dict:
    """Run ``selflearn argv`` through this script in a child process; its JSON line as a dict."""
    proc = subprocess.run([python, __file__, *argv], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"selflearn {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    from jobs.cli import main as selflearn

    t = time.perf_counter()
    code = selflearn(sys.argv[1:])
    print(json.dumps({"exit_code": code, "seconds": time.perf_counter() - t, "peak_rss_mib": peak_rss_mib()}))
    return code


if __name__ == "__main__":
    sys.exit(main())
