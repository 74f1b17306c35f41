"""The assistant's catalog: domains, intents and their phrasings, entities, skills.

Every request a user can mean is a *request type* (an intent, plus an entity for intents
with a slot). Each request type has a fixed list of *variants*, the utterances a user may
actually produce for it, each of one kind:

- ``canonical``: a supported phrasing with the entity's real name (NLU understands it);
- ``asr``: the entity's name after a recurring, phonetically plausible ASR confusion
  ("play maj and dragons"); the NLU cannot resolve it (or resolves a different entity);
- ``partial``: a user error, part of a multi-word song title ("play rumor");
- ``unsupported``: a phrasing the NLU does not support ("don't play this song again",
  where "thumbs down this song" works).

Utterances are held once in a vocabulary and referred to by integer id, so traffic is
generated with array indexing alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raylib.schema import canonical_slots, interpretation_key
from raylib.sim import phonetics

CANONICAL, ASR, PARTIAL, UNSUPPORTED = 0, 1, 2, 3
KIND_NAMES = ("canonical", "asr", "partial", "unsupported")
CAUSE = {ASR: "asr", PARTIAL: "user", UNSUPPORTED: "nlu"}


@dataclass(frozen=True)
class Intent:
    domain: str
    name: str
    entity: str | None  # entity kind filling the slot, None for slot-less intents
    slot: str | None
    templates: tuple[str, ...]  # supported phrasings; "{x}" is the entity's name
    unsupported: tuple[str, ...] = ()
    share: float = 1.0  # share of the domain's traffic


DOMAINS = ("Music", "Weather", "Shopping", "QA", "SmartHome")
DOMAIN_SHARE = np.array([0.40, 0.12, 0.12, 0.16, 0.20])
SKILL_DOMAIN_SHARE = np.array([0.35, 0.08, 0.12, 0.20, 0.25])

INTENTS: tuple[Intent, ...] = (
    Intent("Music", "PlayMusicIntent", "song", "SongName",
           ("play {x}", "play the song {x}", "play {x} by {artist}"), share=0.55),
    Intent("Music", "PlayMusicIntent", "artist", "ArtistName",
           ("play {x}", "play music by {x}", "play songs by {x}"), share=0.2),
    Intent("Music", "PlayStationIntent", "station", "StationName",
           ("play {x} radio", "tune in to {x} radio"), share=0.1),
    Intent("Music", "ThumbsDownIntent", None, None,
           ("thumbs down this song", "i don't like this song"),
           ("don't play this song again", "never play this song again", "skip this song forever"),
           share=0.05),
    Intent("Music", "PlayMusicIntent", None, None,
           ("play music", "play some music", "shuffle my songs"), share=0.1),
    Intent("Weather", "GetWeatherIntent", "city", "City",
           ("what's the weather in {x}", "weather in {x}", "how is the weather in {x}"),
           ("do i need an umbrella in {x}", "is it cold outside in {x}")),
    Intent("Shopping", "AddToCartIntent", "product", "ProductName",
           ("add {x} to my cart", "buy {x}"), ("put {x} in my basket", "i need more {x}")),
    Intent("QA", "QAIntent", "topic", "Topic",
           ("what is {x}", "tell me about {x}"), ("explain {x} to me",)),
    Intent("SmartHome", "TurnOnIntent", "device", "DeviceName",
           ("turn on the {x}", "switch on the {x}"), ("make the {x} bright",), share=0.45),
    Intent("SmartHome", "TurnOffIntent", "device", "DeviceName",
           ("turn off the {x}", "switch off the {x}"), ("make the {x} dark", "kill the {x}"), share=0.45),
    Intent("SmartHome", "SetVolumeIntent", "level", "VolumeLevel",
           ("volume {x}", "set the volume to {x}"), share=0.1),
)
GENERIC_INTENT = 4  # index of the generic "play music" request
INTERJECTIONS = (("Global", "StopIntent", ("stop", "shut up")), ("Global", "CancelIntent", ("cancel", "never mind")))
SYSTEM_SKILL = "sk-system"

ROOMS = ("kitchen", "bedroom", "living room", "office", "garage", "hallway", "porch", "basement")
APPLIANCES = ("light", "lamp", "fan", "heater", "plug", "tv")
LEVELS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ENTITY_WORDS = {"song": (1, 3), "artist": (1, 2), "station": (1, 1), "city": (1, 2), "product": (1, 2), "topic": (1, 2)}

# Seed 000, Table 2 cardinalities.
N_SKILL_CATEGORY, N_SKILL_TYPE, N_SKILL_SUBCATEGORY, N_REPORTING = 22, 7, 69, 28
WBR_COR = ("US", "GB", "DE", "JP", "IN", "FR", "IT", "ES", "CA", "MX", "BR", "AU", "NL", "SE", "PL", "TR", "AE", "SG", "ROW")
WBR_SHARE = np.array([0.45, 0.08, 0.08, 0.06, 0.06, 0.04, 0.03, 0.03, 0.04, 0.02, 0.02, 0.02, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])


@dataclass
class Catalog:
    """Entities, skills and the variant table of every request type."""

    entities: dict[str, list[str]]  # kind -> names (index = entity id)
    song_artist: np.ndarray  # artist id of each song
    entity_popularity: dict[str, np.ndarray]  # kind -> normalised popularity
    vocab: list[str]  # utterance id -> text
    # request types
    rt_intent: np.ndarray  # intent index of each request type
    rt_entity: np.ndarray  # entity id (-1 for slot-less)
    rt_share: np.ndarray  # share of traffic within the domain (popularity-weighted)
    rt_intended: np.ndarray  # utterance id of the intended (canonical first-template) utterance
    rt_asr_rate: np.ndarray  # per request type ASR error rate (entity difficulty)
    # variants: CSR over request types
    var_offsets: np.ndarray
    var_utterance: np.ndarray
    var_kind: np.ndarray
    var_weight: np.ndarray  # selection weight within (request type, kind)
    # skills
    skill_ids: list[str]
    skill_domain: np.ndarray  # domain index (-1: system skill)
    skill_popularity: np.ndarray
    skill_meta: dict[str, np.ndarray]

    @property
    def n_request_types(self) -> int:
        return len(self.rt_intent)

    def interpretation_of(self, intent_index: int, entity: int) -> str:
        """The interpretation key (``domain|intent|slots``) of a request type."""
        intent = INTENTS[intent_index]
        slots = {}
        if intent.entity is not None:
            slots[intent.slot] = self.entities[intent.entity][entity]
            if intent.entity == "song":
                slots["ArtistName"] = self.entities["artist"][self.song_artist[entity]]
        return interpretation_key(intent.domain, intent.name, canonical_slots(slots))


def _zipf(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** a
    return (weights / weights.sum())[rng.permutation(n)]


def _entity_names(config: dict, rng: np.random.Generator) -> dict[str, list[str]]:
    words = phonetics.confusable_words()
    used: set[str] = set()
    names: dict[str, list[str]] = {}
    for kind, (lo, hi) in ENTITY_WORDS.items():
        count = config["catalog"][f"n_{kind}s"] if kind != "city" else config["catalog"]["n_cities"]
        out: list[str] = []
        while len(out) < count:
            name = " ".join(words[i] for i in rng.integers(0, len(words), rng.integers(lo, hi + 1)))
            if name not in used:
                used.add(name)
                out.append(name)
        names[kind] = out
    n_dev = min(config["catalog"]["n_devices"], len(ROOMS) * len(APPLIANCES))
    pairs = [f"{r} {a}" for r in ROOMS for a in APPLIANCES]
    names["device"] = [pairs[i] for i in rng.permutation(len(pairs))[:n_dev]]
    names["level"] = list(LEVELS)
    return names


def _confusions(name: str, k: int, rng: np.random.Generator) -> list[str]:
    """Up to ``k`` recurring ASR confusions of ``name``: one word swapped for a phonetic neighbour."""
    words = name.split()
    options = [(i, n) for i, w in enumerate(words) for n in phonetics.neighbours(w)]
    if not options:
        return []
    picks = rng.choice(len(options), size=min(k, len(options)), replace=False)
    out = []
    for p in picks:
        i, swap = options[p]
        out.append(" ".join(words[:i] + [swap] + words[i + 1 :]))
    return out


def _fill(template: str, name: str, artist: str | None) -> str:
    return template.replace("{x}", name).replace("{artist}", artist or "")


def build_catalog(config: dict, rng: np.random.Generator) -> Catalog:
    """Draw entities, skills and the variant table for ``config``."""
    cat = config["catalog"]
    noise = config["noise"]
    entities = _entity_names(config, rng)
    song_artist = rng.integers(0, len(entities["artist"]), len(entities["song"]))
    popularity = {k: _zipf(len(v), cat["entity_zipf"], rng) for k, v in entities.items()}

    vocab: list[str] = []
    vocab_id: dict[str, int] = {}

    def uid(text: str) -> int:
        if text not in vocab_id:
            vocab_id[text] = len(vocab)
            vocab.append(text)
        return vocab_id[text]

    rt_intent, rt_entity, rt_share, rt_intended, rt_asr = [], [], [], [], []
    offsets, v_utt, v_kind, v_weight = [0], [], [], []
    a, b = noise["asr_difficulty_beta"]
    for ii, intent in enumerate(INTENTS):
        n_ent = len(entities[intent.entity]) if intent.entity else 1
        pops = popularity[intent.entity] if intent.entity else np.ones(1)
        for e in range(n_ent):
            name = entities[intent.entity][e] if intent.entity else ""
            artist = entities["artist"][song_artist[e]] if intent.entity == "song" else None
            variants: list[tuple[int, int, float]] = []
            for t in intent.templates:
                variants.append((uid(_fill(t, name, artist)), CANONICAL, 1.0))
            asr_rate = 0.0
            if intent.entity in ENTITY_WORDS:
                confusions = _confusions(name, noise["confusions_per_entity"], rng)
                for rank, wrong in enumerate(confusions):
                    for t in intent.templates[:2]:
                        variants.append((uid(_fill(t, wrong, artist)), ASR, 0.7 ** rank))
                asr_rate = float(rng.beta(a, b)) if confusions else 0.0
            if intent.entity == "song" and len(name.split()) >= 2:
                variants.append((uid(_fill(intent.templates[0], name.split()[0], None)), PARTIAL, 1.0))
            for t in intent.unsupported:
                variants.append((uid(_fill(t, name, None)), UNSUPPORTED, 1.0))
            rt_intent.append(ii)
            rt_entity.append(e if intent.entity else -1)
            rt_share.append(intent.share * pops[e])
            rt_intended.append(variants[0][0])
            rt_asr.append(asr_rate)
            for u, k, w in variants:
                v_utt.append(u)
                v_kind.append(k)
                v_weight.append(w)
            offsets.append(len(v_utt))

    n_skills = cat["n_skills"]
    skill_domain = rng.choice(len(DOMAINS), size=n_skills, p=SKILL_DOMAIN_SHARE)
    skill_domain[: len(DOMAINS)] = np.arange(len(DOMAINS))  # every domain has a skill
    skill_pop = _zipf(n_skills, cat["skill_zipf"], rng)
    # categories cluster by domain so metadata is informative
    category = (skill_domain * 4 + rng.integers(0, 6, n_skills)) % N_SKILL_CATEGORY
    subcategory = (category * 3 + rng.integers(0, 3, n_skills)) % N_SKILL_SUBCATEGORY
    skill_meta = {
        "skill_category": category,
        "skill_type": rng.choice(N_SKILL_TYPE, n_skills, p=np.array([0.5, 0.2, 0.1, 0.08, 0.06, 0.04, 0.02])),
        "skill_subcategory": subcategory,
        "reporting_category": (category + rng.integers(0, 7, n_skills)) % N_REPORTING,
    }
    skill_ids = [f"sk-{x:06x}" for x in rng.permutation(n_skills * 16)[:n_skills]]
    return Catalog(
        entities=entities,
        song_artist=song_artist,
        entity_popularity=popularity,
        vocab=vocab,
        rt_intent=np.array(rt_intent),
        rt_entity=np.array(rt_entity),
        rt_share=np.array(rt_share),
        rt_intended=np.array(rt_intended),
        rt_asr_rate=np.array(rt_asr),
        var_offsets=np.array(offsets),
        var_utterance=np.array(v_utt),
        var_kind=np.array(v_kind, dtype=np.int8),
        var_weight=np.array(v_weight),
        skill_ids=skill_ids,
        skill_domain=skill_domain,
        skill_popularity=skill_pop,
        skill_meta=skill_meta,
    )
