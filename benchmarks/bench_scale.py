"""Rewrite mining at scale on the Ray Data engine, with DuckDB as the peer (run by hand).

    .venv/bin/pip install -e '.[benchmark]'        # duckdb
    .venv/bin/python benchmarks/bench_simulate.py --preset large --interactions 1000000 2000000 4000000 --keep /tmp/worlds
    .venv/bin/python benchmarks/bench_scale.py /tmp/worlds/1000000 /tmp/worlds/2000000 /tmp/worlds/4000000 \
        --cpus 2 --json benchmarks/results/mine_scale.json

Per world, fresh processes one after the other on the same cores: DuckDB, ours, DuckDB
again (the faster DuckDB run is the peer: these machines are shared, and the 1-minute load
average around our run is recorded):

- ``ray``: ``raylib.rewrite.distributed.mine_ray`` over ``read_parquet`` of the world's
  interactions on a local Ray runtime of ``--cpus`` CPUs: wall time per stage (the
  ``stage_seconds`` it fills), the driver's peak RSS (VmHWM, and per stage, sampled), and the object store's peak
  and spilled MiB (sampled every second from Ray's memory summary).
- ``duckdb``: the same Parquet files sessionized by window functions with ``--cpus``
  threads (``SESSIONS_SQL``, the rules of ``raylib.rewrite.sessions``), counting
  transitions and (utterance, interpretation) pairs.

The transition and pair counts of both sides are compared entry by entry (ours are read
back from the chain, ``Q * Z`` and ``R * Z``, and the count matrix ``c`` of Eq. 5) and must
be equal. Reported: each stage's seconds, cost per doubling (seconds per interaction
against the previous size), and ``ours / duckdb`` for sessionize + count (and with
validation, which includes reading the Parquet, as DuckDB's time does).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from measure import peak_rss_mib

KEYS = ["key1", "key2"]
# Sessions of seed 001 (raylib.rewrite.sessions): per (customer, device) in time order (ties
# broken by the other columns), a new session after a gap > {gap_ms}; interjections removed;
# a session fails when its raw last turn is an interjection or its last kept turn is an
# error / no_match. A state is domain|intent|slots (|utterance for a no_match turn). A session
# holding a turn with a served rewrite (``rewrite`` not null) is left out of the counts.
SESSIONS_SQL = """
WITH raw AS (
  SELECT customer_id, device_id, epoch_ms(timestamp) AS ts, utterance, domain, intent, slots, status,
         lower(intent) IN ('stopintent', 'cancelintent', 'stop', 'cancel') AS inter, {served} AS served
  FROM read_parquet({files})
), gaps AS (
  SELECT *, CASE WHEN ts - lag(ts) OVER w > {gap_ms} OR lag(ts) OVER w IS NULL THEN 1 ELSE 0 END AS new
  FROM raw WINDOW w AS (PARTITION BY customer_id, device_id ORDER BY ts, utterance, domain, intent, slots, status)
), numbered AS (
  SELECT *, sum(new) OVER (PARTITION BY customer_id, device_id ORDER BY ts, utterance, domain, intent, slots, status
                           ROWS UNBOUNDED PRECEDING) AS session
  FROM gaps
), ends AS (
  SELECT *, last_value(inter) OVER s AS ends_interjected, bool_or(served) OVER s AS rewritten
  FROM numbered WINDOW s AS (PARTITION BY customer_id, device_id, session
                             ORDER BY ts, utterance, domain, intent, slots, status
                             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
), kept AS (
  SELECT customer_id, device_id, session, ts, utterance, domain, intent, slots, status, ends_interjected,
         trim(regexp_replace(lower(utterance), '\\s+', ' ', 'g')) AS utt
  FROM ends WHERE NOT inter AND NOT rewritten
), states AS (
  SELECT *, CASE WHEN status = 'no_match' THEN domain || '|' || intent || '|' || slots || '|' || utt
                 ELSE domain || '|' || intent || '|' || slots END AS state
  FROM kept
), turns AS (
  SELECT utt, state, ends_interjected, status,
         lead(state) OVER (PARTITION BY customer_id, device_id, session
                           ORDER BY ts, utterance, domain, intent, slots, status) AS next_state
  FROM states
)
SELECT 'transition' AS kind, state AS key1,
       coalesce(next_state, CASE WHEN ends_interjected OR status IN ('error', 'no_match') THEN '<failure>'
                                 ELSE '<success>' END) AS key2, count(*) AS count
FROM turns GROUP BY ALL
UNION ALL
SELECT 'pair', utt, state, count(*) FROM turns GROUP BY ALL
"""


def interactions(world: str) -> list[str]:
    return sorted(glob.glob(os.path.join(world, "interactions", "**", "*.parquet"), recursive=True))


def rss_mib() -> float:
    """This process's resident set size now (VmRSS) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class DriverMemorySampler(threading.Thread, logging.Handler):
    """The driver's peak RSS per mining stage: the stage is the last one the mining logged as
    started ("mining: <stage> started"), the RSS is sampled every ``every_s``."""

    def __init__(self, every_s: float = 0.05):
        threading.Thread.__init__(self, daemon=True)
        logging.Handler.__init__(self, logging.INFO)
        self.every_s, self.stage, self.peak_mib = every_s, "start", {}
        self.stopped = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        started = re.fullmatch(r"mining: (.+) started", record.getMessage())
        if started:
            self.stage = started.group(1)

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.peak_mib[self.stage] = max(self.peak_mib.get(self.stage, 0.0), rss_mib())


class ObjectStoreSampler(threading.Thread):
    """Polls Ray's memory summary: peak plasma usage and spilled MiB."""

    def __init__(self, address: str, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.address, self.every_s = address, every_s
        self.peak_mib = self.spilled_mib = 0.0
        self.stopped = threading.Event()

    def sample(self) -> None:
        from ray._private.internal_api import memory_summary

        text = memory_summary(address=self.address, stats_only=True)
        used = re.search(r"Plasma memory usage (\d+) MiB", text)
        spilled = re.search(r"Spilled (\d+) MiB", text)
        self.peak_mib = max(self.peak_mib, float(used.group(1)) if used else 0.0)
        self.spilled_mib = max(self.spilled_mib, float(spilled.group(1)) if spilled else 0.0)

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.sample()


def chain_counts(mined) -> pa.Table:
    """Transition and pair counts read back from a mining run's chain and space."""
    chain, space = mined.model.chain, mined.model.space
    q = (chain.Q.multiply(chain.Z[:, None])).tocoo()
    r = (chain.R.multiply(chain.Z[:, None])).tocoo()
    c = space.c.tocoo()
    absorbing = np.array(["<success>", "<failure>"], dtype=object)
    kinds = ["transition"] * (q.nnz + r.nnz) + ["pair"] * c.nnz
    key1 = np.concatenate([chain.states[q.row], chain.states[r.row], space.utterances[c.row]])
    key2 = np.concatenate([chain.states[q.col], absorbing[r.col], space.interpretations[c.col]])
    count = np.rint(np.concatenate([q.data, r.data, c.data])).astype(np.int64)
    keep = count > 0
    return pa.table({"kind": np.asarray(kinds, dtype=object)[keep], "key1": key1[keep], "key2": key2[keep],
                     "count": count[keep]})


def run_ray(world: str, cpus: int, counts_out: str) -> dict:
    import ray

    from raylib.rewrite.distributed import mine_ray

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    sampler = ObjectStoreSampler(ray.get_runtime_context().gcs_address)
    sampler.start()
    driver = DriverMemorySampler()
    mining_log = logging.getLogger("raylib.rewrite.distributed")
    mining_log.setLevel(logging.INFO)
    mining_log.addHandler(driver)
    driver.start()
    stages: dict = {}
    t = time.perf_counter()
    mined = mine_ray(ray.data.read_parquet(interactions(world)), stage_seconds=stages)
    total = time.perf_counter() - t
    mining_peak = peak_rss_mib()  # before this benchmark reads the counts back as strings
    sampler.stopped.set()
    driver.stopped.set()
    sampler.sample()
    pq.write_table(chain_counts(mined), counts_out)
    stats = mined.stage_counts()
    return {"seconds": total, "stage_seconds": stages, "driver_peak_rss_mib": mining_peak,
            "driver_peak_rss_mib_by_stage": driver.peak_mib,
            "object_store_peak_mib": sampler.peak_mib, "object_store_spilled_mib": sampler.spilled_mib,
            "object_store_capacity_mib": ray.cluster_resources()["object_store_memory"] / 2**20,
            **{k: stats[k] for k in ("n_turns", "n_sessions", "n_interpretations", "n_transitions",
                                     "n_utterances", "n_candidates", "n_rewrites")}}


def run_duckdb(world: str, cpus: int, counts_out: str, gap_s: float = 45.0) -> dict:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {cpus}")
    paths = interactions(world)
    files = "[" + ", ".join(f"'{f}'" for f in paths) + "]"
    served = "rewrite IS NOT NULL" if "rewrite" in pq.read_schema(paths[0]).names else "false"
    t = time.perf_counter()
    table = con.execute(SESSIONS_SQL.format(files=files, gap_ms=int(gap_s * 1000), served=served)).to_arrow_table()
    seconds = time.perf_counter() - t
    pq.write_table(table, counts_out)
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "duckdb": duckdb.__version__}


def same_counts(ours: str, theirs: str) -> tuple[bool, int, int]:
    """Are the two count tables equal as sets of (kind, key1, key2, count)? And their sizes."""
    def canon(path):
        t = pq.read_table(path).select(["kind", "key1", "key2", "count"])
        t = t.cast(pa.schema([("kind", pa.string()), ("key1", pa.string()), ("key2", pa.string()),
                              ("count", pa.int64())]))
        return t.sort_by([("kind", "ascending"), ("key1", "ascending"), ("key2", "ascending")])
    a, b = canon(ours), canon(theirs)
    return a.equals(b), a.num_rows, b.num_rows


def child(side: str, world: str, cpus: int, counts_out: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--side", side, "--cpus", str(cpus), "--counts", counts_out,
                           world], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} on {world} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("worlds", nargs="+", help="simulator outputs, smallest first")
    p.add_argument("--cpus", type=int, default=2, help="Ray CPUs and DuckDB threads (default 2)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--side", choices=("ray", "duckdb"), help=argparse.SUPPRESS)  # one child's run
    p.add_argument("--counts", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        run = run_ray if args.side == "ray" else run_duckdb
        print(json.dumps(run(args.worlds[0], args.cpus, args.counts)))
        return
    rows, previous = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for world in args.worlds:
            before = child("duckdb", world, args.cpus, os.path.join(scratch, "duckdb.parquet"))
            load = os.getloadavg()[0]
            ours = child("ray", world, args.cpus, os.path.join(scratch, "ours.parquet"))
            load = max(load, os.getloadavg()[0])
            after = child("duckdb", world, args.cpus, os.path.join(scratch, "duckdb.parquet"))
            peer = {**min(before, after, key=lambda r: r["seconds"]),
                    "runs_seconds": [before["seconds"], after["seconds"]]}
            equal, n_ours, n_peer = same_counts(os.path.join(scratch, "ours.parquet"),
                                                os.path.join(scratch, "duckdb.parquet"))
            st = ours["stage_seconds"]
            row = {"world": world, "ray": ours, "duckdb": peer, "counts_equal": equal, "load_average_1min": load,
                   "count_rows": {"ours": n_ours, "duckdb": n_peer},
                   "us_per_interaction": 1e6 * ours["seconds"] / ours["n_turns"],
                   "sessionize_count_over_duckdb": (st["sessionize"] + st["count"]) / peer["seconds"],
                   "validate_sessionize_count_over_duckdb":
                       (st["validate"] + st["sessionize"] + st["count"]) / peer["seconds"]}
            if previous:
                row["cost_per_doubling"] = row["us_per_interaction"] / previous["us_per_interaction"]
                row["driver_rss_growth"] = ours["driver_peak_rss_mib"] / previous["ray"]["driver_peak_rss_mib"]
            print(json.dumps(row), flush=True)
            rows.append(row)
            previous = row
            assert equal, f"counts differ on {world}: {n_ours} rows ours, {n_peer} DuckDB's"
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpus": args.cpus, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
