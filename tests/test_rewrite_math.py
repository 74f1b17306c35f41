"""Seed 001 math on hand-made sessions and random chains (no Ray)."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from raylib.rewrite.approx import approximate_sources, bfs_visited
from raylib.rewrite.chain import ExactSolver, chain_from_counts, success_matrix_dense
from raylib.rewrite.counts import session_counts
from raylib.rewrite.evidence import evidence_per_pair, pair_evidence
from raylib.rewrite.filters import Z_RULES, FilterParams, apply_filters, generic_targets, two_proportion_z_test
from raylib.rewrite.mining import MiningParams, build_model, mine_local
from raylib.rewrite.sessions import FAILURE, SESSIONS, SUCCESS, sessionize
from raylib.rewrite.space import p_h_given_u, p_u_given_h
from raylib.rewrite.utterance import best_rewrites, success_matrix, utterance_scores
from raylib.schema import INTERACTIONS

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def turn(customer, seconds, utterance, interp=None, status="ok", device="d1", defect=False, intent=None):
    domain, intent_, slots = (interp or f"Music|Play|song={utterance}").split("|")
    return dict(customer_id=customer, device_id=device, timestamp=T0 + dt.timedelta(seconds=seconds),
                utterance=utterance, domain=domain, intent=intent or intent_, slots=slots, skill_id="s",
                status=status, defect=defect)


def table(rows):
    return pa.Table.from_pylist(rows, schema=INTERACTIONS)


def sessions_of(rows, **kw):
    return sessionize(table(rows), **kw).to_pylist()


# ---- sessionization edge cases -------------------------------------------------------------

def test_gap_of_exactly_delta_tau_stays_in_session_and_one_more_ms_splits():
    same = sessions_of([turn("c", 0, "a"), turn("c", 45, "b")])
    assert [s["utterances"] for s in same] == [["a", "b"]]
    rows = [turn("c", 0, "a"), turn("c", 45, "b")]
    rows[1]["timestamp"] += dt.timedelta(milliseconds=1)
    assert [s["utterances"] for s in sessions_of(rows)] == [["a"], ["b"]]


def test_interjection_mid_session_is_removed_and_path_continues():
    rows = [turn("c", 0, "play x", status="ok"), turn("c", 5, "stop", "Global|StopIntent|"),
            turn("c", 10, "play y")]
    (s,) = sessions_of(rows)
    assert s["utterances"] == ["play x", "play y"] and s["outcome"] == SUCCESS and s["n_interjections"] == 1


def test_interjection_at_end_means_failure_and_only_interjections_leave_no_state():
    (s,) = sessions_of([turn("c", 0, "play x"), turn("c", 3, "cancel", "Global|CancelIntent|")])
    assert s["utterances"] == ["play x"] and s["outcome"] == FAILURE
    (empty,) = sessions_of([turn("c", 0, "stop", "Global|StopIntent|")])
    assert empty["utterances"] == [] and session_counts(sessionize(table([turn("c", 0, "stop", "Global|StopIntent|")]))) \
        .filter(pa.compute.equal(pa.compute.field("kind"), "transition")).num_rows == 0


def test_error_then_abandon_is_failure_error_then_more_turns_is_not():
    assert sessions_of([turn("c", 0, "a", status="no_match")])[0]["outcome"] == FAILURE
    assert sessions_of([turn("c", 0, "a", status="error")])[0]["outcome"] == FAILURE
    assert sessions_of([turn("c", 0, "a", status="error"), turn("c", 5, "b")])[0]["outcome"] == SUCCESS


def test_device_switch_starts_a_new_session():
    out = sessions_of([turn("c", 0, "a", device="d1"), turn("c", 5, "b", device="d2")])
    assert sorted(s["device_id"] for s in out) == ["d1", "d2"] and all(len(s["utterances"]) == 1 for s in out)


def test_sessionize_is_independent_of_row_order_and_normalizes():
    rows = [turn("c", 0, "Play  X "), turn("c", 0, "a"), turn("k", 1, "b"), turn("c", 30, "z")]
    assert sessionize(table(rows)).equals(sessionize(table(rows[::-1])))
    assert sessionize(table([])).schema.equals(SESSIONS)
    assert "play x" in sessions_of(rows)[0]["utterances"]


# ---- chain: Fig. 2 and exactness ----------------------------------------------------------

H = ["D|I|h0", "D|I|h1", "D|I|h2", "D|I|h3"]


def fig2_sessions():
    """h0 is adjacent to h0, h1, h3 and the failure state once each (Fig. 2 (a)-(c)); the
    paper's states: a no_match turn keeps its interpretation."""
    rows = [turn("a", 0, "u0", H[0]), turn("a", 5, "u1", H[1]), turn("a", 10, "u4", H[2]),
            turn("b", 0, "u2", H[0]), turn("b", 5, "u3", H[0], status="no_match"),
            turn("c", 0, "u5", H[0]), turn("c", 5, "u6", H[3]), turn("c", 10, "u7", H[2])]
    return sessionize(table(rows), no_match_states="interpretation")


def test_fig2_transition_probability_is_one_quarter():
    chain = chain_from_counts(session_counts(fig2_sessions()))
    h0, h1, h3 = (list(chain.states).index(h) for h in (H[0], H[1], H[3]))
    assert chain.Z[h0] == 4
    assert chain.Q[h0, h1] == pytest.approx(0.25) and chain.Q[h0, h0] == pytest.approx(0.25)
    assert chain.Q[h0, h3] == pytest.approx(0.25) and chain.R[h0, 1] == pytest.approx(0.25)
    assert chain.r_plus[h0] == 0.0
    # Eq. 12/19: reformulating h0 into a reachable successful state beats h0 itself
    p = ExactSolver(chain).success_row(h0)
    assert p.argmax() == list(chain.states).index(H[2]) and p.max() > chain.r_plus[h0]


def test_exact_solver_matches_dense_inverse():
    chain = chain_from_counts(session_counts(fig2_sessions()))
    dense = success_matrix_dense(chain)
    solver = ExactSolver(chain)
    for s in range(chain.n_states):
        np.testing.assert_allclose(solver.success_row(s), dense[s], atol=1e-12)


def random_chain_sessions(draw_sessions, n_states):
    rows, t = [], 0
    for k, (path, fail) in enumerate(draw_sessions):
        for j, h in enumerate(path):
            last = j == len(path) - 1
            rows.append(turn(f"c{k}", t + 5 * j, f"u{h}", f"D|I|h{h}", status="error" if (last and fail) else "ok"))
        t += 1000
    return sessionize(table(rows))


sessions_strategy = st.lists(
    st.tuples(st.lists(st.integers(0, 5), min_size=1, max_size=6), st.booleans()), min_size=1, max_size=25
)


@settings(max_examples=40, deadline=None)
@given(sessions_strategy)
def test_unlimited_depth_zero_epsilon_equals_exact_row(draw):
    chain = chain_from_counts(session_counts(random_chain_sessions(draw, 6)))
    solver = ExactSolver(chain)
    res = approximate_sources(chain.Q, chain.R, np.arange(chain.n_states), depth=None, epsilon=0.0, top_k=None)
    for s in range(chain.n_states):
        rows = res.filter(pa.compute.equal(res.column("source"), s))
        approx = np.zeros(chain.n_states)
        approx[rows.column("target").to_numpy()] = rows.column("p").to_numpy()
        np.testing.assert_allclose(approx, solver.success_row(s), atol=1e-9, rtol=0)


def test_bfs_depth_and_epsilon_limit_the_visited_set():
    # chain 0 -> 1 -> 2 -> 3 -> success, plus a rare branch 0 -> 4
    sess = [([0, 1, 2, 3], False)] * 99 + [([0, 4], False)]
    chain = chain_from_counts(session_counts(random_chain_sessions(sess, 5)))
    idx = {h: i for i, h in enumerate(chain.states)}
    src = np.array([idx["D|I|h0"]])
    assert set(chain.states[bfs_visited(chain.Q, src, depth=1, epsilon=0)[0]]) == {"D|I|h0", "D|I|h1", "D|I|h4"}
    assert "D|I|h4" not in set(chain.states[bfs_visited(chain.Q, src, depth=None, epsilon=0.05)[0]])
    assert len(bfs_visited(chain.Q, src, depth=None, epsilon=0)[0]) == 5


def test_source_whose_every_path_fails_gets_no_rewrite():
    rows = []
    for k in range(30):
        rows += [turn(f"c{k}", 0, "bad one", "D|I|b1", status="no_match", defect=True),
                 turn(f"c{k}", 5, "bad two", "D|I|b2", status="no_match", defect=True)]
        rows += [turn(f"g{k}", 0, "fine", "D|I|ok")]
    mined = mine_local(table(rows), MiningParams(filters=FilterParams(min_support=1, min_customers=1)))
    res = mined.source_results
    b1 = list(mined.model.chain.states).index("D|I|b1|bad one")  # a no_match state keyed by its utterance
    assert not res.filter(pa.compute.equal(res.column("source"), b1)).column("is_best").to_pylist().count(True)
    assert mined.candidates.num_rows == 0 and mined.table.num_rows == 0


# ---- Eq. 5 and Eq. 20 ------------------------------------------------------------------------

def ambiguous_model():
    rows = []
    for k in range(8):  # "play maj" is misheard; users rephrase to "play imagine"
        rows += [turn(f"c{k}", 0, "play maj", "M|P|a=maj", status="no_match", defect=True),
                 turn(f"c{k}", 5, "play imagine", "M|P|a=imagine")]
    for k in range(4):
        rows += [turn(f"d{k}", 0, "play imagine please", "M|P|a=imagine")]
        rows += [turn(f"e{k}", 0, "play maj", "M|P|a=imagine")]  # the NLU sometimes gets it right
    return build_model(session_counts(sessionize(table(rows))))


def test_eq5_conditionals_are_normalized_counts():
    model = ambiguous_model()
    u = model.space.utterance_index(["play maj"])[0]
    h = model.space.interpretation_index(["M|P|a=imagine"])[0]
    assert p_h_given_u(model.space)[u, h] == pytest.approx(4 / 12)
    assert p_u_given_h(model.space)[h, u] == pytest.approx(4 / 16)


def test_eq20_matches_brute_force_sum_and_picks_the_rephrase():
    model = ambiguous_model()
    res = approximate_sources(model.chain.Q, model.chain.R, np.arange(model.chain.n_states), None, 0.0, None)
    P = success_matrix(res, model.chain.n_states)
    S = utterance_scores(model.space, P).toarray()
    c = model.space.c.toarray()
    phu, puh, Pd = c / c.sum(1, keepdims=True), (c / c.sum(0, keepdims=True)).T, P.toarray()
    for s in range(len(model.space.utterances)):
        for t in range(len(model.space.utterances)):
            brute = sum(puh[ht, t] * Pd[hs, ht] * phu[s, hs] for hs in range(Pd.shape[0]) for ht in range(Pd.shape[0]))
            assert S[s, t] == pytest.approx(brute, abs=1e-12)
    best = best_rewrites(model.space, P).to_pylist()
    names = {model.space.utterances[r["source"]]: model.space.utterances[r["target"]] for r in best}
    assert names.get("play maj") == "play imagine" and "play imagine" not in names


# ---- filters ---------------------------------------------------------------------------------

@pytest.mark.parametrize("x_s,n_s,x_t,n_t", [(30, 50, 5, 60), (10, 100, 9, 100), (3, 10, 0, 12), (40, 80, 50, 90),
                                             (1, 3, 2, 2), (0, 5, 1, 1)])
def test_z_test_both_directions_match_scipy(x_s, n_s, x_t, n_t):
    z_low, p_low = two_proportion_z_test([x_s], [n_s], [x_t], [n_t], "lower")
    z_high, p_high = two_proportion_z_test([x_s], [n_s], [x_t], [n_t], "higher")
    pooled = (x_s + x_t) / (n_s + n_t)
    z_ref = (x_s / n_s - x_t / n_t) / np.sqrt(pooled * (1 - pooled) * (1 / n_s + 1 / n_t))
    assert z_low[0] == pytest.approx(z_ref) and z_high[0] == pytest.approx(z_ref)
    assert p_low[0] == pytest.approx(scipy.stats.norm.sf(z_ref))
    assert p_high[0] == pytest.approx(scipy.stats.norm.cdf(z_ref))
    assert p_low[0] + p_high[0] == pytest.approx(1.0)
    chi2, p_two, _, _ = scipy.stats.chi2_contingency([[x_s, n_s - x_s], [x_t, n_t - x_t]], correction=False)
    assert z_ref ** 2 == pytest.approx(chi2)
    assert min(p_low[0], p_high[0]) == pytest.approx(p_two / 2)


@pytest.mark.parametrize("x_s,n_s,x_t,n_t", [(0, 0, 3, 10), (3, 10, 0, 0), (0, 0, 0, 0), (0, 10, 0, 20), (7, 7, 5, 5)])
def test_z_test_without_evidence_is_never_significant(x_s, n_s, x_t, n_t):
    for alternative in ("lower", "higher"):
        z, p = two_proportion_z_test([x_s], [n_s], [x_t], [n_t], alternative)
        assert z[0] == 0.0 and p[0] == 0.5


def test_z_test_rejects_an_unknown_direction_and_rule():
    with pytest.raises(ValueError):
        two_proportion_z_test([1], [2], [1], [2], "two-sided")
    with pytest.raises(ValueError):
        FilterParams(z_rule="worse")


def candidates(**overrides):
    base = dict(utterance=["s1", "s2", "s3", "s4"], rewrite=["t1", "t2", "t3", "t4"],
                source_count=[50, 50, 50, 50], source_defects=[40, 40, 40, 40],
                target_count=[50, 50, 50, 50], target_defects=[2, 2, 2, 2], n_customers=[9, 9, 9, 9])
    base.update(overrides)
    return pa.table(base)


def test_each_filter_removes_and_counts():
    kept, removed, rejected = apply_filters(candidates(), FilterParams())
    assert kept.num_rows == 4 and sum(removed.values()) == 0
    _, removed, rej = apply_filters(candidates(source_count=[5, 50, 50, 50], source_defects=[4, 40, 40, 40]),
                                    FilterParams())
    assert removed["min_support"] == 1 and rej.column("filter").to_pylist() == ["min_support"]
    for rule in Z_RULES:  # friction 0.1 -> 0.8: significantly worse, removed under both rules
        _, removed, rej = apply_filters(candidates(source_defects=[40, 5, 40, 40], target_defects=[2, 40, 2, 2]),
                                        FilterParams(z_rule=rule))
        assert removed["z_test"] == 1 and rej.column("utterance").to_pylist() == ["s2"]
    _, removed, _ = apply_filters(candidates(n_customers=[9, 1, 4, 9]), FilterParams())
    assert removed["min_customers"] == 2


def test_paper_rule_keeps_a_rewrite_not_proven_better_that_the_better_rule_removes():
    cands = candidates(target_defects=[2, 36, 2, 2])  # friction 0.8 -> 0.72: neither significantly better nor worse
    kept, removed, _ = apply_filters(cands, FilterParams(z_rule="paper"))
    assert kept.num_rows == 4 and removed["z_test"] == 0
    p = kept.column("p_value").to_pylist()  # the paper rule's own test: H1 the rewrite is worse
    assert p[1] == pytest.approx(scipy.stats.norm.cdf(0.93658581), abs=1e-6) and p[0] > 0.99
    kept, removed, rej = apply_filters(cands, FilterParams(z_rule="better"))
    assert removed["z_test"] == 1 and rej.column("utterance").to_pylist() == ["s2"]
    assert kept.column("p_value").to_pylist()[0] < 1e-6


def test_generic_target_filter_removes_targets_many_unrelated_sources_collapse_into():
    sources = [f"play song number {w}" for w in "abcdefghijkl"] + ["play imagine dragon"]
    targets = ["shuffle my songs"] * 12 + ["play imagine dragons"]
    assert generic_targets(sources, targets, 10, 0.3) == {"shuffle my songs"}
    n = len(sources)
    cands = candidates(utterance=sources, rewrite=targets, source_count=[50] * n, source_defects=[40] * n,
                       target_count=[50] * n, target_defects=[2] * n, n_customers=[9] * n)
    kept, removed, _ = apply_filters(cands, FilterParams())
    assert removed["generic_target"] == 12 and kept.column("rewrite").to_pylist() == ["play imagine dragons"]


def test_evidence_counts_sessions_and_distinct_customers():
    rows = [turn("a", 0, "x"), turn("a", 5, "y"), turn("a", 100, "x"), turn("a", 105, "z"), turn("a", 110, "y"),
            turn("b", 0, "x"), turn("b", 5, "y"), turn("c", 0, "y"), turn("c", 5, "x")]
    ev = evidence_per_pair(pair_evidence(sessionize(table(rows)), pa.table({"utterance": ["x"], "rewrite": ["y"]})))
    assert ev.to_pylist() == [{"utterance": "x", "rewrite": "y", "support": 3, "n_customers": 2}]
