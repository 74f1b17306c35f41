"""Operating the served application, over real HTTP against a local Ray Serve: every
``selflearn_*`` metric scraped from Ray's Prometheus endpoint moves with the traffic sent,
the flag gauge follows the store, the Grafana dashboard queries exactly the exported names,
and a decision-log outage in the middle of /v1/route traffic loses no decision."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from raylib.routing.features import Vocabulary
from raylib.routing.hybrid import HybridPolicy
from raylib.routing.toy import ToyBandit
from raylib.store import Store
from raylib.uri import read_table
from serve_apps.deploy import deploy, free_port, packaged_config, serve_config
from serve_apps.hybrid_router import intent_label, known_intents
from serve_apps.metrics import PROPENSITY_BOUNDARIES

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DASHBOARD = Path(__file__).resolve().parents[1] / "serve_apps" / "grafana" / "selflearn_dashboard.json"
REWRITES = {"play maj and dragons": "play imagine dragons", "turn of the lights": "turn off the lights"}
DEADLINE_S = 60.0  # Ray reports every second here (serve_ray_metrics), the ingress tallies every second


def _policy() -> HybridPolicy:
    """An untrained policy that lets RP and LP each act on half of every known intent."""
    log, _ = ToyBandit(seed=0).routing(300, seed=0)
    policy = HybridPolicy.untrained(Vocabulary.fit(log), seed=1)
    policy.rpdr = {intent: 0.5 for intent in policy.vocab.tables["intent"]}
    return policy


@pytest.fixture(scope="module")
def served(serve_ray_metrics, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_metrics")
    store = Store(str(root / "store"))
    table = pa.table({"utterance": list(REWRITES), "rewrite": list(REWRITES.values()), "score": [0.9] * 2,
                      "n_customers": [5] * 2})
    store.publish("rewrites", {"table": table})
    store.publish("rewrites", {"table": table})  # served: v000002
    policy = _policy()
    store.publish("policy", policy.to_files())  # served: v000001
    args = {"store_root": str(root / "store"), "decision_log_dir": str(root / "log"), "flag_poll_s": 0.2,
            "decision_log_max_rows": 20, "decision_log_max_buffer_rows": 40, "decision_log_max_age_s": 3600,
            "decision_log_retry_max_s": 1.0, "decision_log_spill_dir": str(root / "spill")}
    url = deploy(serve_config(packaged_config(), args, host="127.0.0.1", port=free_port()))
    yield {"url": url, "metrics": serve_ray_metrics, "store": store, "log": root / "log", "root": root,
           "intents": known_intents(policy)}


def scrape(metrics_url: str) -> list[tuple[str, dict, float]]:
    """Every ``ray_selflearn_*`` sample on the endpoint: (name, labels, value)."""
    text = requests.get(metrics_url, timeout=30).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith("ray_selflearn_")]


def total(samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over every series (replica) whose labels include ``labels``."""
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items()))


def values(samples, name: str, **labels: str) -> set[float]:
    """The values of gauge ``name`` over its series with ``labels`` (one per reporting process)."""
    return {v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())}


def wait_for(metrics_url: str, checks: dict):
    """Scrape until every check (name -> predicate over the samples) holds; bounded by
    ``DEADLINE_S``, since Ray exports with a lag. Returns the samples."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        samples = scrape(metrics_url)
        failing = [name for name, ok in checks.items() if not ok(samples)]
        if not failing:
            return samples
        assert time.monotonic() < deadline, f"metrics did not reach their values: {failing}"
        time.sleep(0.5)


def _route_body(row: dict) -> dict:
    return {"utterance": row["utterance"], "candidates": row["candidates"], "context": row["context"],
            "customer_id": row["customer_id"]}


def _flush_log():
    from ray import serve

    return serve.get_deployment_handle("HybridRouter", app_name="selflearn").flush_log.remote().result()


def _log_stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("HybridRouter", app_name="selflearn").describe.remote().result()["decision_log"]


def test_traffic_moves_every_metric(served):
    """First in the module: the totals are exactly this test's traffic."""
    url, session = served["url"], requests.Session()
    for _ in range(5):
        assert session.post(f"{url}/v1/rewrite", json={"utterance": "Play MAJ and dragons"}).json()["results"][0]["rewrite"]
    for _ in range(3):
        assert session.post(f"{url}/v1/rewrite", json={"utterance": "hello there"}).json()["results"][0]["rewrite"] is None
    batch = session.post(f"{url}/v1/rewrite", json={"utterances": ["turn of the lights", "a", "play maj and dragons", "b"]})
    assert [r["rewrite"] is not None for r in batch.json()["results"]] == [True, False, True, False]
    assert session.post(f"{url}/v1/rewrite", data=b"x" * 300_000).status_code == 413  # answered before routing

    rows = ToyBandit(seed=0).routing(30, seed=7)[0].to_pylist()
    stranger = {**_route_body(rows[0]), "candidates": [{**c, "intent": "made-up-intent"} for c in rows[0]["candidates"]]}
    decisions, propensities = Counter(), []
    for body in [_route_body(r) for r in rows] + [stranger]:
        out = session.post(f"{url}/v1/route", json=body).json()
        decisions[(intent_label(body, served["intents"]), out["decided_by"])] += 1
        propensities.append(out["propensity"])
    assert {by for _, by in decisions} == {"rp", "lp"}
    assert sum(n for (intent, _), n in decisions.items() if intent == "other") == 1  # labels bounded by the policy
    assert session.get(f"{url}/healthz").status_code == 200
    _flush_log()

    checks = {
        "rewrite requests": lambda s: total(s, "ray_selflearn_rewrite_requests_total") == 9,
        "hits": lambda s: total(s, "ray_selflearn_rewrite_utterances_total", outcome="hit") == 7,
        "misses": lambda s: total(s, "ray_selflearn_rewrite_utterances_total", outcome="miss") == 5,
        "flag on": lambda s: values(s, "ray_selflearn_flag_enabled", artifact="rewrites") == {1.0},
        "rewrites version": lambda s: values(s, "ray_selflearn_served_version", artifact="rewrites") == {2.0},
        "policy version": lambda s: values(s, "ray_selflearn_served_version", artifact="policy") == {1.0},
        "decisions": lambda s: all(total(s, "ray_selflearn_route_decisions_total", intent=i, decided_by=by) == n
                                   for (i, by), n in decisions.items())
                               and total(s, "ray_selflearn_route_decisions_total") == 31,
        "propensities": lambda s: all(  # cumulative buckets (Ray rebuilds _sum from midpoints: not checked)
            total(s, "ray_selflearn_route_propensity_bucket", le=str(float(le))) == sum(p <= le for p in propensities)
            for le in PROPENSITY_BOUNDARIES) and total(s, "ray_selflearn_route_propensity_count") == 31,
        "latency /v1/rewrite": lambda s: total(s, "ray_selflearn_request_latency_seconds_count", endpoint="/v1/rewrite") == 9,
        "latency /v1/route": lambda s: total(s, "ray_selflearn_request_latency_seconds_count", endpoint="/v1/route") == 31,
        "latency /healthz": lambda s: total(s, "ray_selflearn_request_latency_seconds_count", endpoint="/healthz") == 1,
        "latency other": lambda s: total(s, "ray_selflearn_request_latency_seconds_count", endpoint="other") == 1,
        "log rows written": lambda s: total(s, "ray_selflearn_decision_log_rows_total", outcome="written") == 31,
        "log buffer empty": lambda s: values(s, "ray_selflearn_decision_log_buffered_rows") == {0.0},
    }
    wait_for(served["metrics"], checks)


def test_the_flag_gauge_follows_the_store(served):
    """The ingress re-reads the flag on its own (no traffic needed) and reports it; a
    rewrite request while it is off counts its utterance as ``off``."""
    url, store = served["url"], served["store"]
    before = total(scrape(served["metrics"]), "ray_selflearn_rewrite_utterances_total", outcome="off")
    store.set_enabled("rewrites", False)
    try:
        wait_for(served["metrics"], {"flag off": lambda s: values(s, "ray_selflearn_flag_enabled", artifact="rewrites") == {0.0}})
        assert requests.post(f"{url}/v1/rewrite", json={"utterance": "play maj and dragons"}).json()["enabled"] is False
        wait_for(served["metrics"], {"off": lambda s: total(s, "ray_selflearn_rewrite_utterances_total", outcome="off") == before + 1})
    finally:
        store.set_enabled("rewrites", True)
    wait_for(served["metrics"], {"flag on": lambda s: values(s, "ray_selflearn_flag_enabled", artifact="rewrites") == {1.0}})


def test_a_decision_log_outage_during_route_traffic_loses_no_decision(served, tmp_path):
    """The log's directory is replaced by a regular file (real write failures), 100 routes are
    answered (memory holds 40 rows, older segments spill to their journals), then the directory comes back: without
    any call, every answered decision reaches the log exactly once."""
    url, log, session = served["url"], served["log"], requests.Session()
    _flush_log()
    before = _log_stats()
    saved = tmp_path / "routing_log"
    shutil.move(str(log / "routing_log"), saved)
    (log / "routing_log").write_text("a file where the log's directory should be")

    rows = ToyBandit(seed=0).routing(100, seed=13)[0].to_pylist()
    answered = [session.post(f"{url}/v1/route", json=_route_body(r)).json()["request_id"] for r in rows]
    deadline = time.monotonic() + DEADLINE_S
    while (stats := _log_stats())["failed_writes"] - before["failed_writes"] < 2 or stats["spilled"] == before["spilled"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)
    assert stats["written"] == before["written"] and stats["lost"] == 0
    assert any(Path(served["root"], "spill").rglob("part-*.arrows"))

    (log / "routing_log").unlink()  # the log takes writes again: put the earlier files back
    (log / "routing_log").mkdir(exist_ok=True)
    for f in saved.iterdir():
        os.rename(f, log / "routing_log" / f.name)
    deadline = time.monotonic() + DEADLINE_S
    while ((stats := _log_stats())["written"] - before["written"] < len(answered)
           or stats["resent"] - before["resent"] < stats["spilled"] - before["spilled"]):
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)
    logged = Counter(read_table(str(log), "routing_log").column("request_id").to_pylist())
    assert all(logged[rid] == 1 for rid in answered) and max(logged.values()) == 1  # none lost, none twice
    spilled, resent = stats["spilled"] - before["spilled"], stats["resent"] - before["resent"]
    assert spilled > 0 and resent == spilled and stats["lost"] == 0
    assert not any(Path(served["root"], "spill").rglob("part-*.arrows"))

    # the router's writer is the only source of these metrics: they equal its own counts
    wait_for(served["metrics"], {
        **{f"log rows {k}": (lambda s, k=k: total(s, "ray_selflearn_decision_log_rows_total", outcome=k) == stats[k])
           for k in ("written", "retried", "spilled", "resent")},
        "failed writes": lambda s: total(s, "ray_selflearn_decision_log_failed_writes_total") == stats["failed_writes"],
        "nothing lost": lambda s: total(s, "ray_selflearn_decision_log_rows_total", outcome="lost") == 0,
    })


def test_the_dashboard_queries_exactly_the_exported_names(served):
    """Last in the module (the traffic above exported every metric): every ``ray_selflearn_*``
    name in the dashboard's PromQL is a series on the endpoint, and every exported metric
    family has a panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\bray_selflearn_\w+", e)}
    exported = {name for name, _, _ in scrape(served["metrics"])}
    assert used and used <= exported, used - exported
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in exported}
    assert families <= {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if "targets" in p)
