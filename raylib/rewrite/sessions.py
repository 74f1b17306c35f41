"""Sessions (seed 001, Section 3, Eq. 1-2) and their absorbing outcome (Section 4.3).

A session ``S_k = f(c, d, tau_0)`` is the time-ordered run of one customer's turns on
ONE device in which consecutive turns are at most ``delta_tau`` apart (default 45 s).
Each session ends in one absorbing state: failure ``r-`` or success ``r+``.

Edge cases, as decided here:

* **Gap exactly ``delta_tau``** stays in the same session (the paper's "at most").
  The gap is measured between consecutive turns of the raw log, interjections
  included: saying "stop" keeps a conversation alive.
* **Device switch**: a turn on another device starts another session even when it
  follows within ``delta_tau`` (sessions are keyed by customer AND device).
* **Interjections** (intent in ``INTERJECTION_INTENTS``, e.g. StopIntent/CancelIntent)
  are removed from the session. When the session's last turn is an interjection the
  session is absorbed in FAILURE (explicit negative feedback). An interjection in the
  middle of a session is removed and the path continues from the turn before it to
  the turn after it (the paper: interjections "that occur before the end ... are
  removed"), so a user's retry after "stop" still counts as a reformulation.
* **Implicit feedback**: when the last remaining turn has status ``error`` or
  ``no_match`` and the user then abandons (the session ends), the session is a
  FAILURE; an ``error`` turn followed by more turns is an ordinary transition.
* Otherwise the session is a SUCCESS (success is the absence of failure).
* A session made only of interjections has no transient state: it adds nothing to
  the chain and is counted (``interjection_only``).
* **No-match states** (``no_match_states``): a turn's state is its interpretation
  ``domain|intent|slots``, except that a ``no_match`` turn's state is keyed by what was
  said, ``domain|intent|slots|utterance`` (``"utterance"``, the default). An NLU that
  fails often maps many different utterances to one uninformative interpretation (a
  generic fallback); as one state, Eq. 20 would aggregate all of them through it and give
  them all the same rewrite, right for at most one. Keyed, each failing utterance keeps
  its own state and path. ``"interpretation"`` keeps the NLU's interpretation as is (the
  paper). ``error`` turns (the skill failed on an understood request) are not keyed.
  Measured (issue 15; ``selflearn simulate [--config jobs/sim_collapsed_failures.yaml]``,
  then ``selflearn mine-rewrites --truth SIM --engine local --no-match-states S``; "nlu
  sources": ``truth_rewrites`` rows of cause ``nlu``, the unsupported phrasings):

      world, seed 0          states          nlu sources: candidates    served      precision  coverage (traffic)
                                             right / wrong (targets)    right/wrong
      medium, collapsed      interpretation     1 / 1392 (1 target)       0 / 0     1.000      0.034 (0.415)
      medium, collapsed      utterance       1221 / 2    (906)          205 / 0     1.000      0.071 (0.679)
      medium                 interpretation  1222 / 2    (906)          205 / 0     1.000      0.071 (0.679)
      medium                 utterance       1221 / 2    (906)          205 / 0     1.000      0.071 (0.679)
      small, collapsed       interpretation     1 / 274  (1 target)       0 / 0     1.000      0.007 (0.061)
      small, collapsed       utterance        223 / 1    (177)           11 / 0     1.000      0.023 (0.217)

  (collapsed: the one shared target is removed by the generic-target filter.) On the
  medium preset the table is the same under both (416 rewrites; with ``--z-rule paper``
  473, precision 0.998 under both), so ``"utterance"`` is the default.
* **Rewritten turns** (a served rewrite was applied: the ``rewrite`` column is not null):
  a session holding one is kept with ``rewritten`` set, counted
  (``rewritten_sessions``) and left out of everything mining learns from
  (``mined_sessions``: the chain, the interpretation space, the friction counts and the
  direct evidence). What a rewritten turn is evidence for: whether serving u_t to the
  speakers of u_s works, which the online A/B (``raylib.rewrite.online``) measures against
  the holdout. It is no evidence about u_s as spoken (the NLU never saw it: counted as u_s,
  a source whose rewrite works would look successful and self-partition, so the rewrite
  that fixed it would be withdrawn as stale), nor about u_t as its own speakers say it
  (counted as u_t, the rewrite's failures would become u_t's reformulations and mine
  u_t -> u_c, a chain u_s -> u_t -> u_c; counted as u_s with u_t's interpretation, u_s
  would become a target that only succeeds because it is served). The session's other
  turns go with it: their reformulation path ran through a served rewrite. Sources stay
  learnable from the holdout's sessions and from traffic before the rewrite was served;
  a served source seen only in rewritten sessions is not "held by today's traffic", so
  ``raylib.rewrite.publish`` keeps its rewrite rather than withdrawing it.
* Turns with equal timestamps keep a deterministic order (ties broken by the other
  columns), so every execution path builds the same sessions.

Output: one row per session (``SESSIONS`` schema) with list columns, so a batch of rows
never splits a session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_GAP_S = 45.0
INTERJECTION_INTENTS = frozenset({"stopintent", "cancelintent", "stop", "cancel"})
FAILURE_STATUSES = ("error", "no_match")
NO_MATCH = "no_match"
NO_MATCH_STATES = ("utterance", "interpretation")
SUCCESS, FAILURE = "success", "failure"

SESSIONS = pa.schema(
    [
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("utterances", pa.list_(pa.string()), nullable=False),  # normalized
        pa.field("interpretations", pa.list_(pa.string()), nullable=False),  # states: turn_states
        pa.field("defects", pa.list_(pa.bool_()), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),  # success / failure
        pa.field("n_interjections", pa.int64(), nullable=False),
        pa.field("rewritten", pa.bool_(), nullable=False),  # met a served rewrite: not mined
    ]
)


@dataclass(frozen=True)
class SessionStats:
    """What sessionization saw: turns in, interjections removed, sessions mined, sessions
    made only of interjections, sessions set aside because they met a served rewrite."""

    n_turns: int
    n_interjections: int
    n_sessions: int
    interjection_only: int
    rewritten_sessions: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def is_interjection(intents: pa.Array | pa.ChunkedArray, names=INTERJECTION_INTENTS) -> np.ndarray:
    """True where a turn's intent is an interjection (case-insensitive)."""
    lowered = pc.utf8_lower(intents)
    return pc.is_in(lowered, value_set=pa.array(sorted(n.lower() for n in names))).to_numpy(
        zero_copy_only=False
    )


def normalized_utterances(utterances: pa.ChunkedArray) -> pa.Array:
    """``raylib.schema.normalize_utterance`` vectorized: lower-case, whitespace collapsed."""
    text = pc.utf8_lower(utterances)
    text = pc.replace_substring_regex(text, pattern=r"\s+", replacement=" ")
    return pc.utf8_trim_whitespace(text)


def _check_no_match_states(value: str) -> None:
    if value not in NO_MATCH_STATES:
        raise ValueError(f"no_match_states must be one of {NO_MATCH_STATES}, got {value!r}")


def turn_states(turns: pa.Table, utterances: pa.Array, no_match_states: str = "utterance") -> pa.Array:
    """The chain state of each of ``turns`` (columns domain, intent, slots, status) said as
    the normalized ``utterances``: ``domain|intent|slots``, and for a ``no_match`` turn
    under ``no_match_states="utterance"`` ``domain|intent|slots|utterance`` (module docstring)."""
    _check_no_match_states(no_match_states)
    interp = pc.binary_join_element_wise(turns.column("domain"), turns.column("intent"), turns.column("slots"), "|")
    if no_match_states == "interpretation":
        return interp.combine_chunks()
    keyed = pc.binary_join_element_wise(interp, utterances, "|")
    return pc.if_else(pc.equal(turns.column("status"), NO_MATCH), keyed, interp).combine_chunks()


def sessionize(
    interactions: pa.Table,
    gap_s: float = DEFAULT_GAP_S,
    interjections=INTERJECTION_INTENTS,
    no_match_states: str = "utterance",
) -> pa.Table:
    """Split validated ``interactions`` (whole customer/device histories) into sessions.

    Eq. 2: consecutive turns of one (customer, device) with ``tau_{i+1} - tau_i <= gap_s``
    form one session; see the module docstring for interjections and outcomes.
    Each turn's state is ``turn_states(..., no_match_states)``. A session holding a turn
    whose ``rewrite`` is not null (a served rewrite was applied; a table without the
    column has none) is marked ``rewritten``: the online A/B's evidence, which
    ``mined_sessions`` leaves out of mining (the module docstring gives the rule).
    Returns the ``SESSIONS`` table sorted by session_id; a session made only of
    interjections stays as a row with empty lists (counted by ``session_stats``, no state).
    """
    if gap_s <= 0:
        raise ValueError("gap_s must be positive")
    _check_no_match_states(no_match_states)
    n = interactions.num_rows
    if n == 0:
        return SESSIONS.empty_table()
    order = pc.sort_indices(
        interactions,
        sort_keys=[(k, "ascending") for k in
                   ("customer_id", "device_id", "timestamp", "utterance", "domain", "intent", "slots", "status")],
    )
    t = interactions.take(order)
    cust = t.column("customer_id").to_numpy(zero_copy_only=False)
    dev = t.column("device_id").to_numpy(zero_copy_only=False)
    ts = t.column("timestamp").cast(pa.int64()).to_numpy()  # ms since epoch (contract: timestamp[ms])

    new = np.ones(n, dtype=bool)
    new[1:] = (cust[1:] != cust[:-1]) | (dev[1:] != dev[:-1]) | ((ts[1:] - ts[:-1]) > gap_s * 1000.0)
    session_of = np.cumsum(new) - 1
    inter = is_interjection(t.column("intent"), interjections)
    if "rewrite" in t.column_names:
        served = t.column("rewrite").is_valid().to_numpy(zero_copy_only=False)
    else:
        served = np.zeros(n, dtype=bool)

    # Failure by explicit feedback: the session's raw last turn is an interjection.
    last_raw = np.append(np.flatnonzero(new)[1:] - 1, n - 1)
    ends_interjected = inter[last_raw]

    keep = ~inter
    kept_session = session_of[keep]
    n_raw = int(new.sum())
    turns_per_session = np.bincount(kept_session, minlength=n_raw)
    offsets = np.zeros(n_raw + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(turns_per_session)
    last_kept = offsets[1:] - 1  # -1 / duplicate for a session without kept turns: masked below

    status = t.column("status").to_numpy(zero_copy_only=False)[keep]
    implicit_failure = np.zeros(n_raw, dtype=bool)
    has_turns = turns_per_session > 0
    implicit_failure[has_turns] = np.isin(status[last_kept[has_turns]], FAILURE_STATUSES)
    outcome = np.where(ends_interjected | implicit_failure, FAILURE, SUCCESS)

    kept = t.filter(pa.array(keep))
    offsets = pa.array(offsets)
    utterances = normalized_utterances(kept.column("utterance")).combine_chunks()
    states = turn_states(kept, utterances, no_match_states)
    first = t.take(pa.array(np.flatnonzero(new)))
    session_id = pc.binary_join_element_wise(
        first.column("customer_id"), first.column("device_id"),
        pc.cast(first.column("timestamp").cast(pa.int64()), pa.string()), "|",
    )
    table = pa.table(
        {
            "session_id": session_id,
            "customer_id": first.column("customer_id"),
            "device_id": first.column("device_id"),
            "utterances": pa.ListArray.from_arrays(offsets, utterances),
            "interpretations": pa.ListArray.from_arrays(offsets, states),
            "defects": pa.ListArray.from_arrays(offsets, kept.column("defect").combine_chunks()),
            "outcome": pa.array(outcome, pa.string()),
            "n_interjections": pa.array(np.bincount(session_of[inter], minlength=n_raw).astype(np.int64)),
            "rewritten": pa.array(np.bincount(session_of[served], minlength=n_raw) > 0),
        },
        schema=SESSIONS,
    )
    return table.take(pc.sort_indices(table, sort_keys=[("session_id", "ascending")]))


def mined_sessions(sessions: pa.Table) -> pa.Table:
    """The sessions mining learns from: those that met no served rewrite (module docstring)."""
    return sessions.filter(pc.invert(sessions.column("rewritten")))


def session_stats(sessions: pa.Table) -> SessionStats:
    """Counts of a SESSIONS table (sessions made only of interjections have no turns;
    ``n_sessions`` counts the mined ones, ``rewritten_sessions`` the others)."""
    lengths = pc.list_value_length(sessions.column("utterances")).to_numpy(zero_copy_only=False)
    inter = sessions.column("n_interjections").to_numpy()
    rewritten = sessions.column("rewritten").to_numpy(zero_copy_only=False).astype(bool)
    return SessionStats(
        n_turns=int(lengths.sum() + inter.sum()),
        n_interjections=int(inter.sum()),
        n_sessions=int(((lengths > 0) & ~rewritten).sum()),
        interjection_only=int(((lengths == 0) & ~rewritten).sum()),
        rewritten_sessions=int(rewritten.sum()),
    )
