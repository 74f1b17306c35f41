"""Training RP, LP and the reward model: one pure loop (``fit``) and its Ray Train shell
(``TorchTrainer``, DDP, checkpoints through ``ray.train.Checkpoint``).

``train_network(..., num_workers=0)`` runs the loop in-process (small data, tests);
``num_workers >= 1`` runs it on that many Ray Train workers (CPU, or GPU with ``use_gpu``).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from raylib.routing import objectives
from raylib.routing.features import Features
from raylib.routing.model import NetworkConfig, PolicyNetwork

OBJECTIVES = ("rp", "ips", "snips", "dr", "reward")
TENSOR_KEYS = ("utterance", "context", "signals", "cand_cat", "cand_num", "mask", "customer", "cand_emb")
# Adam step size per objective when TrainSettings.lr is None. The off-policy objectives
# (IPS / SNIPS / DR) get a smaller step: at 1e-2 the LP often collapsed to the
# deterministic "top NLU candidate" policy (its softmax saturates on one slot and the
# policy gradient, proportional to Π_θ(a|X), vanishes on every other logged action). In the
# demo world (6 epochs) 3 of 8 LP trainings at 1e-2 ended there (true value 0.594 vs
# 0.62-0.69 otherwise), none of 6 at 3e-3 (0.63-0.70); 1e-3 also avoided it but learned too
# slowly on the small refresh test.
DEFAULT_LR = {"rp": 1e-2, "reward": 1e-2, "ips": 3e-3, "snips": 3e-3, "dr": 3e-3}


@dataclass
class TrainSettings:
    """Optimization settings of one network."""

    epochs: int = 8
    batch_size: int = 128
    lr: float | None = None  # None: DEFAULT_LR of the objective
    weight_decay: float = 1e-5
    clip: float | None = None  # IPS weight clipping: cap on 1 / Π_0
    baseline: float = 0.0  # IPS control variate (see objectives.lp_ips_loss)
    seed: int = 0
    threads: int = 1  # torch intra-op threads per worker (more threads thrash a busy CPU)
    sizes: dict = field(default_factory=dict)  # NetworkConfig sizes (word_dim, ...)


def training_arrays(
    features: Features,
    actions: np.ndarray,
    propensity: np.ndarray | None = None,
    reward: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    target: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Everything one objective reads, as numpy arrays aligned on requests.

    ``actions`` are indices in the original candidate order; they are turned into sorted
    slots here. ``predicted`` (B, T), in original order, is the reward model's output;
    ``target`` (B, T), in original order, the logged distribution Π_0 (soft RP targets)."""
    arrays = {k: v for k, v in features.arrays().items() if k in TENSOR_KEYS}
    arrays["slot"] = np.argmax(features.order == np.asarray(actions)[:, None], axis=1).astype(np.int64)
    if propensity is not None:
        arrays["propensity"] = np.asarray(propensity, np.float32)
    if reward is not None:
        arrays["reward"] = np.asarray(reward, np.float32)
    if predicted is not None:
        arrays["predicted"] = features.sorted_slots(np.asarray(predicted)).astype(np.float32)
    if target is not None:
        arrays["target"] = features.sorted_slots(np.asarray(target)).astype(np.float32)
    return arrays


def batch_loss(network, batch: dict[str, torch.Tensor], objective: str, settings: TrainSettings) -> torch.Tensor:
    """The loss of ``objective`` on one mini-batch."""
    out = network(batch)
    if objective == "rp":
        return objectives.rp_loss(out, batch["slot"], batch.get("target"))
    if objective == "ips":
        return objectives.lp_ips_loss(
            out, batch["slot"], batch["propensity"], batch["reward"], settings.clip, settings.baseline
        )
    if objective == "snips":
        return objectives.lp_snips_loss(out, batch["slot"], batch["propensity"], batch["reward"], settings.clip)
    if objective == "dr":
        return objectives.lp_dr_loss(
            out, batch["slot"], batch["propensity"], batch["reward"], batch["predicted"], settings.clip
        )
    if objective == "reward":
        return objectives.reward_model_loss(out, batch["slot"], batch["reward"])
    raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")


def fit(
    network,
    data: dict[str, np.ndarray],
    objective: str,
    settings: TrainSettings,
    rank: int = 0,
    world_size: int = 1,
    on_epoch=None,
) -> list[float]:
    """Mini-batch Adam on this rank's equal share of ``data``; returns the mean loss per
    epoch (averaged over ranks when torch.distributed is initialized). ``on_epoch(epoch,
    loss)`` is called after every epoch (Ray Train reports and checkpoints there)."""
    n = len(data["slot"])
    per_rank = n // world_size
    rng = np.random.default_rng(settings.seed)
    perm = rng.permutation(n)
    mine = perm[rank * per_rank : (rank + 1) * per_rank]
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
    lr = settings.lr if settings.lr is not None else DEFAULT_LR[objective]
    opt = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=settings.weight_decay)
    n_batches = max(1, -(-per_rank // settings.batch_size))
    history = []
    for epoch in range(settings.epochs):
        network.train()
        order = mine[rng.permutation(len(mine))]
        total = torch.zeros(())
        for b in range(n_batches):
            rows = torch.from_numpy(order[b * settings.batch_size : (b + 1) * settings.batch_size])
            loss = batch_loss(network, {k: v[rows] for k, v in tensors.items()}, objective, settings)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach()
        mean = total / n_batches
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(mean)
            mean /= world_size
        history.append(float(mean))
        if on_epoch is not None:
            on_epoch(epoch, history)
    network.eval()
    return history


def _new_network(config: NetworkConfig, settings: TrainSettings, init_state: dict | None) -> PolicyNetwork:
    torch.manual_seed(settings.seed)
    net = PolicyNetwork(config)
    if init_state is not None:
        net.load_state_dict(init_state)
    return net


def _ray_worker_loop(cfg: dict) -> None:
    """Ray Train worker: DDP-wrapped ``fit`` on this worker's shard, reporting the loss
    and a checkpoint (rank 0) after every epoch."""
    import ray
    import ray.train
    import ray.train.torch

    settings = TrainSettings(**cfg["settings"])
    torch.set_num_threads(settings.threads)
    data = ray.get(cfg["data"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    net = _new_network(NetworkConfig(**cfg["network"]), settings, cfg["init_state"])
    model = ray.train.torch.prepare_model(net)

    def on_epoch(epoch: int, history: list[float]) -> None:
        metrics = {"epoch": epoch, "loss": history[-1], "history": list(history)}
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(net.state_dict(), os.path.join(tmp, "model.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    fit(model, data, cfg["objective"], settings, rank, world, on_epoch)


@dataclass
class TrainResult:
    network: PolicyNetwork
    history: list[float]
    checkpoint_path: str | None = None


def train_network(
    config: NetworkConfig,
    data: dict[str, np.ndarray],
    objective: str,
    settings: TrainSettings | None = None,
    num_workers: int = 0,
    use_gpu: bool = False,
    storage_path: str | None = None,
    init_state: dict | None = None,
) -> TrainResult:
    """Train one network for ``objective`` ('rp' | 'ips' | 'snips' | 'dr' | 'reward').

    ``num_workers = 0``: in-process loop. Otherwise a Ray Train ``TorchTrainer`` with that
    many DDP workers; the trained weights come back from the last checkpoint."""
    settings = settings or TrainSettings()
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if num_workers <= 0:
        net = _new_network(config, settings, init_state)
        before = torch.get_num_threads()
        torch.set_num_threads(settings.threads)
        try:
            return TrainResult(net, fit(net, data, objective, settings))
        finally:
            torch.set_num_threads(before)

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = storage_path or os.path.join(tempfile.gettempdir(), "selflearn-routing-train")
    trainer = TorchTrainer(
        _ray_worker_loop,
        train_loop_config={
            "data": ray.put(data),
            "objective": objective,
            "settings": asdict(settings),
            "network": config.to_dict(),
            "init_state": init_state,
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=storage, name=f"{objective}-{uuid.uuid4().hex[:8]}"),
    )
    result = trainer.fit()
    net = PolicyNetwork(config)
    with result.checkpoint.as_directory() as ckpt:
        net.load_state_dict(torch.load(os.path.join(ckpt, "model.pt"), weights_only=True))
    net.eval()
    return TrainResult(net, list(result.metrics["history"]), result.checkpoint.path)
