"""The simulated NLU: utterance -> interpretation (domain, intent, canonical slots) + status.

It understands the supported phrasings of every intent and resolves slot values against
the catalog's gazetteer. A supported phrasing whose entity is unknown (an ASR confusion, a
partial title) keeps its domain and intent with the raw slot value and status
``no_match``; an unsupported phrasing falls back to ``Unknown|FallbackIntent`` with the
text as its slot (so distinct failures stay distinct states of the chain), or, with
``fallback_keeps_text=False`` (setting ``nlu.fallback_keeps_text``), to one uninformative
``Unknown|FallbackIntent|`` shared by every unsupported phrasing: the collapsed
interpretation a production NLU's generic failure gives.
"""

from __future__ import annotations

import re

from raylib.schema import canonical_slots, normalize_utterance
from raylib.sim.catalog import INTENTS, INTERJECTIONS, Catalog

Parse = tuple[str, str, str, str]  # domain, intent, slots, status


class NLU:
    """Template grammar + gazetteer built from a catalog; results are cached per utterance."""

    def __init__(self, catalog: Catalog, fallback_keeps_text: bool = True):
        self._fallback_keeps_text = fallback_keeps_text
        self._fixed: dict[str, Parse] = {}
        for intent in INTENTS:
            if intent.entity is None:
                for t in intent.templates:
                    self._fixed[t] = (intent.domain, intent.name, "", "ok")
        for domain, name, phrases in INTERJECTIONS:
            for p in phrases:
                self._fixed[p] = (domain, name, "", "ok")
        self._gazetteer = {kind: {n: i for i, n in enumerate(names)} for kind, names in catalog.entities.items()}
        self._catalog = catalog
        patterns = []
        for intent in INTENTS:
            if intent.entity is None:
                continue
            for t in intent.templates:
                literal = len(t.replace("{x}", "").replace("{artist}", ""))
                regex = "^" + re.escape(t).replace(r"\{x\}", "(?P<x>.+?)").replace(r"\{artist\}", "(?P<artist>.+)") + "$"
                patterns.append((literal, re.compile(regex), intent))
        self._patterns = [(p, i) for _, p, i in sorted(patterns, key=lambda x: -x[0])]
        self._cache: dict[str, Parse] = {}

    def parse(self, utterance: str) -> Parse:
        text = normalize_utterance(utterance)
        hit = self._cache.get(text)
        if hit is None:
            hit = self._cache[text] = self._parse(text)
        return hit

    def _parse(self, text: str) -> Parse:
        if text in self._fixed:
            return self._fixed[text]
        for pattern, intent in self._patterns:
            m = pattern.match(text)
            if m:
                return self._resolve(intent, m.group("x"), m.groupdict().get("artist"))
        slots = {"Text": text} if self._fallback_keeps_text else {}
        return ("Unknown", "FallbackIntent", canonical_slots(slots), "no_match")

    def _resolve(self, intent, value: str, artist: str | None) -> Parse:
        gaz = self._gazetteer
        if intent.entity == "song" and artist is None and value not in gaz["song"] and value in gaz["artist"]:
            # "play X" names an artist rather than a song
            return (intent.domain, intent.name, canonical_slots({"ArtistName": value}), "ok")
        if intent.entity == "song":
            song = gaz["song"].get(value)
            known_artist = None if song is None else self._catalog.entities["artist"][self._catalog.song_artist[song]]
            ok = song is not None and (artist is None or artist == known_artist)
            slots = {"SongName": value}
            if ok:
                slots["ArtistName"] = known_artist
            elif artist is not None:
                slots["ArtistName"] = artist
            return (intent.domain, intent.name, canonical_slots(slots), "ok" if ok else "no_match")
        ok = value in gaz[intent.entity]
        return (intent.domain, intent.name, canonical_slots({intent.slot: value}), "ok" if ok else "no_match")
