"""The routing policy network of seed 002 (Sec. 3.3, Fig. 3).

Per candidate: categorical embeddings (domain, intent, skill_id) sized in proportion to the
square root of their cardinality, plus the shared utterance encoding (word vectors ->
BiLSTM -> sum over tokens) and shared context signals (device type / status / hour
embeddings, ASR confidence). The candidates, sorted by NLU confidence, go through a
BiLSTM, two fully connected layers and a softmax masked to the real candidates:

    Π_θ(a | X) = softmax_{a ∈ mask}( FC2( relu( FC1( BiLSTM(x_1 .. x_T) ) ) ) )

Optional PDRFE inputs (seed 000's conclusion: its representations injected into a
downstream router): with ``customer_dim``/``skill_dim`` > 0 the candidate vector x_k also
carries the customer's embedding c (shared by the request's candidates) and the
candidate skill's embedding s_k, and with ``embedding_product`` their elementwise product
c ⊙ s_k (seed 000 scores a customer-skill link by such a product), all before the
candidate BiLSTM:

    x_k = [ e(domain_k) || e(intent_k) || e(skill_k) || conf_k || u || ctx || asr
            || c || s_k || (c ⊙ s_k) ].

With none configured the network is exactly the one above.

The same network with ``head="reward"`` predicts each candidate's expected reward (the
reward model of the doubly robust objective and estimator).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from raylib.routing.features import CANDIDATE_FIELDS, CONTEXT_FIELDS, PAD, Features, Vocabulary


def embedding_dim(cardinality: int, scale: float = 1.6, max_dim: int = 32) -> int:
    """Embedding width ∝ sqrt(number of unique values) (Sec. 3.3), at least 2."""
    return int(min(max_dim, max(2, round(scale * math.sqrt(cardinality)))))


@dataclass
class NetworkConfig:
    """Sizes of one policy network (kept with the artifact to rebuild it)."""

    cardinalities: dict[str, int]
    word_dim: int = 32
    utterance_hidden: int = 32
    candidate_hidden: int = 48
    fc_hidden: int = 64
    head: str = "policy"  # "policy" -> probabilities, "reward" -> expected reward per candidate
    customer_dim: int = 0  # width of the PDRFE customer embedding input (0: none)
    skill_dim: int = 0  # width of the PDRFE skill embedding input (0: none)
    embedding_product: bool = False  # also feed c ⊙ s_k (needs customer_dim == skill_dim)

    def __post_init__(self):
        if self.embedding_product and (self.customer_dim != self.skill_dim or self.customer_dim == 0):
            raise ValueError(
                f"embedding_product needs equal, non-zero customer and skill widths, got {self.customer_dim} and {self.skill_dim}"
            )

    @classmethod
    def for_vocabulary(cls, vocab: Vocabulary, embeddings=None, **sizes) -> "NetworkConfig":
        """Sizes for ``vocab``; ``embeddings`` (an ``EmbeddingTables``) adds their widths."""
        names = CANDIDATE_FIELDS + CONTEXT_FIELDS + ("word",)
        if embeddings is not None:
            sizes = {"customer_dim": embeddings.customer_dim, "skill_dim": embeddings.skill_dim, **sizes}
        return cls(cardinalities={n: vocab.size(n) for n in names}, **sizes)

    @property
    def uses_embeddings(self) -> bool:
        return self.customer_dim > 0 or self.skill_dim > 0

    def to_dict(self) -> dict:
        """The sizes; the PDRFE fields only when used (a network without them serializes
        exactly as before they existed)."""
        out = asdict(self)
        if not self.uses_embeddings:
            for name in ("customer_dim", "skill_dim", "embedding_product"):
                out.pop(name)
        return out


class PolicyNetwork(nn.Module):
    """BiLSTM over sorted candidate encodings -> two FC layers -> masked softmax."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        card = config.cardinalities
        self.cand_emb = nn.ModuleList(
            nn.Embedding(card[n], embedding_dim(card[n]), padding_idx=PAD) for n in CANDIDATE_FIELDS
        )
        self.ctx_emb = nn.ModuleList(
            nn.Embedding(card[n], embedding_dim(card[n]), padding_idx=PAD) for n in CONTEXT_FIELDS
        )
        self.word_emb = nn.Embedding(card["word"], config.word_dim, padding_idx=PAD)
        self.utt_lstm = nn.LSTM(config.word_dim, config.utterance_hidden, batch_first=True, bidirectional=True)
        width = (
            sum(e.embedding_dim for e in self.cand_emb)
            + 1  # NLU confidence
            + 2 * config.utterance_hidden
            + sum(e.embedding_dim for e in self.ctx_emb)
            + 1  # ASR confidence
            + config.customer_dim
            + config.skill_dim
            + (config.skill_dim if config.embedding_product else 0)
        )
        self.cand_lstm = nn.LSTM(width, config.candidate_hidden, batch_first=True, bidirectional=True)
        self.fc1 = nn.Linear(2 * config.candidate_hidden, config.fc_hidden)
        self.fc2 = nn.Linear(config.fc_hidden, 1)

    def encode_utterance(self, tokens: torch.Tensor) -> torch.Tensor:
        """Word vectors -> BiLSTM -> sum over the real tokens: (B, L) -> (B, 2H)."""
        out = run_packed(self.utt_lstm, self.word_emb(tokens), tokens != PAD)
        return out.sum(dim=1)

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unnormalized per-slot scores (B, T); padded slots are -inf."""
        cand_cat, mask = batch["cand_cat"], batch["mask"]
        cand = [emb(cand_cat[..., i]) for i, emb in enumerate(self.cand_emb)]
        shared = torch.cat(
            [self.encode_utterance(batch["utterance"])]
            + [emb(batch["context"][:, i]) for i, emb in enumerate(self.ctx_emb)]
            + [batch["signals"]],
            dim=-1,
        )
        x = torch.cat(
            cand + [batch["cand_num"], shared.unsqueeze(1).expand(-1, cand_cat.shape[1], -1)] + self.pdrfe_inputs(batch),
            dim=-1,
        )
        h = run_packed(self.cand_lstm, x, mask)
        s = self.fc2(torch.relu(self.fc1(h))).squeeze(-1)
        return s.masked_fill(~mask, float("-inf")) if self.config.head == "policy" else s.masked_fill(~mask, 0.0)

    def pdrfe_inputs(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The optional per-slot PDRFE inputs [c, s_k, c ⊙ s_k], each (B, T, D)."""
        parts = []
        width = batch["mask"].shape[1]
        if self.config.customer_dim:
            customer = batch["customer"].unsqueeze(1).expand(-1, width, -1)
            parts.append(customer)
        if self.config.skill_dim:
            parts.append(batch["cand_emb"])
        if self.config.embedding_product:
            parts.append(customer * batch["cand_emb"])
        return parts

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Policy head: probabilities Π_θ(a|X) over sorted slots (B, T), zero on padding.
        Reward head: predicted expected reward of each slot (B, T)."""
        s = self.scores(batch)
        return torch.softmax(s, dim=-1) if self.config.head == "policy" else s


def run_packed(lstm: nn.LSTM, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A batch-first (Bi)LSTM over the real steps of each row only; zeros on padding.

    Packing makes a row's output independent of how much padding its batch has (the
    backward direction would otherwise start on padding), so a request gets the same
    probabilities alone or batched with longer ones."""
    lengths = mask.sum(dim=1).clamp(min=1).cpu()
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out * mask.unsqueeze(-1)


def to_tensors(features: Features, rows=None) -> dict[str, torch.Tensor]:
    """Features (numpy) -> a dict of tensors for ``PolicyNetwork``."""
    arrays = features.arrays() if rows is None else features.subset(rows).arrays()
    return {k: torch.from_numpy(v) for k, v in arrays.items() if k not in ("order", "n_candidates")}


@torch.no_grad()
def predict(network: PolicyNetwork, features: Features, batch_size: int = 4096, threads: int = 1) -> np.ndarray:
    """Network outputs for every request, in ORIGINAL candidate order: (B, T) float64
    (``threads`` torch intra-op threads while predicting)."""
    network.eval()
    parts = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for start in range(0, len(features), batch_size):
            rows = np.arange(start, min(start + batch_size, len(features)))
            parts.append(network(to_tensors(features, rows)).double().numpy())
    finally:
        torch.set_num_threads(before)
    sorted_out = np.concatenate(parts) if parts else np.zeros((0, features.mask.shape[1]))
    return features.original_order(sorted_out)


def state_bytes(network: PolicyNetwork) -> bytes:
    """The network's weights as bytes (for the store)."""
    import io

    buf = io.BytesIO()
    torch.save(network.state_dict(), buf)
    return buf.getvalue()


def network_from_bytes(config: NetworkConfig, data: bytes) -> PolicyNetwork:
    import io

    net = PolicyNetwork(config)
    net.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    net.eval()
    return net
