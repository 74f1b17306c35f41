"""Rewrite mining on Ray Data: a thin shell over the pure steps of ``raylib.rewrite.mining``.

1. ``read_parquet`` the interactions; ``map_batches`` validates them (bad rows are written
   to ``<quarantine>/rejected`` and counted there).
2. Each row gets a bucket = crc32(customer_id, device_id) mod B; ``groupby(bucket)
   .map_groups(sessionize)`` (a sort shuffle on that small integer: each bucket lands
   whole in one block and is sessionized there).
3. ``map_batches(session_counts)`` + ``groupby(kind, key1, key2).sum`` aggregate counts.
4. Q and R (CSR) go once into the object store (``ray.put``); a dataset of source states
   is processed by ``map_batches`` on an actor pool, each batch doing BFS + sub-chain
   solves (``approximate_sources``) for its sources.
5. Eq. 20 on the driver (sparse products), direct evidence by ``map_batches`` over the
   sessions, filters (``finalize``).

Every partial result is summed or sorted by key, so the table equals ``mine_local``'s.

Node failures. Both groupbys run under Ray Data's pull-based sort shuffle
(``task_shuffle``), whose sample, map and reduce steps are plain tasks: a worker node lost
mid-job only costs time (a lost block is recomputed from its lineage, a retried task
recomputes the same blocks), and validation's quarantine parts are content-named
(``raylib.validate.quarantine``), so a re-executed task rewrites its own file. (Ray
Data's hash shuffle keeps the shards in aggregator actors that are not restarted, behind
shard pushes that are not idempotent: ray-project/ray#59142.) The solver actor pool
restarts lost actors and retries their tasks (Ray Data's defaults); the chain and the
candidates are ``ray.put`` by the driver, on the head node. ``tests/test_cluster_faults.py``
SIGKILLs a worker node during sessionization and checks the table is unchanged.

The driver logs the start of each stage at INFO (logger ``raylib.rewrite.distributed``,
"mining: <stage> started"), so a job's log shows how far it got.
"""

from __future__ import annotations

import contextlib
import logging
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import ActorPoolStrategy, DataContext
from ray.data.context import ShuffleStrategy

from raylib.rewrite.approx import SOURCE_RESULTS, approximate_sources
from raylib.rewrite.counts import COUNTS, reduce_counts, session_counts, stats_of
from raylib.rewrite.evidence import EVIDENCE, pair_evidence, reduce_evidence
from raylib.rewrite.mining import Mined, MiningParams, build_model, candidate_rewrites, finalize, mine_local
from raylib.rewrite.sessions import sessionize
from raylib.schema import INTERACTIONS
from raylib.validate import quarantine, validate

DEFAULT_BUCKETS = 16
log = logging.getLogger(__name__)


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


def _collect(ds) -> list[pa.Table]:
    return [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]


def _evidence(batch: pa.Table, candidates_ref: list) -> pa.Table:
    return pair_evidence(batch, ray.get(candidates_ref[0]))


def mine_ray(
    interactions,
    params: MiningParams = MiningParams(),
    quarantine: str | None = None,
    n_buckets: int = DEFAULT_BUCKETS,
    source_batch: int = 512,
    n_solvers: int = 2,
) -> Mined:
    """The distributed path. ``interactions`` is a ``ray.data.Dataset`` of raw rows (e.g.
    ``ray.data.read_parquet``); rejected rows are quarantined under ``quarantine``."""
    with task_shuffle():
        log.info("mining: quarantine started")
        checked = interactions.map_batches(_quarantine, fn_args=(quarantine,), batch_format="pyarrow").materialize()
        if checked.count() == 0:  # nothing valid: the shuffle would have no schema to work with
            return mine_local(INTERACTIONS.empty_table(), params)
        # A dataset keeps the DataContext it was created under (and so do the datasets derived
        # from it): the caller made ``interactions``, so the shuffle settings only reach the
        # groupbys through a dataset created here, over the same (lineage-backed) blocks.
        good = ray.data.from_arrow_refs(checked.to_arrow_refs())
        log.info("mining: sessionize started (%d valid rows, %d buckets)", good.count(), n_buckets)
        bucketed = good.map_batches(_with_bucket, fn_args=(n_buckets,), batch_format="pyarrow")
        sessions = bucketed.groupby("bucket", num_partitions=n_buckets).map_groups(
            _sessionize_bucket, fn_args=(params.gap_s, params.no_match_states), batch_format="pyarrow"
        ).materialize()
        log.info("mining: counts started")
        partial = sessions.map_batches(session_counts, batch_format="pyarrow", batch_size=None)
        summed = _collect(partial.groupby(["kind", "key1", "key2"]).sum(["count", "defects"]))
    counts = reduce_counts(
        [t.select(["kind", "key1", "key2", "sum(count)", "sum(defects)"]).rename_columns(COUNTS.names).cast(COUNTS)
         for t in summed] or [COUNTS.empty_table()]
    )
    model = build_model(counts)
    n = model.chain.n_states
    results = SOURCE_RESULTS.empty_table()
    if n:
        log.info("mining: source solves started (%d states)", n)
        chain_ref = ray.put((model.chain.Q, model.chain.R))  # once in the object store
        sources = ray.data.range(n, override_num_blocks=max(1, -(-n // source_batch)))
        solved = sources.map_batches(
            _SourceSolver, fn_constructor_args=([chain_ref], params.depth, params.epsilon, params.top_k),
            batch_size=source_batch, batch_format="numpy", compute=ActorPoolStrategy(min_size=1, max_size=n_solvers),
        )
        parts = _collect(solved)
        if parts:
            results = pa.concat_tables(parts).cast(SOURCE_RESULTS)
            results = results.take(pc.sort_indices(results, sort_keys=[("source", "ascending"), ("target", "ascending")]))
    candidates = candidate_rewrites(model, results)
    cand_ref = ray.put(candidates.select(["utterance", "rewrite"]))
    log.info("mining: evidence started (%d candidates)", candidates.num_rows)
    evidence = reduce_evidence(
        _collect(sessions.map_batches(_evidence, fn_args=([cand_ref],), batch_format="pyarrow", batch_size=None))
        or [EVIDENCE.empty_table()]
    )
    table, removed, rejected = finalize(candidates, evidence, params)
    return Mined(stats_of(counts), model, results, candidates, table, removed, rejected)
