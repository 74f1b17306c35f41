"""Synthetic contract tables (interactions, customers, skills) for tests and benchmarks.

A small stand-in for the simulator with the property PDRFE is about: the defect of an
interaction depends on the customer-skill affinity AND on the utterance. Customers and
skills have latent vectors; a customer picks a skill with probability proportional to
``exp(beta <z_c, z_s>)``; each skill has a pool of utterances, some of them garbled
(they carry noise words); ``P(defect) = sigmoid(b0 - b1 <z_c, z_s> + b2 noisy(utt))``.
Fully vectorized so that benchmark graphs of millions of edges are cheap to make.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raylib.schema import CUSTOMERS, INTERACTIONS, SKILLS

_VERBS = np.array(["play", "open", "ask", "start", "tell", "show", "find", "set", "turn", "read"])
_NOISE = np.array(["uh", "umm", "blah", "hmm", "er"])


def synthetic_tables(
    n_customers: int = 200,
    n_skills: int = 30,
    n_edges: int = 5000,
    seed: int = 0,
    latent_dim: int = 4,
    utterances_per_skill: int = 8,
    noisy_fraction: float = 0.3,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """``(interactions, customers, skills)`` following raylib.schema."""
    rng = np.random.default_rng(seed)
    zc = rng.normal(size=(n_customers, latent_dim)) / np.sqrt(latent_dim)
    zs = rng.normal(size=(n_skills, latent_dim))
    customer = rng.integers(0, n_customers, n_edges)
    skill = np.empty(n_edges, dtype=np.int64)
    for lo in range(0, n_edges, 65536):  # Gumbel-max draw of p(s | c) in chunks
        logits = 1.5 * zc[customer[lo : lo + 65536]] @ zs.T
        skill[lo : lo + 65536] = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    slot = rng.integers(0, utterances_per_skill, n_edges)
    utt_index = skill * utterances_per_skill + slot
    noisy = rng.random(n_skills * utterances_per_skill) < noisy_fraction
    texts = _utterance_texts(n_skills, utterances_per_skill, noisy, rng)
    affinity = np.einsum("ij,ij->i", zc[customer], zs[skill])
    p = 1.0 / (1.0 + np.exp(-(-1.0 - 1.5 * affinity + 2.5 * noisy[utt_index])))
    defect = rng.random(n_edges) < p

    customer_ids = np.array([f"c{i:07d}" for i in range(n_customers)], dtype=object)
    skill_ids = np.array([f"s{i:05d}" for i in range(n_skills)], dtype=object)
    statuses = np.where(defect, "error", "ok")
    interactions = pa.table(
        {
            "customer_id": pa.array(customer_ids[customer], pa.string()),
            "device_id": pa.array(np.char.add("d", customer.astype(str)), pa.string()),
            "timestamp": pa.array(np.arange(n_edges, dtype=np.int64) * 1000, pa.timestamp("ms", tz="UTC")),
            "utterance": pa.array(texts[utt_index], pa.string()),
            "domain": pa.array(np.char.add("domain", (skill % 5).astype(str)), pa.string()),
            "intent": pa.array(np.char.add("intent", (skill % 11).astype(str)), pa.string()),
            "slots": pa.array(np.full(n_edges, ""), pa.string()),
            "skill_id": pa.array(skill_ids[skill], pa.string()),
            "status": pa.array(statuses, pa.string()),
            "defect": pa.array(defect, pa.bool_()),
            "rewrite": pa.nulls(n_edges, pa.string()),
        },
        schema=INTERACTIONS,
    )
    customers = pa.table(
        {
            "customer_id": pa.array(customer_ids, pa.string()),
            "wbr_cor": pa.array(np.where(zc[:, 0] > 0, "US", np.where(zc[:, 1] > 0, "UK", "ROW")), pa.string()),
            "is_prime": pa.array(zc[:, 1] > 0, pa.bool_()),
            "is_amu": pa.array(rng.random(n_customers) < 0.4, pa.bool_()),
            "is_smart_home_cust": pa.array(zc[:, 2] > 0, pa.bool_()),
        },
        schema=CUSTOMERS,
    )
    skills = pa.table(
        {
            "skill_id": pa.array(skill_ids, pa.string()),
            "skill_category": pa.array(np.char.add("cat", (np.arange(n_skills) % 7).astype(str)), pa.string()),
            "skill_type": pa.array(np.where(zs[:, 0] > 0, "CUSTOM", "FIRST_PARTY"), pa.string()),
            "skill_subcategory": pa.array(np.char.add("sub", (np.arange(n_skills) % 13).astype(str)), pa.string()),
            "reporting_category": pa.array(np.char.add("rep", (np.arange(n_skills) % 4).astype(str)), pa.string()),
            "domain": pa.array(np.char.add("domain", (np.arange(n_skills) % 5).astype(str)), pa.string()),
        },
        schema=SKILLS,
    )
    return interactions, customers, skills


def _utterance_texts(n_skills: int, per_skill: int, noisy: np.ndarray, rng) -> np.ndarray:
    """One text per (skill, slot): ``<verb> skill<s> item<k>``, garbled ones with a noise word."""
    s = np.repeat(np.arange(n_skills), per_skill)
    k = np.tile(np.arange(per_skill), n_skills)
    verb = _VERBS[rng.integers(0, len(_VERBS), len(s))]
    noise = _NOISE[rng.integers(0, len(_NOISE), len(s))]
    base = np.char.add(np.char.add(np.char.add(verb, " skill"), s.astype(str)), np.char.add(" item", k.astype(str)))
    return np.where(noisy, np.char.add(np.char.add(noise, " "), base), base).astype(object)
