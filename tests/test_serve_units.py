"""Serving parts without Serve: rewrite index, version choice (moving LATEST, following it),
config rewrite for user_config changes, decision-log rows and the rotating writer, request
models, settings, the replicas' HTTP middleware and the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from raylib.errors import UserError
from raylib.routing.features import top_intents
from raylib.routing.toy import ToyBandit
from raylib.uri import read_table
from raylib.validate import validate
from raylib.store import Store
from serve_apps.control import LatestFollower, VersionNotFound, deployed_config, move_latest, with_user_config
from serve_apps.decision_log import ANONYMOUS_CUSTOMER, DecisionLogWriter, decision_rows
from serve_apps.http_middleware import DISCONNECT_DISABLED, SkipDisconnectWatch, middlewares
from serve_apps.hybrid_router import intent_label
from serve_apps.models import MAX_BATCH, ReloadRequest, RewriteRequest, RouteRequest
from serve_apps.rewrite_index import MemoryRewriteIndex, best_rewrites
from serve_apps.rewrite_lookup import RewriteLookup
from jobs.serve import main
from serve_apps.deploy import packaged_config, serve_config
from serve_apps.served_rewrites import ServedRewrites


def test_best_rewrites_keeps_the_top_scoring_target_and_skips_nulls():
    table = pa.table({
        "utterance": ["a", "a", "b", None, "c"],
        "rewrite": ["a1", "a2", "b1", "x", None],
        "score": [0.2, 0.7, 0.5, 0.9, 0.9],
    })
    utterances, rewrites, scores = best_rewrites(table)
    assert dict(zip(utterances, zip(rewrites, scores))) == {"a": ("a2", 0.7), "b": ("b1", 0.5)}


def test_memory_index_lookup_in_order_with_misses():
    index = MemoryRewriteIndex(pa.table({"utterance": ["x y", "z"], "rewrite": ["X Y", "Z"], "score": [1.0, 0.5]}), "v000001")
    assert asyncio.run(index.lookup(["z", "nope", "x y"])) == [("Z", 0.5), (None, None), ("X Y", 1.0)]
    assert index.size() == 2


def test_move_latest_points_latest_at_a_version_or_one_back(tmp_path):
    store = Store(str(tmp_path / "store"))
    with pytest.raises(VersionNotFound, match="nothing has been published"):
        move_latest(store, "policy", None, False)
    for run in range(3):
        store.publish("policy", {"config": {"run": run}})
    assert move_latest(store, "policy", None, False) == "v000003" and store.latest("policy") == "v000003"
    assert move_latest(store, "policy", None, True) == "v000002" and store.latest("policy") == "v000002"
    assert move_latest(store, "policy", "v000003", False) == "v000003" and store.latest("policy") == "v000003"
    assert move_latest(store, "policy", "v000001", False) == "v000001" and store.latest("policy") == "v000001"
    with pytest.raises(UserError, match="oldest"):
        move_latest(store, "policy", None, True)
    with pytest.raises(UserError, match="no version 'v000007'"):
        move_latest(store, "policy", "v000007", False)
    assert store.latest("policy") == "v000001"


def test_latest_follower_follows_the_pointer_unless_pinned(tmp_path, caplog):
    """``latest`` follows LATEST within a poll; a pinned version stays; a version that fails
    to load is logged and the served one kept; unpinning follows again."""
    store = Store(str(tmp_path / "store"))
    for run in range(3):
        store.publish("policy", {"config": {"run": run}})
    served, broken = [], {"v000002"}

    async def swap_to(version):
        if version in broken:
            raise OSError(f"cannot load {version}")
        if not served or served[-1] != version:
            served.append(version)

    async def until(predicate):
        for _ in range(200):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(served)

    async def scenario():
        follower = LatestFollower(store, "policy", 0.02, swap_to)
        await follower.configure("latest")
        assert served == ["v000003"] and follower.pinned is None
        store.rollback("policy", to="v000001")
        await until(lambda: served[-1] == "v000001")
        await follower.configure("v000003")
        store.rollback("policy", to="v000002")  # pinned: not followed
        await asyncio.sleep(0.1)
        assert served[-1] == "v000003" and follower.pinned == "v000003"
        with pytest.raises(OSError):  # following again, LATEST names a version that fails to load
            await follower.configure("latest")
        await asyncio.sleep(0.1)  # the polls fail too (logged); v000003 stays served
        assert served[-1] == "v000003" and follower.pinned is None
        store.rollback("policy", to="v000001")
        await until(lambda: served[-1] == "v000001")
        follower.stop()

    with caplog.at_level(logging.ERROR, logger="serve_apps.control"):
        asyncio.run(scenario())
    assert served == ["v000003", "v000001", "v000003", "v000001"]
    assert "following policy LATEST failed" in caplog.text


def test_user_config_change_touches_only_that_deployment():
    details = {
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "proxy_location": "EveryNode",
        "applications": {
            "selflearn": {"deployed_app_config": {
                "name": "selflearn", "import_path": "serve_apps.app:build", "args": {"store_root": "/s"},
                "deployments": [{"name": "HybridRouter", "user_config": {"version": "v000001", "max_batch_size": 64}}],
            }},
            "other": {"deployed_app_config": {"name": "other", "import_path": "x:y"}},
        },
    }
    config = deployed_config(details)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000} and len(config["applications"]) == 2
    config = with_user_config(config, "selflearn", "HybridRouter", {"version": "latest", "max_batch_size": 8})
    config = with_user_config(config, "selflearn", "RewriteLookup", {"version": "v000004"})
    app = config["applications"][0]
    assert app["args"] == {"store_root": "/s"}
    assert app["deployments"] == [{"name": "HybridRouter", "user_config": {"version": "latest", "max_batch_size": 8}},
                                  {"name": "RewriteLookup", "user_config": {"version": "v000004"}}]
    assert config["applications"][1] == {"name": "other", "import_path": "x:y"}


def test_user_config_change_needs_a_declarative_deployment():
    with pytest.raises(Exception, match="deployed from a config"):
        deployed_config({"applications": {"a": {"deployed_app_config": None}}})


def _decisions(n: int, version: str = "v000001"):
    rows = ToyBandit(seed=0).routing(n, seed=3)[0].to_pylist()
    requests = [{"utterance": r["utterance"], "candidates": r["candidates"], "context": r["context"],
                 "customer_id": r["customer_id"] if i % 2 else None} for i, r in enumerate(rows)]
    decisions = []
    for r in requests:
        k = len(r["candidates"])
        probs = [1.0 / k] * k
        decisions.append({"action": k - 1, "propensity": probs[-1], "decided_by": "lp", "probabilities": probs})
    ids = [f"req{i}" for i in range(n)]
    return decision_rows(requests, decisions, ids, version, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))


def test_decision_rows_are_valid_routing_log_rows():
    rows = _decisions(6)
    checked = validate(pa.Table.from_pylist(rows), "routing_log")
    assert checked.n_rejected == 0 and checked.good.num_rows == 6
    first = checked.good.to_pylist()[0]
    assert first["customer_id"] == ANONYMOUS_CUSTOMER and first["reward"] is None
    assert first["policy_version"] == "v000001" and first["propensity"] == first["propensities"][first["action"]]


def test_writer_rotates_by_size_and_by_age_and_flushes_on_close(tmp_path):
    writer = DecisionLogWriter(str(tmp_path), max_rows=5, max_age_s=0.3)
    writer.append(_decisions(12))  # over max_rows: written by the background thread, <= max_rows per file
    deadline = time.monotonic() + 5
    while writer.stats["written"] < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.stats["written"] == 12
    writer.append(_decisions(2))  # under max_rows: written once 0.3 s old
    deadline = time.monotonic() + 5
    while writer.stats["written"] < 14 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (writer.stats["written"], writer.stats["rejected"], writer.stats["files"]) == (14, 0, 4)  # 5 + 5 + 2, 2
    writer.max_age_s = 3600
    writer.append(_decisions(3))
    assert writer.stats["written"] == 14
    written = writer.close()  # shutdown writes what is buffered
    assert len(written) == 1 and writer.stats["written"] == 17
    assert read_table(str(tmp_path), "routing_log").num_rows == 17
    files = list((tmp_path / "routing_log").iterdir())
    assert len(files) == 5 and max(pq.read_metadata(f).num_rows for f in files) == 5


def test_writer_quarantines_rows_that_break_the_contract(tmp_path):
    rows = _decisions(3)
    rows[1]["propensity"] = 0.0  # a zero logging probability cannot be learned from
    writer = DecisionLogWriter(str(tmp_path), max_rows=100, max_age_s=3600)
    writer.append(rows)
    writer.close()
    assert (writer.stats["written"], writer.stats["rejected"], writer.stats["files"]) == (2, 1, 2)
    rejected = read_table(str(tmp_path), "rejected")
    assert rejected.column("reason").to_pylist() == ["propensity 0.0 not in (0, 1]"]


def test_intent_label_is_the_policys_segment_and_bounded():
    """The router's metric label is ``top_intents``' segment when the policy knows it."""
    log = ToyBandit(seed=0).routing(200, seed=4)[0]
    known = frozenset({"intent0", "intent1", "intent2"})
    labels = [intent_label(r, known) for r in log.to_pylist()]
    assert labels == [i if i in known else "other" for i in top_intents(log)]
    tie = {"candidates": [{"intent": "intent1", "nlu_confidence": 0.5}, {"intent": "intent2", "nlu_confidence": 0.5}]}
    assert intent_label(tie, known) == "intent1" and "other" in labels


def test_request_models():
    assert RewriteRequest(utterance="hi").texts() == ["hi"]
    assert RewriteRequest(utterances=["a", "b"]).texts() == ["a", "b"]
    with pytest.raises(ValidationError, match="exactly one"):
        RewriteRequest()
    with pytest.raises(ValidationError):
        RewriteRequest(utterances=["a"] * (MAX_BATCH + 1))
    with pytest.raises(ValidationError, match="either 'version' or 'rollback'"):
        ReloadRequest(artifact="policy", version="v000001", rollback=True)
    row = ToyBandit(seed=0).routing(1, seed=0)[0].to_pylist()[0]
    body = {"utterance": row["utterance"], "candidates": row["candidates"], "context": row["context"]}
    assert RouteRequest.model_validate(body).customer_id is None
    body["context"] = {**row["context"], "hour": "3"}  # strict: no string -> int coercion
    with pytest.raises(ValidationError, match="hour"):
        RouteRequest.model_validate(body)


def test_serve_config_merges_args_and_checks_settings(tmp_path):
    config = serve_config(packaged_config(), {"store_root": "rel/store", "router_max_batch_size": 8,
                                              "decision_log_spill_dir": "rel/spill"}, port=9999)
    app = config["applications"][0]
    assert app["import_path"] == "serve_apps.app:build"
    assert app["args"]["store_root"].startswith("/") and app["args"]["router_max_batch_size"] == 8
    assert app["args"]["decision_log_spill_dir"] == os.path.abspath("rel/spill")
    assert config["http_options"] == {"host": "127.0.0.1", "port": 9999}
    with pytest.raises(Exception, match="bad serving settings"):
        serve_config(packaged_config(), {"no_such_setting": 1})
    store, log = "s3://b/store?endpoint_override=127.0.0.1:9&scheme=http", "gs://b/log"
    uris = serve_config(packaged_config(), {"store_root": store, "decision_log_dir": log})["applications"][0]["args"]
    assert (uris["store_root"], uris["decision_log_dir"]) == (store, log)


def test_packaged_config_logs_json_and_leaves_user_config_to_the_args():
    """A ``user_config`` in the config would override the args' versions and batch settings."""
    config = packaged_config()
    assert config["logging_config"]["encoding"] == "JSON"
    assert all("user_config" not in d for d in config["applications"][0]["deployments"])


@pytest.mark.parametrize("path, marked", [("/v1/rewrite", True), ("/prefix/v1/rewrite", True), ("/v1/route", False),
                                          ("/v1/rewrite/x", False), ("/healthz", False)])
def test_only_rewrite_requests_skip_the_disconnect_watch(path, marked):
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    scope = {"type": "http", "path": path, "headers": [(b"content-type", b"application/json")]}
    asyncio.run(SkipDisconnectWatch(app)(scope, None, None))
    assert (DISCONNECT_DISABLED in seen[0]["headers"]) is marked
    assert (b"content-type", b"application/json") in seen[0]["headers"]
    asyncio.run(SkipDisconnectWatch(app)({"type": "lifespan"}, None, None))
    assert seen[1] == {"type": "lifespan"}


def test_packaged_config_installs_the_middleware_in_the_app_runtime_env():
    [app] = packaged_config()["applications"]
    assert app["runtime_env"]["env_vars"]["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "serve_apps.http_middleware:middlewares"
    assert [m.cls for m in middlewares()] == [SkipDisconnectWatch]


def test_cli_bad_arguments_are_one_line_errors(capsys):
    assert main(["--set", "rewrite_backend=postgres"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad serving settings") and err.count("\n") == 1
    assert main(["--set", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["deploy", "--set", "novalue"]) == 2  # checked before joining any cluster
    assert "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["status", "--store", "x"])  # status takes no config options
    assert "unrecognized arguments: --store" in capsys.readouterr().err


def test_rewrite_lookup_announces_its_version_and_a_copy_follows_it(tmp_path):
    """``watch`` answers at once when the caller's version is stale, otherwise waits until a
    swap (or the timeout); an ingress-style ``ServedRewrites`` copy then answers like the owner."""
    store = Store(str(tmp_path / "store"))
    table = pa.table({"utterance": ["turn of the lights"], "rewrite": ["turn off the lights"], "score": [0.8]})
    store.publish("rewrites", {"table": table})
    store.publish("rewrites", {"table": table.set_column(1, "rewrite", pa.array(["lights off"]))})
    lookup = RewriteLookup.func_or_class(str(tmp_path / "store"), "rewrites", "memory", "", 60.0)
    copy = ServedRewrites(store, "rewrites", "memory", "", 60.0)

    async def scenario():
        await lookup.reconfigure({"version": "v000001"})
        assert await lookup.watch(None, 5.0) == "v000001"  # stale caller: no wait
        await copy.swap(await lookup.watch(None, 5.0))
        began = time.monotonic()
        assert await lookup.watch("v000001", 0.2) == "v000001" and time.monotonic() - began >= 0.2
        waiting = asyncio.create_task(lookup.watch("v000001", 30.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await lookup.reconfigure({"version": "latest"})
        announced = await asyncio.wait_for(waiting, 5.0)
        await copy.swap(announced)
        return await copy.answer(["Turn OF the  Lights"]), await lookup.rewrite(["Turn OF the  Lights"])

    mine, owners = asyncio.run(scenario())
    assert mine == owners == {"version": "v000002", "enabled": True, "results": [
        {"utterance": "Turn OF the  Lights", "normalized": "turn of the lights", "rewrite": "lights off", "score": 0.8}]}
    assert copy.describe() == lookup.describe() == {"version": "v000002", "enabled": True, "backend": "memory", "size": 1}
    assert lookup.version_choice() == {"version": "v000002", "pinned": None}
