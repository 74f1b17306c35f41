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
* ``defect_rates``: expected defect rate of the requests users make in a traffic sample
  (first attempts and follow-ups; see its docstring), as spoken and with served rewrites.
* ``replay``: ``defect_rates`` of held-out traffic (new traffic of the same world) served
  with and without the table, overall and on the requests the table rewrites.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.schema import normalize_utterance

_TURN_KEYS = ["customer_id", "device_id", "timestamp"]
REQUEST_TURNS = ("first", "followup")  # truth_turns.turn_kind of the requests users make


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


def defect_rates(world, turns: pa.Table, rewrite: Callable[[list[str]], list[str | None]] | None = None) -> dict:
    """Expected defect rate of the requests users make among ``turns`` (``intended_turns``
    rows), as spoken and with ``rewrite`` serving them.

    Population: the turns whose ``turn_kind`` is in ``REQUEST_TURNS``, the first attempt
    at a request and a follow-up (a new request after a success). Left out: rephrases
    after a defect (``rephrase_good``, ``rephrase_bad``, the ``generic`` fallback), which
    repeat a request already counted and are the rewrite chain's evidence, their number
    driven by the defects before them; and ``interjection`` turns ("stop", "cancel"),
    which are not requests. Every such turn weighs one.

    A request's defect rate is ``world.defect_probability`` of the text the NLU receives
    with the interpretation its speaker meant; ``rewrite`` maps distinct (normalized)
    utterances to their served rewrite (None: sent as spoken; ``rewrite=None``: nothing
    is rewritten). A request is rewritten when its served text differs from what was said.

    Returns ``requests``, ``rewritten_requests`` and the mean defect rate ``without`` and
    ``with`` the rewrites over all requests (``defect_rate_*``) and over the rewritten
    ones (``rewritten_defect_rate_*``); a rate over no requests is None.
    """
    asked = turns.filter(pc.is_in(turns.column("turn_kind"), value_set=pa.array(REQUEST_TURNS)))
    pairs = asked.group_by(["utterance", "intended_interpretation"]).aggregate([("turn_kind", "count")])
    said = pairs.column("utterance").to_pylist()
    meant = pairs.column("intended_interpretation").to_pylist()
    n = pairs.column("turn_kind_count").to_numpy().astype(np.float64)
    served = rewrite(said) if rewrite is not None else [None] * len(said)
    hit = np.array([r is not None and r != u for u, r in zip(said, served)], dtype=bool)
    without = world.defect_probability(said, meant)
    with_ = without.copy()
    if hit.any():
        rows = np.flatnonzero(hit)
        with_[rows] = world.defect_probability([served[i] for i in rows], [meant[i] for i in rows])

    def rate(p: np.ndarray, rows: np.ndarray) -> float | None:
        return float((p[rows] * n[rows]).sum() / n[rows].sum()) if n[rows].sum() else None

    every = np.ones(len(n), dtype=bool)
    return {
        "requests": int(n.sum()),
        "rewritten_requests": int(n[hit].sum()),
        "defect_rate_without": rate(without, every),
        "defect_rate_with": rate(with_, every),
        "rewritten_defect_rate_without": rate(without, hit),
        "rewritten_defect_rate_with": rate(with_, hit),
    }


def replay(table: pa.Table, world, heldout_turns: pa.Table) -> dict:
    """``defect_rates`` of held-out traffic (``intended_turns`` rows) with and without
    serving ``table``: the requests users make, overall and on those the table rewrites
    (``heldout_turns`` / ``rewritten_turns`` count them), and the relative reductions."""
    lookup = dict(zip(table.column("utterance").to_pylist(), table.column("rewrite").to_pylist()))
    rates = defect_rates(world, heldout_turns, lambda said: [lookup.get(u) for u in said])
    out = {"heldout_turns": rates.pop("requests"), "rewritten_turns": rates.pop("rewritten_requests"), **rates}
    for scope in ("", "rewritten_"):
        b, a = out[f"{scope}defect_rate_without"], out[f"{scope}defect_rate_with"]
        out[f"{scope}defect_reduction"] = (1.0 - a / b) if b else None
    return out
