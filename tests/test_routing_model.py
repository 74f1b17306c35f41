"""The policy network gives a request the same probabilities alone or in any batch."""

from __future__ import annotations

import numpy as np

from raylib.routing.features import Vocabulary
from raylib.routing.hybrid import HybridPolicy
from raylib.routing.toy import ToyBandit


def test_probabilities_do_not_depend_on_batch_mates():
    log, _ = ToyBandit(seed=5).routing(64, seed=3)
    policy = HybridPolicy.untrained(Vocabulary.fit(log), seed=4)
    together = policy.action_distribution(log)
    sizes = [len(d) for d in together]
    assert len(set(sizes)) > 1  # batch-mates differ in candidate count, so padding differs
    for i in range(0, log.num_rows, 7):
        alone = policy.action_distribution(log.slice(i, 1))[0]
        assert np.allclose(alone, together[i], atol=1e-6), i
