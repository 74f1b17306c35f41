"""``simulate``: write a world's logs and ground truth as Parquet, chunk by chunk.

Customers are simulated ``chunk_customers`` at a time and each chunk is written as its
own Parquet part, so a large preset never holds all rows in memory. The same
(config, seed) always gives the same files; ``traffic_seed`` draws new traffic from the
same world (held-out traffic for evaluation). ``period`` p places the traffic in days
[p * days, (p + 1) * days) after the world's start (the outage of ``noise.outage_share``
is on while p < ``noise.outage_periods``); ``rewrites`` (normalized utterance -> served
text) is applied in the request path for every customer outside the hash-drawn holdout
(``raylib.rewrite.online.in_holdout``, ``holdout_share``), and each interaction logs the
text said (``utterance``) and the rewrite applied (``rewrite``, null: none).
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa

from raylib import schema as S
from raylib import uri
from raylib.errors import UserError
from raylib.rewrite.online import in_holdout
from raylib.schema import normalize_utterance
from raylib.sim import config as sim_config
from raylib.sim.catalog import ASR, CANONICAL, CAUSE, DOMAINS, SYSTEM_SKILL, WBR_COR
from raylib.sim.traffic import TURN_KINDS, generate_turns
from raylib.sim.world import World

ROUTING_CHUNK = 200_000
INTERJECTION_TEXT = ("stop", "cancel")


def customers_table(world: World) -> pa.Table:
    pop = world.population
    return pa.table({
        "customer_id": pop.ids,
        "wbr_cor": np.asarray(WBR_COR)[pop.wbr],
        "is_prime": pop.is_prime.astype(bool),
        "is_amu": pop.is_amu.astype(bool),
        "is_smart_home_cust": pop.is_smart_home.astype(bool),
    }, schema=S.CUSTOMERS)


def skills_table(world: World) -> pa.Table:
    cat = world.catalog
    meta = cat.skill_meta
    return pa.table({
        "skill_id": cat.skill_ids + [SYSTEM_SKILL],
        "skill_category": [f"category-{x:02d}" for x in meta["skill_category"]] + ["system"],
        "skill_type": [f"type-{x}" for x in meta["skill_type"]] + ["system"],
        "skill_subcategory": [f"subcategory-{x:02d}" for x in meta["skill_subcategory"]] + ["system"],
        "reporting_category": [f"reporting-{x:02d}" for x in meta["reporting_category"]] + ["system"],
        "domain": list(np.asarray(DOMAINS)[cat.skill_domain]) + ["Global"],
    }, schema=S.SKILLS)


class _Columns:
    """Per-utterance string columns (vocab + interjections) for building tables by indexing."""

    def __init__(self, world: World):
        cat = world.catalog
        parses = [world.nlu.parse(u) for u in cat.vocab]
        extra = [("Global", "StopIntent", "", "ok"), ("Global", "CancelIntent", "", "ok")]
        parses += extra
        self.text = np.asarray(cat.vocab + list(INTERJECTION_TEXT), dtype=object)
        self.domain = np.asarray([p[0] for p in parses], dtype=object)
        self.intent = np.asarray([p[1] for p in parses], dtype=object)
        self.slots = np.asarray([p[2] for p in parses], dtype=object)
        self.n_vocab = len(cat.vocab)
        self.skill = np.asarray(cat.skill_ids + [SYSTEM_SKILL], dtype=object)
        self.intended_text = np.asarray(cat.vocab, dtype=object)[cat.rt_intended]
        self.intended_key = np.asarray(world.rt_interp_key, dtype=object)

    def utterance_index(self, utt: np.ndarray) -> np.ndarray:
        return np.where(utt >= 0, utt, self.n_vocab - 1 - utt)  # -1 -> stop, -2 -> cancel


def rewrite_ids(world: World, rewrites: dict[str, str] | None) -> np.ndarray | None:
    """``rewrites`` (normalized utterance -> served text) as the vocab-id array
    ``generate_turns`` takes (-1: none); a source this world never says is ignored, a
    target outside its vocabulary is an error."""
    if not rewrites:
        return None
    index = {normalize_utterance(u): i for i, u in enumerate(world.catalog.vocab)}
    out = np.full(len(index), -1, dtype=np.int64)
    for source, target in rewrites.items():
        said, sent = normalize_utterance(source), normalize_utterance(target)
        if said not in index:
            continue
        if sent not in index:
            raise UserError(f"served rewrite {source!r} -> {target!r}: the target is no utterance of this world")
        out[index[said]] = index[sent]
    return out


def _tables(world: World, cols: _Columns, turns, offset_s: float = 0.0) -> tuple[pa.Table, pa.Table]:
    order = np.lexsort((turns.time_s, turns.customer))
    pop = world.population
    c = turns.customer[order]
    ms = world.start_ms + np.round((turns.time_s[order] + offset_s) * 1000).astype(np.int64)
    ts = pa.array(ms).cast(S.TIMESTAMP)
    ids = np.asarray(pop.ids, dtype=object)
    device = pop.device_id(c, turns.device[order]).astype(object)
    ui = cols.utterance_index(turns.utterance[order].astype(np.int64))
    si = cols.utterance_index(turns.served[order].astype(np.int64))
    interactions = pa.table({
        "customer_id": ids[c], "device_id": device, "timestamp": ts,
        "utterance": cols.text[ui], "domain": cols.domain[si], "intent": cols.intent[si], "slots": cols.slots[si],
        "skill_id": cols.skill[turns.skill[order].astype(np.int64)],
        "status": np.asarray(S.STATUSES, dtype=object)[turns.status[order].astype(np.int64)],
        "defect": turns.defect[order].astype(bool),
        "rewrite": np.where(si != ui, cols.text[si], None),
    }, schema=S.INTERACTIONS)
    rt = turns.request_type[order].astype(np.int64)
    truth = pa.table({
        "customer_id": ids[c], "device_id": device, "timestamp": ts,
        "intended_utterance": cols.intended_text[rt], "intended_interpretation": cols.intended_key[rt],
        "turn_kind": np.asarray(TURN_KINDS, dtype=object)[turns.turn_kind[order].astype(np.int64)],
        "defect_probability": turns.defect_probability[order].astype(np.float64),
    }, schema=S.TRUTH_TURNS)
    return interactions, truth


def _defective_variants(world: World) -> dict[int, tuple[int, int]]:
    """utterance id -> (request type, kind) for every systematically defective variant."""
    cat = world.catalog
    rt_of_var = np.repeat(np.arange(cat.n_request_types), np.diff(cat.var_offsets))
    share = cat.rt_share
    out: dict[int, tuple[int, int]] = {}
    for v in np.flatnonzero(cat.var_kind != CANONICAL):
        u, r = int(cat.var_utterance[v]), int(rt_of_var[v])
        if world.utt_status[u] == 0 and world.utt_interp[u] == world.rt_interp[r]:
            continue  # the "error" happens to be understood correctly
        if u not in out or share[r] > share[out[u][0]]:
            out[u] = (r, int(cat.var_kind[v]))
    return out


def simulate(out: str, preset: str = "small", seed: int = 0, config: dict | None = None,
             traffic_seed: int | None = None, period: int = 0, rewrites: dict[str, str] | None = None,
             holdout_share: float = 0.0) -> dict:
    """Simulate a world and write every table and ``world.json`` under ``out``; returns
    the figures of the job's summary (see the module docstring for the last three)."""
    cfg = sim_config.resolve(preset, config)
    traffic_seed = seed if traffic_seed is None else traffic_seed
    if period < 0:
        raise UserError(f"period must be >= 0, got {period}")
    world = World(cfg, seed)
    rewrite = rewrite_ids(world, rewrites)
    holdout = in_holdout(world.population.ids, holdout_share)
    outage = period < cfg["noise"]["outage_periods"]
    offset_s = period * cfg["traffic"]["days"] * 86400.0
    cols = _Columns(world)
    uri.write_table(customers_table(world), out, "customers")
    uri.write_table(skills_table(world), out, "skills")

    defective = _defective_variants(world)
    seen_defective: Counter = Counter()
    n_rows = n_defects = n_rewritten = 0
    interps: set[str] = set()
    attempts = []
    chunk = cfg["chunk_customers"]
    for part, start in enumerate(range(0, world.population.n, chunk)):
        customers = np.arange(start, min(world.population.n, start + chunk))
        turns = generate_turns(world.traffic, customers, np.random.default_rng([seed, 1, traffic_seed, part]),
                               rewrite, holdout, outage)
        interactions, truth = _tables(world, cols, turns, offset_s)
        uri.write_table(interactions, out, "interactions", part)
        uri.write_table(truth, out, "truth_turns", part)
        n_rows += interactions.num_rows
        n_defects += int(turns.defect.sum())
        n_rewritten += int((turns.served != turns.utterance).sum())
        keys = pa.compute.binary_join_element_wise(interactions["domain"], interactions["intent"], interactions["slots"], "|")
        interps.update(pa.compute.unique(keys).to_pylist())
        attempts.append(turns.first_defect_attempts)
        seen_defective.update(int(u) for u in turns.utterance[turns.utterance >= 0] if int(u) in defective)

    n_routing = cfg["routing"]["n_requests"]
    for part, start in enumerate(range(0, n_routing, ROUTING_CHUNK)):
        log, truth = world.routing(min(ROUTING_CHUNK, n_routing - start), seed=traffic_seed * 1000 + part)
        uri.write_table(log, out, "routing_log", part)
        uri.write_table(truth, out, "truth_routing", part)

    rows = sorted(seen_defective)
    uri.write_table(pa.table({
        "utterance": [world.catalog.vocab[u] for u in rows],
        "intended_utterance": [cols.intended_text[defective[u][0]] for u in rows],
        "intended_interpretation": [cols.intended_key[defective[u][0]] for u in rows],
        "cause": [CAUSE[defective[u][1]] for u in rows],
    }, schema=S.TRUTH_REWRITES), out, "truth_rewrites")

    attempts = np.concatenate(attempts) if attempts else np.zeros(0)
    summary = {
        "preset": preset, "seed": seed, "traffic_seed": traffic_seed, "period": period, "outage": outage,
        "n_interactions": n_rows, "rewritten_turns": n_rewritten, "holdout_share": holdout_share,
        "n_customers": world.population.n,
        "n_skills": len(world.catalog.skill_ids),
        "n_routing": n_routing,
        "defect_rate": n_defects / max(n_rows, 1),
        "absorbed_within_5": float((attempts <= 5).mean()) if len(attempts) else 1.0,
        "n_interpretations": len(interps),
        "n_defective_utterances": len(rows),
        "asr_defective_utterances": sum(1 for u in rows if defective[u][1] == ASR),
    }
    world_json = {"seed": seed, "traffic_seed": traffic_seed, "preset": preset, "config": cfg}
    uri.write_text(uri.join(out, "world.json"), json.dumps(world_json, indent=2, sort_keys=True))
    return summary
