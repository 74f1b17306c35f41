"""Training the policy networks: a 2-worker CPU Ray Train (TorchTrainer, DDP, rows as Ray
Data shards) run of the LP objective whose loss falls, with the weights coming back from
the checkpoint; every batch reaches the network as tensors on the shell's device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raylib.routing.features import Vocabulary, encode
from raylib.routing.model import NetworkConfig, PolicyNetwork, predict
from raylib.routing.toy import ToyBandit
from raylib.routing.train import TrainSettings, train_network, training_arrays
from raylib.trainer import to_device


def _toy(n: int, seed: int):
    log, _ = ToyBandit(seed=seed).routing(n, seed=seed)
    vocab = Vocabulary.fit(log)
    feats = encode(log, vocab)
    arrays = training_arrays(
        feats,
        log.column("action").to_numpy(),
        log.column("propensity").to_numpy(),
        log.column("reward").to_numpy(),
    )
    config = NetworkConfig.for_vocabulary(vocab, word_dim=8, utterance_hidden=8, candidate_hidden=8, fc_hidden=16)
    return feats, arrays, config


@pytest.mark.ray
def test_two_worker_ray_train_loss_falls(local_ray, tmp_path):
    feats, arrays, config = _toy(600, 2)
    settings = TrainSettings(epochs=4, batch_size=64, lr=1e-2, baseline=float(arrays["reward"].mean()))
    result = train_network(config, arrays, "ips", settings, num_workers=2, storage_path=str(tmp_path))
    assert len(result.history) == 4 and result.start_epoch == 0
    assert result.history[-1] < result.history[0]
    assert result.checkpoint_path is not None
    assert result.speed["device"] == "cpu" and result.speed["workers"] == 2 and result.speed["requests_per_s"] > 0
    # the checkpointed network is the trained one: it is a valid policy on the data
    probs = predict(result.network, feats)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_to_device_moves_every_entry_and_keeps_dtypes():
    batch = {"ids": np.arange(6).reshape(2, 3), "mask": np.ones((2, 3), bool), "w": torch.ones(2, dtype=torch.float16)}
    moved = to_device(batch, torch.device("meta"))
    assert {k: (v.device.type, v.dtype, tuple(v.shape)) for k, v in moved.items()} == {
        "ids": ("meta", torch.int64, (2, 3)), "mask": ("meta", torch.bool, (2, 3)), "w": ("meta", torch.float16, (2,))}


def test_in_process_batches_reach_the_network_as_tensors_on_its_device():
    _, arrays, config = _toy(200, 4)
    seen = []

    def record(module, args):
        if isinstance(module, PolicyNetwork) and module.training:
            device = next(module.parameters()).device
            seen.append({k: isinstance(v, torch.Tensor) and v.device == device for k, v in args[0].items()})

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        result = train_network(config, arrays, "ips", TrainSettings(epochs=2, batch_size=64))
    finally:
        handle.remove()
    assert len(seen) == 2 * 4  # 2 epochs of ceil(200 / 64) batches
    assert all(set(batch) == set(arrays) and all(batch.values()) for batch in seen)
    assert len(result.history) == 2 and result.checkpoint_path is None and result.start_epoch == 0
