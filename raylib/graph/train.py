"""Distributed link-prediction training (seed 000, section 2): the PDRFE task of the
shared Ray Train shell (``raylib.trainer``).

The training rows are the training edges (``GraphData.train_edges``), streamed to the Train
workers as equal Ray Data shards. The graph itself (CSR, node features, utterance vectors)
is needed whole by every worker to sample neighbourhoods and negatives, so it stays one
object in the Ray object store that each worker reads once. A batch of edges becomes a
sampled subgraph with negatives (``make_batch``), scored and trained with the max-margin
loss; DDP averages the gradients. Checkpoints, resume and the device are the shell's:
``use_gpu=True`` trains on one GPU per worker with no other change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import ray
import torch

from raylib import trainer
from raylib.graph.data import GraphData
from raylib.graph.models import ModelSpec, build_model
from raylib.graph.objective import max_margin_loss


@dataclass
class TrainConfig:
    """Representation-learning hyperparameters (Table 6 where the paper gives them; see
    the job's report for the changes)."""

    dim: int = 128
    layers: int = 2
    fanouts: tuple[int, ...] = (10, 5)
    batch_size: int = 512
    negatives: int = 5
    negative_alpha: float = 0.0  # negatives drawn ~ (skill training degree + 1) ** alpha; 0: uniform
    lr: float = 1e-3
    margin: float = 1.0
    epochs: int = 5
    edges_per_epoch: int | None = None  # cap on the training edges drawn each epoch (None: all)
    seed: int = 0
    torch_threads: int = 1


@dataclass(kw_only=True)
class LinkPrediction(trainer.Task):
    """Link prediction with ``spec`` on ``graph``: a GraphData, or on the Train workers an
    ObjectRef of it (``shipped``) that ``build`` resolves once per process, with the
    training negatives' sampler (``GraphData.negative_sampler`` of ``cfg.negative_alpha``).
    Rows: ``{"edge": training edge ids}``."""

    spec: ModelSpec
    cfg: TrainConfig
    graph: object
    non_edges: object = field(default=None, repr=False)
    unit = "edges"

    @classmethod
    def of(cls, spec: ModelSpec, cfg: TrainConfig, graph) -> "LinkPrediction":
        return cls(spec=spec, cfg=cfg, graph=graph, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                   threads=cfg.torch_threads, rows_per_epoch=cfg.edges_per_epoch)

    def shipped(self) -> "LinkPrediction":
        return replace(self, graph=ray.put(self.graph))

    def build(self) -> torch.nn.Module:
        if isinstance(self.graph, ray.ObjectRef):
            self.graph = ray.get(self.graph)
        self.non_edges = self.graph.negative_sampler(self.cfg.negative_alpha)
        torch.manual_seed(self.cfg.seed)
        return build_model(self.spec, self.graph, self.cfg.dim, self.cfg.layers, self.cfg.fanouts)

    def optimizer(self, network: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(network.parameters(), lr=self.cfg.lr)

    def prepare(self, network, rows: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
        """The sampled subgraph, utterances and negatives of a batch of edges."""
        return network.make_batch(self.graph, rows["edge"], rng, self.cfg.negatives, self.non_edges)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return max_margin_loss(*model(**batch), self.cfg.margin)


def graph_fingerprint(data: GraphData) -> str:
    """Fingerprint of what defines a training graph: node features, utterance vectors,
    edges and the training split (everything else in GraphData derives from these)."""
    return trainer.fingerprint({k: getattr(data, k) for k in (
        "node_codes", "utterance_vectors", "edge_customer", "edge_skill", "edge_utterance", "train_edges")})


@dataclass
class Trained:
    """A trained model on the CPU, its last reported metrics and checkpoint path."""

    model: torch.nn.Module
    metrics: dict
    checkpoint_path: str | None


def fit(spec: ModelSpec, data: GraphData, cfg: TrainConfig, num_workers: int = 2, use_gpu: bool = False,
        storage_path: str | None = None, name: str | None = None, max_failures: int = 0, callbacks=()) -> Trained:
    """Train ``spec`` on ``data`` with a TorchTrainer (DDP over ``num_workers`` workers) and
    return the model loaded from the final checkpoint. The run ``<storage_path>/<name>``
    resumes from its latest checkpoint; ``name`` None: ``run_name`` of the spec, the config
    and the graph's fingerprint. ``max_failures`` and ``callbacks``: see
    ``raylib.trainer.fit``. Metrics: loss, loss_history, edges_per_s, edges_per_worker,
    device, start_epoch, world_size (and each epoch's pid, node_id)."""
    if name is None:
        key = {"spec": asdict(spec), "train": asdict(cfg), "graph": graph_fingerprint(data)}
        name = trainer.run_name(spec.family, key)
    task = LinkPrediction.of(spec, cfg, data)
    out = trainer.fit(task, {"edge": data.train_edges}, name, num_workers, use_gpu, storage_path, max_failures,
                      callbacks)
    return Trained(out.network, out.metrics, out.checkpoint_path)
