"""Rewrite mining on Ray Data: a thin shell over the pure steps of ``raylib.rewrite.mining``.

1. ``read_parquet`` the interactions; ``map_batches`` validates them (bad rows are written
   to ``<quarantine>/rejected`` and counted there).
2. Each row gets a bucket = crc32(customer_id, device_id) mod B; ``groupby(bucket)
   .map_groups(sessionize)`` (a sort shuffle on that small integer: each bucket lands
   whole in one block and is sessionized there). B = ``shuffle_partitions(rows, CPUs)``:
   it follows the data (a bucket stays near ``ROWS_PER_BUCKET`` rows, so one fits a
   worker's memory at any size) and the cluster (at least ``BUCKETS_PER_CPU`` per CPU, so
   every CPU has work).
3. Counts by a hash-partitioned reduce of plain tasks (``hash_reduce``): one task per block
   of sessions computes its partial counts (``session_counts``) and splits them into B parts
   by crc32(key1, key2) (``split_by_key``); one task per part sums its pieces
   (``reduce_counts``). One task makes the ``Dictionary`` of states and utterances from the
   parts, and one per part codes it (``raylib.rewrite.codes``): only integer triplets and
   the dictionary reach the driver. (Measured at 10^6
   interactions on 2 busy CPUs: Ray Data's ``groupby(kind, key1, key2).sum``, a sort
   shuffle on three strings, took 71 s; this reduce 18 s in the next run under similar
   load, 1.4 s on quiet CPUs; ``benchmarks/README.md``, "Scale".)
4. Q and R (CSR) go once into the object store (``ray.put``); a dataset of source states
   is processed by ``map_batches`` on an actor pool (up to one actor per cluster CPU),
   each batch doing BFS + sub-chain solves (``approximate_sources``) for its sources.
5. Eq. 20 on the driver (sparse products); direct evidence by the same hash-partitioned
   reduce over the sessions, keyed by the candidate pair, so only one row per candidate pair
   (its sessions and distinct customers, ``evidence_per_pair``) reaches the driver; filters
   (``finalize``).

Every partial result is summed or sorted by key, so the table equals ``mine_local``'s.

Node failures. The sessionize groupby runs under Ray Data's pull-based sort shuffle
(``task_shuffle``), whose sample, map and reduce steps are plain tasks, and the count
reduce is plain tasks: a worker node lost mid-job only costs time (a lost block is
recomputed from its lineage, a retried task recomputes the same blocks), and validation's quarantine parts are content-named
(``raylib.validate.quarantine``), so a re-executed task rewrites its own file. (Ray
Data's hash shuffle keeps the shards in aggregator actors that are not restarted, behind
shard pushes that are not idempotent: ray-project/ray#59142.) The solver actor pool
restarts lost actors and retries their tasks (Ray Data's defaults); the chain and the
candidates are ``ray.put`` by the driver, on the head node. ``tests/test_cluster_faults.py``
SIGKILLs a worker node during sessionization and checks the table is unchanged.

The driver logs the start of each stage at INFO (logger ``raylib.rewrite.distributed``,
"mining: <stage> started") and its wall time ("mining: <stage> took S s"; also into the
``stage_seconds`` dict a caller passes), so a job's log shows how far it got and where the
time went.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import ActorPoolStrategy, DataContext
from ray.data.context import ShuffleStrategy

from raylib.rewrite.approx import SOURCE_RESULTS, approximate_sources
from raylib.rewrite.codes import Codes, Dictionary, code_counts
from raylib.rewrite.counts import reduce_counts, session_counts
from raylib.rewrite.evidence import PER_PAIR, evidence_per_pair, pair_evidence
from raylib.rewrite.mining import Mined, MiningParams, candidate_rewrites, finalize, mine_local, model_of
from raylib.rewrite.sessions import sessionize
from raylib.schema import INTERACTIONS
from raylib.validate import quarantine, validate

# ~250k interactions are ~60 MiB in Arrow: a sessionized bucket (sorted copy plus list
# columns, about 3x) stays near Ray Data's 128 MiB target block size.
ROWS_PER_BUCKET = 250_000
BUCKETS_PER_CPU = 2  # a straggling bucket leaves the other CPUs work
log = logging.getLogger(__name__)


def shuffle_partitions(n_rows: int, cluster_cpus: float, rows_per_bucket: int = ROWS_PER_BUCKET,
                       per_cpu: int = BUCKETS_PER_CPU) -> int:
    """Hash buckets (and shuffle partitions) for ``n_rows`` interactions on a cluster of
    ``cluster_cpus`` CPUs: max(ceil(n_rows / rows_per_bucket), per_cpu * cluster_cpus), at
    least 1. The first term bounds a bucket's size (its memory on one worker) as the data
    grows; the second keeps every CPU busy on small data."""
    if n_rows < 0 or cluster_cpus < 0 or rows_per_bucket < 1 or per_cpu < 1:
        raise ValueError("need n_rows >= 0, cluster_cpus >= 0, rows_per_bucket >= 1, per_cpu >= 1")
    return max(1, math.ceil(n_rows / rows_per_bucket), per_cpu * math.ceil(cluster_cpus))


@contextlib.contextmanager
def _stage(name: str, seconds: dict):
    """Log a stage's start and wall time; record the time in ``seconds[name]``."""
    log.info("mining: %s started", name)
    t = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - t
    log.info("mining: %s took %.1f s", name, seconds[name])


_SHUFFLE_SETTINGS = {"shuffle_strategy": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED}


@contextlib.contextmanager
def task_shuffle():
    """Ray Data groupbys run inside use the pull-based sort shuffle: map and reduce tasks
    only (no aggregator actors), recoverable from lineage after a node failure."""
    ctx = DataContext.get_current()
    before = {k: getattr(ctx, k) for k in _SHUFFLE_SETTINGS}
    for k, v in _SHUFFLE_SETTINGS.items():
        setattr(ctx, k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            setattr(ctx, k, v)


def bucket_of(customers: pa.Array, devices: pa.Array, n_buckets: int) -> np.ndarray:
    """A stable bucket per (customer, device): crc32 of both ids, mod ``n_buckets``."""
    keys = pc.binary_join_element_wise(customers, devices, "\x1f")
    encoded = pc.dictionary_encode(keys).combine_chunks()
    hashes = np.array([zlib.crc32(k.encode()) % n_buckets for k in encoded.dictionary.to_pylist()], dtype=np.int64)
    return hashes[encoded.indices.to_numpy(zero_copy_only=False)] if len(hashes) else np.zeros(0, np.int64)


def _quarantine(batch: pa.Table, root: str | None) -> pa.Table:
    """Validate a batch of interactions; rejected rows go to ``<root>/rejected``."""
    checked = validate(batch, "interactions")
    if checked.n_rejected:
        if root is None:
            raise ValueError("rejected rows need a quarantine root")
        quarantine(checked.rejected, root)
    return checked.good


def _with_bucket(batch: pa.Table, n_buckets: int) -> pa.Table:
    return batch.append_column("bucket", pa.array(bucket_of(batch.column("customer_id"), batch.column("device_id"),
                                                            n_buckets)))


def _sessionize_bucket(group: pa.Table, gap_s: float, no_match_states: str) -> pa.Table:
    return sessionize(group.drop_columns(["bucket"]), gap_s, no_match_states=no_match_states)


class _SourceSolver:
    """Holds the chain (fetched once per actor from the object store) and solves sources."""

    def __init__(self, chain_ref: list, depth, epsilon, top_k):
        self.Q, self.R = ray.get(chain_ref[0])
        self.depth, self.epsilon, self.top_k = depth, epsilon, top_k

    def __call__(self, batch: dict) -> pa.Table:
        return approximate_sources(self.Q, self.R, batch["id"], self.depth, self.epsilon, self.top_k)


def split_by_key(table: pa.Table, n_parts: int, keys: tuple[str, str] = ("key1", "key2")) -> list[pa.Table]:
    """``table`` cut into ``n_parts`` tables by crc32 of its two ``keys`` columns mod
    ``n_parts``: a key always lands in the same part, whichever block it came from."""
    part = bucket_of(table.column(keys[0]), table.column(keys[1]), n_parts)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(n_parts + 1))
    ordered = table.take(pa.array(order))
    return [ordered.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(n_parts)]


@ray.remote
def _map_split(block: pa.Table, n_parts: int, keys: tuple[str, str], fn, *args):
    parts = split_by_key(fn(block, *args), n_parts, keys)
    return parts if n_parts > 1 else parts[0]


@ray.remote
def _reduce(fn, *parts: pa.Table) -> pa.Table:
    return fn(list(parts))


def hash_reduce(blocks: list, n_parts: int, keys: tuple[str, str], fn, reduce_fn, *args) -> list:
    """A hash-partitioned reduce of plain tasks: per block, ``fn(block, *args)`` cut by
    ``split_by_key`` on ``keys``; per part, ``reduce_fn`` of its pieces from every block.
    Returns the parts' refs (left in the object store); every key's rows meet in one part."""
    split = [_map_split.options(num_returns=n_parts).remote(block, n_parts, keys, fn, *args) for block in blocks]
    split = [s if n_parts > 1 else [s] for s in split]
    return [_reduce.remote(reduce_fn, *(s[j] for s in split)) for j in range(n_parts)]


@ray.remote
def _dictionary(*parts: pa.Table) -> Dictionary:
    return Dictionary.of(pa.concat_tables(parts))


@ray.remote
def _code_part(part: pa.Table, dictionary: Dictionary) -> Codes:
    return code_counts(part, dictionary)


def _counts(sessions, n_parts: int) -> tuple[Dictionary, Codes]:
    """The summed counts of a dataset of sessions, coded (module docstring, step 3)."""
    reduced = hash_reduce(sessions.to_arrow_refs(), n_parts, ("key1", "key2"), session_counts, reduce_counts)
    dictionary = _dictionary.remote(*reduced)
    # A key lands in one part only, so the parts are already the sums and only need coding.
    return ray.get(dictionary), Codes.concat(ray.get([_code_part.remote(part, dictionary) for part in reduced]))


def _collect(ds) -> list[pa.Table]:
    return [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]


def mine_ray(
    interactions,
    params: MiningParams = MiningParams(),
    quarantine: str | None = None,
    n_buckets: int | None = None,
    source_batch: int = 512,
    n_solvers: int | None = None,
    stage_seconds: dict | None = None,
) -> Mined:
    """The distributed path. ``interactions`` is a ``ray.data.Dataset`` of raw rows (e.g.
    ``ray.data.read_parquet``); rejected rows are quarantined under ``quarantine``.
    ``n_buckets`` defaults to ``shuffle_partitions`` of the valid rows and the cluster's
    CPUs, ``n_solvers`` (the solver actor pool's maximum) to the cluster's CPUs; each
    stage's wall time goes into ``stage_seconds`` when given."""
    seconds = {} if stage_seconds is None else stage_seconds
    cpus = ray.cluster_resources().get("CPU", 1)
    with task_shuffle():
        with _stage("validate", seconds):
            checked = interactions.map_batches(_quarantine, fn_args=(quarantine,), batch_format="pyarrow").materialize()
            n_rows = checked.count()
        if n_rows == 0:  # nothing valid: the shuffle would have no schema to work with
            return mine_local(INTERACTIONS.empty_table(), params)
        # A dataset keeps the DataContext it was created under (and so do the datasets derived
        # from it): the caller made ``interactions``, so the shuffle settings only reach the
        # groupbys through a dataset created here, over the same (lineage-backed) blocks.
        good = ray.data.from_arrow_refs(checked.to_arrow_refs())
        buckets = n_buckets or shuffle_partitions(n_rows, cpus)
        with _stage("sessionize", seconds):
            log.info("mining: %d valid rows, %d buckets, %g cluster CPUs", n_rows, buckets, cpus)
            bucketed = good.map_batches(_with_bucket, fn_args=(buckets,), batch_format="pyarrow")
            sessions = bucketed.groupby("bucket", num_partitions=buckets).map_groups(
                _sessionize_bucket, fn_args=(params.gap_s, params.no_match_states), batch_format="pyarrow"
            ).materialize()
    with _stage("count", seconds):
        dictionary, codes = _counts(sessions, buckets)
    with _stage("chain build", seconds):
        model = model_of(dictionary, codes)
    n = model.chain.n_states
    results = SOURCE_RESULTS.empty_table()
    with _stage("source solves", seconds):
        if n:
            log.info("mining: %d states", n)
            chain_ref = ray.put((model.chain.Q, model.chain.R))  # once in the object store
            sources = ray.data.range(n, override_num_blocks=max(1, -(-n // source_batch)))
            solved = sources.map_batches(
                _SourceSolver, fn_constructor_args=([chain_ref], params.depth, params.epsilon, params.top_k),
                batch_size=source_batch, batch_format="numpy",
                compute=ActorPoolStrategy(min_size=1, max_size=n_solvers or max(1, math.ceil(cpus))),
            )
            parts = _collect(solved)
            if parts:
                results = pa.concat_tables(parts).cast(SOURCE_RESULTS)
                results = results.take(pc.sort_indices(results, sort_keys=[("source", "ascending"),
                                                                           ("target", "ascending")]))
    with _stage("eq20", seconds):
        candidates = candidate_rewrites(model, results)
    with _stage("evidence", seconds):
        log.info("mining: %d candidates", candidates.num_rows)
        cand_ref = ray.put(candidates.select(["utterance", "rewrite"]))
        per_pair = [t for t in ray.get(hash_reduce(sessions.to_arrow_refs(), buckets, ("utterance", "rewrite"),
                                                   pair_evidence, evidence_per_pair, cand_ref)) if t.num_rows]
        per_pair = pa.concat_tables(per_pair) if per_pair else PER_PAIR.empty_table()
    with _stage("filters", seconds):
        log.info("mining: %d candidate pairs with evidence on the driver", per_pair.num_rows)
        table, removed, rejected = finalize(candidates, per_pair, params)
    return Mined(codes.stats, model, results, candidates, table, removed, rejected)
