"""The hybrid policy of seed 002 (Sec. 3.5, Fig. 4): κ_j (Eq. 3), RPDR_j (Eq. 4) and
``HybridPolicy``, whose action distribution for a request of segment j is

    Π_HP(a | X) = RPDR_j · Π_RP(a | X) + (1 - RPDR_j) · Π_LP(a | X).

Sampling "RP with probability RPDR_j, else LP" and then an action from that model is the
same as sampling from Π_HP; the propensity returned with an action is Π_HP(a | X), the
logging probability the next round of off-policy learning needs.

The policy is stored as one versioned artifact (store name ``"policy"``):
``{"manifest": dict, "rp": bytes, "lp": bytes}``. A policy whose RP or LP reads PDRFE
embeddings (seed 000) carries them too, so it routes from the customer_id and skill_id
fields alone: Parquet tables ``<prefix>_customers`` and ``<prefix>_skills`` (prefix
``embeddings`` when RP and LP read the same version, else ``rp_embeddings`` /
``lp_embeddings``), and ``manifest["embeddings"]`` = ``{"rp": {"version", "files"} | None,
"lp": ...}``; such a manifest has format ``EMBEDDINGS_FORMAT``. A policy without
embeddings is stored exactly as before (format ``ARTIFACT_FORMAT``), and both load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from raylib.routing.data import logged_distributions
from raylib.routing.features import (
    EmbeddingTables,
    Features,
    Vocabulary,
    encode,
    requests_to_table,
    top_intents,
    with_embeddings,
)
from raylib.routing.model import NetworkConfig, PolicyNetwork, network_from_bytes, predict, state_bytes

ARTIFACT_FORMAT = 1
EMBEDDINGS_FORMAT = 2  # ARTIFACT_FORMAT plus the PDRFE embedding tables


def replication_rates(pi_new: np.ndarray, pi_ref: np.ndarray) -> np.ndarray:
    """Per-request replication 1 - |Π_θ(X) - Π_0(X)|_1 / 2 (the term inside Eq. 3).

    ``pi_new``/``pi_ref`` are (B, T) distributions padded with zeros."""
    return 1.0 - 0.5 * np.abs(np.asarray(pi_new) - np.asarray(pi_ref)).sum(axis=1)


def kappa(pi_new: np.ndarray, pi_ref: np.ndarray, segments: np.ndarray) -> dict[str, float]:
    """Eq. 3: κ_j = E_{X ~ D_j}[ 1 - |Π_θ(X) - Π_0(X)|_1 / 2 ] for every segment j
    (segments = top NLU intent of each request)."""
    rates = replication_rates(pi_new, pi_ref)
    segments = np.asarray(segments)
    return {str(j): float(rates[segments == j].mean()) for j in np.unique(segments)}


def rpdr(kappa_j: float, kappa_target: float) -> float:
    """Eq. 4: RPDR_j = 0 if κ_j >= κ̃, else (κ̃ - κ_j) / (1 - κ_j).

    With RP a perfect replicator, mixing RP at rate RPDR_j lifts the segment's replication
    from κ_j to exactly κ̃: RPDR_j + (1 - RPDR_j) κ_j = κ̃."""
    if kappa_j >= kappa_target:
        return 0.0
    return float((kappa_target - kappa_j) / (1.0 - kappa_j))


def rpdr_for_imperfect_rp(kappa_lp: float, kappa_rp: float, kappa_target: float) -> float:
    """Eq. 4 without assuming a perfect RP: the smallest RPDR with
    RPDR · κ_RP + (1 - RPDR) · κ_LP >= κ̃, i.e. (κ̃ - κ_LP) / (κ_RP - κ_LP), clipped to
    [0, 1] (1 when even RP alone falls short). With κ_RP = 1 it is exactly Eq. 4; by the
    triangle inequality the mixture replicates at least this linear combination."""
    if kappa_lp >= kappa_target:
        return 0.0
    if kappa_rp <= kappa_target or kappa_rp <= kappa_lp:
        return 1.0
    return float(min(1.0, (kappa_target - kappa_lp) / (kappa_rp - kappa_lp)))


def mixture(pi_rp: np.ndarray, pi_lp: np.ndarray, rpdr_rows: np.ndarray) -> np.ndarray:
    """Π_HP = RPDR · Π_RP + (1 - RPDR) · Π_LP, row-wise ((B, T), (B, T), (B,))."""
    w = np.asarray(rpdr_rows, dtype=np.float64)[:, None]
    return w * pi_rp + (1.0 - w) * pi_lp


def production_distribution(table: pa.Table, width: int, current: "HybridPolicy | None" = None) -> np.ndarray | None:
    """Π_0(·|X), the production policy that κ (Eq. 3) measures replication against, as a
    (B, width) matrix: the distribution of ``current`` (the policy in production, when it is
    a HybridPolicy; exact on every request, also on rows logged by older policies), else
    the logged distributions when every row has them, else None (unknown).

    Logs pooled over several refreshes carry each row's own logging distribution; those are
    right for IPS but not for replication: the new policy must stay close to the policy it
    replaces, not to a mix of its predecessors."""
    if current is not None:
        dist, _ = current.padded_distribution(table)
        out = np.zeros((dist.shape[0], width))
        out[:, : dist.shape[1]] = dist
        return out
    return logged_distributions(table, width)


def network_features(features: Features, table: pa.Table, embeddings: EmbeddingTables | None) -> Features:
    """What one network reads: ``features`` of ``table``, plus its PDRFE embeddings when it
    reads any."""
    return features if embeddings is None else with_embeddings(features, table, embeddings)


def _unpad(dist: np.ndarray, n_candidates: np.ndarray) -> list[np.ndarray]:
    return [dist[i, : n_candidates[i]] for i in range(len(n_candidates))]


@dataclass
class HybridPolicy:
    """RP + LP networks, the vocabulary they read and the per-intent RPDR values; each
    network may also read PDRFE embeddings (``rp_embeddings`` / ``lp_embeddings``, None: it
    reads none; with ``--lp-only`` the kept RP keeps its own)."""

    vocab: Vocabulary
    rp: PolicyNetwork
    lp: PolicyNetwork
    rpdr: dict[str, float] = field(default_factory=dict)
    kappa: dict[str, float] = field(default_factory=dict)
    kappa_target: float = 0.9
    default_rpdr: float = 1.0  # intents seen in neither training nor validation: RP only (tail)
    info: dict = field(default_factory=dict)  # training parameters, kept in the manifest
    rp_embeddings: EmbeddingTables | None = None
    lp_embeddings: EmbeddingTables | None = None

    # ---- distributions --------------------------------------------------------------------

    def rpdr_for(self, intents: np.ndarray) -> np.ndarray:
        """RPDR of each request's segment (top NLU intent)."""
        return np.array([self.rpdr.get(str(j), self.default_rpdr) for j in intents], dtype=np.float64)

    def model_distributions(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(Π_RP, Π_LP, RPDR per row, n_candidates) for a routing_log-shaped table; the
        distributions are (B, T) in the table's candidate order, zero-padded."""
        feats = encode(table, self.vocab)
        pi_rp = predict(self.rp, network_features(feats, table, self.rp_embeddings))
        pi_lp = predict(self.lp, network_features(feats, table, self.lp_embeddings))
        return pi_rp, pi_lp, self.rpdr_for(top_intents(table)), feats.n_candidates

    def padded_distribution(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Π_HP as a (B, T) zero-padded matrix plus the candidate counts."""
        pi_rp, pi_lp, w, n = self.model_distributions(table)
        return mixture(pi_rp, pi_lp, w), n

    def action_distribution(self, table: pa.Table) -> list[np.ndarray]:
        """Π_HP(· | X_i) for every row of a routing_log-shaped table, in candidate order."""
        dist, n = self.padded_distribution(table)
        return _unpad(dist, n)

    # ---- acting ---------------------------------------------------------------------------

    def act(self, table: pa.Table, rng: np.random.Generator | None = None) -> dict[str, np.ndarray | list]:
        """Sample one action per row: RP with probability RPDR_j, else LP, then an action
        from that model. Returns actions, mixture propensities, decided_by and the mixture
        distributions."""
        rng = rng if rng is not None else np.random.default_rng()
        pi_rp, pi_lp, w, n = self.model_distributions(table)
        use_rp = rng.random(len(n)) < w
        chosen = np.where(use_rp[:, None], pi_rp, pi_lp)
        cum = np.cumsum(chosen, axis=1)
        u = rng.random(len(n))[:, None] * cum[:, -1:]
        actions = np.minimum((cum <= u).sum(axis=1), n - 1)
        dist = mixture(pi_rp, pi_lp, w)
        propensities = dist[np.arange(len(n)), actions]
        return {
            "actions": actions.astype(np.int64),
            "propensities": propensities,
            "decided_by": np.where(use_rp, "rp", "lp"),
            "distributions": _unpad(dist, n),
        }

    def decide(self, requests: list[dict], rng: np.random.Generator | None = None) -> list[dict]:
        """Route served requests (dicts with utterance, candidates, context)."""
        if not requests:
            return []
        out = self.act(requests_to_table(requests), rng)
        return [
            {
                "action": int(a),
                "propensity": float(p),
                "decided_by": str(d),
                "probabilities": [float(x) for x in dist],
            }
            for a, p, d, dist in zip(out["actions"], out["propensities"], out["decided_by"], out["distributions"])
        ]

    def as_logging_policy(self, seed: int = 0):
        """A callable for ``World.routing(n, seed, policy=...)``: table -> (actions,
        propensities, distributions)."""
        rng = np.random.default_rng(seed)

        def policy(table: pa.Table):
            out = self.act(table, rng)
            return out["actions"], out["propensities"], out["distributions"]

        return policy

    # ---- artifact -------------------------------------------------------------------------

    def _embedding_prefixes(self) -> dict[str, str | None]:
        """The file prefix of each network's embedding tables (None: it reads none); one
        shared prefix when RP and LP read the same tables or the same published version."""
        rp, lp = self.rp_embeddings, self.lp_embeddings
        shared = rp is not None and lp is not None and (rp is lp or (rp.version is not None and rp.version == lp.version))
        return {
            net: None if emb is None else ("embeddings" if shared else f"{net}_embeddings")
            for net, emb in (("rp", rp), ("lp", lp))
        }

    def manifest(self) -> dict:
        prefixes = self._embedding_prefixes()
        entries = {
            net: None if prefix is None else {"version": getattr(self, f"{net}_embeddings").version, "files": prefix}
            for net, prefix in prefixes.items()
        }
        uses_embeddings = any(entries.values())
        return {
            "format": EMBEDDINGS_FORMAT if uses_embeddings else ARTIFACT_FORMAT,
            "vocab": self.vocab.to_dict(),
            "rp_config": self.rp.config.to_dict(),
            "lp_config": self.lp.config.to_dict(),
            "rpdr": self.rpdr,
            "kappa": self.kappa,
            "kappa_target": self.kappa_target,
            "default_rpdr": self.default_rpdr,
            "info": self.info,
            **({"embeddings": entries} if uses_embeddings else {}),
        }

    def to_files(self) -> dict:
        """Files for ``Store.publish("policy", files)``."""
        tables = {}
        for net, prefix in self._embedding_prefixes().items():
            if prefix is not None:
                emb = getattr(self, f"{net}_embeddings")
                tables.update({f"{prefix}_{kind}": t for kind, t in emb.to_tables().items()})
        return {"manifest": self.manifest(), "rp": state_bytes(self.rp), "lp": state_bytes(self.lp), **tables}

    @classmethod
    def from_files(cls, manifest: dict, rp: bytes, lp: bytes, **tables: pa.Table) -> "HybridPolicy":
        """Rebuild from ``to_files()`` (``tables``: the embedding tables the manifest names)."""
        if manifest.get("format") not in (ARTIFACT_FORMAT, EMBEDDINGS_FORMAT):
            raise ValueError(f"unsupported policy artifact format {manifest.get('format')!r}")
        embeddings = {}
        for net, entry in manifest.get("embeddings", {}).items():
            if entry is not None:
                prefix = entry["files"]
                embeddings[f"{net}_embeddings"] = EmbeddingTables.from_tables(
                    tables[f"{prefix}_customers"], tables[f"{prefix}_skills"], entry["version"]
                )
        return cls(
            vocab=Vocabulary.from_dict(manifest["vocab"]),
            rp=network_from_bytes(NetworkConfig(**manifest["rp_config"]), rp),
            lp=network_from_bytes(NetworkConfig(**manifest["lp_config"]), lp),
            rpdr={str(k): float(v) for k, v in manifest["rpdr"].items()},
            kappa={str(k): float(v) for k, v in manifest.get("kappa", {}).items()},
            kappa_target=float(manifest["kappa_target"]),
            default_rpdr=float(manifest["default_rpdr"]),
            info=dict(manifest.get("info", {})),
            **embeddings,
        )

    @classmethod
    def from_artifact(cls, art) -> "HybridPolicy":
        """Rebuild from a store ``Artifact`` (``store.load("policy")``), embeddings included."""
        manifest = art.json("manifest")
        prefixes = {e["files"] for e in manifest.get("embeddings", {}).values() if e is not None}
        tables = {f"{p}_{kind}": art.table(f"{p}_{kind}") for p in prefixes for kind in ("customers", "skills")}
        return cls.from_files(manifest, art.bytes("rp"), art.bytes("lp"), **tables)

    @classmethod
    def untrained(
        cls, vocab: Vocabulary, seed: int = 0, kappa_target: float = 0.9, embeddings: EmbeddingTables | None = None
    ) -> "HybridPolicy":
        """RP and LP with random weights (for wiring serving before any training), both
        reading ``embeddings`` when given."""
        import torch

        torch.manual_seed(seed)
        config = NetworkConfig.for_vocabulary(vocab, embeddings)
        return cls(
            vocab,
            PolicyNetwork(config).eval(),
            PolicyNetwork(config).eval(),
            kappa_target=kappa_target,
            rp_embeddings=embeddings,
            lp_embeddings=embeddings,
        )
