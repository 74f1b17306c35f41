"""Graph build (parallel edges, CSR both ways, utterance ids, Table-2 features, default
features for missing metadata), the 80/20 split and the sampler (negative skills and the
leak checks: test_graph_linkpred.py)."""

import numpy as np
import pyarrow as pa
import pytest

from raylib.errors import UserError
from raylib.graph.build import build_graph, split_edges
from raylib.graph.sampler import sample_positions, sample_subgraph
from raylib.graph.synthetic import synthetic_tables
from raylib.schema import INTERACTIONS


def interactions(rows):
    cols = {f.name: [] for f in INTERACTIONS}
    for k, (c, s, u, d) in enumerate(rows):
        for name, v in zip(("customer_id", "skill_id", "utterance", "defect"), (c, s, u, d)):
            cols[name].append(v)
        cols["device_id"].append("d")
        cols["timestamp"].append(k)
        cols["domain"].append("music")
        cols["intent"].append("play")
        cols["slots"].append("")
        cols["status"].append("ok")
        cols["rewrite"].append(None)
    return pa.table(cols, schema=INTERACTIONS)


_, CUSTOMERS, SKILLS = synthetic_tables(3, 2, 10)  # metadata for c0000000..2 and s00000..1


def test_parallel_edges_utterance_ids_and_csr():
    rows = [("c0000000", "s00000", "Play Jazz", False), ("c0000000", "s00000", "play  jazz", True),
            ("c0000000", "s00000", "stop", False), ("c0000001", "s00001", "stop", True)]
    g = build_graph(interactions(rows), CUSTOMERS, SKILLS)
    assert g.num_edges == 4 and g.num_customers == 2 and g.num_skills == 2
    assert sorted(g.utterances) == ["play jazz", "stop"]  # normalized, stored once
    assert g.edge_utterance[0] == g.edge_utterance[1] != g.edge_utterance[2] == g.edge_utterance[3]
    assert g.edge_defect.tolist() == [0, 1, 0, 1]
    indptr, edges = g.customer_csr()
    assert indptr.tolist() == [0, 3, 4] and sorted(edges[:3]) == [0, 1, 2]
    mg = g.message_graph()
    assert mg.indptr[-1] == 8  # both directions of every parallel edge
    assert sorted(mg.src[mg.indptr[0]:mg.indptr[1]].tolist()) == [2, 2, 2]  # skill node 2 -> customer 0 x3
    assert set(mg.rel[mg.indptr[2]:mg.indptr[3]].tolist()) == {1}


def test_table2_features_and_default_for_missing_metadata():
    rows = [("c0000000", "s00000", "a", False), ("ghost", "s00001", "b", True), ("ghost", "s99999", "c", False)]
    g = build_graph(interactions(rows), CUSTOMERS, SKILLS)
    assert g.counts == {"customers_without_metadata": 1, "skills_without_metadata": 1, "edges_with_default_features": 2}
    ghost = list(g.customer_ids).index("ghost")
    assert g.customer_features[ghost].tolist() == [0, 0, 0, 0]
    known = list(g.customer_ids).index("c0000000")
    assert (g.customer_features[known] > 0).all()
    assert [v[0] for v in g.customer_vocab] == ["<unknown>"] * 4
    expected = CUSTOMERS.column("wbr_cor")[0].as_py()
    assert g.customer_vocab[0][g.customer_features[known, 0]] == expected


def test_empty_graph_is_a_clear_error():
    with pytest.raises(UserError, match="empty graph"):
        build_graph(INTERACTIONS.empty_table(), CUSTOMERS, SKILLS)


def test_split_is_uniform_80_20():
    mask = split_edges(10000, 0.8, seed=1)
    assert mask.sum() == 8000
    assert abs(mask[:5000].mean() - 0.8) < 0.03


def test_sampler_fanout_and_true_edges():
    inter, cust, skills = synthetic_tables(60, 8, 2000, seed=3)
    g = build_graph(inter, cust, skills)
    mg = g.message_graph()
    rng = np.random.default_rng(0)
    nodes = np.arange(mg.num_nodes)
    pos = sample_positions(mg.indptr, nodes, 4, rng)
    dst = np.searchsorted(mg.indptr, pos, side="right") - 1
    deg = np.diff(mg.indptr)
    assert (np.bincount(dst, minlength=len(nodes)) == np.minimum(deg, 4)).all()
    sub = sample_subgraph(mg, np.array([0, 1, 60]), [3, 2], rng)
    src, tgt = sub.nodes[sub.edge_index[0]], sub.nodes[sub.edge_index[1]]
    real = set(zip(mg.src.tolist(), mg.dst().tolist()))
    assert set(zip(src.tolist(), tgt.tolist())) <= real
    assert set(sub.local(np.array([0, 1, 60])).tolist()) <= set(range(len(sub.nodes)))
    # the edge ids sampled connect the right customer and skill
    cust_side = np.where(sub.rel == 0, tgt, src)
    assert (g.edge_customer[sub.eid] == cust_side).all()

