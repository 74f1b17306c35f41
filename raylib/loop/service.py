"""The loop's client of the selflearn Serve application: HTTP only (httpx), no Ray.

The application is deployed by the loop's entrypoint (``jobs/self_learning_loop.py``, with
``serve_apps.deploy``); this client reaches it at its base URL: POST /v1/rewrite,
POST /v1/route, GET /v1/versions and POST /v1/admin/reload (with the admin token).
"""

from __future__ import annotations

import concurrent.futures as cf

import pyarrow as pa

from raylib.errors import UserError

REWRITE_BATCH = 256  # utterances per POST /v1/rewrite
ROUTE_CONCURRENCY = 16  # POST /v1/route requests in flight (the router batches them)


class Service:
    """The Serve application at ``url``; ``admin_token`` authorises reloads."""

    def __init__(self, url: str, admin_token: str):
        import httpx  # only the demo needs it: a dev extra of pyproject, not a core dependency

        self.url = url
        self.token = admin_token
        self.http = httpx.Client(base_url=url, timeout=60.0, limits=httpx.Limits(max_connections=ROUTE_CONCURRENCY))

    def close(self) -> None:
        self.http.close()

    def reload(self, artifact: str, version: str) -> dict:
        """Serve ``version`` of ``artifact`` (rewrites | policy) from now on."""
        r = self.http.post("/v1/admin/reload", json={"artifact": artifact, "version": version},
                           headers={"Authorization": f"Bearer {self.token}"})
        if r.status_code != 200:
            raise UserError(f"reloading {artifact} {version} failed: HTTP {r.status_code} {r.text}")
        return r.json()

    def versions(self) -> dict:
        """The served version of each artifact: {artifact: {"version": ..., ...}}."""
        return self.http.get("/v1/versions").raise_for_status().json()

    def rewrite(self, utterances: list[str]) -> list[str | None]:
        """The served rewrite of each utterance (None: sent to NLU as spoken)."""
        out: list[str | None] = []
        for lo in range(0, len(utterances), REWRITE_BATCH):
            r = self.http.post("/v1/rewrite", json={"utterances": utterances[lo:lo + REWRITE_BATCH]})
            out.extend(item["rewrite"] for item in r.raise_for_status().json()["results"])
        return out

    def route(self, requests: list[dict]) -> list[dict]:
        """The router's decision for each POST /v1/route body, in order, ROUTE_CONCURRENCY
        at a time: {request_id, action, propensity, ...}."""
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
