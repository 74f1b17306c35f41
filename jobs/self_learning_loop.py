"""The self-learning loop end to end on simulated traffic: ``selflearn demo [--out DIR]``.

    simulate -> mine rewrites -> train PDRFE -> train the hybrid policy -> OPE + guard-rails
      -> serve (Ray Serve, local) -> rounds of simulated traffic through the HTTP endpoints
         (POST /v1/rewrite, POST /v1/route; decisions logged with propensities; rewards
         drawn by the simulator's world and written as a `feedback` table)
      -> retrain from the decision logs -> redeploy (POST /v1/admin/reload) -> next round

Round 0 is the system before self-learning: no rewrites, the simulator's logging router.
Each later round serves the latest published rewrite table and policy and measures, on
HELD-OUT traffic of the same world (a new traffic seed):
  * defect_rate: the expected defect rate of the users' requests (first attempts and
    follow-ups) with the served rewrites applied, World.defect_probability(utterance or its
    rewrite, intended interpretation); the same traffic without rewrites is reported too;
  * true_reward: the true value of the served routing policy, mean_i sum_k pi(k|x_i) r_ik
    with r the simulator's expected rewards, on ONE fixed evaluation set of requests (the
    same for every round, so rounds compare policies, not request samples);
  * served_reward: the same on the round's own requests, with pi the mixture distribution
    the router logged with each decision.
After a round the policy is retrained on every decision log so far (each row carries the
propensity it was logged with), guard-railed, published, and reloaded; the rewrite table
is re-mined on the round's traffic and merged with the previous version.

Finally the PDRFE customer/skill embeddings are measured as optional router features
(inputs of the policy network, ``train_policy --embeddings``): the last policy training is
repeated with them and the true values of both are compared on the same test requests.

Every artifact is a store version (OUT/store: rewrites, embeddings, policy, plus the loop's
feedback/decisions per round and its report). Each stage leaves OUT/stages/<stage>.json
with its parameters and outputs; a rerun with the same settings reuses finished stages, so
a killed loop resumes where it stopped. Writes OUT/report.md, OUT/summary.json and PNGs.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs._cli import entrypoint
from jobs.simulate import load_overrides
from raylib import schema
from raylib.errors import UserError
from raylib.sim import resolve
from raylib.store import Store

REWRITE_BATCH = 256
ROUTE_CONCURRENCY = 16
REQUEST_TURNS = ("first", "followup")  # what users ask for; rephrases are the chain's evidence
PDRFE_MODEL = "PDRFE (w/ edge attention)"
# The default world: the small preset with 2.5x the sessions per customer, so that enough
# defective utterances reach the mining filters' support within a 15-minute loop.
DEFAULT_WORLD = {"traffic": {"sessions_per_customer": 20.0}}
OPE_REPLICATES = "50"  # bootstrap replicates of the policy jobs' intervals (their default: 200)


@dataclass(frozen=True)
class LoopSettings:
    """Every knob of a loop run; stage markers are reused only when these match."""

    preset: str = "small"
    seed: int = 0
    rounds: int = 3
    route_requests: int = 2000
    pdrfe_epochs: int = 2
    policy_epochs: int = 6
    eval_requests: int = 3000
    min_customers: int = 5
    min_support: int = 5
    mining_engine: str = "local"
    guardrails: str | None = None  # YAML for the policy jobs (None: their built-in guard-rails)
    world: tuple = ()  # simulator setting overrides, as sorted (key path, value) pairs

    def world_overrides(self) -> dict:
        """The simulator overrides as the nested dict ``simulate`` takes."""
        nested: dict = {}
        for path, value in self.world:
            *parents, leaf = path.split(".")
            node = nested
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return nested


def parse_args(argv, prog):
    p = argparse.ArgumentParser(prog=prog or "python -m jobs.self_learning_loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--preset", default="small", choices=("small", "medium", "large"),
                   help="simulated world size (default: small, about 10 minutes on 2 cores)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--rounds", type=int, default=3, help="served rounds after the baseline round 0 (default 3)")
    p.add_argument("--route-requests", type=int, default=2000, help="routing requests per round (default 2000)")
    p.add_argument("--pdrfe-epochs", type=int, default=2, help="PDRFE link-prediction epochs (default 2)")
    p.add_argument("--policy-epochs", type=int, default=6, help="RP/LP training epochs (default 6)")
    p.add_argument("--eval-requests", type=int, default=3000,
                   help="requests of the fixed evaluation set each round's true reward is measured on (default 3000)")
    p.add_argument("--min-customers", type=int, default=5,
                   help="distinct customers behind a served rewrite (default 5)")
    p.add_argument("--min-support", type=int, default=5,
                   help="times a source utterance was said before it can be rewritten (default 5)")
    p.add_argument("--mining-engine", choices=("local", "ray"), default="local",
                   help="rewrite mining path: single process (default; faster at the demo's scale) or Ray Data "
                        "(use on a cluster); both give the identical table")
    p.add_argument("--guardrails", help="guard-rails YAML for train_policy/evaluate_policy "
                   "(default: theirs, jobs/policy_guardrails.yaml)")
    p.add_argument("--config", help="YAML of simulator setting overrides (as for `selflearn simulate --config`), "
                   "merged over the loop's default world " + json.dumps(DEFAULT_WORLD))
    p.add_argument("--fresh", action="store_true", help="ignore stage markers and redo every stage")
    args = p.parse_args(argv)
    for name in ("rounds", "route_requests", "pdrfe_epochs", "policy_epochs", "eval_requests", "min_customers",
                 "min_support"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    return args


def log(message: str) -> None:
    print(f"[loop {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- stage markers ---------------------------------------------------------------------------


class Stages:
    """A finished stage leaves ``<dir>/<name>.json`` = {params, outputs, seconds}; running a
    stage whose marker holds the same params returns the recorded outputs instead."""

    def __init__(self, directory: str, fresh: bool = False):
        self.directory = directory
        self.fresh = fresh
        self.ran: list[str] = []
        self.reused: list[str] = []
        os.makedirs(directory, exist_ok=True)

    def marker(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.json")

    def done(self, name: str, params: dict) -> dict | None:
        params = json.loads(json.dumps(params))  # compare as recorded (tuples become lists)
        try:
            with open(self.marker(name)) as f:
                recorded = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return recorded["outputs"] if recorded.get("params") == params and not self.fresh else None

    def run(self, name: str, params: dict, work) -> dict:
        outputs = self.done(name, params)
        if outputs is not None:
            log(f"{name}: reused (finished earlier; {self.marker(name)})")
            self.reused.append(name)
            return outputs
        log(f"{name}: running")
        started = time.monotonic()
        outputs = work()
        seconds = round(time.monotonic() - started, 1)
        tmp = self.marker(name) + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"params": params, "outputs": outputs, "seconds": seconds}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.marker(name))  # the marker appears complete or not at all
        log(f"{name}: done in {seconds:.0f} s")
        self.ran.append(name)
        return outputs


# ---- child jobs ------------------------------------------------------------------------------


def run_job(module: str, argv: list[str], log_path: str, ok_codes: tuple[int, ...] = (0,)) -> int:
    """Run ``python -m <module> <argv>`` as a child process on the loop's Ray runtime
    (RAY_ADDRESS is inherited); its output goes to ``log_path``."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as f:
        rc = subprocess.call([sys.executable, "-m", module, *argv], stdout=f, stderr=subprocess.STDOUT)
    if rc not in ok_codes:
        with open(log_path) as f:
            tail = f.read()[-1500:]
        raise UserError(f"{module} failed with exit code {rc} (log: {log_path}):\n{tail}")
    return rc


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ---- serving ---------------------------------------------------------------------------------


class Service:
    """The Serve application of serve_apps, deployed from its packaged config and reached
    over HTTP only."""

    def __init__(self, store_root: str, decision_log_dir: str):
        import httpx

        from serve_apps.run import deploy, free_port, packaged_config, serve_config

        self.token = secrets.token_urlsafe(24)
        config = serve_config(packaged_config(), {
            "store_root": store_root,
            "decision_log_dir": decision_log_dir,
            "decision_log_max_age_s": 1.0,
            "admin_token": self.token,
        }, host="127.0.0.1", port=free_port())
        self.url = deploy(config)
        self.decision_log_dir = decision_log_dir
        self.http = httpx.Client(base_url=self.url, timeout=60.0,
                                 limits=httpx.Limits(max_connections=ROUTE_CONCURRENCY))

    def close(self) -> None:
        from ray import serve

        self.http.close()
        serve.shutdown()

    def reload(self, artifact: str, version: str) -> dict:
        r = self.http.post("/v1/admin/reload", json={"artifact": artifact, "version": version},
                           headers={"Authorization": f"Bearer {self.token}"})
        if r.status_code != 200:
            raise UserError(f"reloading {artifact} {version} failed: HTTP {r.status_code} {r.text}")
        return r.json()

    def versions(self) -> dict:
        return self.http.get("/v1/versions").raise_for_status().json()

    def rewrite(self, utterances: list[str]) -> list[str | None]:
        """The served rewrite of each utterance (None: sent to NLU as spoken)."""
        out: list[str | None] = []
        for lo in range(0, len(utterances), REWRITE_BATCH):
            r = self.http.post("/v1/rewrite", json={"utterances": utterances[lo:lo + REWRITE_BATCH]})
            out.extend(item["rewrite"] for item in r.raise_for_status().json()["results"])
        return out

    def route(self, requests: list[dict]) -> list[dict]:
        """POST /v1/route for each request, ROUTE_CONCURRENCY at a time (the router batches)."""
        def one(body):
            return self.http.post("/v1/route", json=body).raise_for_status().json()

        with cf.ThreadPoolExecutor(ROUTE_CONCURRENCY) as pool:
            return list(pool.map(one, requests))


def route_bodies(table: pa.Table) -> list[dict]:
    """routing_log-shaped requests as POST /v1/route bodies."""
    bodies = []
    for row in table.select(["customer_id", "utterance", "context", "candidates"]).to_pylist():
        ctx = row["context"]
        bodies.append({
            "utterance": row["utterance"],
            "customer_id": row["customer_id"],
            "context": {"device_type": ctx["device_type"], "device_status": ctx["device_status"],
                        "asr_confidence": float(ctx["asr_confidence"]), "hour": int(ctx["hour"])},
            "candidates": [{"domain": c["domain"], "intent": c["intent"], "skill_id": c["skill_id"],
                            "nlu_confidence": float(c["nlu_confidence"])} for c in row["candidates"]],
        })
    return bodies


# ---- measurements (pure) ---------------------------------------------------------------------


def with_feedback(decisions: pa.Table, feedback: pa.Table) -> pa.Table:
    """Decision-log rows (without reward) with the reward of their feedback row, joined on
    request_id; decisions without feedback are left out."""
    where = pc.index_in(decisions["request_id"], value_set=feedback["request_id"])
    joined = decisions.append_column("reward", pc.take(feedback["reward"], where))
    return joined.filter(pc.is_valid(where))


def policy_value(distributions: list, expected_rewards: list) -> float:
    """True value of a policy on logged requests: mean_i sum_k pi(k|x_i) r_ik."""
    if not distributions:
        return float("nan")
    return float(np.mean([np.dot(p, r) for p, r in zip(distributions, expected_rewards)]))


def user_requests(traffic_dir: str) -> pa.Table:
    """(utterance, intended_interpretation, n) of the requests users made in a traffic
    sample: first attempts and follow-ups, one row per distinct pair with its count."""
    inter = schema.read_table(traffic_dir, "interactions", ["customer_id", "device_id", "timestamp", "utterance"])
    truth = schema.read_table(traffic_dir, "truth_turns",
                              ["customer_id", "device_id", "timestamp", "intended_interpretation", "turn_kind"])
    keys = ["customer_id", "device_id", "timestamp"]
    joined = inter.join(truth, keys=keys, join_type="inner")
    if joined.num_rows != inter.num_rows:
        raise UserError(f"{traffic_dir}: truth_turns does not match interactions one to one")
    asked = joined.filter(pc.is_in(joined["turn_kind"], pa.array(REQUEST_TURNS)))
    pairs = asked.group_by(["utterance", "intended_interpretation"]).aggregate([("utterance", "count")])
    return pairs.rename_columns(["utterance", "intended_interpretation", "n"])


def defect_rates(world, pairs: pa.Table, rewrites: list[str | None]) -> dict:
    """Expected defect rate of the requests in ``pairs`` as spoken and with the served
    rewrites applied (World.defect_probability of the text NLU receives)."""
    spoken = pairs["utterance"].to_pylist()
    intended = pairs["intended_interpretation"].to_pylist()
    weight = pairs["n"].to_numpy().astype(np.float64)
    sent = [r if r else u for u, r in zip(spoken, rewrites)]
    p_spoken = world.defect_probability(spoken, intended)
    p_sent = world.defect_probability(sent, intended)
    changed = np.array([r is not None and r != u for u, r in zip(spoken, rewrites)])
    return {
        "defect_rate_without_rewrites": float(np.average(p_spoken, weights=weight)),
        "defect_rate": float(np.average(p_sent, weights=weight)),
        "rewritten_share": float(np.average(changed, weights=weight)),
        "requests": int(weight.sum()),
    }


# ---- the loop --------------------------------------------------------------------------------


class Loop:
    def __init__(self, out: str, settings: LoopSettings, fresh: bool):
        self.out = out
        self.s = settings
        self.store_root = os.path.join(out, "store")
        self.store = Store(self.store_root)
        self.stages = Stages(os.path.join(out, "stages"), fresh)
        self.train_dir = os.path.join(out, "data", "train")
        self.params = asdict(settings)
        self.service: Service | None = None
        self._world = None
        self._evaluation_set = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    @property
    def world(self):
        if self._world is None:
            from raylib.sim import World

            self._world = World.from_dir(self.train_dir)
        return self._world

    def true_reward(self, policy_version: str | None) -> float:
        """True value of the routing policy ``policy_version`` (None: the simulator's logging
        policy) on the loop's fixed evaluation set of ``eval_requests`` requests."""
        from raylib.routing.assess import logging_true_value, true_value
        from raylib.routing.hybrid import HybridPolicy

        if self._evaluation_set is None:
            self._evaluation_set = self.world.routing(self.s.eval_requests, seed=self.s.seed + 7000)
        requests, truth = self._evaluation_set
        if policy_version is None:
            return logging_true_value(requests, truth)
        policy = HybridPolicy.from_artifact(self.store.load("policy", policy_version))
        return true_value(policy.padded_distribution(requests)[0], truth)

    # -- stages before serving --

    def simulate(self, out: str, traffic_seed: int | None) -> dict:
        from raylib.sim import simulate

        return simulate(out, self.s.preset, self.s.seed, self.s.world_overrides(), traffic_seed)

    def mine(self, data: str, name: str) -> dict:
        out = self.path("jobs", name)
        run_job("jobs.mine_rewrites", ["--data", data, "--out", out, "--store", self.store_root,
                                       "--truth", data, "--min-customers", str(self.s.min_customers),
                                       "--min-support", str(self.s.min_support), "--engine", self.s.mining_engine],
                self.path("logs", f"{name}.log"))
        summary = read_json(os.path.join(out, "summary.json"))
        return {"version": self.store.latest("rewrites"), "summary": summary, "out": out}

    def train_pdrfe(self) -> dict:
        out = self.path("jobs", "pdrfe")
        run_job("jobs.train_pdrfe", ["--data", self.train_dir, "--out", out, "--store", self.store_root,
                                     "--models", PDRFE_MODEL, "--publish-model", PDRFE_MODEL,
                                     "--epochs", str(self.s.pdrfe_epochs), "--num-workers", "1"],
                self.path("logs", "pdrfe.log"))
        summary = read_json(os.path.join(out, "summary.json"))
        return {"version": summary.get("embeddings_version") or self.store.latest("embeddings"),
                "cross_entropy": summary.get("cross_entropy"), "out": out}

    def guardrail_args(self) -> list[str]:
        return ["--guardrails", self.s.guardrails] if self.s.guardrails else []

    def train_policy(self, data: str, name: str, store: Store | None = None, extra: tuple[str, ...] = (),
                     workers: int = 1) -> dict:
        """train_policy publishes only when the guard-rails pass (exit code 1 otherwise);
        ``workers`` Ray Train workers per network (0: in-process, the same loop and seeds)."""
        store = store or self.store
        out = self.path("jobs", name)
        before = store.latest("policy")
        rc = run_job("jobs.train_policy", ["--data", data, "--out", out, "--store", store.root,
                                           "--epochs", str(self.s.policy_epochs), "--num-workers", str(workers),
                                           "--replicates", OPE_REPLICATES, *self.guardrail_args(), *extra],
                     self.path("logs", f"{name}.log"), ok_codes=(0, 1))
        summary = read_json(os.path.join(out, "summary.json"))
        after = store.latest("policy")
        published = rc == 0 and summary.get("published_version") is not None and after != before
        return {"version": after, "published": published, "decision": summary.get("decision"),
                "true_value": summary.get("true_value"), "out": out}

    def evaluate_policy(self, version: str) -> dict:
        out = self.path("jobs", "ope")
        run_job("jobs.evaluate_policy", ["--data", self.train_dir, "--out", out, "--store", self.store_root,
                                         "--version", version, "--replicates", OPE_REPLICATES,
                                         *self.guardrail_args()],
                self.path("logs", "ope.log"), ok_codes=(0, 1))
        summary = read_json(os.path.join(out, "summary.json"))
        return {"ope": summary.get("ope"), "decision": summary.get("decision"), "out": out}

    # -- rounds --

    def traffic(self, rnd: int) -> str:
        """Held-out traffic of round ``rnd``: the same world, a new traffic seed."""
        directory = self.path("data", f"round-{rnd}")
        self.stages.run(f"round-{rnd}-traffic", {**self.params},
                        lambda: self.simulate(directory, traffic_seed=self.s.seed + 1000 + rnd))
        return directory

    def baseline_round(self) -> dict:
        """Round 0: no rewrites, the simulator's logging router."""
        def work():
            traffic = self.traffic(0)
            pairs = user_requests(traffic)
            rates = defect_rates(self.world, pairs, [None] * pairs.num_rows)
            routed, truth = self.world.routing(self.s.route_requests, seed=self.s.seed + 5000)
            served = policy_value(routed["propensities"].to_pylist(), truth["expected_rewards"].to_pylist())
            return {"round": 0, **rates, "true_reward": self.true_reward(None), "served_reward": served,
                    "policy_version": "sim-logging",
                    "rewrites_version": None, "served_through": "simulator logging policy"}

        return self.stages.run("round-0", self.params, work)

    def served_round(self, rnd: int, rewrites_version: str | None, policy_version: str | None) -> dict:
        """Round ``rnd`` through the Serve endpoints; writes the round's decisions joined
        with their feedback under OUT/rounds/round-<rnd> and publishes them."""
        def work():
            svc = self.serving(rewrites_version, policy_version)
            traffic = self.traffic(rnd)
            pairs = user_requests(traffic)
            rates = defect_rates(self.world, pairs, svc.rewrite(pairs["utterance"].to_pylist()))
            routed = self.route_round(svc, rnd, policy_version)
            return {"round": rnd, **rates, **routed, "true_reward": self.true_reward(policy_version),
                    "rewrites_version": rewrites_version}

        return self.stages.run(f"round-{rnd}", {**self.params, "rewrites": rewrites_version,
                                                "policy": policy_version}, work)

    def route_round(self, svc: Service, rnd: int, policy_version: str | None) -> dict:
        """Simulated requests decided by POST /v1/route; the simulator draws each reward from
        the chosen candidate's true expected reward."""
        directory = self.path("rounds", f"round-{rnd}")
        if policy_version is None:  # no policy passed its guard-rails: the logging router stays
            routed, truth = self.world.routing(self.s.route_requests, seed=self.s.seed + 5000 + rnd)
            decisions = routed
        else:
            responses: list[dict] = []

            def served_policy(requests: pa.Table):
                responses.extend(svc.route(route_bodies(requests)))
                return (np.array([r["action"] for r in responses]),
                        np.array([r["propensity"] for r in responses]), None)

            routed, truth = self.world.routing(self.s.route_requests, seed=self.s.seed + 5000 + rnd,
                                               policy=served_policy)
            ids = pa.array([r["request_id"] for r in responses])
            feedback = pa.table({"request_id": ids, "reward": routed["reward"]}, schema=schema.FEEDBACK)
            truth = truth.set_column(0, "request_id", ids)
            decisions = with_feedback(self.decision_rows(svc, ids), feedback)
            if decisions.num_rows != len(ids):
                raise UserError(f"round {rnd}: {decisions.num_rows} of {len(ids)} decisions reached the log")
            decisions = decisions.select(schema.ROUTING_LOG.names).cast(schema.ROUTING_LOG)
            schema.write_table(feedback, directory, "feedback")
        checked = schema.validate(decisions, "routing_log")
        schema.write_table(checked.good, directory, "routing_log")
        schema.write_rejected(checked.rejected, directory)
        schema.write_table(truth, directory, "truth_routing")
        by_id = dict(zip(truth["request_id"].to_pylist(), truth["expected_rewards"].to_pylist()))
        good = checked.good
        value = policy_value(good["propensities"].to_pylist(), [by_id[i] for i in good["request_id"].to_pylist()])
        version = self.store.publish("decisions", {"routing_log": good, "truth_routing": truth},
                                     metadata={"round": rnd, "policy_version": policy_version})
        return {"served_reward": value, "policy_version": policy_version or "sim-logging",
                "mean_reward": float(pc.mean(good["reward"]).as_py()), "decisions": good.num_rows,
                "rejected": checked.n_rejected, "decisions_version": version,
                "served_through": "POST /v1/route" if policy_version else "simulator logging policy"}

    def decision_rows(self, svc: Service, ids: pa.Array, timeout_s: float = 120.0) -> pa.Table:
        """This round's rows of the router's decision log, read back once the router's
        writer has flushed them (it does within ``decision_log_max_age_s`` = 1 s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                log_table = schema.read_table(svc.decision_log_dir, "routing_log")
                rows = log_table.filter(pc.is_in(log_table["request_id"], ids)).drop_columns(["reward"])
            except FileNotFoundError:
                rows = None
            if (rows is not None and rows.num_rows >= len(ids)) or time.monotonic() > deadline:
                return rows if rows is not None else schema.ROUTING_LOG.empty_table().drop_columns(["reward"])
            time.sleep(0.5)

    def learning_data(self, rnd: int) -> str:
        """Every decision log so far (simulator's logs + rounds 1..rnd), each row with the
        propensity it was logged with, as one contract-table directory for train_policy."""
        directory = self.path("data", f"learn-{rnd}")
        sources = [self.train_dir] + [self.path("rounds", f"round-{k}") for k in range(1, rnd + 1)]
        for table in ("routing_log", "truth_routing"):
            for part, src in enumerate(sources):
                schema.write_table(schema.read_table(src, table), directory, table, part)
        return directory

    def serving(self, rewrites_version: str | None, policy_version: str | None) -> Service:
        if self.service is None:
            log("serve: deploying the Serve application (local Ray Serve)")
            self.service = Service(self.store_root, self.path("decision_log"))
            log(f"serve: up at {self.service.url}")
        served = self.service.versions()
        for artifact, version in (("rewrites", rewrites_version), ("policy", policy_version)):
            if version is not None and served[artifact]["version"] != version:
                log(f"serve: reload {artifact} -> {version} (POST /v1/admin/reload)")
                self.service.reload(artifact, version)
        return self.service

    # -- PDRFE embeddings as router features --

    def pdrfe_router_features(self, embeddings_version: str | None, last: dict) -> dict:
        """Reward the PDRFE customer/skill embeddings add as policy-network inputs: the last
        policy training (its data, its production policy, its seeds) run again with
        ``--embeddings``, in a scratch store holding copies of that production policy and
        the embeddings. Both runs split the data alike, so their true values (simulator
        truth of the same test requests) differ only by the embeddings."""
        def work():
            if embeddings_version is None:
                return {"measured": False, "reason": "no embeddings were published"}
            scratch = Store(self.path("features", "store"))
            copy_artifact(self.store, scratch, "embeddings", embeddings_version)
            current = read_json(os.path.join(last["out"], "summary.json")).get("current_policy")
            if current is not None:
                copy_artifact(self.store, scratch, "policy", current)
            run = self.train_policy(last["data"], "policy-with-embeddings", scratch, ("--embeddings", "latest"), workers=0)
            without, with_emb = last["true_value"], run["true_value"]
            return {"measured": True, "data": last["data"], "production_policy": current,
                    "embeddings_version": embeddings_version,
                    "true_value": {"without_embeddings": without, "with_embeddings": with_emb},
                    "reward_added": {k: with_emb[k] - without[k] for k in ("rp", "lp", "hp")},
                    "method": "the last policy training repeated with --embeddings (same data, production "
                              "policy, seeds and test split)"}

        return self.stages.run("pdrfe-router-features", {**self.params, "embeddings": embeddings_version,
                                                         "policy_job": last["out"]}, work)

    # -- everything --

    def run(self) -> dict:
        s = self.s
        sim = self.stages.run("simulate", self.params, lambda: self.simulate(self.train_dir, None))
        rewrites = self.stages.run("mine-rewrites", self.params, lambda: self.mine(self.train_dir, "mine-0"))
        pdrfe = self.stages.run("train-pdrfe", self.params, self.train_pdrfe)
        policy = self.stages.run("train-policy", self.params, lambda: self.train_policy(self.train_dir, "policy-0"))
        last_training = {**policy, "data": self.train_dir}
        ope = (self.stages.run("evaluate-policy", {**self.params, "policy": policy["version"]},
                               lambda: self.evaluate_policy(policy["version"]))
               if policy["version"] else {"ope": None, "decision": None})
        rounds = [self.baseline_round()]
        rewrites_version, policy_version = rewrites["version"], policy["version"]
        refreshes = []
        for rnd in range(1, s.rounds + 1):
            rounds.append(self.served_round(rnd, rewrites_version, policy_version))
            log(f"round {rnd}: defect rate {rounds[-1]['defect_rate']:.4f} "
                f"(without rewrites {rounds[-1]['defect_rate_without_rewrites']:.4f}), "
                f"true reward {rounds[-1]['true_reward']:.4f}")
            if rnd == s.rounds:
                break
            params = {**self.params, "round": rnd}
            refreshed = self.stages.run(f"round-{rnd}-retrain-policy", params,
                                        lambda: self.train_policy(self.learning_data(rnd), f"policy-{rnd}"))
            remined = self.stages.run(f"round-{rnd}-remine-rewrites", params,
                                      lambda: self.mine(self.traffic(rnd), f"mine-{rnd}"))
            refreshes.append({"round": rnd, "policy": refreshed, "rewrites": remined})
            last_training = {**refreshed, "data": self.path("data", f"learn-{rnd}")}
            policy_version = refreshed["version"] if refreshed["published"] else policy_version
            rewrites_version = remined["version"] or rewrites_version
        features = self.pdrfe_router_features(pdrfe["version"], last_training)
        return self.finish(sim, rewrites, pdrfe, policy, ope, rounds, refreshes, features)

    def finish(self, sim, rewrites, pdrfe, policy, ope, rounds, refreshes, features) -> dict:
        before, after = rounds[0]["defect_rate"], rounds[-1]["defect_rate"]
        summary = {
            "settings": self.params,
            "rounds": [{"round": r["round"], "defect_rate": r["defect_rate"], "true_reward": r["true_reward"],
                        "served_reward": r["served_reward"],
                        "defect_rate_without_rewrites": r["defect_rate_without_rewrites"],
                        "rewritten_share": r["rewritten_share"], "policy_version": r["policy_version"],
                        "rewrites_version": r["rewrites_version"]} for r in rounds],
            "defect_rate_before": before,
            "defect_rate_after": after,
            "defect_rate_reduction": (before - after) / before if before > 0 else 0.0,
            "true_reward_before": rounds[0]["true_reward"],
            "true_reward_after": rounds[-1]["true_reward"],
            "pdrfe_router_features": features,
            "initial": {"simulate": sim, "rewrites": rewrites, "pdrfe": pdrfe, "policy": policy, "ope": ope},
            "refreshes": refreshes,
            "artifacts": {name: self.store.versions(name)
                          for name in ("rewrites", "embeddings", "policy", "decisions", "loop_report")},
            "stages": {"ran": self.stages.ran, "reused": self.stages.reused},
        }
        plots = write_plots(self.out, rounds)
        report = markdown_report(summary, plots)
        with open(self.path("report.md"), "w") as f:
            f.write(report)
        version = self.store.publish("loop_report", {"summary": summary, "report": report.encode()},
                                     metadata={"settings": self.params})
        summary["artifacts"]["loop_report"] = self.store.versions("loop_report")
        summary["report_version"] = version
        with open(self.path("summary.json"), "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True, default=str)
        return summary

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
            self.service = None


def copy_artifact(source: Store, target: Store, name: str, version: str) -> str:
    """Publish ``source``'s artifact ``name``/``version`` (files and metadata) in ``target``."""
    art = source.load(name, version)
    read = {"table": art.table, "json": art.json, "bytes": art.bytes}
    return target.publish(name, {key: read[spec["kind"]](key) for key, spec in art.files.items()}, art.metadata)


# ---- report ----------------------------------------------------------------------------------


def write_plots(out: str, rounds: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rounds]
    files = []
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(x, [r["defect_rate_without_rewrites"] for r in rounds], "o--", label="as spoken")
    ax.plot(x, [r["defect_rate"] for r in rounds], "o-", label="served (rewrites applied)")
    ax.set_xlabel("round")
    ax.set_ylabel("expected defect rate")
    ax.set_xticks(x)
    ax.legend()
    ax.set_title("Defect rate of held-out traffic")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "defect_rate.png"), dpi=120)
    files.append("defect_rate.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(x, [r["true_reward"] for r in rounds], "o-", label="fixed evaluation set")
    ax.plot(x, [r["served_reward"] for r in rounds], "o--", label="the round's own requests")
    ax.set_xlabel("round (0: logging policy)")
    ax.set_ylabel("true reward of the served router")
    ax.legend()
    ax.set_xticks(x)
    ax.set_title("Routing: true reward per round")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "true_reward.png"), dpi=120)
    files.append("true_reward.png")
    plt.close(fig)
    return files


def markdown_report(summary: dict, plots: list[str]) -> str:
    lines = ["# Self-learning loop", "",
             f"Settings: `{json.dumps(summary['settings'], sort_keys=True)}`", "",
             "## Per round (round 0: before self-learning)", "",
             "| round | defect rate (served) | defect rate (as spoken) | rewritten share | true reward "
             "(fixed evaluation set) | true reward (round's requests) | policy | rewrites |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary["rounds"]:
        lines.append(f"| {r['round']} | {r['defect_rate']:.4f} | {r['defect_rate_without_rewrites']:.4f} | "
                     f"{r['rewritten_share']:.3f} | {r['true_reward']:.4f} | {r['served_reward']:.4f} | "
                     f"{r['policy_version']} | "
                     f"{r['rewrites_version']} |")
    lines += ["", f"Defect rate before: **{summary['defect_rate_before']:.4f}**, after: "
              f"**{summary['defect_rate_after']:.4f}** (reduction {100 * summary['defect_rate_reduction']:.1f}%).",
              f"True reward of the router: **{summary['true_reward_before']:.4f}** (logging policy) -> "
              f"**{summary['true_reward_after']:.4f}** (last round), on a fixed evaluation set of "
              f"{summary['settings']['eval_requests']} requests.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    feats = summary["pdrfe_router_features"]
    lines += ["", "## PDRFE embeddings as router features", ""]
    if feats.get("measured"):
        tv = feats["true_value"]
        lines += [f"Method: {feats['method']}; data `{feats['data']}`, production policy "
                  f"{feats['production_policy'] or 'the logging policy'}, embeddings {feats['embeddings_version']}. "
                  "True values on the trainings' test requests.", "",
                  "| policy inputs | RP | LP | HP |", "| --- | --- | --- | --- |"]
        for label, key in (("without embeddings", "without_embeddings"),
                           ("with PDRFE customer/skill embeddings", "with_embeddings")):
            lines.append(f"| {label} | " + " | ".join(f"{tv[key][m]:.4f}" for m in ("rp", "lp", "hp")) + " |")
        added = feats["reward_added"]
        lines += ["", "Reward added by the embeddings: " + ", ".join(f"{m.upper()} {added[m]:+.4f}" for m in ("rp", "lp", "hp"))
                  + "."]
    else:
        lines.append(f"Not measured: {feats.get('reason')}.")
    lines += ["", "## Refreshes", "", "| after round | policy decision | policy published | rewrites version |",
              "| --- | --- | --- | --- |"]
    for ref in summary["refreshes"]:
        decision = (ref["policy"].get("decision") or {}).get("status")
        lines.append(f"| {ref['round']} | {decision} | {ref['policy']['published']} | {ref['rewrites']['version']} |")
    lines += ["", "## Artifacts (store versions)", ""]
    lines += [f"- `{name}`: {', '.join(v) or 'none'}" for name, v in summary["artifacts"].items()]
    lines.append("- this report and summary are published as the next version of `loop_report`")
    lines += ["", f"Stages run this time: {', '.join(summary['stages']['ran']) or 'none'}; reused: "
              f"{', '.join(summary['stages']['reused']) or 'none'}.", ""]
    return "\n".join(lines)


# ---- entry point -----------------------------------------------------------------------------


def merge(base: dict, override: dict) -> dict:
    """``override`` deep-merged over ``base``."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def flatten(overrides: dict, prefix: str = "") -> tuple:
    """Nested overrides as sorted (dotted key path, value) pairs (hashable, JSON-stable)."""
    pairs = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs.extend(flatten(value, path + "."))
        else:
            pairs.append((path, tuple(value) if isinstance(value, list) else value))
    return tuple(sorted(pairs))


def init_ray() -> None:
    """Join the cluster in RAY_ADDRESS, or start a local runtime (with the HAProxy ingress
    env that `selflearn serve` uses) and export its address so child jobs share it."""
    import ray

    from serve_apps.run import ingress_env

    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    os.environ.update(ingress_env("haproxy"))
    # Logical CPUs: Serve's replicas hold ~1 CPU while a retraining job runs beside them.
    ray.init(num_cpus=max(4, os.cpu_count() or 1), log_to_driver=False)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


@entrypoint
def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    settings = LoopSettings(preset=args.preset, seed=args.seed, rounds=args.rounds, route_requests=args.route_requests,
                            pdrfe_epochs=args.pdrfe_epochs, policy_epochs=args.policy_epochs,
                            eval_requests=args.eval_requests, min_customers=args.min_customers,
                            min_support=args.min_support, mining_engine=args.mining_engine,
                            guardrails=os.path.abspath(args.guardrails) if args.guardrails else None,
                            world=flatten(merge(DEFAULT_WORLD, load_overrides(args.config))))
    resolve(settings.preset, settings.world_overrides())  # unknown simulator settings fail here, not mid-loop
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    started = time.monotonic()
    log(f"output in {out}")
    init_ray()
    loop = Loop(out, settings, args.fresh)
    try:
        summary = loop.run()
    finally:
        loop.close()
        import ray

        ray.shutdown()
    log(f"defect rate {summary['defect_rate_before']:.4f} -> {summary['defect_rate_after']:.4f}; "
        f"true reward {summary['true_reward_before']:.4f} -> {summary['true_reward_after']:.4f}")
    log(f"finished in {time.monotonic() - started:.0f} s")
    print(f"report: {os.path.join(out, 'report.md')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
