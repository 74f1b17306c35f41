"""A 2-worker CPU Ray Train (TorchTrainer, DDP) run of the LP objective whose loss falls,
with the weights coming back from the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from raylib.routing.features import Vocabulary, encode
from raylib.routing.model import NetworkConfig, predict
from raylib.routing.toy import ToyBandit
from raylib.routing.train import TrainSettings, train_network, training_arrays

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_two_worker_ray_train_loss_falls(ray_local, tmp_path):
    log, _ = ToyBandit(seed=2).routing(600, seed=2)
    vocab = Vocabulary.fit(log)
    feats = encode(log, vocab)
    arrays = training_arrays(
        feats,
        log.column("action").to_numpy(),
        log.column("propensity").to_numpy(),
        log.column("reward").to_numpy(),
    )
    config = NetworkConfig.for_vocabulary(vocab, word_dim=8, utterance_hidden=8, candidate_hidden=8, fc_hidden=16)
    settings = TrainSettings(epochs=4, batch_size=64, lr=1e-2, baseline=float(arrays["reward"].mean()))
    result = train_network(config, arrays, "ips", settings, num_workers=2, storage_path=str(tmp_path))
    assert len(result.history) == 4
    assert result.history[-1] < result.history[0]
    assert result.checkpoint_path is not None
    # the checkpointed network is the trained one: it is a valid policy on the data
    probs = predict(result.network, feats)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
