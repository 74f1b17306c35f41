"""Skill-routing requests (seed 002) with a logging policy of known propensities.

Each request carries 2-10 candidates (interpretation, skill): the interpretation the user
meant served by 1-3 of the customer's skills, plus 1-3 wrong interpretations from other
domains. The expected reward of a candidate is

    correct interpretation:  sigmoid(0.5 + 0.8 a(c, s) + E[device_type, category(s)] + q_s)
    wrong interpretation:    sigmoid(-2.5 + 0.5 q_s)

so the best skill depends on the device context and on the customer's latent taste. The
logging policy is a softmax over NLU confidence and skill popularity, mixed with uniform
exploration:  pi_0(k|x) = (1-eps) softmax(score/T)_k + eps/K.  Rewards are Bernoulli draws
of the chosen candidate's expected reward; the expected rewards of all candidates are the
ground truth from which any policy's true value follows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raylib.schema import CANDIDATE, CONTEXT, ROUTING_LOG, TRUTH_ROUTING
from raylib.sim.catalog import DOMAINS, INTENTS
from raylib.sim.population import DEVICE_TYPES
from raylib.sim.traffic import sample_segments, sigmoid

DEVICE_STATUSES = ("idle", "playing_music", "playing_video", "alarm_ringing")
LOGGING_POLICY_VERSION = "sim-logging"
POLICY_INPUT_COLUMNS = ("request_id", "customer_id", "timestamp", "utterance", "context", "candidates")


def segment_softmax(score: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Softmax of ``score`` within each segment [offsets[i], offsets[i+1])."""
    seg = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    top = np.maximum.reduceat(score, offsets[:-1])
    e = np.exp(score - top[seg])
    return e / np.add.reduceat(e, offsets[:-1])[seg]


def logging_distribution(nlu_conf, log_pop, offsets, temperature, epsilon) -> np.ndarray:
    """pi_0(k|x) = (1 - eps) softmax((conf_k + 0.1 log pop_k) / T) + eps / K, per request."""
    sizes = np.repeat(np.diff(offsets), np.diff(offsets))
    soft = segment_softmax((nlu_conf + 0.1 * log_pop) / temperature, offsets)
    return (1.0 - epsilon) * soft + epsilon / sizes


def generate_routing(world, n: int, rng: np.random.Generator, policy=None, id_prefix: str = "rq"):
    """``n`` routing requests, the decisions of ``policy`` (default: logging) and their truth."""
    cfg = world.config["routing"]
    cat, pop, model = world.catalog, world.population, world.traffic
    c = rng.integers(0, pop.n, n)
    r = model.sample_requests(c, rng)
    dev = np.floor(rng.random(n) * pop.n_devices[c]).astype(int)
    dtype = pop.device_type[c, dev]
    asr_conf = rng.beta(6.0, 1.5, n)
    kind = np.where(rng.random(n) < (1 - asr_conf) * 0.5, model.first_attempt_kind(r, rng), 0)
    utt = cat.var_utterance[model.variant(r, kind, rng)]

    d0 = model.rt_domain[r]
    lo_s, hi_s = cfg["skills_per_interpretation"]
    lo_a, hi_a = cfg["alternatives"]
    n_alt = rng.integers(lo_a, hi_a + 1, n)
    n_groups = 1 + n_alt
    g_req = np.repeat(np.arange(n), n_groups)
    g_idx = np.concatenate([np.arange(k) for k in n_groups])
    shift = rng.integers(1, len(DOMAINS), len(g_req))
    g_dom = np.where(g_idx == 0, d0[g_req], (d0[g_req] + shift) % len(DOMAINS))
    intent_of_domain = [np.flatnonzero([i.domain == d for i in INTENTS]) for d in DOMAINS]
    g_intent = np.array([intent_of_domain[d][rng.integers(len(intent_of_domain[d]))] for d in g_dom])
    g_intent = np.where(g_idx == 0, cat.rt_intent[r][g_req], g_intent)
    g_skills = np.where(g_idx == 0, rng.integers(lo_s, hi_s + 1, len(g_req)), rng.integers(1, 3, len(g_req)))
    g_skills = np.minimum(g_skills, pop.enabled.shape[2])
    g_conf = np.where(g_idx == 0, np.clip(0.6 * asr_conf[g_req] + 0.4 * rng.random(len(g_req)), 0.05, 0.99),
                      0.05 + 0.65 * rng.random(len(g_req)))

    k_req = np.repeat(g_req, g_skills)
    k_grp = np.repeat(np.arange(len(g_req)), g_skills)
    k_j = np.concatenate([np.arange(k) for k in g_skills])
    k_skill = pop.enabled[c[k_req], g_dom[k_grp], k_j]
    correct = g_idx[k_grp] == 0
    quality = world.skill_quality[k_skill]
    ctx = world.context_effect[dtype[k_req], cat.skill_meta["skill_category"][k_skill]]
    aff = pop.affinity(c[k_req], k_skill, cat)
    expected = np.where(correct, sigmoid(0.5 + 0.8 * aff + ctx + quality), sigmoid(-2.5 + 0.5 * quality))
    conf = g_conf[k_grp]
    order = np.lexsort((-conf, k_req))  # candidates of a request, by NLU confidence
    k_req, k_grp, k_skill, conf, expected = k_req[order], k_grp[order], k_skill[order], conf[order], expected[order]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(k_req, minlength=n))])

    skill_ids = np.asarray(cat.skill_ids)
    candidates = pa.StructArray.from_arrays(
        [pa.array(np.asarray(DOMAINS)[g_dom[k_grp]]),
         pa.array(np.asarray([i.name for i in INTENTS])[g_intent[k_grp]]),
         pa.array(skill_ids[k_skill]), pa.array(conf.astype(np.float32))],
        fields=list(CANDIDATE),
    )
    hours = rng.integers(0, 24, n)
    status = np.where(rng.random(n) < 0.3, rng.integers(1, len(DEVICE_STATUSES), n), 0)
    context = pa.StructArray.from_arrays(
        [pa.array(np.asarray(DEVICE_TYPES)[dtype]), pa.array(np.asarray(DEVICE_STATUSES)[status]),
         pa.array(asr_conf.astype(np.float32)), pa.array(hours.astype(np.int8))],
        fields=list(CONTEXT),
    )
    start = world.start_ms + (np.sort(rng.random(n)) * world.config["traffic"]["days"] * 86400e3).astype(np.int64)
    requests = pa.table({
        "request_id": pa.array([f"{id_prefix}-{i:08d}" for i in range(n)]),
        "customer_id": pa.array(np.asarray(pop.ids)[c]),
        "timestamp": pa.array(start, type=pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "utterance": pa.array(np.asarray(cat.vocab, dtype=object)[utt]),
        "context": context,
        "candidates": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), candidates),
    })

    if policy is None:
        log_pop = np.log(cat.skill_popularity[k_skill])
        probs = logging_distribution(conf, log_pop, offsets, cfg["logging_temperature"], cfg["logging_epsilon"])
        action = sample_segments(np.cumsum(probs), offsets[:-1], offsets[1:], rng) - offsets[:-1]
        propensity = probs[offsets[:-1] + action]
        distributions = [probs[offsets[i]:offsets[i + 1]] for i in range(n)]
        version = LOGGING_POLICY_VERSION
    else:
        action, propensity, distributions = policy(requests)
        action = np.asarray(action, dtype=np.int64)
        version = None
    reward = (rng.random(n) < expected[offsets[:-1] + action]).astype(np.float64)
    flat = pa.array(np.concatenate(distributions)) if distributions is not None else None
    props = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat) if flat is not None else pa.nulls(n, pa.list_(pa.float64()))
    log = requests.append_column("action", pa.array(action.astype(np.int32))) \
        .append_column("propensity", pa.array(np.asarray(propensity, dtype=np.float64))) \
        .append_column("propensities", props) \
        .append_column("reward", pa.array(reward)) \
        .append_column("policy_version", pa.array([version] * n, type=pa.string()))
    log = log.cast(ROUTING_LOG)
    intended = np.asarray(world.rt_interp_key, dtype=object)[r]
    truth = pa.table({
        "request_id": requests["request_id"],
        "expected_rewards": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(expected)),
        "intended_interpretation": pa.array(intended),
    }, schema=TRUTH_ROUTING)
    return log, truth
