"""Rounds of held-out traffic through the served system, and what each round measures.

Round 0 is the system before self-learning: no rewrites, the simulator's logging router.
Round r >= 1 serves a rewrite table and a policy through the Serve application (HTTP
only) and writes its decisions, joined with the simulator's rewards, as training data for
the next policy. Round r's traffic is simulated in period r (``simulate(period=r)``) with
the served rewrite table in the simulator's request path: POST /v1/rewrite answers for
every utterance of the world's vocabulary, and every customer outside the holdout
(``LoopSettings.holdout_share``, ``raylib.rewrite.online.in_holdout``) meets those
rewrites; the logs carry what was said and the rewrite applied, and later mining learns
from them (``raylib.rewrite.sessions``: rewritten sessions are the A/B's evidence, not
mined). Every round measures, on its own traffic:

* the online A/B (``raylib.rewrite.online``): the observed defect rate of treatment and
  holdout (all turns, and the turns of the served rewrites' sources) and their relative
  reduction; per rewrite the Z-test of treatment against holdout, its wins and losses;
  losers are blacklisted and withdrawn at once (``publish.withdraw_blacklisted``);
* ``withdrawn_stale``: the rows the served rewrites version withdrew as stale when it
  was mined (``publish.merge_today``), by reason;

* the expected defect rate of the requests users make, with and without the served
  rewrites (``raylib.rewrite.evaluate.defect_rates``: first attempts and follow-ups);
* ``true_reward``: the true value of the served routing policy on one fixed evaluation set
  of ``eval_requests`` requests (``raylib.routing.assess.true_value``), the same set every
  round, so rounds compare policies and not request samples;
* ``served_reward``: the true value of the distributions the router logged with the
  round's own decisions (``raylib.routing.assess.logging_true_value``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib import uri
from raylib.errors import UserError
from raylib.job import log
from raylib.loop.service import Service, route_bodies
from raylib.loop.settings import LoopSettings
from raylib.loop.stages import Stages
from raylib.rewrite.evaluate import defect_rates, intended_turns
from raylib.rewrite.online import SaidTurns, arm_defect_rates, losers, online_ab, online_win_loss
from raylib.rewrite.publish import BLACKLISTED, withdraw_blacklisted
from raylib.routing.assess import logging_true_value, true_value
from raylib.routing.data import prepare
from raylib.schema import FEEDBACK, ROUTING_LOG, normalize_utterance
from raylib.sim import World, simulate
from raylib.store import Store
from raylib.validate import quarantine

# (store_root, decision_log_dir, admin_token) -> base URL of the deployed Serve application
DeployService = Callable[[str, str, str], str]
# Seed offsets from the world seed: each round's traffic, its routing requests, the evaluation set.
TRAFFIC_SEED, ROUTING_SEED, EVALUATION_SEED = 1000, 5000, 7000
LOGGING_POLICY = "sim-logging"  # the policy_version of rounds routed by the simulator's logging policy


def round_defect_rates(rates: dict) -> dict:
    """A round's defect figures from ``defect_rates``: the rate of the requests as served
    (``defect_rate``) and as spoken, and the share of requests served a rewrite."""
    requests = rates["requests"]
    return {"defect_rate": rates["defect_rate_with"], "defect_rate_without_rewrites": rates["defect_rate_without"],
            "rewritten_share": rates["rewritten_requests"] / requests if requests else None, "requests": requests}


def pool(directory: str, sources: list[str], tables: tuple[str, ...]) -> str:
    """Tables ``tables`` of every directory in ``sources`` as one directory (a part each)."""
    for table in tables:
        for part, src in enumerate(sources):
            uri.write_table(uri.read_table(src, table), directory, table, part)
    return directory


class Rounds:
    """The loop's rounds under ``out``: traffic in ``out/data/round-<r>``, decisions in
    ``out/rounds/round-<r>``, the router's decision log in ``out/decision_log``. The world
    is the one simulated in ``train_dir``; ``deploy_service`` starts the Serve application
    on the first served round."""

    def __init__(self, out: str, settings: LoopSettings, store: Store, stages: Stages, train_dir: str,
                 deploy_service: DeployService):
        self.out = out
        self.s = settings
        self.store = store
        self.stages = stages
        self.train_dir = train_dir
        self.deploy_service = deploy_service
        self.params = asdict(settings)
        self.decision_log_dir = self.path("decision_log")
        self.service: Service | None = None
        self._world: World | None = None
        self._evaluation_set: tuple[pa.Table, pa.Table] | None = None

    def path(self, *parts: str) -> str:
        return uri.join(self.out, *parts)

    @property
    def world(self) -> World:
        if self._world is None:
            self._world = World.from_dir(self.train_dir)
        return self._world

    def close(self) -> None:
        """Close the HTTP client; the Serve application stays up (its deployer shuts it down)."""
        if self.service is not None:
            self.service.close()

    # -- measurements --

    def true_reward(self, policy_version: str | None) -> float:
        """True value of the routing policy ``policy_version`` (None: the simulator's logging
        policy) on the fixed evaluation set."""
        from raylib.routing.hybrid import HybridPolicy  # torch: only once a policy is served

        if self._evaluation_set is None:
            self._evaluation_set = self.world.routing(self.s.eval_requests, seed=self.s.seed + EVALUATION_SEED)
        requests, truth = self._evaluation_set
        if policy_version is None:
            return logging_true_value(requests, truth)
        policy = HybridPolicy.from_artifact(self.store.load("policy", policy_version))
        return true_value(policy.padded_distribution(requests)[0], truth)

    def traffic(self, rnd: int, served: dict[str, str], rewrites_version: str | None) -> str:
        """Traffic of round ``rnd``: the same world, a new traffic seed, period ``rnd``, the
        ``served`` rewrites (normalized source -> target) in the request path."""
        directory = self.path("data", f"round-{rnd}")
        self.stages.run(f"round-{rnd}-traffic", {**self.params, "rewrites": rewrites_version}, lambda: simulate(
            directory, self.s.preset, self.s.seed, self.s.world_overrides(), self.s.seed + TRAFFIC_SEED + rnd,
            period=rnd, rewrites=served, holdout_share=self.s.holdout_share))
        return directory

    def served_table(self, svc: Service) -> dict[str, str]:
        """The served rewrites of every utterance the world can say, by POST /v1/rewrite: the
        table the round's traffic is simulated with and its replay is measured with."""
        vocab = [normalize_utterance(u) for u in self.world.catalog.vocab]
        return {u: r for u, r in zip(vocab, svc.rewrite(vocab)) if r is not None and r != u}

    def online(self, rnd: int, traffic: str, served: dict[str, str], rewrites_version: str | None) -> dict:
        """The round's online A/B and blacklist (module docstring); the A/B per rewrite is
        written as OUT/rounds/round-<rnd>/online_ab."""
        turns = SaidTurns.of(uri.read_table(traffic, "interactions"), self.s.holdout_share)
        ab = online_ab(turns, served)
        uri.write_table(ab, self.path("rounds", f"round-{rnd}"), "online_ab")
        lost = losers(ab)
        withdrawal = withdraw_blacklisted(self.store, lost, rnd)
        stale = (self.store.load("rewrites", rewrites_version).metadata.get("withdrawn_by_reason", {})
                 if rewrites_version else {})
        return {**arm_defect_rates(turns, list(served)), **online_win_loss(ab),
                "blacklisted": lost.num_rows, "withdrawn_blacklisted": withdrawal["withdrawn"],
                "rewrites_after_blacklist": withdrawal["rewrites_version"],
                "withdrawn_stale": sum(v for k, v in stale.items() if k != BLACKLISTED),
                "withdrawn_stale_by_reason": {k: v for k, v in stale.items() if k != BLACKLISTED}}

    def request_defect_rates(self, traffic: str, rewrite: Callable[[list[str]], list[str | None]] | None) -> dict:
        """``round_defect_rates`` of the traffic under ``traffic`` with ``rewrite`` serving it."""
        interactions = uri.read_table(traffic, "interactions", ["customer_id", "device_id", "timestamp", "utterance",
                                                                "intent"])
        turns = intended_turns(interactions, uri.read_table(traffic, "truth_turns"))
        if turns.num_rows != interactions.num_rows:
            raise UserError(f"{traffic}: truth_turns does not match interactions one to one")
        return round_defect_rates(defect_rates(self.world, turns, rewrite))

    # -- rounds --

    def baseline(self) -> dict:
        """Round 0: no rewrites, the simulator's logging router."""
        def work():
            routed, truth = self.world.routing(self.s.route_requests, seed=self.s.seed + ROUTING_SEED)
            traffic = self.traffic(0, {}, None)
            return {"round": 0, **self.request_defect_rates(traffic, None), **self.online(0, traffic, {}, None),
                    "true_reward": self.true_reward(None),
                    "served_reward": logging_true_value(routed, truth), "policy_version": LOGGING_POLICY,
                    "rewrites_version": None, "served_through": "simulator logging policy"}

        return self.stages.run("round-0", self.params, work)

    def served(self, rnd: int, rewrites_version: str | None, policy_version: str | None) -> dict:
        """Round ``rnd`` through the Serve endpoints; its decisions joined with their
        feedback are written under OUT/rounds/round-<rnd> and published as ``decisions``."""
        def work():
            svc = self.serving(rewrites_version, policy_version)
            served = self.served_table(svc)
            traffic = self.traffic(rnd, served, rewrites_version)
            rates = self.request_defect_rates(traffic, lambda said: [served.get(u) for u in said])
            return {"round": rnd, **rates, **self.online(rnd, traffic, served, rewrites_version),
                    **self.route(svc, rnd, policy_version),
                    "true_reward": self.true_reward(policy_version), "rewrites_version": rewrites_version}

        return self.stages.run(f"round-{rnd}", {**self.params, "rewrites": rewrites_version,
                                                "policy": policy_version}, work)

    def route(self, svc: Service, rnd: int, policy_version: str | None) -> dict:
        """Simulated requests decided by POST /v1/route (by the simulator's logging policy
        while no policy has passed its guard-rails); the simulator draws each reward from the
        chosen candidate's true expected reward and it reaches the log as feedback."""
        directory = self.path("rounds", f"round-{rnd}")
        seed = self.s.seed + ROUTING_SEED + rnd
        feedback = None
        if policy_version is None:
            decisions, truth = self.world.routing(self.s.route_requests, seed=seed)
        else:
            responses: list[dict] = []

            def served_policy(requests: pa.Table):
                decided = svc.route(route_bodies(requests))
                responses.extend(decided)
                return np.array([r["action"] for r in decided]), np.array([r["propensity"] for r in decided]), None

            routed, truth = self.world.routing(self.s.route_requests, seed=seed, policy=served_policy)
            ids = pa.array([r["request_id"] for r in responses], pa.string())
            feedback = pa.table({"request_id": ids, "reward": routed["reward"]}, schema=FEEDBACK)
            truth = truth.set_column(truth.schema.get_field_index("request_id"), "request_id", ids)
            decisions = self.decision_rows(ids)
            if decisions.num_rows != len(ids):
                raise UserError(f"round {rnd}: {decisions.num_rows} of {len(ids)} decisions reached the log")
            uri.write_table(feedback, directory, "feedback")
        data = prepare(decisions, feedback, truth)  # validated, feedback joined, unrewarded rows set aside
        quarantine(data.rejected, directory)
        uri.write_table(data.log, directory, "routing_log")
        uri.write_table(truth, directory, "truth_routing")
        version = self.store.publish("decisions", {"routing_log": data.log, "truth_routing": truth},
                                     metadata={"round": rnd, "policy_version": policy_version})
        return {"served_reward": logging_true_value(data.log, data.truth) if data.log.num_rows else None,
                "policy_version": policy_version or LOGGING_POLICY, "mean_reward": pc.mean(data.log["reward"]).as_py(),
                "decisions": data.log.num_rows, "rejected": data.rejected.num_rows, "unrewarded": data.n_unrewarded,
                "decisions_version": version,
                "served_through": "POST /v1/route" if policy_version else "simulator logging policy"}

    def decision_rows(self, ids: pa.Array, timeout_s: float = 120.0) -> pa.Table:
        """The rows of ``ids`` in the router's decision log (reward null: it comes as
        feedback), read back once the router's writer has flushed them (within its
        ``decision_log_max_age_s``) or ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                log_table = uri.read_table(self.decision_log_dir, "routing_log")
                rows = log_table.filter(pc.is_in(log_table["request_id"], ids))
            except FileNotFoundError:
                rows = ROUTING_LOG.empty_table()
            if rows.num_rows >= len(ids) or time.monotonic() > deadline:
                return rows
            time.sleep(0.5)

    def learning_data(self, rnd: int) -> str:
        """Every decision log so far (the simulator's log + rounds 1..rnd), each row with the
        propensity it was logged with, as one contract-table directory for train_policy."""
        sources = [self.train_dir] + [self.path("rounds", f"round-{k}") for k in range(1, rnd + 1)]
        return pool(self.path("data", f"learn-{rnd}"), sources, ("routing_log", "truth_routing"))

    def mining_window(self, rnd: int) -> str:
        """The traffic rewrites are mined from after round ``rnd``: the training traffic and
        rounds 1..rnd, one directory (with their ground truth for the quality figures). A
        window, not the last round alone: a rewrite is withdrawn when the window no longer
        supports it, and one round is too little traffic to judge that (seed 001 mines
        months of logs)."""
        sources = [self.train_dir] + [self.path("data", f"round-{k}") for k in range(1, rnd + 1)]
        directory = pool(self.path("data", f"mine-window-{rnd}"), sources, ("interactions", "truth_turns"))
        truth = pa.concat_tables([uri.read_table(src, "truth_rewrites") for src in sources])
        first = sorted({u: i for i, u in reversed(list(enumerate(truth["utterance"].to_pylist())))}.values())
        uri.write_table(truth.take(first), directory, "truth_rewrites")
        uri.write_bytes(uri.join(directory, "world.json"), uri.read_bytes(uri.join(self.train_dir, "world.json")))
        return directory

    def serving(self, rewrites_version: str | None, policy_version: str | None) -> Service:
        """The Serve application (deployed on first use) serving these versions."""
        if self.service is None:
            log.info("serve: deploying the Serve application")
            token = secrets.token_urlsafe(24)
            self.service = Service(self.deploy_service(self.store.root, self.decision_log_dir, token), token)
            log.info("serve: up at %s", self.service.url)
        served = self.service.versions()
        for artifact, version in (("rewrites", rewrites_version), ("policy", policy_version)):
            if version is not None and served[artifact]["version"] != version:
                log.info("serve: reload %s -> %s (POST /v1/admin/reload)", artifact, version)
                self.service.reload(artifact, version)
        return self.service
