"""Row validation throughput: ``raylib.validate.validate`` on a large interactions table.

    .venv/bin/python benchmarks/bench_validate.py [--rows 1000000] [--bad 0.01]

The peer is writing the same table to Parquet (in memory), the I/O every job does next
to validation anyway: a ratio below 1 means validation costs less than writing the data.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raylib import uri, validate as V
from raylib.sim import simulate


def corrupted(table: pa.Table, share: float, rng) -> pa.Table:
    """``table`` with a share of its utterances blanked and statuses made unknown."""
    n = table.num_rows
    bad = rng.random(n) < share / 2
    utter = np.where(bad, " ", table["utterance"].to_numpy(zero_copy_only=False))
    bad2 = rng.random(n) < share / 2
    status = np.where(bad2, "weird", table["status"].to_numpy(zero_copy_only=False))
    table = table.set_column(table.schema.get_field_index("utterance"), "utterance", pa.array(utter))
    return table.set_column(table.schema.get_field_index("status"), "status", pa.array(status))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--bad", type=float, default=0.01)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        simulate(out, "medium", seed=0, config={"routing": {"n_requests": 1000}})
        base = uri.read_table(out, "interactions")
    reps = -(-args.rows // base.num_rows)
    table = pa.concat_tables([base] * reps).slice(0, args.rows)
    table = corrupted(table, args.bad, np.random.default_rng(0))
    t0 = time.perf_counter()
    pq.write_table(table, pa.BufferOutputStream())
    peer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    checked = V.validate(table, "interactions")
    ours_s = time.perf_counter() - t0
    assert checked.good.num_rows + checked.n_rejected == table.num_rows
    print(f"rows={table.num_rows:,} rejected={checked.n_rejected:,}")
    print(f"validate: {ours_s:.2f} s ({table.num_rows / ours_s:,.0f} rows/s); peer Parquet write: {peer_s:.3f} s")
    print(f"ratio validate/write: {ours_s / max(peer_s, 1e-9):.1f}x")


if __name__ == "__main__":
    main()
