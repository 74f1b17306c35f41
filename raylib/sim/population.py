"""Customers: Table-2 metadata, devices, latent skill preferences, enabled skills.

The affinity of customer c for skill s is

    a(c, s) = z_c . w_s / sqrt(d)  +  m * M[meta(c), category(s)]

a latent dot product plus a term driven by the customer's metadata (country, prime,
music and smart-home subscriptions) and the skill's category, so metadata is informative
but the graph of who uses what carries more. Each customer enables a few skills per
domain, drawn by popularity and affinity (Gumbel top-k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raylib.sim.catalog import DOMAIN_SHARE, DOMAINS, N_SKILL_CATEGORY, WBR_COR, WBR_SHARE, Catalog

DEVICE_TYPES = ("echo", "echo_show", "fire_tv", "mobile", "car")
N_META = len(WBR_COR) * 8


@dataclass
class Population:
    ids: list[str]
    wbr: np.ndarray
    is_prime: np.ndarray
    is_amu: np.ndarray
    is_smart_home: np.ndarray
    latent: np.ndarray  # (n, d)
    n_devices: np.ndarray
    device_type: np.ndarray  # (n, max_devices) index into DEVICE_TYPES
    domain_pref: np.ndarray  # (n, n_domains) probabilities
    enabled: np.ndarray  # (n, n_domains, k) skill indices
    skill_latent: np.ndarray  # (n_skills, d)
    meta_effect: np.ndarray  # (N_META, N_SKILL_CATEGORY)
    metadata_weight: float

    @property
    def n(self) -> int:
        return len(self.ids)

    def meta_code(self, c: np.ndarray) -> np.ndarray:
        return ((self.wbr[c] * 2 + self.is_prime[c]) * 2 + self.is_amu[c]) * 2 + self.is_smart_home[c]

    def affinity(self, c: np.ndarray, s: np.ndarray, catalog: Catalog) -> np.ndarray:
        """a(c, s) for aligned arrays of customer and skill indices."""
        dot = np.einsum("ij,ij->i", self.latent[c], self.skill_latent[s]) / np.sqrt(self.latent.shape[1])
        meta = self.meta_effect[self.meta_code(c), catalog.skill_meta["skill_category"][s]]
        return dot + self.metadata_weight * meta

    def device_id(self, c: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.char.add(np.char.add("d", np.char.mod("%s", np.asarray(self.ids)[c])), np.char.mod("-%d", k))


def build_population(config: dict, catalog: Catalog, rng: np.random.Generator) -> Population:
    pop = config["population"]
    n, d, k = pop["n_customers"], pop["latent_dim"], pop["skills_per_domain"]
    n_skills = len(catalog.skill_ids)
    wbr = rng.choice(len(WBR_COR), n, p=WBR_SHARE / WBR_SHARE.sum())
    is_prime = (rng.random(n) < 0.6).astype(np.int64)
    is_amu = (rng.random(n) < np.where(is_prime == 1, 0.4, 0.15)).astype(np.int64)
    is_sh = (rng.random(n) < 0.25).astype(np.int64)
    latent = rng.standard_normal((n, d)).astype(np.float32)
    skill_latent = rng.standard_normal((n_skills, d)).astype(np.float32)
    lo, hi = pop["devices_per_customer"]
    n_devices = rng.integers(lo, hi + 1, n)
    device_type = rng.integers(0, len(DEVICE_TYPES), (n, hi))

    boost = np.ones((n, len(DOMAINS)))
    boost[:, 0] *= 1 + 1.5 * is_amu
    boost[:, 4] *= 1 + 2.0 * is_sh
    domain_pref = DOMAIN_SHARE * boost * rng.gamma(4.0, 0.25, (n, len(DOMAINS)))
    domain_pref /= domain_pref.sum(1, keepdims=True)

    population = Population(
        ids=[f"c{x:08x}" for x in rng.permutation(n * 16)[:n]],
        wbr=wbr, is_prime=is_prime, is_amu=is_amu, is_smart_home=is_sh, latent=latent,
        n_devices=n_devices, device_type=device_type, domain_pref=domain_pref,
        enabled=np.zeros((n, len(DOMAINS), k), dtype=np.int64), skill_latent=skill_latent,
        meta_effect=rng.standard_normal((N_META, N_SKILL_CATEGORY)).astype(np.float32),
        metadata_weight=pop["metadata_effect"],
    )
    log_pop = np.log(catalog.skill_popularity)
    for dom in range(len(DOMAINS)):
        skills = np.flatnonzero(catalog.skill_domain == dom)
        for start in range(0, n, 4096):
            c = np.arange(start, min(n, start + 4096))
            cc = np.repeat(c, len(skills))
            ss = np.tile(skills, len(c))
            score = (population.affinity(cc, ss, catalog) + log_pop[ss]).reshape(len(c), len(skills))
            score = score + rng.gumbel(size=score.shape)
            kk = min(k, len(skills))
            top = np.argpartition(-score, kk - 1, axis=1)[:, :kk] if len(skills) > kk else np.tile(np.arange(kk), (len(c), 1))
            picked = skills[top]
            population.enabled[c, dom, :kk] = picked
            if kk < k:
                population.enabled[c, dom, kk:] = picked[:, :1]
    return population
