"""Seed 000 equations 1-5 and the section-2 objective against hand-written references."""

import numpy as np
import torch

from raylib.graph.layers import EdgeAttention, EdgeConv, FactorizedEdgeConv, Personalizer
from raylib.graph.objective import inner_product_scores, max_margin_loss

torch.manual_seed(0)
N, D, F = 5, 4, 3
X = torch.randn(N, D)
# node 0 has a parallel edge from node 1 (two utterances), node 4 has no incoming edge
EDGES = torch.tensor([[1, 1, 2, 3, 0, 4, 2], [0, 0, 0, 1, 2, 2, 3]])
ATTR = torch.randn(EDGES.size(1), F)


def incoming(i):
    return [e for e in range(EDGES.size(1)) if EDGES[1, e] == i]


def test_edge_conv_is_eq1():
    layer = EdgeConv(D, F)
    out = layer(X, EDGES, ATTR)
    lin = layer.conv.nn
    for i in range(N):
        msgs = [X[EDGES[0, e]] @ lin(ATTR[e]).view(D, D) for e in incoming(i)]
        ref = X[i] + (torch.stack(msgs).mean(0) if msgs else 0)
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_factorized_edge_conv_is_eq1_with_diagonal_transform():
    layer = FactorizedEdgeConv(D, F)
    out = layer(X, EDGES, ATTR)
    for i in range(N):
        msgs = [layer.edge_gate(ATTR[e]) * X[EDGES[0, e]] for e in incoming(i)]
        ref = X[i] + (torch.stack(msgs).mean(0) if msgs else 0)
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_edge_attention_is_eq2_to_4_and_weighs_parallel_edges_apart():
    layer = EdgeAttention(D, F, att_dim=6)
    out = layer(X, EDGES, ATTR)
    w_a, a = layer.w_a.weight, layer.a
    for i in range(N):
        es = incoming(i)
        if not es:
            assert torch.allclose(out[i], torch.zeros(D))
            continue
        k = []
        for e in es:
            j = EDGES[0, e]
            q = torch.cat([w_a @ torch.cat([X[i], ATTR[e]]), w_a @ torch.cat([X[j], ATTR[e]])])
            k.append(torch.nn.functional.leaky_relu(a @ q, 0.2))
        alpha = torch.softmax(torch.stack(k), 0)
        ref = sum(alpha[n] * (layer.w.weight @ X[EDGES[0, e]]) for n, e in enumerate(es))
        assert torch.allclose(out[i], ref, atol=1e-5)
        if i == 0:  # the two parallel edges 1->0 carry different utterances
            assert not torch.isclose(alpha[0], alpha[1])


def test_bipartite_call_equals_homogeneous_rows():
    """(x_src, x_dst) form, used by chunked inference, gives the same rows."""
    for layer in (EdgeConv(D, F), FactorizedEdgeConv(D, F), EdgeAttention(D, F)):
        full = layer(X, EDGES, ATTR)
        keep = (EDGES[1] >= 2)
        ei = torch.stack([EDGES[0, keep], EDGES[1, keep] - 2])
        part = layer((X, X[2:]), ei, ATTR[keep])
        assert torch.allclose(part, full[2:], atol=1e-5)


def test_personalizer_is_eq5():
    p = Personalizer(D, F, hidden=7)
    h, utt = torch.randn(2, D), torch.randn(2, F)
    l1, l2 = p.net[0], p.net[2]
    ref = l2.weight @ torch.relu(l1.weight @ torch.cat([h[0], utt[0]]) + l1.bias) + l2.bias
    assert torch.allclose(p(h, utt)[0], ref, atol=1e-5)
    # the same customer with two utterances gets two embeddings
    assert not torch.allclose(p(h[:1].repeat(2, 1), utt)[0], p(h[:1].repeat(2, 1), utt)[1])


def test_personalizer_concatenating_variant_keeps_the_utterance():
    p = Personalizer(D, F, hidden=7, keep_utterance=True)
    h, utt = torch.randn(3, D), torch.randn(3, F)
    out = p(h, utt)
    assert out.shape == (3, D + F)
    assert torch.allclose(out[:, :D], p.net(torch.cat([h, utt], -1)))  # Eq. 5 part
    assert torch.equal(out[:, D:], utt)  # the utterance itself, untouched


def test_max_margin_loss_by_hand():
    pos = torch.tensor([2.0, 0.5])
    neg = torch.tensor([[0.0, 1.5], [0.0, -1.0]])
    # pairs: max(1-2+0,0)=0, max(1-2+1.5,0)=.5, max(1-.5+0,0)=.5, max(1-.5-1,0)=0
    assert np.isclose(float(max_margin_loss(pos, neg, margin=1.0)), (0 + 0.5 + 0.5 + 0) / 4)


def test_inner_product_scores_by_hand_ignore_extra_customer_coordinates():
    customer = torch.tensor([[1.0, 2.0, 9.0]])  # the third coordinate meets no skill coordinate
    pos, neg = inner_product_scores(customer, torch.tensor([[3.0, 1.0]]), torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]]))
    assert pos.tolist() == [5.0] and neg.tolist() == [[2.0, -1.0]]
