"""Distributed link-prediction training (seed 000, section 2) on Ray Train.

``train_loop_per_worker`` is the per-worker loop: every worker reads the same
:class:`GraphData` from the object store, takes its own shard of each epoch's shuffled
training edges, samples subgraphs and negatives, and DDP averages gradients. Rank 0
saves a checkpoint every epoch (model, optimizer, epoch, loss history); a run restarted
under the same name and storage path, or a worker group restarted after a failure,
resumes from the latest checkpoint. The device comes from ``ray.train.torch.get_device()``,
so ``use_gpu=True`` trains on one GPU per worker with no other change.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from raylib.graph.data import GraphData
from raylib.graph.models import ModelSpec, build_model
from raylib.graph.objective import max_margin_loss


@dataclass
class TrainConfig:
    """Representation-learning hyperparameters (Table 6 where the paper gives them; see
    the job's report for the changes)."""

    dim: int = 64
    layers: int = 2
    fanouts: tuple[int, ...] = (10, 5)
    batch_size: int = 512
    negatives: int = 5
    lr: float = 1e-3
    margin: float = 1.0
    epochs: int = 5
    edges_per_epoch: int | None = None  # cap on the training edges drawn each epoch (None: all)
    seed: int = 0
    torch_threads: int = 1
    crash_after_epoch: int | None = None  # fault injection for the resume test
    crash_marker: str | None = None


def shard(edges: np.ndarray, epoch: int, rank: int, world: int, seed: int, cap: int | None = None) -> np.ndarray:
    """This worker's equal-size share of the epoch's shuffled training edges (the same
    permutation on every rank, so shards are disjoint; every rank gets the same count so
    DDP steps stay in lock-step), from the first ``cap`` edges of the permutation."""
    order = np.random.default_rng([seed, epoch]).permutation(edges)[:cap]
    per = len(order) // world
    return order[rank * per : (rank + 1) * per]


def _to_device(batch: dict, device) -> dict:
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry: ``config`` holds ``data`` (an ObjectRef of GraphData), ``spec``
    (ModelSpec) and ``train`` (TrainConfig)."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg: TrainConfig = config["train"]
    torch.set_num_threads(cfg.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    data: GraphData = ray.get(config["data"])

    torch.manual_seed(cfg.seed)
    model = build_model(config["spec"], data, cfg.dim, cfg.layers, cfg.fanouts)
    ddp = ray.train.torch.prepare_model(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            state = torch.load(os.path.join(path, "state.pt"), map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]

    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        mine = shard(data.train_edges, epoch, rank, world, cfg.seed, cfg.edges_per_epoch)
        ddp.train()
        began, loss_sum = time.perf_counter(), torch.zeros((), device=device)
        for idx in np.array_split(mine, max(1, len(mine) // cfg.batch_size)):
            pos, neg = ddp(**_to_device(model.make_batch(data, idx, rng, cfg.negatives), device))
            loss = max_margin_loss(pos, neg, cfg.margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
        seconds = time.perf_counter() - began
        per_rank = torch.tensor([float(len(mine)), float(loss_sum), seconds], device=device)
        gathered = [torch.zeros_like(per_rank) for _ in range(world)]
        if world > 1:
            torch.distributed.all_gather(gathered, per_rank)
        else:
            gathered = [per_rank]
        table = torch.stack(gathered).cpu().numpy()
        epoch_loss = float(table[:, 1].sum() / max(table[:, 0].sum(), 1.0))
        history.append(epoch_loss)
        metrics = {
            "epoch": epoch,
            "loss": epoch_loss,
            "loss_history": list(history),
            "start_epoch": start_epoch,
            "edges_per_worker": table[:, 0].astype(int).tolist(),
            "edges_per_s": float(table[:, 0].sum() / max(table[:, 2].max(), 1e-9)),
            "world_size": world,
            "device": str(device),
        }
        with tempfile.TemporaryDirectory() as tmp:
            saved = None
            if rank == 0:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                            "history": history}, os.path.join(tmp, "state.pt"))
                saved = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=saved)
        if cfg.crash_after_epoch == epoch and cfg.crash_marker and not os.path.exists(cfg.crash_marker):
            open(cfg.crash_marker, "w").close()
            time.sleep(3 * 2.0)  # let the controller's health check (every 2 s) register the report
            os._exit(1)  # a killed worker: Ray Train restarts the group from the latest checkpoint


@dataclass
class Trained:
    """A trained model on the CPU, its last reported metrics and checkpoint path."""

    model: torch.nn.Module
    metrics: dict
    checkpoint_path: str | None


def fit(spec: ModelSpec, data_ref, cfg: TrainConfig, data: GraphData, num_workers: int = 2, use_gpu: bool = False,
        storage_path: str | None = None, name: str = "pdrfe", max_failures: int = 0) -> Trained:
    """Train ``spec`` with a TorchTrainer (DDP over ``num_workers`` workers) and return the
    model loaded from the final checkpoint. ``data_ref`` is ``ray.put(data)``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"data": data_ref, "spec": spec, "train": cfg},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    torch.manual_seed(cfg.seed)
    model = build_model(spec, data, cfg.dim, cfg.layers, cfg.fanouts)
    with result.checkpoint.as_directory() as path:
        state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    return Trained(model.eval(), dict(result.metrics), result.checkpoint.path)
