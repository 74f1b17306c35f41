"""Candidate features of seed 002 (Sec. 3.3): vocabularies fitted on training logs and the
padded, confidence-sorted tensors the policy network reads.

Each routing request becomes
  * ``utterance``  (B, L) token ids (0 = padding, 1 = out-of-vocabulary),
  * ``context``    (B, 3) categorical ids (device_type, device_status, hour) and
    ``signals`` (B, 1) numeric context (ASR confidence),
  * ``cand_cat``   (B, T, 3) categorical ids (domain, intent, skill_id) and
    ``cand_num``   (B, T, 1) numeric candidate signals (NLU confidence),
  * ``mask``       (B, T) true for real candidates, ``order`` (B, T) the original index of
    each sorted slot (candidates are sorted by NLU confidence, highest first).

Every vocabulary reserves id 0 for padding and id 1 for the out-of-vocabulary bucket, so a
skill or word never seen in training still gets a vector. Encoding is vectorized with
``pyarrow.compute`` (no Python loop over rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAD, OOV = 0, 1
CANDIDATE_FIELDS = ("domain", "intent", "skill_id")
CONTEXT_FIELDS = ("device_type", "device_status", "hour")
MAX_TOKENS = 24


def _tokens(utterances: pa.Array) -> pa.ListArray:
    """Whitespace tokens of the normalized (lower-cased) utterances."""
    text = pc.utf8_lower(pc.utf8_trim_whitespace(utterances))
    return pc.split_pattern_regex(text, r"\s+")


def _candidates(table: pa.Table) -> pa.ListArray:
    return pa.concat_arrays(table.column("candidates").chunks) if table.num_rows else pa.array(
        [], type=table.schema.field("candidates").type
    )


def _context_column(table: pa.Table, name: str) -> pa.Array:
    ctx = pa.concat_arrays(table.column("context").chunks) if table.num_rows else None
    if ctx is None:
        return pa.array([], pa.string())
    values = pc.struct_field(ctx, name)
    return pc.cast(values, pa.string()) if name == "hour" else values


@dataclass
class Vocabulary:
    """One string -> id map per categorical feature plus the word vocabulary."""

    tables: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, table: pa.Table, min_word_count: int = 2, max_words: int = 20000) -> "Vocabulary":
        """Fit on a routing_log-shaped training table (values seen once are kept for
        categoricals; words need ``min_word_count`` occurrences, the rest map to OOV)."""
        cands = pc.list_flatten(_candidates(table))
        tables: dict[str, list[str]] = {}
        for name in CANDIDATE_FIELDS:
            tables[name] = sorted(set(pc.unique(pc.struct_field(cands, name)).drop_null().to_pylist()))
        for name in CONTEXT_FIELDS:
            tables[name] = sorted(set(pc.unique(_context_column(table, name)).drop_null().to_pylist()))
        words = pc.list_flatten(_tokens(pa.concat_arrays(table.column("utterance").chunks)))
        counts = pc.value_counts(words)
        vals = counts.field("values").to_pylist()
        cnts = counts.field("counts").to_numpy()
        keep = [(c, v) for v, c in zip(vals, cnts) if c >= min_word_count and v]
        keep.sort(key=lambda cv: (-cv[0], cv[1]))
        tables["word"] = [v for _, v in keep[:max_words]]
        return cls(tables)

    def size(self, name: str) -> int:
        """Number of ids of feature ``name`` including padding and OOV."""
        return len(self.tables[name]) + 2

    def lookup(self, name: str, values: pa.Array) -> np.ndarray:
        """Ids of ``values`` (OOV for unknown or null strings)."""
        index = pc.index_in(values, value_set=pa.array(self.tables[name], pa.string()))
        return (pc.fill_null(index, OOV - 2).to_numpy(zero_copy_only=False) + 2).astype(np.int64)

    def to_dict(self) -> dict:
        return {"tables": self.tables}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        return cls({k: list(v) for k, v in data["tables"].items()})


@dataclass
class Features:
    """Padded, sorted tensors (numpy) for a batch of routing requests."""

    utterance: np.ndarray  # (B, L) int64
    context: np.ndarray  # (B, 3) int64
    signals: np.ndarray  # (B, 1) float32
    cand_cat: np.ndarray  # (B, T, 3) int64
    cand_num: np.ndarray  # (B, T, 1) float32
    mask: np.ndarray  # (B, T) bool
    order: np.ndarray  # (B, T) int64: original candidate index of each sorted slot
    n_candidates: np.ndarray  # (B,) int64

    def __len__(self) -> int:
        return len(self.n_candidates)

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)

    def subset(self, rows: np.ndarray) -> "Features":
        return Features(**{k: v[rows] for k, v in self.__dict__.items()})

    def sorted_slots(self, per_candidate: np.ndarray) -> np.ndarray:
        """Reorder a (B, T) array given in original candidate order into sorted-slot order."""
        return np.take_along_axis(per_candidate, self.order, axis=1)

    def original_order(self, sorted_values: np.ndarray) -> np.ndarray:
        """Inverse of ``sorted_slots``: (B, T) sorted-slot values back to candidate order."""
        out = np.zeros_like(sorted_values)
        np.put_along_axis(out, self.order, sorted_values, axis=1)
        return out


def _pad(flat: np.ndarray, lengths: np.ndarray, width: int, fill) -> np.ndarray:
    """Scatter a flattened ragged array into a (len(lengths), width) matrix."""
    out = np.full((len(lengths), width), fill, dtype=flat.dtype)
    row = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    col = np.arange(len(flat)) - np.repeat(starts, lengths)
    keep = col < width
    out[row[keep], col[keep]] = flat[keep]
    return out


def encode(table: pa.Table, vocab: Vocabulary) -> Features:
    """Encode a routing_log-shaped table (columns utterance, context, candidates)."""
    cands = _candidates(table)
    n_cand = pc.list_value_length(cands).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(cands)
    width = max(int(n_cand.max()) if len(n_cand) else 1, 1)
    cat = np.stack(
        [_pad(vocab.lookup(name, pc.struct_field(flat, name)), n_cand, width, PAD) for name in CANDIDATE_FIELDS],
        axis=-1,
    )
    conf = pc.fill_null(pc.struct_field(flat, "nlu_confidence"), 0.0).to_numpy(zero_copy_only=False)
    conf = _pad(conf.astype(np.float32), n_cand, width, np.float32(-np.inf))
    mask = np.arange(width)[None, :] < n_cand[:, None]
    order = np.argsort(-conf, axis=1, kind="stable")
    conf_sorted = np.take_along_axis(conf, order, axis=1)
    cat_sorted = np.take_along_axis(cat, order[..., None], axis=1)
    num = np.where(mask, conf_sorted, 0.0).astype(np.float32)[..., None]

    tokens = _tokens(pa.concat_arrays(table.column("utterance").chunks)) if table.num_rows else pa.array(
        [], pa.list_(pa.string())
    )
    n_tok = np.minimum(pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64), MAX_TOKENS)
    all_tok = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    ids = vocab.lookup("word", pc.list_flatten(tokens))
    utt = _pad(ids, all_tok, max(1, int(n_tok.max()) if len(n_tok) else 1), PAD)
    utt[:, 0] = np.where(n_tok == 0, OOV, utt[:, 0])  # an utterance never has zero tokens

    context = np.stack([vocab.lookup(name, _context_column(table, name)) for name in CONTEXT_FIELDS], axis=-1)
    asr = pc.fill_null(_context_column(table, "asr_confidence"), 0.0) if table.num_rows else pa.array([], pa.float32())
    signals = asr.to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
    return Features(
        utterance=utt,
        context=context.reshape(len(n_cand), len(CONTEXT_FIELDS)),
        signals=signals,
        cand_cat=cat_sorted,
        cand_num=num,
        mask=mask,
        order=order.astype(np.int64),
        n_candidates=n_cand,
    )


def top_intents(table: pa.Table) -> np.ndarray:
    """The segment of each request (Sec. 3.5): the intent of its highest-confidence candidate
    ('' for a request without candidates)."""
    cands = _candidates(table)
    n_cand = pc.list_value_length(cands).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(cands)
    intents = np.asarray(pc.struct_field(flat, "intent").to_pylist() + [""], dtype=object)
    conf = pc.fill_null(pc.struct_field(flat, "nlu_confidence"), 0.0).to_numpy(zero_copy_only=False)
    width = max(int(n_cand.max()) if len(n_cand) else 1, 1)
    padded = _pad(conf.astype(np.float32), n_cand, width, np.float32(-np.inf))
    top = np.cumsum(n_cand) - n_cand + padded.argmax(axis=1)
    return np.where(n_cand > 0, intents[np.minimum(top, len(intents) - 1)], "")


def requests_to_table(requests: list[dict]) -> pa.Table:
    """Routing requests as served (dicts with utterance/candidates/context) -> the
    request columns of a routing_log table."""
    from raylib.schema import CANDIDATE, CONTEXT

    ctx_default = {"device_type": None, "device_status": None, "asr_confidence": None, "hour": None}
    return pa.table(
        {
            "utterance": pa.array([r["utterance"] for r in requests], pa.string()),
            "context": pa.array([{**ctx_default, **(r.get("context") or {})} for r in requests], CONTEXT),
            "candidates": pa.array([r["candidates"] for r in requests], pa.list_(CANDIDATE)),
        }
    )
