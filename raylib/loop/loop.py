"""The loop itself: the stages before serving, the served rounds with a refresh after
each, the PDRFE-features measurement, and the summary and report (see ``raylib.loop``)."""

from __future__ import annotations

from dataclasses import asdict

from raylib import uri
from raylib.job import log, to_json
from raylib.loop.child import Jobs
from raylib.loop.report import markdown_report, number, plots
from raylib.loop.rounds import DeployService, Rounds
from raylib.loop.settings import LoopSettings
from raylib.loop.stages import Stages
from raylib.sim import simulate
from raylib.store import Store

ARTIFACTS = ("rewrites", "embeddings", "policy", "decisions", "loop_report")
ROUND_KEYS = ("round", "defect_rate", "defect_rate_without_rewrites", "rewritten_share", "true_reward", "served_reward",
              "policy_version", "rewrites_version", "treatment_defect_rate", "holdout_defect_rate", "ab_reduction",
              "rewritable_treatment_defect_rate", "rewritable_holdout_defect_rate", "rewritable_ab_reduction",
              "online_tested", "online_wins", "online_losses", "blacklisted", "withdrawn_stale",
              "withdrawn_stale_by_reason")  # a round's line in the summary


class Loop:
    """One loop run writing under ``out`` (see ``raylib.loop`` for the layout);
    ``deploy_service`` deploys the Serve application when the first round is served;
    ``fresh`` ignores the stage markers of an earlier run."""

    def __init__(self, out: str, settings: LoopSettings, deploy_service: DeployService, fresh: bool = False):
        self.out = uri.absolute(out)
        self.s = settings
        self.params = asdict(settings)
        self.store = Store(self.path("store"))
        self.stages = Stages(self.path("stages"), fresh)
        self.jobs = Jobs(self.out, settings, self.store.root)
        self.train_dir = self.path("data", "train")
        self.rounds = Rounds(self.out, settings, self.store, self.stages, self.train_dir, deploy_service)

    def path(self, *parts: str) -> str:
        return uri.join(self.out, *parts)

    @property
    def deployed(self) -> bool:
        """Whether this run deployed the Serve application (``close`` leaves it up)."""
        return self.rounds.service is not None

    def close(self) -> None:
        self.rounds.close()

    def run(self) -> dict:
        """Every stage in order (finished ones reused); returns the summary."""
        s, stages, jobs = self.s, self.stages, self.jobs
        sim = stages.run("simulate", self.params,
                         lambda: simulate(self.train_dir, s.preset, s.seed, s.world_overrides()))
        rewrites = stages.run("mine-rewrites", self.params, lambda: jobs.mine(self.train_dir, "mine-0"))
        pdrfe = stages.run("train-pdrfe", self.params, lambda: jobs.train_pdrfe(self.train_dir))
        policy = stages.run("train-policy", self.params, lambda: jobs.train_policy(self.train_dir, "policy-0"))
        last_training = policy
        ope = (stages.run("evaluate-policy", {**self.params, "policy": policy["version"], "rows": "held-out"},
                          lambda: jobs.evaluate_policy(self.train_dir, policy["version"]))
               if policy["version"] else {"ope": None, "decision": None, "evaluated_rows": None})
        rounds = [self.rounds.baseline()]
        rewrites_version, policy_version = rewrites["version"], policy["version"]
        refreshes = []
        for rnd in range(1, s.rounds + 1):
            rounds.append(self.rounds.served(rnd, rewrites_version, policy_version))
            done = rounds[-1]
            log.info("round %d: defect rate %s (without rewrites %s), true reward %s; A/B treatment %s holdout %s, "
                     "online wins %d losses %d", rnd, number(done["defect_rate"]),
                     number(done["defect_rate_without_rewrites"]), number(done["true_reward"]),
                     number(done["treatment_defect_rate"]), number(done["holdout_defect_rate"]),
                     done["online_wins"], done["online_losses"])
            rewrites_version = done["rewrites_after_blacklist"] or rewrites_version
            if rnd == s.rounds:
                break
            params = {**self.params, "round": rnd}
            refreshed = stages.run(f"round-{rnd}-retrain-policy", params,
                                   lambda: jobs.train_policy(self.rounds.learning_data(rnd), f"policy-{rnd}"))
            remined = stages.run(f"round-{rnd}-remine-rewrites", params,
                                 lambda: jobs.mine(self.rounds.mining_window(rnd), f"mine-{rnd}"))
            refreshes.append({"round": rnd, "policy": refreshed, "rewrites": remined})
            last_training = refreshed
            policy_version = refreshed["version"] or policy_version
            rewrites_version = remined["version"] or rewrites_version
        features = self.pdrfe_router_features(pdrfe["version"], last_training)
        return self.finish(sim, rewrites, pdrfe, policy, ope, rounds, refreshes, features)

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
            current = last["current_policy"]
            if current is not None:
                copy_artifact(self.store, scratch, "policy", current)
            run = self.jobs.train_policy(last["data"], "policy-with-embeddings", scratch.root,
                                         ("--embeddings", "latest"), workers=0)
            without, with_emb = last["true_value"], run["true_value"]
            return {"measured": True, "data": last["data"], "production_policy": current,
                    "embeddings_version": embeddings_version,
                    "true_value": {"without_embeddings": without, "with_embeddings": with_emb},
                    "reward_added": {k: with_emb[k] - without[k] for k in ("rp", "lp", "hp")},
                    "method": "the last policy training repeated with --embeddings (same data, production "
                              "policy, seeds and test split)"}

        return self.stages.run("pdrfe-router-features", {**self.params, "embeddings": embeddings_version,
                                                         "policy_job": last["out"]}, work)

    def finish(self, sim, rewrites, pdrfe, policy, ope, rounds, refreshes, features) -> dict:
        """The summary: written as OUT/summary.json (strict JSON) and, with the report, published
        as the next ``loop_report`` version; OUT/report.md and the plots beside it."""
        before, after = rounds[0]["defect_rate"], rounds[-1]["defect_rate"]
        summary = {
            "settings": self.params,
            "rounds": [{key: r[key] for key in ROUND_KEYS} for r in rounds],
            "defect_rate_before": before,
            "defect_rate_after": after,
            "defect_rate_reduction": (before - after) / before if before and after is not None else None,
            "true_reward_before": rounds[0]["true_reward"],
            "true_reward_after": rounds[-1]["true_reward"],
            "pdrfe_router_features": features,
            "initial": {"simulate": sim, "rewrites": rewrites, "pdrfe": pdrfe, "policy": policy, "ope": ope},
            "refreshes": refreshes,
            "artifacts": {name: self.store.versions(name) for name in ARTIFACTS},
            "stages": {"ran": self.stages.ran, "reused": self.stages.reused},
        }
        charts = plots(rounds)
        report = markdown_report(summary, list(charts))
        for name, data in charts.items():
            uri.write_bytes(self.path(name), data)
        uri.write_text(self.path("report.md"), report)
        version = self.store.publish("loop_report", {"summary": summary, "report": report.encode()},
                                     metadata={"settings": self.params})
        summary["artifacts"]["loop_report"] = self.store.versions("loop_report")
        summary["report_version"] = version
        uri.write_text(self.path("summary.json"), to_json(summary))
        return summary


def copy_artifact(source: Store, target: Store, name: str, version: str) -> str:
    """Publish ``source``'s artifact ``name``/``version`` (files and metadata) in ``target``."""
    art = source.load(name, version)
    read = {"table": art.table, "json": art.json, "bytes": art.bytes}
    return target.publish(name, {key: read[spec["kind"]](key) for key, spec in art.files.items()}, art.metadata)
