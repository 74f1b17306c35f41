"""Arrow schemas of every table and the keys derived from their columns.

Every table the project reads or writes is declared here once. Validation against these
contracts lives in ``raylib.validate``; reading and writing tables in ``raylib.uri``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

TIMESTAMP = pa.timestamp("ms", tz="UTC")
MAX_UTTERANCE_CHARS = 512
STATUSES = ("ok", "error", "no_match")

INTERACTIONS = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("utterance", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("intent", pa.string(), nullable=False),
        pa.field("slots", pa.string(), nullable=False),  # canonical "name=value;..." sorted by name
        pa.field("skill_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok / error / no_match
        pa.field("defect", pa.bool_(), nullable=False),
        # The served rewrite the NLU received in place of ``utterance`` (null: none was
        # applied); domain/intent/slots/status are then the NLU's reading of this text.
        # Data written before the column existed reads as null (``raylib.validate``).
        pa.field("rewrite", pa.string(), nullable=True),
    ]
)

# Seed 000, Table 2: categorical metadata used to initialise node embeddings.
CUSTOMERS = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("wbr_cor", pa.string(), nullable=False),
        pa.field("is_prime", pa.bool_(), nullable=False),
        pa.field("is_amu", pa.bool_(), nullable=False),
        pa.field("is_smart_home_cust", pa.bool_(), nullable=False),
    ]
)

SKILLS = pa.schema(
    [
        pa.field("skill_id", pa.string(), nullable=False),
        pa.field("skill_category", pa.string(), nullable=False),
        pa.field("skill_type", pa.string(), nullable=False),
        pa.field("skill_subcategory", pa.string(), nullable=False),
        pa.field("reporting_category", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),  # the domain whose intents the skill serves
    ]
)

CONTEXT = pa.struct(
    [
        pa.field("device_type", pa.string()),
        pa.field("device_status", pa.string()),
        pa.field("asr_confidence", pa.float32()),
        pa.field("hour", pa.int8()),
    ]
)
CANDIDATE = pa.struct(
    [
        pa.field("domain", pa.string()),
        pa.field("intent", pa.string()),
        pa.field("skill_id", pa.string()),
        pa.field("nlu_confidence", pa.float32()),
    ]
)

# Seed 002: one routing decision. ``propensity`` is the logging probability of ``action``;
# ``propensities`` the full distribution when known (null otherwise). ``reward`` is null
# while the user's feedback has not been joined yet (a live decision log); learning code
# keeps only rows with a reward and counts the others.
ROUTING_LOG = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("utterance", pa.string(), nullable=False),
        pa.field("context", CONTEXT, nullable=False),
        pa.field("candidates", pa.list_(CANDIDATE), nullable=False),
        pa.field("action", pa.int32(), nullable=False),
        pa.field("propensity", pa.float64(), nullable=False),
        pa.field("propensities", pa.list_(pa.float64()), nullable=True),
        pa.field("reward", pa.float64(), nullable=True),
        pa.field("policy_version", pa.string(), nullable=True),
    ]
)

# Feedback observed after a decision, joined onto a decision log by request_id.
FEEDBACK = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
    ]
)

# ---- simulator ground truth: read only by evaluation code -------------------------------

# One row per systematically defective utterance: what the speakers meant.
TRUTH_REWRITES = pa.schema(
    [
        pa.field("utterance", pa.string(), nullable=False),
        pa.field("intended_utterance", pa.string(), nullable=False),
        pa.field("intended_interpretation", pa.string(), nullable=False),  # domain|intent|slots
        pa.field("cause", pa.string(), nullable=False),  # asr / nlu / user
    ]
)

# One row per interaction (keyed by customer_id, device_id, timestamp): the request the
# user meant and how the turn came about.
TRUTH_TURNS = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("intended_utterance", pa.string(), nullable=False),
        pa.field("intended_interpretation", pa.string(), nullable=False),
        pa.field("turn_kind", pa.string(), nullable=False),
        pa.field("defect_probability", pa.float64(), nullable=False),
    ]
)

# One row per routing request: the expected reward of every candidate (same order as
# ``routing_log.candidates``), so the true value of any policy is sum_k pi(k|x) r_k.
TRUTH_ROUTING = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("expected_rewards", pa.list_(pa.float64()), nullable=False),
        pa.field("intended_interpretation", pa.string(), nullable=False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "interactions": INTERACTIONS,
    "customers": CUSTOMERS,
    "skills": SKILLS,
    "routing_log": ROUTING_LOG,
    "feedback": FEEDBACK,
    "truth_rewrites": TRUTH_REWRITES,
    "truth_turns": TRUTH_TURNS,
    "truth_routing": TRUTH_ROUTING,
}

REJECTED = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("row", pa.string(), nullable=False),  # the original row as JSON
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def interpretation_key(domain: str, intent: str, slots: str) -> str:
    """The interpretation h of seed 001 as one string: ``domain|intent|slots``."""
    return f"{domain}|{intent}|{slots}"


def canonical_slots(slots: dict[str, str]) -> str:
    """Slots as the canonical ``name=value;...`` string (sorted by name)."""
    return ";".join(f"{k}={slots[k]}" for k in sorted(slots))


def normalize_utterance(text: str) -> str:
    """The one utterance normalisation used by mining, serving and evaluation alike:
    lower-case, whitespace collapsed, surrounding whitespace stripped."""
    return " ".join(text.lower().split())


def vector_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """The rows of an (N, D) matrix as a float32 fixed-size-list column (the ``embedding``
    column of the PDRFE embeddings artifact's tables)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(matrix, np.float32).ravel()), matrix.shape[1])
