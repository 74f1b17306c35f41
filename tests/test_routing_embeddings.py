"""PDRFE customer/skill embeddings as optional inputs of the routing policy network:
encoding (shapes, slot order, zero vectors for unknown ids), the network's extra inputs,
the policy artifact carrying the embeddings, and train_policy --embeddings end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs import train_policy
from raylib.routing.features import EmbeddingTables, Vocabulary, encode, requests_to_table
from raylib.routing.hybrid import ARTIFACT_FORMAT, EMBEDDINGS_FORMAT, HybridPolicy
from raylib.routing.model import NetworkConfig, PolicyNetwork
from raylib.routing.toy import ToyBandit
from raylib.uri import write_table
from raylib.store import Store

DIM = 4


def toy_embeddings(version: str | None = "v000007", seed: int = 0) -> EmbeddingTables:
    """Customers c0..c39 and skills skill0..skill4 (the toy's c40..c49, skill5 and
    skill_generic stay unknown)."""
    rng = np.random.default_rng(seed)
    return EmbeddingTables(
        version,
        [f"c{i}" for i in range(40)],
        rng.standard_normal((40, DIM)).astype(np.float32),
        [f"skill{i}" for i in range(5)],
        rng.standard_normal((5, DIM)).astype(np.float32),
    )


@pytest.fixture(scope="module")
def log():
    return ToyBandit(seed=5).routing(80, seed=3)[0]


def test_encode_adds_customer_and_sorted_skill_vectors_zero_for_unknown_ids(log):
    emb = toy_embeddings()
    feats = encode(log, Vocabulary.fit(log), emb)
    b, t = feats.mask.shape
    assert feats.customer.shape == (b, DIM) and feats.cand_emb.shape == (b, t, DIM)
    customers = log["customer_id"].to_pylist()
    candidates = log["candidates"].to_pylist()
    for i in range(b):
        k = customers[i]
        want = emb.customers[emb.customer_ids.index(k)] if k in emb.customer_ids else np.zeros(DIM)
        assert np.array_equal(feats.customer[i], want)
        for slot in range(t):
            if not feats.mask[i, slot]:
                assert not feats.cand_emb[i, slot].any()  # padding
                continue
            skill = candidates[i][feats.order[i, slot]]["skill_id"]
            want = emb.skills[emb.skill_ids.index(skill)] if skill in emb.skill_ids else np.zeros(DIM)
            assert np.array_equal(feats.cand_emb[i, slot], want), (i, slot, skill)
    assert {"c45", "c4"} <= set(customers)  # both a known and an unknown customer occur
    # a null customer id, or a table without the column, gets zeros too
    nulls = encode(log.drop_columns(["customer_id"]), Vocabulary.fit(log), emb)
    assert not nulls.customer.any() and np.array_equal(nulls.cand_emb, feats.cand_emb)
    # without embeddings nothing is added
    plain = encode(log, Vocabulary.fit(log))
    assert plain.customer is None and plain.cand_emb is None and set(plain.arrays()) == set(feats.arrays()) - {
        "customer",
        "cand_emb",
    }


def test_network_widths_and_unchanged_without_embeddings(log):
    vocab, emb = Vocabulary.fit(log), toy_embeddings()
    plain = NetworkConfig.for_vocabulary(vocab)
    assert set(plain.to_dict()) == {"cardinalities", "word_dim", "utterance_hidden", "candidate_hidden", "fc_hidden", "head"}
    h = plain.candidate_hidden

    def n_params(config):
        return sum(p.numel() for p in PolicyNetwork(config).parameters())

    # extra inputs widen only the candidate BiLSTM's input weights: 2 directions x 4 gates x H per input
    with_emb = NetworkConfig.for_vocabulary(vocab, emb)
    assert n_params(with_emb) - n_params(plain) == 2 * 4 * h * (2 * DIM)
    product = NetworkConfig.for_vocabulary(vocab, emb, embedding_product=True)
    assert n_params(product) - n_params(plain) == 2 * 4 * h * (3 * DIM)
    assert NetworkConfig(**product.to_dict()) == product
    with pytest.raises(ValueError, match="equal"):
        NetworkConfig.for_vocabulary(vocab, customer_dim=3, skill_dim=4, embedding_product=True)


def test_embeddings_change_the_distribution_and_rows_stay_batch_independent(log):
    emb = toy_embeddings()
    policy = HybridPolicy.untrained(Vocabulary.fit(log), seed=4, embeddings=emb)
    together = policy.action_distribution(log)
    for i in range(0, log.num_rows, 9):
        alone = policy.action_distribution(log.slice(i, 1))[0]
        assert np.allclose(alone, together[i], atol=1e-6), i
    # the same request from another (known) customer is routed differently
    i = log["customer_id"].to_pylist().index("c4")
    other = log.slice(i, 1).set_column(1, "customer_id", pa.array(["c7"]))
    assert not np.allclose(policy.action_distribution(other)[0], together[i], atol=1e-4)


def test_artifact_round_trip_with_embeddings(log, tmp_path):
    emb = toy_embeddings()
    policy = HybridPolicy.untrained(Vocabulary.fit(log), seed=2, embeddings=emb)
    policy.rpdr = {"intent1": 0.5}
    files = policy.to_files()
    assert files["manifest"]["format"] == EMBEDDINGS_FORMAT
    assert files["manifest"]["embeddings"]["lp"] == {"version": "v000007", "files": "embeddings"}
    assert {"embeddings_customers", "embeddings_skills"} <= set(files)  # stored once for RP and LP
    store = Store(str(tmp_path / "store"))
    again = HybridPolicy.from_artifact(store.load("policy", store.publish("policy", files)))
    assert again.lp_embeddings.version == "v000007" and again.rp_embeddings.version == "v000007"
    a, b = policy.action_distribution(log), again.action_distribution(log)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # decide() needs only the ids in the request
    request = {
        "utterance": "w1_0 please",
        "customer_id": "c3",
        "candidates": [
            {"domain": "dom1", "intent": "intent1", "skill_id": "skill1", "nlu_confidence": 0.3},
            {"domain": "dom2", "intent": "intent2", "skill_id": "never_seen", "nlu_confidence": 0.7},
        ],
        "context": {"device_type": "phone", "device_status": "on", "asr_confidence": 0.8, "hour": 9},
    }
    (out,) = again.decide([request], np.random.default_rng(0))
    table = requests_to_table([request])
    assert out["probabilities"] == pytest.approx(policy.action_distribution(table)[0].tolist())
    assert out["probabilities"][out["action"]] == pytest.approx(out["propensity"])


def test_artifact_rp_without_and_lp_with_embeddings(log):
    """The LP-only cadence: a kept RP that reads none next to an LP that reads some."""
    vocab, emb = Vocabulary.fit(log), toy_embeddings(version="v000002")
    old = HybridPolicy.untrained(vocab, seed=1)
    old_files = old.to_files()
    assert old_files["manifest"]["format"] == ARTIFACT_FORMAT and "embeddings" not in old_files["manifest"]
    assert set(old_files) == {"manifest", "rp", "lp"}  # exactly the artifact without embeddings
    torch.manual_seed(3)
    policy = HybridPolicy(vocab, old.rp, PolicyNetwork(NetworkConfig.for_vocabulary(vocab, emb)).eval(), lp_embeddings=emb)
    files = policy.to_files()
    assert files["manifest"]["embeddings"] == {"rp": None, "lp": {"version": "v000002", "files": "lp_embeddings"}}
    again = HybridPolicy.from_files(**files)
    assert again.rp_embeddings is None
    pi_rp, pi_lp, _, _ = again.model_distributions(log)
    assert np.allclose(pi_rp, old.model_distributions(log)[0])
    assert np.allclose(pi_lp, policy.model_distributions(log)[1])


def test_train_policy_with_embeddings_publishes_a_policy_that_decides(tmp_path):
    data = tmp_path / "data"
    log, truth = ToyBandit(n_intents=4, seed=21).routing(600, seed=1)
    write_table(log, str(data), "routing_log")
    write_table(truth, str(data), "truth_routing")
    store = Store(str(tmp_path / "store"))
    emb = toy_embeddings(version=None)
    fast = ["--data", str(data), "--store", str(tmp_path / "store"), "--num-workers", "0", "--epochs", "2",
            "--replicates", "20"]
    rails = tmp_path / "rails.yaml"
    rails.write_text("min_replication: 0.0\nmax_reward_regression: 1.0\nips_weight_bounds: [0.0, 100.0]\nmin_ess: 1\n")
    fast += ["--guardrails", str(rails)]

    # no embeddings artifact yet: one clear error, exit 2
    assert train_policy.main([*fast, "--out", str(tmp_path / "o0"), "--embeddings", "latest"]) == 2

    version = store.publish("embeddings", emb.to_tables(), metadata={"model": "hand-made"})
    out = tmp_path / "o1"
    assert train_policy.main([*fast, "--out", str(out), "--embeddings", "latest", "--embedding-product"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["embeddings"] == {"used": True, "version": version, "rp_version": version, "product": True}
    policy = HybridPolicy.from_artifact(store.load("policy"))
    assert policy.lp_embeddings.version == version and policy.lp.config.embedding_product
    assert np.array_equal(policy.lp_embeddings.customers, emb.customers)
    decisions = policy.decide(log.slice(0, 5).to_pylist())
    assert len(decisions) == 5 and all(sum(d["probabilities"]) == pytest.approx(1.0) for d in decisions)

    # LP-only refresh without embeddings: the kept RP keeps its own embeddings
    out = tmp_path / "o2"
    assert train_policy.main([*fast, "--out", str(out), "--lp-only"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["embeddings"] == {"used": True, "version": None, "rp_version": version, "product": False}
    refreshed = HybridPolicy.from_artifact(store.load("policy"))
    assert refreshed.rp_embeddings.version == version and refreshed.lp_embeddings is None
    assert refreshed.decide(log.slice(0, 3).to_pylist())

    assert train_policy.main([*fast, "--out", str(tmp_path / "o3"), "--embeddings", "v000099"]) == 2
