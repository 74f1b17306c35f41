"""Rewrite mining end to end on one process: the pure pipeline that the Ray path mirrors.

    interactions -> sessions (Eq. 1-2) -> counts (Eq. 5, 7) -> chain Q, R (Eq. 6-10)
      -> per-source BFS + sub-chain solve (Eq. 15-18) -> utterance level (Eq. 20)
      -> direct evidence -> filters -> rewrite table

``build_model``, ``candidate_rewrites`` and ``finalize`` are shared with
``raylib.rewrite.distributed``; only where sessions, counts and solves are computed differs,
so both paths give the identical table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.rewrite.approx import DEFAULT_DEPTH, DEFAULT_EPSILON, DEFAULT_TOP_K, approximate_sources
from raylib.rewrite.chain import Chain, build_chain
from raylib.rewrite.codes import Codes, Dictionary, as_objects, code_counts
from raylib.rewrite.counts import session_counts
from raylib.rewrite.evidence import evidence_per_pair, pair_evidence
from raylib.rewrite.filters import FILTERS, FilterParams, apply_filters
from raylib.rewrite.sessions import DEFAULT_GAP_S, SessionStats, sessionize
from raylib.rewrite.space import InterpretationSpace, build_space, p_h_given_u
from raylib.rewrite.utterance import best_rewrites, success_matrix

REWRITES = pa.schema(
    [
        pa.field("utterance", pa.string(), nullable=False),  # normalized source
        pa.field("rewrite", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),  # Eq. 20
        pa.field("n_customers", pa.int64(), nullable=False),
        pa.field("support", pa.int64(), nullable=False),  # sessions with utterance -> rewrite
        pa.field("p_value", pa.float64(), nullable=False),  # Z-test of friction rates
        pa.field("source_friction", pa.float64(), nullable=False),
        pa.field("target_friction", pa.float64(), nullable=False),
        pa.field("source_interpretation", pa.string(), nullable=False),
        pa.field("target_interpretation", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class MiningParams:
    """Every knob of a mining run (recorded in the published table's metadata)."""

    gap_s: float = DEFAULT_GAP_S
    no_match_states: str = "utterance"  # one of sessions.NO_MATCH_STATES; measured in its docstring
    depth: int | None = DEFAULT_DEPTH
    epsilon: float = DEFAULT_EPSILON
    top_k: int = DEFAULT_TOP_K
    filters: FilterParams = field(default_factory=FilterParams)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Model:
    """The chain, the interpretation space and each utterance's traffic and friction."""

    chain: Chain
    space: InterpretationSpace
    utterance_count: np.ndarray
    utterance_defects: np.ndarray


@dataclass
class Mined:
    """Everything a mining run produced, for the job's summary and report."""

    sessions: SessionStats
    model: Model
    source_results: pa.Table
    candidates: pa.Table
    table: pa.Table
    removed_by_filter: dict[str, int]
    filtered_out: pa.Table

    def stage_counts(self) -> dict:
        per_source = self.source_results.group_by("source").aggregate([("absorbed_mass", "max")])
        absorbed = per_source.column("absorbed_mass_max").to_numpy() if per_source.num_rows else np.zeros(0)
        return {
            **self.sessions.as_dict(),
            "n_utterances": len(self.model.space.utterances),
            "n_interpretations": self.model.chain.n_states,
            "n_transitions": int(self.model.chain.Q.nnz),
            "n_sources": int(per_source.num_rows),
            "n_sources_with_better_target": int(self.source_results.filter(
                pc.and_(self.source_results.column("is_best"),
                        pc.not_equal(self.source_results.column("source"), self.source_results.column("target")))
            ).num_rows),
            "share_absorbed_within_depth": float((absorbed >= 0.99).mean()) if len(absorbed) else 0.0,
            "mean_absorbed_mass": float(absorbed.mean()) if len(absorbed) else 0.0,
            "n_candidates": self.candidates.num_rows,
            "n_rewrites": self.table.num_rows,
        }


def build_model(counts: pa.Table) -> Model:
    """``model_of`` a COUNTS table, encoded against its own dictionary."""
    dictionary = Dictionary.of(counts)
    return model_of(dictionary, code_counts(counts, dictionary))


def model_of(dictionary: Dictionary, codes: Codes) -> Model:
    """Chain (Eq. 6-10), space (Eq. 5) and per-utterance friction from coded counts."""
    states, utterances = as_objects(dictionary.states), as_objects(dictionary.utterances)
    chain = build_chain(states, codes.transition)
    space = build_space(utterances, states, codes.pair)
    n = np.zeros(len(utterances), dtype=np.int64)
    x = np.zeros(len(utterances), dtype=np.int64)
    n[codes.utterance[:, 0]] = codes.utterance[:, 1]
    x[codes.utterance[:, 0]] = codes.utterance[:, 2]
    return Model(chain, space, n, x)


def candidate_rewrites(model: Model, source_results: pa.Table) -> pa.Table:
    """Eq. 20 candidates as strings with the traffic and friction of both sides."""
    P = success_matrix(source_results, model.chain.n_states)
    best = best_rewrites(model.space, P)
    s = best.column("source").to_numpy()
    t = best.column("target").to_numpy()
    top_h = np.asarray(p_h_given_u(model.space).argmax(axis=1)).ravel() if len(s) else np.zeros(0, np.int64)
    states, utts = model.chain.states, model.space.utterances
    return pa.table({
        "utterance": pa.array(utts[s].tolist(), pa.string()),
        "rewrite": pa.array(utts[t].tolist(), pa.string()),
        "score": best.column("score"),
        "self_score": best.column("self_score"),
        "source_count": model.utterance_count[s], "source_defects": model.utterance_defects[s],
        "target_count": model.utterance_count[t], "target_defects": model.utterance_defects[t],
        "source_interpretation": pa.array(states[top_h[s]].tolist(), pa.string()),
        "target_interpretation": pa.array(states[top_h[t]].tolist(), pa.string()),
    })


def finalize(candidates: pa.Table, per_pair: pa.Table, params: MiningParams) -> tuple[pa.Table, dict, pa.Table]:
    """Join direct evidence (``evidence_per_pair``) onto the candidates, filter, and shape
    the rewrite table."""
    joined = candidates.join(per_pair, keys=["utterance", "rewrite"], join_type="left outer")
    joined = joined.set_column(joined.schema.get_field_index("n_customers"), "n_customers",
                               pc.fill_null(joined.column("n_customers"), 0).cast(pa.int64()))
    joined = joined.set_column(joined.schema.get_field_index("support"), "support",
                               pc.fill_null(joined.column("support"), 0).cast(pa.int64()))
    joined = joined.take(pc.sort_indices(joined, sort_keys=[("utterance", "ascending")]))
    kept, removed, rejected = apply_filters(joined, params.filters)
    table = pa.table({
        "utterance": kept.column("utterance"), "rewrite": kept.column("rewrite"), "score": kept.column("score"),
        "n_customers": kept.column("n_customers"), "support": kept.column("support"),
        "p_value": kept.column("p_value"),
        "source_friction": pc.divide(kept.column("source_defects").cast(pa.float64()), kept.column("source_count")),
        "target_friction": pc.divide(kept.column("target_defects").cast(pa.float64()), kept.column("target_count")),
        "source_interpretation": kept.column("source_interpretation"),
        "target_interpretation": kept.column("target_interpretation"),
    }, schema=REWRITES)
    return table, removed, rejected


def mine_local(interactions: pa.Table, params: MiningParams = MiningParams()) -> Mined:
    """The single-process path over validated ``interactions``."""
    sessions = sessionize(interactions, params.gap_s, no_match_states=params.no_match_states)
    counts = session_counts(sessions)
    dictionary = Dictionary.of(counts)
    codes = code_counts(counts, dictionary)
    model = model_of(dictionary, codes)
    results = approximate_sources(model.chain.Q, model.chain.R, np.arange(model.chain.n_states),
                                  params.depth, params.epsilon, params.top_k)
    candidates = candidate_rewrites(model, results)
    per_pair = evidence_per_pair(pair_evidence(sessions, candidates))
    table, removed, rejected = finalize(candidates, per_pair, params)
    return Mined(codes.stats, model, results, candidates, table, removed, rejected)


__all__ = ["MiningParams", "Model", "Mined", "REWRITES", "FILTERS", "build_model", "model_of", "candidate_rewrites",
           "finalize", "mine_local"]
