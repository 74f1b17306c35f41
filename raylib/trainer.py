"""The one training shell of every network in this project (PDRFE link prediction in
``raylib.graph.train``, the routing policy networks in ``raylib.routing.train``).

A trainer describes its job as a :class:`Task`: how to build the network and its
optimizer, how a batch of training rows becomes model inputs (``prepare``) and the loss of
those inputs (``loss``). The shell does the rest, the same way for every task:

- ``run_epoch`` is the pure loop (no Ray): Adam steps over an iterable of row batches, each
  prepared by the task and moved to the device (``to_device``), whatever feeds it.
- ``train_in_process`` feeds it shuffled numpy batches on this process's CPU.
- ``fit`` runs it on Ray Train: a ``TorchTrainer`` whose workers take the device from
  ``ray.train.torch.get_device()`` (one GPU each with ``use_gpu``), wrap the network in DDP
  (``prepare_model``) and read their rows from a Ray Data shard.

Training rows. The driver turns the task's row arrays (one row per training example;
multi-dimensional columns become Arrow tensor columns) into a ``ray.data.Dataset`` of
blocks, passed as ``datasets={"train": ...}``; each worker iterates
``ray.train.get_dataset_shard("train")`` as numpy batches (a task may prepare them on the
numpy side, as PDRFE samples its subgraphs, before ``to_device``). The rows are permuted
once (seeded) before they are cut into blocks, the block order is re-drawn every epoch
(``randomize_block_order`` reseeded per execution) and batches are shuffled within a
local buffer, so every epoch visits the rows in a new order without a global shuffle.
Ray Train's default ``DataConfig`` splits the dataset with ``streaming_split(world_size,
equal=True)``: every rank gets the same number of rows, hence (same batch size) the same
number of steps, which keeps the DDP all-reduces in lock-step; ``Task.rows_per_epoch``
caps the rows of an epoch by giving every rank the same budget. Inputs that every worker
needs whole (the PDRFE graph, for neighbour sampling and negatives) are not rows: the
task carries one object-store copy of them (an ObjectRef) that each worker reads once.

Checkpoints and resume. Rank 0 reports a checkpoint after every epoch: one file
``state.pt`` holding ``{"model", "optimizer", "epoch", "history"}`` (tensors, numbers and
lists only, so it loads with ``torch.load(..., weights_only=True)``, as it is everywhere).
A run is the directory ``<storage_path>/<name>``. Ray Train (V2) writes a checkpoint
manager snapshot there (``checkpoint_manager_snapshot.json``) at every registered
checkpoint; the controller of a new ``TorchTrainer`` with the same name and storage path
loads it, hands its latest checkpoint to every worker (``ray.train.get_checkpoint()``)
and returns that checkpoint and its metrics as the result unless a newer one is reported.
So the same task rerun with the same storage (``run_name`` makes the name a function of
the model, its settings and its data) resumes after the last finished epoch with the
checkpoint's exact state (its batches are drawn anew: the block order restarts with the
run). A rerun of a finished run trains nothing and reports the loaded state again
(``start_epoch`` = ``epochs``, no rows), so the result is the finished model. The same
restore happens when Ray Train restarts a failed worker group (``max_failures``). Fault
injection is the caller's: ``callbacks`` are ``ray.train.UserCallback`` instances run on
the controller after every report, and every worker reports its ``pid`` and ``node_id``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

STATE_FILE = "state.pt"
MAX_BLOCKS = 256  # row blocks of the training dataset (the unit of per-epoch reordering)


@dataclass(kw_only=True)
class Task:
    """What a trainer hands the shell; pickled to every Ray Train worker.

    Subclasses implement ``build``, ``optimizer`` and ``loss`` (and ``prepare`` when a row
    batch is not already the model's input). ``rows_per_epoch`` caps the rows trained per
    epoch over all workers (None: all). ``unit`` names the rows in the throughput metrics
    (``<unit>_per_s``, ``<unit>_per_worker``)."""

    epochs: int
    batch_size: int
    seed: int = 0
    threads: int = 1
    rows_per_epoch: int | None = None
    unit: ClassVar[str] = "rows"

    def build(self) -> torch.nn.Module:
        """A freshly initialized network on the CPU; called once per process before
        ``prepare`` and ``loss``."""
        raise NotImplementedError

    def shipped(self) -> "Task":
        """The task as sent to the Ray Train workers (default: itself); a task whose input
        every worker reads whole puts that input in the object store here, once."""
        return self

    def optimizer(self, network: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimizer of ``network`` (called once the network is on its device)."""
        raise NotImplementedError

    def prepare(self, network: torch.nn.Module, rows: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
        """Model inputs (numpy arrays or tensors) of a batch of training rows; identity by
        default. ``network`` is the bare network (not the DDP wrapper)."""
        return rows

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean loss of one prepared batch; ``model`` may be the DDP wrapper."""
        raise NotImplementedError


def run_name(kind: str, key: dict) -> str:
    """A Ray Train run name: a slug of ``kind`` and a short sha1 of ``key`` (JSON, sorted
    keys), so the same model, settings and data name the same run and a rerun resumes it."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    slug = "".join(ch if ch.isalnum() else "-" for ch in kind.lower()).strip("-")
    return f"{slug}-{digest}"


def fingerprint(arrays: Mapping[str, object]) -> str:
    """blake2b of the names, dtypes, shapes and bytes of some arrays (numpy or CPU tensors):
    two data sets share a fingerprint only if they are equal (barring a hash collision)."""
    h = hashlib.blake2b(digest_size=10)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def storage_uri(path: str | None) -> str:
    """``RunConfig.storage_path``: a URI (``s3://...``) unchanged, a local path made
    absolute, None a fresh temporary directory (a run that no later call can resume)."""
    if path is None:
        return tempfile.mkdtemp(prefix="selflearn-ray-train-")
    return path if "://" in path else os.path.abspath(path)


def to_device(batch: Mapping[str, object], device) -> dict[str, torch.Tensor]:
    """Every entry of a batch (numpy array or tensor) as a tensor on ``device``, dtype kept. A
    read-only array (a Ray Data batch's zero-copy view) is copied: torch tensors are writable."""
    return {k: torch.as_tensor(np.array(v) if isinstance(v, np.ndarray) and not v.flags.writeable else v).to(device)
            for k, v in batch.items()}


def numpy_batches(rows: Mapping[str, np.ndarray], batch_size: int, rng: np.random.Generator,
                  cap: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of in-process batches: the first ``cap`` rows of a fresh permutation."""
    order = rng.permutation(len(next(iter(rows.values()))))[:cap]
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        yield {k: v[idx] for k, v in rows.items()}


def capped(batches: Iterable[dict[str, np.ndarray]], budget: int | None) -> Iterator[dict[str, np.ndarray]]:
    """The batches up to ``budget`` rows in all (the last one cut to fit); None: all."""
    left = budget
    for batch in batches:
        if left is not None:
            if left <= 0:
                return
            batch = {k: v[:left] for k, v in batch.items()}
            left -= len(next(iter(batch.values())))
        yield batch


def run_epoch(task: Task, model, network: torch.nn.Module, opt: torch.optim.Optimizer,
              batches: Iterable[dict[str, np.ndarray]], device, rng: np.random.Generator) -> tuple[int, float]:
    """One pass of Adam steps over ``batches`` of training rows: each is prepared by the
    task, moved to ``device`` and stepped on. ``model`` is what computes the loss (the DDP
    wrapper under Ray Train), ``network`` the bare network. Returns (rows, the sum over
    batches of rows x mean loss)."""
    model.train()
    rows, total = 0, torch.zeros((), device=device)
    for batch in batches:
        n = len(next(iter(batch.values())))
        loss = task.loss(model, to_device(task.prepare(network, batch, rng), device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows, total = rows + n, total + loss.detach() * n
    return rows, float(total)


def train_in_process(task: Task, rows: Mapping[str, np.ndarray]) -> tuple[torch.nn.Module, list[float]]:
    """All epochs of ``task`` in this process on the CPU (``task.threads`` torch threads);
    returns the network (eval mode) and the mean loss per epoch."""
    before = torch.get_num_threads()
    torch.set_num_threads(task.threads)
    try:
        network = task.build()
        opt = task.optimizer(network)
        rng = np.random.default_rng(task.seed)
        history = []
        for _ in range(task.epochs):
            batches = numpy_batches(rows, task.batch_size, rng, task.rows_per_epoch)
            n, total = run_epoch(task, network, network, opt, batches, torch.device("cpu"), rng)
            history.append(total / max(n, 1))
        return network.eval(), history
    finally:
        torch.set_num_threads(before)


def load_state(checkpoint, device="cpu") -> dict:
    """The state dict of a ``ray.train.Checkpoint`` (weights_only: tensors and plain data)."""
    with checkpoint.as_directory() as path:
        return torch.load(os.path.join(path, STATE_FILE), map_location=device, weights_only=True)


def _report(metrics: dict, state: dict, rank: int) -> None:
    """``ray.train.report`` of every rank, with rank 0's checkpoint of ``state``."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save(state, os.path.join(tmp, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _gather(values: list[float], world: int, device) -> np.ndarray:
    """[world, len(values)]: every rank's ``values`` (all_gather across the DDP group)."""
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    if world == 1:
        return mine[None].cpu().numpy()
    table = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(table, mine)
    return torch.stack(table).cpu().numpy()


def _worker(config: dict) -> None:
    """Ray Train worker entry: ``config["task"]`` for ``task.epochs`` epochs from the latest
    checkpoint, rows from this worker's ``"train"`` dataset shard, a report (rank 0: with a
    checkpoint) after every epoch."""
    import ray
    import ray.train
    import ray.train.torch

    task: Task = config["task"]
    torch.set_num_threads(task.threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    network = task.build()
    model = ray.train.torch.prepare_model(network)  # on the device; DDP when world > 1
    opt = task.optimizer(network)
    start, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_state(checkpoint, device)
        network.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"] + 1, list(state["history"])
    common = {"start_epoch": start, "world_size": world, "device": str(device), "pid": os.getpid(),
              "node_id": ray.get_runtime_context().get_node_id()}

    def report(epoch: int, table: np.ndarray) -> None:
        metrics = {**common, "epoch": epoch, "loss": history[-1], "loss_history": list(history),
                   f"{task.unit}_per_worker": table[:, 0].astype(int).tolist(),
                   f"{task.unit}_per_s": float(table[:, 0].sum() / max(table[:, 2].max(), 1e-9))}
        state = {"model": network.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "history": history}
        _report(metrics, state, rank)

    if start >= task.epochs:  # a finished run rerun: hand back its final state, train nothing
        report(start - 1, np.zeros((world, 3)))
        return
    shard = ray.train.get_dataset_shard("train")
    budget = None if task.rows_per_epoch is None else max(1, task.rows_per_epoch // world)
    for epoch in range(start, task.epochs):
        rng = np.random.default_rng([task.seed, epoch, rank])
        batches = shard.iter_batches(batch_size=task.batch_size, batch_format="numpy",
                                     local_shuffle_buffer_size=4 * task.batch_size,
                                     local_shuffle_seed=int(rng.integers(2**31)))
        began = time.perf_counter()
        rows, total = run_epoch(task, model, network, opt, capped(batches, budget), device, rng)
        table = _gather([rows, total, time.perf_counter() - began], world, device)
        history.append(float(table[:, 1].sum() / max(table[:, 0].sum(), 1.0)))
        report(epoch, table)


def row_dataset(rows: Mapping[str, np.ndarray], batch_size: int, seed: int):
    """The training rows as a ``ray.data.Dataset``: permuted once (seeded), cut into Arrow
    blocks of at least ``batch_size`` rows, at most ``MAX_BLOCKS`` of them (multi-dimensional
    columns as tensor columns), block order re-drawn on every execution (every epoch)."""
    import ray.data
    from ray.data import RandomSeedConfig
    from ray.data.block import BlockAccessor

    n = len(next(iter(rows.values())))
    order = np.random.default_rng(seed).permutation(n)
    blocks = [BlockAccessor.batch_to_block({k: v[idx] for k, v in rows.items()})
              for idx in np.array_split(order, min(MAX_BLOCKS, max(1, n // batch_size)))]
    return ray.data.from_arrow(blocks).randomize_block_order(seed=RandomSeedConfig(seed=seed))


@dataclass
class Outcome:
    """A finished Ray Train run: the network (CPU, eval mode) loaded from its latest
    checkpoint, that checkpoint's metrics and its path."""

    network: torch.nn.Module
    metrics: dict
    checkpoint_path: str


def fit(task: Task, rows: Mapping[str, np.ndarray], name: str, num_workers: int = 1, use_gpu: bool = False,
        storage_path: str | None = None, max_failures: int = 0, callbacks=()) -> Outcome:
    """Train ``task`` (``task.shipped()`` on the workers) on ``rows`` with a ``TorchTrainer``
    of ``num_workers`` DDP workers (one GPU each with ``use_gpu``) in the run ``<storage_path>/<name>`` (see
    ``storage_uri``), resuming that run's latest checkpoint if it has one. ``max_failures``
    worker-group restarts are allowed (``FailureConfig``); ``callbacks`` are
    ``ray.train.UserCallback`` instances. Raises ``ray.train.TrainingFailedError`` when the
    run fails."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _worker,
        train_loop_config={"task": task.shipped()},
        datasets={"train": row_dataset(rows, task.batch_size, task.seed)},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=storage_uri(storage_path),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
    )
    result = trainer.fit()
    network = task.build()
    network.load_state_dict(load_state(result.checkpoint)["model"])
    return Outcome(network.eval(), dict(result.metrics), result.checkpoint.path)
