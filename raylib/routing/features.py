"""Candidate features of seed 002 (Sec. 3.3): vocabularies fitted on training logs and the
padded, confidence-sorted tensors the policy network reads.

Each routing request becomes
  * ``utterance``  (B, L) token ids (0 = padding, 1 = out-of-vocabulary),
  * ``context``    (B, 3) categorical ids (device_type, device_status, hour) and
    ``signals`` (B, 1) numeric context (ASR confidence),
  * ``cand_cat``   (B, T, 3) categorical ids (domain, intent, skill_id) and
    ``cand_num``   (B, T, 1) numeric candidate signals (NLU confidence),
  * ``mask``       (B, T) true for real candidates, ``order`` (B, T) the original index of
    each sorted slot (candidates are sorted by NLU confidence, highest first),
  * optionally (``encode(..., embeddings=...)``, the "next step" of seed 000's conclusion:
    PDRFE representations as router inputs) ``customer`` (B, D_c), the PDRFE embedding of
    the request's customer, and ``cand_emb`` (B, T, D_s), the PDRFE embedding of each
    candidate's skill (sorted slots like ``cand_cat``; zeros on padding).

Every vocabulary reserves id 0 for padding and id 1 for the out-of-vocabulary bucket, so a
skill or word never seen in training still gets a vector. Encoding is vectorized with
``pyarrow.compute`` (no Python loop over rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.schema import vector_column

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
class EmbeddingTables:
    """PDRFE customer and skill embeddings (seed 000; store artifact ``"embeddings"``,
    files ``customers`` (customer_id, embedding) and ``skills`` (skill_id, embedding)),
    looked up by id. An id the tables do not hold (a customer or skill new since the
    embeddings were trained, or a null customer_id) gets the ZERO vector."""

    version: str | None
    customer_ids: list[str]
    customers: np.ndarray  # (N_c, D_c) float32
    skill_ids: list[str]
    skills: np.ndarray  # (N_s, D_s) float32

    @property
    def customer_dim(self) -> int:
        return self.customers.shape[1]

    @property
    def skill_dim(self) -> int:
        return self.skills.shape[1]

    @classmethod
    def from_tables(cls, customers: pa.Table, skills: pa.Table, version: str | None = None) -> "EmbeddingTables":
        def matrix(table: pa.Table) -> np.ndarray:
            column = table.column("embedding").combine_chunks()
            width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
            if width is None:
                lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
                if len(lengths) and (lengths != lengths[0]).any():
                    raise ValueError("embeddings of one table must all have the same length")
                width = int(lengths[0]) if len(lengths) else 0
            flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
            return flat.astype(np.float32).reshape(table.num_rows, width)

        return cls(
            version,
            customers.column("customer_id").to_pylist(),
            matrix(customers),
            skills.column("skill_id").to_pylist(),
            matrix(skills),
        )

    @classmethod
    def from_artifact(cls, art) -> "EmbeddingTables":
        """From a store ``Artifact`` of ``train_pdrfe`` (``store.load("embeddings")``)."""
        return cls.from_tables(art.table("customers"), art.table("skills"), art.version)

    def to_tables(self) -> dict[str, pa.Table]:
        return {
            "customers": pa.table(
                {"customer_id": pa.array(self.customer_ids, pa.string()), "embedding": vector_column(self.customers)}
            ),
            "skills": pa.table({"skill_id": pa.array(self.skill_ids, pa.string()), "embedding": vector_column(self.skills)}),
        }

    @staticmethod
    def _lookup(ids: list[str], matrix: np.ndarray, values: pa.Array) -> np.ndarray:
        """Rows of ``matrix`` for ``values`` (zero rows for unknown or null ids)."""
        index = pc.index_in(pc.cast(values, pa.string()), value_set=pa.array(ids, pa.string()))
        rows = pc.fill_null(index, len(ids)).to_numpy(zero_copy_only=False)
        return np.vstack([matrix, np.zeros((1, matrix.shape[1]), np.float32)])[rows]

    def customer_vectors(self, customer_ids: pa.Array) -> np.ndarray:
        """(B, D_c) embeddings of ``customer_ids`` (zeros for unknown / null ids)."""
        return self._lookup(self.customer_ids, self.customers, customer_ids)

    def skill_vectors(self, skill_ids: pa.Array) -> np.ndarray:
        """(N, D_s) embeddings of ``skill_ids`` (zeros for unknown / null ids)."""
        return self._lookup(self.skill_ids, self.skills, skill_ids)


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
    customer: np.ndarray | None = None  # (B, D_c) float32 PDRFE customer embedding
    cand_emb: np.ndarray | None = None  # (B, T, D_s) float32 PDRFE skill embedding per slot

    def __len__(self) -> int:
        return len(self.n_candidates)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array that is present (the embedding arrays only when encoded with them)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def subset(self, rows: np.ndarray) -> "Features":
        return Features(**{k: v[rows] for k, v in self.arrays().items()})

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


def encode(table: pa.Table, vocab: Vocabulary, embeddings: EmbeddingTables | None = None) -> Features:
    """Encode a routing_log-shaped table (columns utterance, context, candidates; with
    ``embeddings`` also customer_id: a table without it gets zero customer vectors)."""
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
    features = Features(
        utterance=utt,
        context=context.reshape(len(n_cand), len(CONTEXT_FIELDS)),
        signals=signals,
        cand_cat=cat_sorted,
        cand_num=num,
        mask=mask,
        order=order.astype(np.int64),
        n_candidates=n_cand,
    )
    return with_embeddings(features, table, embeddings) if embeddings is not None else features


def with_embeddings(features: Features, table: pa.Table, embeddings: EmbeddingTables) -> Features:
    """``features`` of ``table`` plus its PDRFE inputs: the customer embedding of each
    request (``customer_id``; zeros when the table has no such column, the id is null or
    unknown) and the skill embedding of each candidate in sorted-slot order (zeros for an
    unknown skill and on padding)."""
    n_cand, width = features.n_candidates, features.mask.shape[1]
    flat = pc.list_flatten(_candidates(table))
    padded = np.zeros((len(n_cand), width, embeddings.skill_dim), np.float32)
    padded[features.mask] = embeddings.skill_vectors(pc.struct_field(flat, "skill_id"))  # row-major = flat order
    if "customer_id" in table.column_names and table.num_rows:
        customer_ids = pa.concat_arrays(table.column("customer_id").chunks)
    else:
        customer_ids = pa.nulls(table.num_rows, pa.string())
    return replace(
        features,
        customer=embeddings.customer_vectors(customer_ids),
        cand_emb=np.take_along_axis(padded, features.order[..., None], axis=1),
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
    """Routing requests as served (dicts with utterance/candidates/context and optional
    customer_id) -> the request columns of a routing_log table."""
    from raylib.schema import CANDIDATE, CONTEXT

    ctx_default = {"device_type": None, "device_status": None, "asr_confidence": None, "hour": None}
    return pa.table(
        {
            "customer_id": pa.array([r.get("customer_id") for r in requests], pa.string()),
            "utterance": pa.array([r["utterance"] for r in requests], pa.string()),
            "context": pa.array([{**ctx_default, **(r.get("context") or {})} for r in requests], CONTEXT),
            "candidates": pa.array([r["candidates"] for r in requests], pa.list_(CANDIDATE)),
        }
    )
