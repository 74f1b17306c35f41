"""Quality of a rewrite table against the simulator's ground truth (evaluation only).

* ``precision``: share of served rewrites whose rewrite the NLU (``world.interpret``)
  maps to the interpretation the speakers of the source meant (``truth_rewrites`` for
  systematically defective utterances, otherwise the most frequent intended
  interpretation of the source's turns in ``truth_turns``); also traffic-weighted.
* ``win_loss``: rewrites whose true defect probability (``world.defect_probability``
  with the intended interpretation) is lower than the source's, over those where it is
  higher (losses floored at 1 so the ratio stays finite; both counts are reported).
* ``coverage``: share of ``truth_rewrites`` rows (systematically defective source
  utterances) that received a correct rewrite, by rows and weighted by their traffic.
* ``replay``: held-out traffic (new traffic of the same world) served with and without
  the table; expected defect rate overall and on the turns the table rewrites.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.schema import normalize_utterance

_TURN_KEYS = ["customer_id", "device_id", "timestamp"]


def intended_turns(interactions: pa.Table, truth_turns: pa.Table) -> pa.Table:
    """Each turn's normalized utterance with what its speaker meant."""
    joined = interactions.select(_TURN_KEYS + ["utterance", "intent"]).join(
        truth_turns.select(_TURN_KEYS + ["intended_interpretation", "turn_kind"]), keys=_TURN_KEYS
    )
    norm = [normalize_utterance(u) for u in joined.column("utterance").to_pylist()]
    return joined.set_column(joined.schema.get_field_index("utterance"), "utterance", pa.array(norm, pa.string()))


def intended_by_utterance(turns: pa.Table, truth_rewrites: pa.Table) -> dict[str, str]:
    """The interpretation meant by the speakers of each utterance."""
    counts = turns.group_by(["utterance", "intended_interpretation"]).aggregate([("turn_kind", "count")])
    order = pc.sort_indices(counts, sort_keys=[("turn_kind_count", "descending"), ("intended_interpretation", "ascending")])
    intended: dict[str, str] = {}
    for u, h in zip(counts.column("utterance").take(order).to_pylist(),
                    counts.column("intended_interpretation").take(order).to_pylist()):
        intended.setdefault(u, h)
    for u, h in zip(truth_rewrites.column("utterance").to_pylist(),
                    truth_rewrites.column("intended_interpretation").to_pylist()):
        intended[normalize_utterance(u)] = h
    return intended


def quality(table: pa.Table, world, turns: pa.Table, truth_rewrites: pa.Table) -> dict:
    """Precision, win/loss and coverage of a rewrite ``table`` (see module docstring)."""
    intended = intended_by_utterance(turns, truth_rewrites)
    traffic = dict(zip(*[c.to_pylist() for c in
                         turns.group_by("utterance").aggregate([("turn_kind", "count")]).columns]))
    sources = table.column("utterance").to_pylist()
    rewrites = table.column("rewrite").to_pylist()
    meant = [intended.get(u) for u in sources]
    known = np.array([m is not None for m in meant], dtype=bool)
    src, rw, want = ([x for x, k in zip(v, known) if k] for v in (sources, rewrites, meant))
    got = [h for h, _ in world.interpret(rw)]
    correct = np.array([g == w for g, w in zip(got, want)], dtype=bool)
    weight = np.array([traffic.get(u, 0) for u in src], dtype=np.float64)
    p_src = world.defect_probability(src, want)
    p_rw = world.defect_probability(rw, want)
    wins, losses = int((p_rw < p_src - 1e-12).sum()), int((p_rw > p_src + 1e-12).sum())
    good = {u for u, c in zip(src, correct) if c}
    truth_src = [normalize_utterance(u) for u in truth_rewrites.column("utterance").to_pylist()]
    truth_w = np.array([traffic.get(u, 0) for u in truth_src], dtype=np.float64)
    hit = np.array([u in good for u in truth_src], dtype=bool)
    return {
        "n_evaluated": int(known.sum()),
        "precision": float(correct.mean()) if len(correct) else None,
        "precision_traffic_weighted": float((correct * weight).sum() / weight.sum()) if weight.sum() else None,
        "wins": wins,
        "losses": losses,
        "win_loss": wins / max(losses, 1),
        "coverage": float(hit.mean()) if len(hit) else None,
        "coverage_traffic_weighted": float((hit * truth_w).sum() / truth_w.sum()) if truth_w.sum() else None,
        "n_truth_rewrites": len(truth_src),
    }


def replay(table: pa.Table, world, heldout_turns: pa.Table) -> dict:
    """Expected defect rate of held-out traffic with and without serving ``table``."""
    turns = heldout_turns.filter(pc.invert(pc.is_in(pc.utf8_lower(heldout_turns.column("intent")),
                                                    value_set=pa.array(["stopintent", "cancelintent"]))))
    lookup = dict(zip(table.column("utterance").to_pylist(), table.column("rewrite").to_pylist()))
    pairs = turns.group_by(["utterance", "intended_interpretation"]).aggregate([("turn_kind", "count")])
    utts = pairs.column("utterance").to_pylist()
    want = pairs.column("intended_interpretation").to_pylist()
    n = pairs.column("turn_kind_count").to_numpy().astype(np.float64)
    served = [lookup.get(u, u) for u in utts]
    hit = np.array([u in lookup for u in utts], dtype=bool)
    before = world.defect_probability(utts, want)
    after = before.copy()
    if hit.any():
        after[hit] = world.defect_probability([s for s, h in zip(served, hit) if h],
                                              [w for w, h in zip(want, hit) if h])
    rate = lambda p, m: float((p * n * m).sum() / (n * m).sum()) if (n * m).sum() else None  # noqa: E731
    every = np.ones(len(n), dtype=bool)
    out = {
        "heldout_turns": int(n.sum()),
        "rewritten_turns": int(n[hit].sum()),
        "defect_rate_without": rate(before, every),
        "defect_rate_with": rate(after, every),
        "rewritten_defect_rate_without": rate(before, hit),
        "rewritten_defect_rate_with": rate(after, hit),
    }
    for scope in ("", "rewritten_"):
        b, a = out[f"{scope}defect_rate_without"], out[f"{scope}defect_rate_with"]
        out[f"{scope}defect_reduction"] = (1.0 - a / b) if b else None
    return out
