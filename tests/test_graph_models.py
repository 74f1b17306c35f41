"""Models on a small synthetic graph: exact chunked inference, batches, downstream."""

import numpy as np
import pytest
import torch

from raylib.graph.build import build_graph, split_edges
from raylib.graph.data import GraphData
from raylib.graph.downstream import (defect_cross_entropy, edge_features, fair_cross_entropy, one_hot_features,
                                     split_622, standardise)
from raylib.graph.encoders import HashingNgramEncoder
from raylib.graph.models import SPECS, build_model
from raylib.graph.pinsage import importance_neighbours, output_head
from raylib.graph.synthetic import synthetic_tables

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    inter, cust, skills = synthetic_tables(80, 12, 1500, seed=1)
    g = build_graph(inter, cust, skills)
    return GraphData.from_graph(g, HashingNgramEncoder(16).encode(g.utterances), split_edges(g.num_edges), seed=0)


@pytest.mark.parametrize("name", ["RGCN", "PDRFE (w/ NNConv)", "PDRFE (w/ edge attention)", "PDRFE (w/ factorized conv)"])
def test_chunked_embedding_equals_full_graph_forward(data, name):
    torch.manual_seed(0)
    model = build_model(SPECS[name], data, dim=8).eval()
    mg = data.message
    with torch.no_grad():
        full = model.encode(torch.as_tensor(data.node_codes), torch.as_tensor(np.stack([mg.src, mg.dst()])),
                            torch.as_tensor(mg.rel.astype(np.int64)),
                            torch.as_tensor(data.utterance_vectors[data.edge_utterance[mg.eid]]))
    hc, hs = model.embed(data, edge_budget=97)  # many chunks
    assert torch.allclose(torch.cat([hc, hs]), full, atol=1e-4)


@pytest.mark.parametrize("name", list(SPECS))
def test_every_model_scores_a_batch_and_embeds_every_node(data, name):
    model = build_model(SPECS[name], data, dim=8)
    rng = np.random.default_rng(0)
    batch = model.make_batch(data, data.train_edges[:32], rng, negatives=5)
    pos, neg = model(**{k: torch.as_tensor(v) for k, v in batch.items()})
    assert pos.shape == (32,) and neg.shape == (32, 5)
    features = edge_features(model, data)
    personal, kept = SPECS[name].personalizer, SPECS[name].keep_utterance
    width = 16 + (data.utterance_dim if kept else 0)  # [h_p (|| utt) || h_s]
    assert features.shape == (len(data.edge_customer), width) and np.isfinite(features).all()
    if kept:  # the concatenating variant keeps each edge's utterance vector
        assert np.allclose(features[:, 8:8 + data.utterance_dim], data.utterance_vectors[data.edge_utterance])
    same_customer = np.flatnonzero(data.edge_customer == data.edge_customer[0])
    utts = data.edge_utterance[same_customer]
    if len(set(utts)) > 1:
        a, b = same_customer[0], same_customer[np.argmax(utts != utts[0])]
        assert np.allclose(features[a, :8], features[b, :8]) != personal  # personalized per utterance


def test_importance_neighbours_are_co_users():
    # customers 0,1 share skill 0; customer 2 alone on skill 1
    cust, skill = np.array([0, 1, 2]), np.array([0, 0, 1])
    c_csr = (np.array([0, 1, 2, 3]), np.array([0, 1, 2]))
    s_csr = (np.array([0, 2, 3]), np.array([0, 1, 2]))
    nb, w = importance_neighbours(c_csr, s_csr, cust, skill, top=2, walks=50, hops=1)
    assert nb[0, 0] == 1 and nb[1, 0] == 0 and w[0, 0] > 0.9
    assert w[2].sum() == 0  # nobody else on skill 1: padding only


def test_pinsage_output_head_is_algorithm_2():
    head = output_head(4)
    h = torch.randn(3, 4)
    ref = torch.relu(h @ head[0].weight.T + head[0].bias) @ head[2].weight.T  # z = G_2 ReLU(G_1 h + g)
    assert torch.allclose(head(h), ref, atol=1e-6)


def test_standardise_by_hand_zeroes_columns_constant_in_training():
    x = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 0.0], [100.0, 7.0, 1e-3]])
    z = standardise(x, np.array([0, 1]))
    # column 0: mean 2, deviation 1; columns 1 and 2 never vary on the training rows
    assert np.allclose(z, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [98.0, 0.0, 0.0]])


def test_fair_tables_give_the_utterance_to_every_model_or_none():
    rng = np.random.default_rng(0)
    utt = rng.normal(size=(3000, 2)).astype(np.float32)
    y = (rng.random(3000) < 1 / (1 + np.exp(-3 * utt[:, 0]))).astype(np.float32)
    out = fair_cross_entropy(rng.normal(size=(3000, 3)).astype(np.float32), utt, y)
    assert out["with_utterance"]["lr"] < out["without_utterance"]["lr"] - 0.1


def test_downstream_cross_entropy_rewards_informative_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4)).astype(np.float32)
    y = (rng.random(3000) < 1 / (1 + np.exp(-3 * x[:, 0]))).astype(np.float32)
    informed = defect_cross_entropy(x, y)
    blind = defect_cross_entropy(x[:, 1:], y)
    assert informed["lr"] < blind["lr"] - 0.1 and informed["mlp"] < blind["mlp"] - 0.1
    assert blind["lr"] == pytest.approx(np.log(2), abs=0.05)


def test_split_622_and_one_hot(data):
    a, b, c = split_622(1000)
    assert (len(a), len(b), len(c)) == (600, 200, 200) and len(set(a) | set(b) | set(c)) == 1000
    oh = one_hot_features(data)
    assert oh.shape == (len(data.edge_customer), data.num_codes) and (oh.sum(1) == 8).all()


def test_link_score_uses_the_eq5_part_of_the_personalized_embedding(data):
    torch.manual_seed(0)
    model = build_model(SPECS["Per"], data, dim=8).eval()
    batch = {k: torch.as_tensor(v) for k, v in model.make_batch(data, data.train_edges[:16], np.random.default_rng(0)).items()}
    pos, neg = model(**batch)
    with torch.no_grad():
        h = model.encode(batch["codes"], batch["edge_index"], batch["rel"], batch["edge_attr"])
        f_p = model.personalizer.net(torch.cat([h[batch["customer"]], batch["utterance"]], -1))
    assert torch.allclose(pos, (f_p * h[batch["positive"]]).sum(-1), atol=1e-5)
    assert torch.allclose(neg, torch.einsum("bd,bkd->bk", f_p, h[batch["negative"]]), atol=1e-5)
