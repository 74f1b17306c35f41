"""The online A/B of served rewrites and the online blacklist (seed 001, "Online Performance").

* **Holdout**: a share of customers, drawn by a hash of their id (``in_holdout``), is
  served no rewrites; everyone else is the treatment. The draw is deterministic, so a
  customer stays in one arm across rounds and every job agrees on the arms.
* **Per rewrite** u_s -> u_t, on one round's traffic: the friction (observed defect rate)
  of the turns in which u_s was SAID, treatment (served u_t) against holdout (u_s sent as
  spoken), by the pooled two-proportion Z-test of ``raylib.rewrite.filters`` with the
  holdout as the "source" side (x_h defects in n_h turns) and the treatment as the
  "target" side (x_t in n_t):

      win  : p_lower  < alpha   (rate_t significantly below rate_h)
      loss : p_higher < alpha   (rate_t significantly above rate_h)
      neither otherwise (too little traffic, or no significant difference)

  alpha = 0.01, the paper's value. The online win/loss ratio is wins / losses over the
  unique rewrites tested (the paper's 11.8 online against 12.0 offline); losers are the
  online blacklist (``raylib.rewrite.publish``: withdrawn, never published again).
* **Arm defect rates** (``arm_defect_rates``): the observed defect rate of all
  non-interjection turns of each arm, and of the turns whose said utterance has a
  served rewrite, with the relative reduction 1 - rate_treatment / rate_holdout.

Pure functions over interaction tables (``raylib.schema.INTERACTIONS``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.errors import UserError
from raylib.rewrite.filters import two_proportion_z_test
from raylib.rewrite.sessions import is_interjection, normalized_utterances

DEFAULT_HOLDOUT_SHARE = 0.1
WIN, LOSS, NEUTRAL = "win", "loss", "neutral"
AB = pa.schema([
    pa.field("utterance", pa.string(), nullable=False),
    pa.field("rewrite", pa.string(), nullable=False),
    pa.field("holdout_turns", pa.int64(), nullable=False),
    pa.field("holdout_defects", pa.int64(), nullable=False),
    pa.field("treatment_turns", pa.int64(), nullable=False),
    pa.field("treatment_defects", pa.int64(), nullable=False),
    pa.field("z", pa.float64(), nullable=False),
    pa.field("p_lower", pa.float64(), nullable=False),
    pa.field("p_higher", pa.float64(), nullable=False),
    pa.field("verdict", pa.string(), nullable=False),
])


def in_holdout(customer_ids: Sequence[str], share: float) -> np.ndarray:
    """True for the customers served no rewrites: crc32(customer id) / 2^32 < ``share``."""
    if not 0.0 <= share <= 1.0:
        raise UserError(f"holdout share must be in [0, 1], got {share}")
    h = np.array([zlib.crc32(str(c).encode()) for c in customer_ids], dtype=np.float64)
    return h / 2.0**32 < share


@dataclass(frozen=True)
class SaidTurns:
    """A round's non-interjection turns as the A/B reads them: the normalized utterance
    said, whether the turn was defective, whether its customer is in the holdout."""

    said: np.ndarray
    defect: np.ndarray
    holdout: np.ndarray

    @classmethod
    def of(cls, interactions: pa.Table, holdout_share: float) -> "SaidTurns":
        turns = interactions.filter(pa.array(~is_interjection(interactions.column("intent"))))
        said = normalized_utterances(turns.column("utterance")).to_numpy(zero_copy_only=False)
        return cls(np.asarray(said, dtype=object), turns.column("defect").to_numpy(zero_copy_only=False).astype(bool),
                   in_holdout(turns.column("customer_id").to_pylist(), holdout_share))


def online_ab(turns: SaidTurns, served: dict[str, str], alpha: float = 0.01) -> pa.Table:
    """Per served rewrite (``served``: normalized source -> target), its arms' turns and
    defects among ``turns``, the Z-test and its verdict (module docstring); ``AB`` rows
    sorted by utterance, a rewrite whose source nobody said included with zeros."""
    said, defect, hold = turns.said, turns.defect, turns.holdout
    sources = sorted(served)
    pos = {u: i for i, u in enumerate(sources)}
    idx = np.array([pos.get(u, -1) for u in said], dtype=np.int64)
    m = idx >= 0
    n_h = np.bincount(idx[m & hold], minlength=len(sources))
    x_h = np.bincount(idx[m & hold & defect], minlength=len(sources))
    n_t = np.bincount(idx[m & ~hold], minlength=len(sources))
    x_t = np.bincount(idx[m & ~hold & defect], minlength=len(sources))
    z, p_lower = two_proportion_z_test(x_h, n_h, x_t, n_t, "lower")
    _, p_higher = two_proportion_z_test(x_h, n_h, x_t, n_t, "higher")
    verdict = np.where(p_lower < alpha, WIN, np.where(p_higher < alpha, LOSS, NEUTRAL))
    return pa.table({"utterance": sources, "rewrite": [served[u] for u in sources],
                     "holdout_turns": n_h, "holdout_defects": x_h, "treatment_turns": n_t, "treatment_defects": x_t,
                     "z": z, "p_lower": p_lower, "p_higher": p_higher, "verdict": verdict.astype(object)}, schema=AB)


def online_win_loss(ab: pa.Table) -> dict:
    """Wins, losses and their ratio (losses floored at 1) over the rewrites of ``ab``."""
    verdict = ab.column("verdict").to_numpy(zero_copy_only=False)
    wins, losses = int((verdict == WIN).sum()), int((verdict == LOSS).sum())
    return {"online_tested": ab.num_rows, "online_wins": wins, "online_losses": losses,
            "online_win_loss": wins / max(losses, 1)}


def arm_defect_rates(turns: SaidTurns, sources: Sequence[str]) -> dict:
    """Observed defect rate of each arm over all of ``turns`` and over the turns whose said
    utterance is one of ``sources`` (the served rewrites' sources), with the relative
    reduction 1 - treatment / holdout; a rate over no turns is None."""
    said, defect, hold = turns.said, turns.defect, turns.holdout
    rewritable = np.isin(said, np.asarray(list(sources), dtype=object)) if len(sources) else np.zeros(len(said), bool)

    def rate(mask: np.ndarray) -> float | None:
        return float(defect[mask].mean()) if mask.any() else None

    def reduction(t: float | None, h: float | None) -> float | None:
        return None if t is None or not h else 1.0 - t / h

    out = {"treatment_turns": int((~hold).sum()), "holdout_turns": int(hold.sum()),
           "treatment_defect_rate": rate(~hold), "holdout_defect_rate": rate(hold),
           "rewritable_treatment_defect_rate": rate(~hold & rewritable),
           "rewritable_holdout_defect_rate": rate(hold & rewritable)}
    out["ab_reduction"] = reduction(out["treatment_defect_rate"], out["holdout_defect_rate"])
    out["rewritable_ab_reduction"] = reduction(out["rewritable_treatment_defect_rate"],
                                               out["rewritable_holdout_defect_rate"])
    return out


def losers(ab: pa.Table) -> pa.Table:
    """The rows of ``ab`` that lost: the online blacklist's new entries."""
    return ab.filter(pc.equal(ab.column("verdict"), LOSS))
