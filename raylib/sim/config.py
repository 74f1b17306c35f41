"""Every knob of the simulated world, with presets.

A configuration is a nested dict of plain values so it round-trips through YAML/JSON
(``world.json`` records the resolved one). ``resolve(preset, overrides)`` deep-merges a
user's overrides into a preset and rejects unknown keys, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import copy

from raylib import uri
from raylib.errors import UserError

DEFAULTS: dict = {
    "catalog": {
        "n_skills": 300,
        "n_songs": 800,
        "n_artists": 250,
        "n_stations": 60,
        "n_cities": 80,
        "n_products": 200,
        "n_topics": 120,
        "n_devices": 30,
        "entity_zipf": 1.1,  # popularity of entities ~ rank^-a
        "skill_zipf": 1.2,  # heavy-tailed skill popularity
    },
    "population": {
        "n_customers": 2000,
        "devices_per_customer": [1, 4],
        "skills_per_domain": 3,  # skills a customer has enabled per domain
        "latent_dim": 8,
        "metadata_effect": 0.8,  # how strongly Table-2 metadata shapes preferences
    },
    "traffic": {
        "sessions_per_customer": 8.0,
        "days": 14,
        "followup_rate": 0.2,  # a new request within the same session after a success
        "turn_gap_s": [2.0, 30.0],
        "slow_rephrase_rate": 0.03,  # rephrase after > 45 s: splits the session
        "device_switch_rate": 0.02,  # rephrase from another device of the customer
        "max_attempts": 7,
    },
    "noise": {
        "asr_difficulty_beta": [0.25, 4.0],  # per-entity ASR error rate ~ Beta(a, b)
        "confusions_per_entity": 2,
        "partial_title_rate": 0.06,  # user says part of a multi-word title
        "unsupported_phrasing_rate": 0.08,  # for intents that have unsupported phrasings
        "skill_error_rate": 0.02,  # status=error: the skill failed
        "utterance_difficulty_sd": 0.6,  # per-utterance shift of the defect log-odds
        # An outage (seed 001's "period of time where the original utterance was not usually
        # successful"): this share of entity request types, drawn by popularity, fails
        # (status error) in traffic periods < outage_periods (``simulate(period=...)``).
        "outage_share": 0.0,
        "outage_periods": 1,
    },
    "nlu": {
        # An unsupported phrasing falls back to Unknown|FallbackIntent with its text as the
        # slot (true), or to the one uninformative Unknown|FallbackIntent| that every such
        # phrasing shares (false: collapsed interpretations, issue 15; see
        # jobs/sim_collapsed_failures.yaml).
        "fallback_keeps_text": True,
    },
    "behaviour": {  # what a user does after a defect (normalised)
        "rephrase_good": 0.55,
        "rephrase_bad": 0.12,
        "generic": 0.08,
        "abandon": 0.15,
        "interject": 0.10,
        "interject_then_rephrase": 0.35,  # after "stop"/"cancel" the user tries again
        "stop_after_unwanted": 0.6,  # says stop when an ok turn was not what they wanted
        # after a skill failure (status error) the user changes their mind and asks for the
        # similar entity of the same intent instead (seed 001: users "asking to play another
        # similar song"); what the online blacklist exists for
        "switch_entity": 0.0,
    },
    "defect": {
        "base_logit": -2.6,
        "affinity_weight": 0.9,
        "wrong_interpretation": 0.9,
    },
    "routing": {
        "n_requests": 10000,
        "alternatives": [1, 3],  # wrong interpretations among the candidates
        "skills_per_interpretation": [1, 3],
        "logging_temperature": 0.15,
        "logging_epsilon": 0.1,  # uniform exploration of the logging policy
        "context_effect": 1.2,  # how much device context changes the best skill
    },
    "chunk_customers": 20000,  # customers simulated (and written) per Parquet part
}

PRESETS: dict[str, dict] = {
    "small": {},
    "medium": {
        "catalog": {"n_skills": 2000, "n_songs": 3000, "n_artists": 800, "n_stations": 150,
                    "n_cities": 200, "n_products": 600, "n_topics": 300, "n_devices": 40},
        "population": {"n_customers": 30000},
        "traffic": {"sessions_per_customer": 10.0},
        "routing": {"n_requests": 100000},
    },
    "large": {
        "catalog": {"n_skills": 5000, "n_songs": 10000, "n_artists": 2500, "n_stations": 400,
                    "n_cities": 500, "n_products": 2000, "n_topics": 800, "n_devices": 60},
        "population": {"n_customers": 300000},
        "traffic": {"sessions_per_customer": 12.0},
        "routing": {"n_requests": 1000000},
    },
}


def _merge(base: dict, override: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base:
            raise UserError(f"unknown simulator setting {where!r}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"simulator setting {where!r} must be a mapping")
            out[key] = _merge(base[key], value, where + ".")
        else:
            if isinstance(base[key], (int, float)) and not isinstance(value, (int, float)):
                raise UserError(f"simulator setting {where!r} must be a number, got {value!r}")
            out[key] = value
    return out


def resolve(preset: str = "small", overrides: dict | None = None) -> dict:
    """The full configuration of a preset with ``overrides`` deep-merged into it."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    config = _merge(DEFAULTS, PRESETS[preset])
    return _merge(config, overrides or {})


def load_overrides(path: str | None) -> dict:
    """Setting overrides from a YAML file (``--config``); none without a path."""
    return {} if path is None else uri.read_settings(path, "simulator settings")
