"""Training RP, LP and the reward model: the objectives' loss (``batch_loss``) on the
arrays of ``training_arrays``, as a task (``PolicyTask``) of the shared training shell
(``raylib.trainer``).

``train_network(..., num_workers=0)`` runs the shell's loop in-process (small data, tests);
``num_workers >= 1`` runs it on that many Ray Train workers (CPU, or GPU with ``use_gpu``),
the rows streamed to them as Ray Data shards, with checkpoints and resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import torch

from raylib import trainer
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


@dataclass(kw_only=True)
class PolicyTask(trainer.Task):
    """Training one network for ``objective`` (the shared shell's task): rows are the
    arrays of ``training_arrays``, a batch of rows is the network's input as it is."""

    config: NetworkConfig
    objective: str
    settings: TrainSettings
    init_state: dict | None = None
    unit: ClassVar[str] = "requests"

    @classmethod
    def of(cls, config: NetworkConfig, objective: str, settings: TrainSettings,
           init_state: dict | None) -> "PolicyTask":
        return cls(config=config, objective=objective, settings=settings, init_state=init_state,
                   epochs=settings.epochs, batch_size=settings.batch_size, seed=settings.seed, threads=settings.threads)

    def build(self) -> PolicyNetwork:
        """The network seeded with ``settings.seed`` (``init_state`` loaded when given)."""
        torch.manual_seed(self.settings.seed)
        net = PolicyNetwork(self.config)
        if self.init_state is not None:
            net.load_state_dict(self.init_state)
        return net

    def optimizer(self, network: torch.nn.Module) -> torch.optim.Optimizer:
        lr = self.settings.lr if self.settings.lr is not None else DEFAULT_LR[self.objective]
        return torch.optim.Adam(network.parameters(), lr=lr, weight_decay=self.settings.weight_decay)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch_loss(model, batch, self.objective, self.settings)


@dataclass
class TrainResult:
    """A trained network (CPU, eval mode), its mean loss per epoch, the Ray Train
    checkpoint it came from (None in-process) and the epoch its run started from (> 0 when
    it resumed a checkpoint; ``settings.epochs`` when the run had already finished), and on
    Ray Train its last epoch's speed: ``requests_per_s`` over all workers, ``device``, ``workers``."""

    network: PolicyNetwork
    history: list[float]
    checkpoint_path: str | None = None
    start_epoch: int = 0
    speed: dict = field(default_factory=dict)


def train_network(
    config: NetworkConfig,
    data: dict[str, np.ndarray],
    objective: str,
    settings: TrainSettings | None = None,
    num_workers: int = 0,
    use_gpu: bool = False,
    storage_path: str | None = None,
    init_state: dict | None = None,
    name: str | None = None,
    callbacks=(),
    max_failures: int = 0,
) -> TrainResult:
    """Train one network for ``objective`` ('rp' | 'ips' | 'snips' | 'dr' | 'reward').

    ``num_workers = 0``: in-process on the CPU. Otherwise a Ray Train ``TorchTrainer`` with
    that many DDP workers (``raylib.trainer.fit``) in the run ``<storage_path>/<name>``
    (``storage_path`` None: a fresh temporary directory), which resumes from its latest
    checkpoint; ``name`` None: ``run_name`` of the objective,
    settings, network config, initial state and a fingerprint of ``data``, so only the
    same training resumes a run. ``max_failures`` worker-group restarts (a lost worker or
    node) are allowed, each resuming the run's latest checkpoint (``raylib.trainer.fit``).
    The trained weights come back from the last checkpoint."""
    settings = settings or TrainSettings()
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    task = PolicyTask.of(config, objective, settings, init_state)
    if num_workers <= 0:
        return TrainResult(*trainer.train_in_process(task, data))
    if name is None:
        name = trainer.run_name(objective, {
            "objective": objective, "settings": asdict(settings), "network": config.to_dict(),
            "init": None if init_state is None else trainer.fingerprint(init_state), "data": trainer.fingerprint(data)})
    out = trainer.fit(task, data, name, num_workers, use_gpu, storage_path, max_failures, callbacks)
    m = out.metrics
    speed = {"requests_per_s": m["requests_per_s"], "device": m["device"], "workers": m["world_size"]}
    return TrainResult(out.network, list(m["loss_history"]), out.checkpoint_path, m["start_epoch"], speed)
