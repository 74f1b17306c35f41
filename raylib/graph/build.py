"""The customer-skill interaction graph of seed 000, section 2 and section 4.1.

One edge per interaction (parallel edges between the same customer and skill are kept),
CSR adjacency in both directions, each edge carrying an utterance id (utterances are
stored once, de-duplicated after ``normalize_utterance``) and its defect label, and
categorical node features from the metadata of Table 2. A customer or skill that has no
metadata row gets the default feature (code 0 = ``<unknown>`` in every column) and is
counted, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.errors import UserError
from raylib.schema import normalize_utterance

CUSTOMER_FEATURES = ("wbr_cor", "is_prime", "is_amu", "is_smart_home_cust")
SKILL_FEATURES = ("skill_category", "skill_type", "skill_subcategory", "reporting_category")
UNKNOWN = "<unknown>"


def csr(keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR over ``n`` rows of the items with row ``keys``: ``(indptr, order)`` so that the
    items of row r are ``order[indptr[r]:indptr[r+1]]`` (stable: original order kept)."""
    order = np.argsort(keys, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=n), out=indptr[1:])
    return indptr, order.astype(np.int64)


@dataclass
class MessageGraph:
    """Directed message edges over one node space (customers ``0..U-1``, skills
    ``U..U+S-1``) in CSR by target: the incoming edges of node v are positions
    ``indptr[v]:indptr[v+1]`` of ``src`` (source node), ``eid`` (interaction edge id, for
    its utterance) and ``rel`` (0: skill -> customer, 1: customer -> skill)."""

    indptr: np.ndarray
    src: np.ndarray
    eid: np.ndarray
    rel: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1

    def dst(self) -> np.ndarray:
        """Target node of every position."""
        return np.repeat(np.arange(self.num_nodes, dtype=np.int64), np.diff(self.indptr))


@dataclass
class CustomerSkillGraph:
    """A bipartite multigraph: ``edge_customer[e]`` used ``edge_skill[e]`` saying
    ``utterances[edge_utterance[e]]``; ``edge_defect[e]`` is the defect label."""

    customer_ids: np.ndarray
    skill_ids: np.ndarray
    edge_customer: np.ndarray
    edge_skill: np.ndarray
    edge_utterance: np.ndarray
    edge_defect: np.ndarray
    utterances: list[str]
    customer_features: np.ndarray  # [U, len(CUSTOMER_FEATURES)] int codes, 0 = unknown
    skill_features: np.ndarray  # [S, len(SKILL_FEATURES)]
    customer_vocab: list[list[str]]
    skill_vocab: list[list[str]]
    counts: dict = field(default_factory=dict)

    @property
    def num_customers(self) -> int:
        return len(self.customer_ids)

    @property
    def num_skills(self) -> int:
        return len(self.skill_ids)

    @property
    def num_nodes(self) -> int:
        return self.num_customers + self.num_skills

    @property
    def num_edges(self) -> int:
        return len(self.edge_customer)

    def customer_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Edges of each customer: ``(indptr [U+1], edge ids [E])``."""
        return csr(self.edge_customer, self.num_customers)

    def skill_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Edges of each skill: ``(indptr [S+1], edge ids [E])``."""
        return csr(self.edge_skill, self.num_skills)

    def message_graph(self, edges: np.ndarray | None = None) -> MessageGraph:
        """Both directions of the interaction edges ``edges`` (all when None) as one
        :class:`MessageGraph` in the joint node space."""
        eid = np.arange(self.num_edges, dtype=np.int64) if edges is None else np.asarray(edges, np.int64)
        cust = self.edge_customer[eid]
        skill = self.edge_skill[eid] + self.num_customers
        dst = np.concatenate([cust, skill])
        src = np.concatenate([skill, cust])
        rel = np.concatenate([np.zeros(len(eid), np.int8), np.ones(len(eid), np.int8)])
        indptr, order = csr(dst, self.num_nodes)
        return MessageGraph(indptr, src[order], np.concatenate([eid, eid])[order], rel[order])

    def cardinalities(self) -> tuple[list[int], list[int]]:
        """Number of codes of every customer and skill feature column."""
        return [len(v) for v in self.customer_vocab], [len(v) for v in self.skill_vocab]


def split_edges(num_edges: int, train_fraction: float = 0.8, seed: int = 0) -> np.ndarray:
    """Uniform edge split of section 4.2.1: a boolean mask, True for the training graph."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(num_edges, dtype=bool)
    mask[rng.permutation(num_edges)[: int(round(train_fraction * num_edges))]] = True
    return mask


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """Dictionary codes and dictionary of a column."""
    enc = pc.dictionary_encode(column.cast(pa.string()))
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def _node_features(ids: list, table: pa.Table, id_column: str, columns: tuple[str, ...]):
    """Categorical codes (0 = unknown) of ``columns`` for node ``ids`` from ``table``;
    returns ``(features, vocab, mask of the ids without a metadata row)``."""
    row = pc.index_in(pa.array(ids, pa.string()), value_set=table.column(id_column).combine_chunks())
    known = row.is_valid().to_numpy(zero_copy_only=False)
    rows = row.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    features = np.zeros((len(ids), len(columns)), dtype=np.int64)
    vocab = []
    for k, name in enumerate(columns):
        codes, values = _codes(table.column(name)) if table.num_rows else (np.zeros(0, np.int64), [])
        if table.num_rows:
            features[known, k] = codes[rows[known]] + 1
        vocab.append([UNKNOWN] + [str(v) for v in values])
    return features, vocab, ~known


def build_graph(interactions: pa.Table, customers: pa.Table, skills: pa.Table) -> CustomerSkillGraph:
    """The graph of section 4.2.1 from contract tables (interactions already validated).

    Raises :class:`UserError` for an empty graph (no interactions)."""
    if interactions.num_rows == 0:
        raise UserError("empty graph: no valid interactions to build the customer-skill graph from")
    edge_customer, customer_ids = _codes(interactions.column("customer_id"))
    edge_skill, skill_ids = _codes(interactions.column("skill_id"))
    raw_utt, raw_texts = _codes(interactions.column("utterance"))
    utterances, norm_index = np.unique(np.array([normalize_utterance(t) for t in raw_texts], dtype=object),
                                       return_inverse=True)
    edge_utterance = norm_index.reshape(-1)[raw_utt]
    defect = interactions.column("defect").to_numpy(zero_copy_only=False).astype(np.int8)

    cfeat, cvocab, c_missing = _node_features(customer_ids, customers, "customer_id", CUSTOMER_FEATURES)
    sfeat, svocab, s_missing = _node_features(skill_ids, skills, "skill_id", SKILL_FEATURES)
    counts = {
        "customers_without_metadata": int(c_missing.sum()),
        "skills_without_metadata": int(s_missing.sum()),
        "edges_with_default_features": int((c_missing[edge_customer] | s_missing[edge_skill]).sum()),
    }
    return CustomerSkillGraph(
        customer_ids=np.array(customer_ids, dtype=object),
        skill_ids=np.array(skill_ids, dtype=object),
        edge_customer=edge_customer,
        edge_skill=edge_skill,
        edge_utterance=edge_utterance.astype(np.int64),
        edge_defect=defect,
        utterances=list(utterances),
        customer_features=cfeat,
        skill_features=sfeat,
        customer_vocab=cvocab,
        skill_vocab=svocab,
        counts=counts,
    )
