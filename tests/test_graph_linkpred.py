"""Link prediction without leaks, on a tiny hand-made graph: a batch's own edges carry no
messages, negatives are never a true edge (held-out ones included), and the held-out
metrics against hand-computed references."""

import numpy as np
import pytest
import torch

from raylib.graph.build import build_graph
from raylib.graph.data import GraphData
from raylib.graph.encoders import HashingNgramEncoder
from raylib.graph.linkpred import LinkTestSet, link_prediction, popularity_scores, ranking_metrics
from raylib.graph.models import SPECS, build_model, training_triples
from raylib.graph.report import standing
from raylib.graph.sampler import MAX_MASS, NonEdges, integer_weights, popularity_weights, sample_subgraph
from tests.test_graph_build import CUSTOMERS, SKILLS, interactions

torch.set_num_threads(1)

# (customer, skill, train?): c0 misses only s3 and its c0-s2 edge is held out; c1 uses every
# skill (no negative exists); c2-s1 is a parallel pair with one edge on each side of the split.
EDGES = [(0, 0, 1), (0, 1, 1), (0, 2, 0), (1, 0, 1), (1, 1, 1), (1, 2, 1), (1, 3, 0), (2, 1, 1), (2, 1, 0),
         (3, 2, 1), (3, 3, 1)]


@pytest.fixture(scope="module")
def tiny():
    rows = [(f"c{c:07d}", f"s{s:05d}", f"utterance {k}", False) for k, (c, s, _) in enumerate(EDGES)]
    g = build_graph(interactions(rows), CUSTOMERS, SKILLS)
    assert g.edge_customer.tolist() == [c for c, _, _ in EDGES] and g.edge_skill.tolist() == [s for _, s, _ in EDGES]
    return GraphData.from_graph(g, HashingNgramEncoder(8).encode(g.utterances), np.array([t for *_, t in EDGES], bool))


TRUE_PAIRS = {(c, s) for c, s, _ in EDGES}


def test_non_edges_sample_exactly_the_free_skills():
    non_edges = NonEdges.of(np.array([0, 0, 1, 1, 1, 1, 2]), np.array([1, 3, 0, 1, 2, 3, 3]), num_skills=4)
    assert non_edges.count(np.array([0, 1, 2, 3])).tolist() == [2, 0, 3, 4]
    neg = non_edges.sample(np.array([0, 1, 2, 3]), 2000, np.random.default_rng(0))
    assert set(neg[0]) == {0, 2} and (neg[1] == -1).all() and set(neg[2]) == {0, 1, 2} and set(neg[3]) == {0, 1, 2, 3}
    assert np.bincount(neg[2], minlength=4)[:3] / 2000 == pytest.approx([1 / 3] * 3, abs=0.05)  # uniform


def test_popularity_non_edges_are_exact_and_follow_degree_to_the_alpha():
    customers, skills = np.array([0, 0, 1, 1, 1, 1, 2, 4]), np.array([1, 3, 0, 1, 2, 3, 3, 4])
    degree = np.array([40, 3, 0, 7, 1000])  # skill 4, by far the heaviest, is an edge of customer 4 only
    weights = integer_weights(popularity_weights(degree, 0.75), num_customers=5)
    assert (weights > 0).all() and 6 * weights.sum() < MAX_MASS
    non_edges = NonEdges.of(customers, skills, 5, weights)
    assert non_edges.count(np.arange(5)).tolist() == [3, 1, 4, 5, 4]
    n = 100_000
    neg = non_edges.sample(np.arange(5), n, np.random.default_rng(0))
    assert set(neg[1]) == {4} and not np.isin(neg[4], [4]).any()
    for c in range(5):  # exact reference: (degree + 1)^0.75 renormalized over the customer's free skills
        free = np.setdiff1d(np.arange(5), skills[customers == c])
        assert set(neg[c]) <= set(free.tolist())
        reference = (degree[free] + 1.0) ** 0.75 / ((degree[free] + 1.0) ** 0.75).sum()
        assert np.bincount(neg[c], minlength=5)[free] / n == pytest.approx(reference, abs=0.006), c
    full = NonEdges.of(np.zeros(3, np.int64), np.arange(3), 3, integer_weights(np.array([1.0, 2.0, 4.0]), 1))
    assert (full.sample(np.array([0]), 10, np.random.default_rng(0)) == -1).all()


def test_unit_weights_are_the_uniform_sampler_draw_for_draw():
    customers, skills = np.array([0, 0, 1, 1, 2]), np.array([1, 3, 0, 2, 3])
    assert integer_weights(popularity_weights(np.array([5, 0, 2, 9]), 0.0), 3).tolist() == [1, 1, 1, 1]
    uniform = NonEdges.of(customers, skills, 4).sample(np.arange(4), 50, np.random.default_rng(1))
    unit = NonEdges.of(customers, skills, 4, np.ones(4, np.int64)).sample(np.arange(4), 50, np.random.default_rng(1))
    assert np.array_equal(uniform, unit)


def test_popularity_training_negatives_are_never_a_true_edge(tiny):
    assert tiny.negative_sampler(0.0) is tiny.non_edges
    sampler = tiny.negative_sampler(0.75)
    edges, cust, skill, neg = training_triples(tiny, tiny.train_edges, np.random.default_rng(0), 50, sampler)
    assert 1 not in cust and not any((c, s) in TRUE_PAIRS for c, row in zip(cust, neg) for s in row)
    assert set(neg[cust == 0].ravel()) == {3} and set(neg[cust == 3].ravel()) == {0, 1}


def test_training_negatives_are_never_a_true_edge_even_a_held_out_one(tiny):
    edges, cust, skill, neg = training_triples(tiny, tiny.train_edges, np.random.default_rng(0), negatives=20)
    assert 1 not in cust  # c1 uses every skill: no negative, its edges leave the batch
    assert (tiny.edge_customer[edges] == cust).all() and (tiny.edge_skill[edges] == skill).all()
    assert not any((c, s) in TRUE_PAIRS for c, row in zip(cust, neg) for s in row)
    assert set(neg[cust == 0].ravel()) == {3}  # not s2, which c0 uses in a held-out edge


@pytest.mark.parametrize("name", ["RGCN", "PDRFE (w/ edge attention)"])
def test_a_training_edge_carries_no_message_into_its_own_score(tiny, name):
    model = build_model(SPECS[name], tiny, dim=4, fanouts=(10, 10))
    u = tiny.num_customers
    unique = [e for e in tiny.train_edges if sum((c, s) == EDGES[e][:2] for c, s, _ in EDGES) == 1 and EDGES[e][0] != 1]
    for e in unique:
        batch = model.make_batch(tiny, np.array([e]), np.random.default_rng(0), negatives=2)
        pair = {int(batch["customer"][0]), int(batch["positive"][0])}
        assert not any({int(a), int(b)} == pair for a, b in batch["edge_index"].T), e
    # without the exclusion the sampled neighbourhood does hold the edge
    seeds = np.array([tiny.edge_customer[unique[0]], tiny.edge_skill[unique[0]] + u])
    assert unique[0] in sample_subgraph(tiny.message, seeds, [10, 10], np.random.default_rng(0)).eid


def test_link_test_set_is_the_held_out_edges_with_true_non_edges(tiny):
    test = LinkTestSet.of(tiny, negatives=50, seed=3)
    assert test.edges.tolist() == [2, 8]  # held-out edge 6 is c1's: no skill is a non-edge of c1
    assert set(test.negatives[0]) == {3} and set(test.negatives[1]) <= {0, 2, 3}
    assert test.seen_pair.tolist() == [False, True]  # c2-s1 also has a training edge
    again = LinkTestSet.of(tiny, negatives=50, seed=3)
    assert np.array_equal(test.negatives, again.negatives)  # the same negatives for every model
    pos, neg = popularity_scores(tiny, test)  # training degrees: s0 2, s1 3, s2 2, s3 1
    assert pos.tolist() == [2, 3] and set(neg[0]) == {1}
    out = link_prediction(pos, neg, test)
    assert out["all"]["edges"] == 2 and out["new_pairs"]["edges"] == 1 and out["new_pairs"]["auc"] == 1.0


def test_ranking_metrics_by_hand():
    pos = np.array([3.0, 4.0])
    neg = np.array([[1.0, 3.0, 5.0], [1.0, 0.0, 2.0]])
    # edge 0: one negative above, one tied -> rank 2.5, AUC (1 + 0.5) / 3; edge 1: rank 1, AUC 1
    m = ranking_metrics(pos, neg, hits_at=2)
    assert m == {"auc": pytest.approx((0.5 + 1) / 2), "mrr": pytest.approx((1 / 2.5 + 1) / 2), "hits@2": 0.5,
                 "edges": 2}
    assert ranking_metrics(pos, neg)["hits@10"] == 1.0


def test_standing_ranks_against_the_rivals_only():
    values = {"PDRFE": 0.3, "A": 0.2, "B": 0.4, "C": 0.3, "X": 0.1}
    assert standing("PDRFE", values, True, {"A", "B", "C"}) == (2, 4, ["A"])
    assert standing("PDRFE", values, False, {"A", "B", "C"}) == (2, 4, ["B"])
