"""Interaction traffic: sessions of turns, generated for many sessions at once.

A session starts with a request the user means (a request type). Each turn the user
produces a variant of it: the first attempt is canonical unless the entity's recurring ASR
confusion, a partial title or an unsupported phrasing strikes. The NLU interprets the
utterance; the customer's enabled skill for that domain runs it. The turn is defective
when the NLU fails (``no_match``), the skill fails (``error``), the interpretation is not
what the user meant, or, for a correct interpretation, with probability

    P(defect) = sigmoid(b + d_u - w * a(c, s))

(``d_u`` a fixed difficulty of the utterance, ``a(c, s)`` the customer-skill affinity), so
both who-uses-which-skill and the words said carry signal. After a defect the user
rephrases correctly, rephrases wrongly, switches to a generic request ("play music"),
abandons, or interjects "stop"/"cancel" (and sometimes tries again); after a skill failure
(status ``error``) a share ``behaviour.switch_entity`` changes their mind and asks for the
similar entity of the same intent (``World.similar_rt``). During an outage
(``outage=True``) every request the NLU reads as one of ``World.outage_rt`` fails with
status ``error``.

Served rewrites sit in the request path: ``rewrite[u]`` is the utterance the NLU receives
when ``u`` is said (-1: none), for every customer outside the ``holdout``. The NLU
interprets the rewrite, the skill runs it, and the user reacts to what it produced through
the same state machine (a wrong interpretation is a defect with probability
``defect.wrong_interpretation``, "stop" often follows). Turn gaps are a few
seconds; occasionally a rephrase comes after more than 45 s (a session split) or from
another device. The whole state machine runs on numpy arrays, one step for all active
sessions at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raylib.sim.catalog import ASR, CANONICAL, DOMAINS, GENERIC_INTENT, INTENTS, PARTIAL, UNSUPPORTED

FIRST, REPHRASE_GOOD, REPHRASE_BAD, GENERIC, INTERJECTION, FOLLOWUP, SWITCH = range(7)
TURN_KINDS = ("first", "rephrase_good", "rephrase_bad", "generic", "interjection", "followup", "switch_entity")
SWITCH_BEHAVIOUR = 5  # after rephrase good/bad, generic, abandon, interject (0..4)
SESSION_SLOT_MARGIN_S = 900.0  # sessions of one customer start >= 15 min apart


@dataclass
class Turns:
    """Column arrays of generated turns (one entry per interaction)."""

    customer: np.ndarray
    device: np.ndarray
    time_s: np.ndarray
    utterance: np.ndarray  # vocab id said (interjections: -1 stop, -2 cancel)
    served: np.ndarray  # vocab id the NLU received: the served rewrite, else = utterance
    skill: np.ndarray  # skill index, -1 = system skill
    status: np.ndarray  # 0 ok, 1 error, 2 no_match
    defect: np.ndarray
    defect_probability: np.ndarray
    request_type: np.ndarray
    turn_kind: np.ndarray
    first_defect_attempts: np.ndarray  # per defective first attempt: attempts until absorbed


def sample_segments(cum: np.ndarray, start: np.ndarray, stop: np.ndarray, rng) -> np.ndarray:
    """Draw one index in each segment [start, stop) of a global cumulative-weight array."""
    lo = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
    hi = cum[stop - 1]
    target = lo + rng.random(len(start)) * (hi - lo)
    return np.minimum(np.searchsorted(cum, target, side="right"), stop - 1)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class TrafficModel:
    """Everything the per-step session update needs, precomputed from a World."""

    def __init__(self, world):
        self.w = world
        cat = world.catalog
        offsets = cat.var_offsets
        n_rt = cat.n_request_types
        # (request type, kind) -> variant segment; variants are stored grouped by kind
        self.kind_start = np.zeros((n_rt, 4), dtype=np.int64)
        self.kind_stop = np.zeros((n_rt, 4), dtype=np.int64)
        rt_of_var = np.repeat(np.arange(n_rt), np.diff(offsets))
        for k in range(4):
            idx = np.flatnonzero(cat.var_kind == k)
            first = np.full(n_rt, len(cat.var_kind))
            last = np.full(n_rt, -1)
            np.minimum.at(first, rt_of_var[idx], idx)
            np.maximum.at(last, rt_of_var[idx], idx)
            self.kind_start[:, k] = np.where(last >= 0, first, 0)
            self.kind_stop[:, k] = np.where(last >= 0, last + 1, 0)
        self.kind_count = self.kind_stop - self.kind_start
        self.cum_weight = np.cumsum(cat.var_weight)
        self.utt_outage = np.isin(world.utt_interp, world.rt_interp[world.outage_rt]) & (world.utt_status == 0)
        rt_domain = np.array([DOMAINS.index(INTENTS[i].domain) for i in cat.rt_intent])
        self.rt_domain = rt_domain
        self.generic_rt = int(np.flatnonzero(cat.rt_intent == GENERIC_INTENT)[0])
        # per domain: cumulative share of its request types, for sampling requests
        self.domain_rts = [np.flatnonzero(rt_domain == d) for d in range(len(DOMAINS))]
        self.domain_cum = [np.cumsum(cat.rt_share[r]) / cat.rt_share[r].sum() for r in self.domain_rts]

    def sample_requests(self, customers: np.ndarray, rng) -> np.ndarray:
        pref = self.w.population.domain_pref[customers]
        dom = (rng.random(len(customers))[:, None] > np.cumsum(pref, 1)).sum(1)
        dom = np.minimum(dom, len(DOMAINS) - 1)
        out = np.empty(len(customers), dtype=np.int64)
        for d in range(len(DOMAINS)):
            m = dom == d
            pick = np.searchsorted(self.domain_cum[d], rng.random(m.sum()), side="right")
            out[m] = self.domain_rts[d][np.minimum(pick, len(self.domain_rts[d]) - 1)]
        return out

    def first_attempt_kind(self, r: np.ndarray, rng) -> np.ndarray:
        noise = self.w.config["noise"]
        cat = self.w.catalog
        p_asr = np.where(self.kind_count[r, ASR] > 0, cat.rt_asr_rate[r], 0.0)
        p_part = np.where(self.kind_count[r, PARTIAL] > 0, noise["partial_title_rate"], 0.0)
        p_uns = np.where(self.kind_count[r, UNSUPPORTED] > 0, noise["unsupported_phrasing_rate"], 0.0)
        u = rng.random(len(r))
        return np.select([u < p_asr, u < p_asr + p_part, u < p_asr + p_part + p_uns], [ASR, PARTIAL, UNSUPPORTED], CANONICAL)

    def error_kind(self, r: np.ndarray, rng) -> np.ndarray:
        """A wrong rephrase: one of the request type's error kinds (canonical if it has none)."""
        counts = self.kind_count[r][:, 1:] > 0
        n = counts.sum(1)
        pick = np.floor(rng.random(len(r)) * np.maximum(n, 1)).astype(int)
        order = np.cumsum(counts, 1) - 1
        kind = 1 + np.argmax((order == pick[:, None]) & counts, axis=1)
        return np.where(n > 0, kind, CANONICAL)

    def variant(self, r: np.ndarray, kind: np.ndarray, rng) -> np.ndarray:
        start = self.kind_start[r, kind]
        stop = self.kind_stop[r, kind]
        empty = stop <= start
        start = np.where(empty, self.kind_start[r, CANONICAL], start)
        stop = np.where(empty, self.kind_stop[r, CANONICAL], stop)
        return sample_segments(self.cum_weight, start, stop, rng)

    def choose_skill(self, c: np.ndarray, domain: np.ndarray, rng) -> np.ndarray:
        """The customer's enabled skill for the domain, ~ softmax(affinity); -1 for system."""
        pop, cat = self.w.population, self.w.catalog
        skill = np.full(len(c), -1)
        m = domain >= 0
        if m.any():
            enabled = pop.enabled[c[m], domain[m]]  # (n, k)
            k = enabled.shape[1]
            aff = pop.affinity(np.repeat(c[m], k), enabled.ravel(), cat).reshape(-1, k)
            g = aff + rng.gumbel(size=aff.shape)
            skill[m] = enabled[np.arange(len(enabled)), g.argmax(1)]
        return skill


def served_utterances(said: np.ndarray, customer: np.ndarray, rewrite: np.ndarray | None,
                      holdout: np.ndarray | None) -> np.ndarray:
    """What the NLU receives: ``rewrite[said]`` where it is >= 0 and the customer is not in
    the ``holdout`` (a bool per customer index), else ``said`` itself."""
    if rewrite is None:
        return said
    target = rewrite[said]
    treated = target >= 0
    if holdout is not None:
        treated &= ~holdout[customer]
    return np.where(treated, target, said)


def generate_turns(model: TrafficModel, customers: np.ndarray, rng, rewrite: np.ndarray | None = None,
                   holdout: np.ndarray | None = None, outage: bool = False) -> Turns:
    """Simulate every session of ``customers``; returns the turns in generation order.
    ``rewrite`` (vocab id -> served vocab id, -1 none) and ``holdout`` (bool per customer
    index: served no rewrites) as ``served_utterances``; ``outage``: the outage is on."""
    w = model.w
    cfg, cat, pop = w.config, w.catalog, w.population
    tr, beh, dcfg = cfg["traffic"], cfg["behaviour"], cfg["defect"]
    n_sess = rng.poisson(tr["sessions_per_customer"], len(customers))
    cust = np.repeat(customers, n_sess)
    k = np.concatenate([np.arange(n) for n in n_sess]) if len(cust) else np.zeros(0, int)
    slot = tr["days"] * 86400.0 / np.maximum(n_sess, 1)
    slot = np.repeat(slot, n_sess)
    t = k * slot + rng.random(len(cust)) * np.maximum(slot - SESSION_SLOT_MARGIN_S, 1.0)
    dev = np.floor(rng.random(len(cust)) * pop.n_devices[cust]).astype(np.int64)
    r = model.sample_requests(cust, rng)
    attempt = np.zeros(len(cust), dtype=np.int64)
    kind = model.first_attempt_kind(r, rng)
    turn_kind = np.full(len(cust), FIRST)
    first_defect = np.zeros(len(cust), dtype=bool)
    prev_v = np.zeros(len(cust), dtype=np.int64)

    out: dict[str, list] = {f: [] for f in Turns.__dataclass_fields__}
    behaviour = np.array([beh["rephrase_good"], beh["rephrase_bad"], beh["generic"], beh["abandon"], beh["interject"]])
    behaviour_cum = np.cumsum(behaviour / behaviour.sum())
    lo_gap, hi_gap = tr["turn_gap_s"]

    def gap(n):
        g = lo_gap + rng.random(n) * (hi_gap - lo_gap)
        slow = rng.random(n) < tr["slow_rephrase_rate"]
        return np.where(slow, 46.0 + rng.random(n) * 74.0, g)

    def emit(c, d, time_s, utt, served, skill, status, defect, p, rt, tk):
        for f, v in zip(("customer", "device", "time_s", "utterance", "served", "skill", "status", "defect",
                         "defect_probability", "request_type", "turn_kind"),
                        (c, d, time_s, utt, served, skill, status, defect, p, rt, tk)):
            out[f].append(v)

    active = np.arange(len(cust))
    while len(active):
        c, rr = cust[active], r[active]
        kd = kind[active]
        repeat = (kd == -1)
        v = np.where(repeat, prev_v[active], model.variant(rr, np.maximum(kd, 0), rng))
        prev_v[active] = v
        said = cat.var_utterance[v]
        u = served_utterances(said, c, rewrite, holdout)
        nlu_ok = w.utt_status[u] == 0
        domain = w.utt_domain[u]
        skill = model.choose_skill(c, domain, rng)
        skill_error = nlu_ok & (rng.random(len(c)) < cfg["noise"]["skill_error_rate"])
        if outage:
            skill_error |= model.utt_outage[u]
        status = np.where(~nlu_ok, 2, np.where(skill_error, 1, 0))
        correct = w.utt_interp[u] == w.rt_interp[rr]
        aff = np.zeros(len(c))
        has_skill = skill >= 0
        aff[has_skill] = pop.affinity(c[has_skill], skill[has_skill], cat)
        p_ok = sigmoid(dcfg["base_logit"] + w.utt_difficulty[u] - dcfg["affinity_weight"] * aff)
        p = np.where(status > 0, 1.0, np.where(correct, p_ok, dcfg["wrong_interpretation"]))
        defect = rng.random(len(c)) < p
        emit(c, dev[active], t[active], said, u, skill, status, defect, p, rr, turn_kind[active])
        is_first = attempt[active] == 0
        first_defect[active[is_first & defect]] = True

        # --- what the user does next ---
        g = gap(len(c))
        switch = (rng.random(len(c)) < tr["device_switch_rate"]) & (pop.n_devices[c] > 1)
        dev[active] = np.where(switch, (dev[active] + 1) % pop.n_devices[c], dev[active])
        b = np.searchsorted(behaviour_cum, rng.random(len(c)), side="right")
        unwanted = defect & (status == 0) & ~correct
        b = np.where(unwanted & (rng.random(len(c)) < beh["stop_after_unwanted"]), 4, b)
        if beh["switch_entity"] > 0:  # drawn only when on: the default traffic stays as it was
            switch = defect & (status == 1) & (w.similar_rt[rr] >= 0) & (rng.random(len(c)) < beh["switch_entity"])
            b = np.where(switch, SWITCH_BEHAVIOUR, b)
        b = np.where(attempt[active] + 1 >= tr["max_attempts"], 3, b)
        generic_ok = model.rt_domain[rr] == 0
        b = np.where((b == 2) & ~generic_ok, 3, b)
        interject = defect & (b == 4)
        if interject.any():
            ii = np.flatnonzero(interject)
            which = rng.integers(0, 2, len(ii))
            emit(c[ii], dev[active[ii]], t[active[ii]] + 1.0 + rng.random(len(ii)) * 3.0, -1 - which, -1 - which,
                 np.full(len(ii), -1), np.zeros(len(ii), int), np.zeros(len(ii), bool), np.zeros(len(ii)),
                 rr[ii], np.full(len(ii), INTERJECTION))
        retry_after_stop = interject & (rng.random(len(c)) < beh["interject_then_rephrase"])
        cont_defect = defect & ((b <= 2) | (b == SWITCH_BEHAVIOUR) | retry_after_stop)
        followup = ~defect & (rng.random(len(c)) < tr["followup_rate"])
        cont = cont_defect | followup
        ended_episode = ~cont_defect
        # record attempts used by episodes that began with a defect and end now
        ends = ended_episode & first_defect[active]
        out["first_defect_attempts"].append(attempt[active][ends] + 1)
        first_defect[active[ended_episode]] = False

        nxt = active[cont]
        t[nxt] = t[nxt] + g[cont] + np.where(interject[cont], 5.0, 0.0)
        bb = np.where(retry_after_stop, 0, b)[cont]
        fu = followup[cont]
        new_r = model.sample_requests(cust[nxt], rng)
        instead = np.select([bb == 2, bb == SWITCH_BEHAVIOUR], [model.generic_rt, w.similar_rt[r[nxt]]], r[nxt])
        r[nxt] = np.where(fu, new_r, instead)
        attempt[nxt] = np.where(fu, 0, attempt[nxt] + 1)
        first_kind = model.first_attempt_kind(r[nxt], rng)
        bad_kind = model.error_kind(r[nxt], rng)
        bad_kind = np.where(rng.random(len(nxt)) < 0.3, -1, bad_kind)  # sometimes says the same thing again
        kind[nxt] = np.where(fu, first_kind, np.select([bb == 0, bb == 1, bb == 2], [CANONICAL, bad_kind, CANONICAL], CANONICAL))
        next_kind = np.select([bb == 0, bb == 1, bb == 2, bb == SWITCH_BEHAVIOUR],
                              [REPHRASE_GOOD, REPHRASE_BAD, GENERIC, SWITCH], REPHRASE_GOOD)
        turn_kind[nxt] = np.where(fu, FOLLOWUP, next_kind)
        active = nxt

    cols = {f: np.concatenate(v) if v else np.zeros(0) for f, v in out.items()}
    return Turns(**cols)
