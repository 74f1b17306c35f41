"""The HTTP API: one FastAPI app in the ``Ingress`` deployment, composed with ``RewriteLookup``
and ``HybridRouter`` through their ``DeploymentHandle``.

``/v1/rewrite`` is answered inside the ingress process: each replica keeps a copy of the
rewrite-table version that ``RewriteLookup`` announces (``ServedRewrites``, the same table,
flag and normalization code), followed with a long poll on ``RewriteLookup.watch``, so a
rewrite request costs no hop between processes. ``/v1/route`` batches the requests waiting
in the replica into one ``HybridRouter.route_many`` call, where ``@serve.batch`` groups them
into policy decisions.

Endpoints: ``POST /v1/rewrite``, ``POST /v1/route``, ``GET /healthz``, ``GET /v1/versions``
and ``POST /v1/admin/reload`` (bearer token); the OpenAPI schema is at ``/openapi.json``
and the docs at ``/docs``. The admin reload moves the store's ``LATEST`` pointer
(``serve_apps.control.move_latest``), which the deployments follow. Bad requests never
reach a deployment: bodies over the size limit get 413, malformed JSON and bodies that
break the models in ``serve_apps.models`` get 422, each with a message.

Metrics (``serve_apps.metrics``): every request's latency per endpoint (ASGI middleware);
rewrite requests and utterance outcomes, tallied in the replica and handed to Ray with the
served rewrite version and flag every ``serve_apps.metrics.REPORT_S``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from raylib.errors import UserError
from raylib.store import Store
from serve_apps import control
from serve_apps.metrics import RequestLatency, Tally, instruments, report_every, version_number
from serve_apps.models import (
    ArtifactVersion,
    HealthResponse,
    ReloadRequest,
    ReloadResponse,
    RewriteRequest,
    RewriteResponse,
    RouteRequest,
    RouteResponse,
    VersionsResponse,
)
from serve_apps.served_rewrites import ServedRewrites
from serve_apps.settings import ServeSettings, autoscaling

DEPLOYMENTS = {"rewrites": "RewriteLookup", "policy": "HybridRouter"}


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered with 413 before the
    app reads it (declared Content-Length or, without one, the bytes actually sent)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _json_error(send, 400, "invalid Content-Length header")
            if int(declared) > self.max_bytes:
                return await _json_error(send, 413, f"request body over {self.max_bytes} bytes")
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _json_error(send, 413, f"request body over {self.max_bytes} bytes")
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}]), send)


def _replay(messages: list[dict]):
    queue = list(messages)

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


async def _json_error(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 listing where and why the request broke the model. The offending input is not
    echoed back: it may be huge, or a NaN that JSON cannot carry."""
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


def make_api(service: "Ingress") -> FastAPI:
    """The FastAPI app of one ingress replica (routes close over ``service``)."""
    api = FastAPI(
        title="selflearn serving",
        version="1",
        description="Query rewriting (seed 001) and hybrid skill routing (seed 002) for a conversational assistant.",
    )
    api.add_middleware(BodySizeLimit, max_bytes=service.settings.max_body_bytes)
    api.add_middleware(RequestLatency, histogram=service.metrics.request_latency)  # outermost: counts 413s too
    api.add_exception_handler(RequestValidationError, validation_error)
    bearer = HTTPBearer(auto_error=False, description="admin token (SELFLEARN_ADMIN_TOKEN)")

    @api.post("/v1/rewrite", response_model=RewriteResponse, summary="Rewrite one utterance or a batch")
    async def rewrite(body: RewriteRequest) -> dict:
        answer = await service.rewrites.answer(body.texts())
        service.count_rewrites(answer)
        return answer

    @api.post(
        "/v1/route",
        response_model=RouteResponse,
        summary="Choose the candidate that serves a request",
        responses={503: {"description": "no routing policy has been published yet"}},
    )
    async def route(body: RouteRequest) -> dict:
        decision = await service.route(body.model_dump())
        if decision is None:
            raise HTTPException(503, "no routing policy is loaded yet")
        return {**decision, "candidate": body.candidates[decision["action"]]}

    @api.get("/healthz", response_model=HealthResponse, summary="Liveness and the served versions")
    async def healthz() -> dict:
        rewrites, policy = await service.describe()
        return {"status": "ok", "rewrites": rewrites["version"], "policy": policy["version"]}

    @api.get("/v1/versions", response_model=VersionsResponse, summary="Versions served by each deployment")
    async def versions() -> dict:
        rewrites, policy = await service.describe()
        return {"rewrites": ArtifactVersion(**rewrites), "policy": ArtifactVersion(version=policy["version"])}

    @api.post(
        "/v1/admin/reload",
        response_model=ReloadResponse,
        summary="Point the store's LATEST at a version, or one version back, and wait until it is served",
        responses={401: {"description": "missing or wrong admin token"}, 403: {"description": "admin API disabled"},
                   404: {"description": "no such version, nothing published, or nothing older to roll back to"},
                   409: {"description": "the deployment serves a version its config pins"},
                   504: {"description": "the deployment did not serve the new LATEST in time"}},
    )
    async def reload(body: ReloadRequest, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> dict:
        service.authorize(credentials)
        handle = service.lookup if body.artifact == "rewrites" else service.router
        name = service.settings.rewrites_name if body.artifact == "rewrites" else service.settings.policy_name
        async with service.reload_lock:
            served = await handle.version_choice.remote()
            if served["pinned"] is not None:
                raise HTTPException(409, f"{DEPLOYMENTS[body.artifact]} serves {served['pinned']}, pinned by its config "
                                         "(user_config.version); the store's LATEST was not changed")
            try:
                target = await asyncio.to_thread(control.move_latest, service.store, name, body.version, body.rollback)
            except UserError as exc:  # no such version, nothing published, nothing older to roll back to
                raise HTTPException(404, str(exc)) from exc
            await service.wait_until_served(body.artifact, target)
        return {"artifact": body.artifact, "previous": served["version"], "version": target}

    return api


WATCH_S = 2.0  # long-poll length of RewriteLookup.watch (short: replicas drain quickly)
FOLLOW_RETRY_S = 1.0
RELOAD_WAIT_S = 60.0  # an admin reload's wait for the new version, beyond one LATEST poll
ROUTE_ATTEMPTS = 3  # a batch whose HybridRouter replica died is sent again (to a live one)
ROUTE_RETRY_S = 0.2

logger = logging.getLogger(__name__)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=256,
    autoscaling_config=autoscaling(64),
)
@serve.ingress()
class Ingress:
    async def __init__(self, lookup: DeploymentHandle, router: DeploymentHandle, settings: dict):
        self.lookup = lookup
        self.router = router
        self.settings = ServeSettings(**settings)
        self.store = Store(self.settings.store_root)
        self.rewrites = ServedRewrites(self.store, self.settings.rewrites_name, self.settings.rewrite_backend,
                                       self.settings.redis_url, self.settings.flag_poll_s)
        self.admin_token = self.settings.resolved_admin_token()
        self.reload_lock = asyncio.Lock()
        self.metrics = instruments()
        self.rewrite_requests = Tally(self.metrics.rewrite_requests)
        self.rewrite_utterances = Tally(self.metrics.rewrite_utterances, "outcome")
        await self._follow_once(timeout_s=0.0)  # serve the announced version from the first request
        loop = asyncio.get_running_loop()
        self._follower = loop.create_task(self._follow())
        self._reporter = loop.create_task(report_every(self._report))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self)

    async def _follow_once(self, timeout_s: float) -> None:
        version = await self.lookup.watch.remote(self.rewrites.version, timeout_s)
        if version is not None:
            await self.rewrites.swap(version)

    async def _follow(self) -> None:
        """Keep this replica's rewrite table at the version ``RewriteLookup`` announces."""
        while True:
            try:
                await self._follow_once(WATCH_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a lookup replica restarting: keep serving, retry
                await asyncio.sleep(FOLLOW_RETRY_S)

    def count_rewrites(self, answer: dict) -> None:
        """Tally one ``/v1/rewrite`` answer: the request, and its utterances as hits, misses
        or ``off`` (no lookup: flag off or no table loaded)."""
        self.rewrite_requests.add()
        results = answer["results"]
        if not answer["enabled"] or answer["version"] is None:
            self.rewrite_utterances.add(len(results), "off")
            return
        hits = sum(r["rewrite"] is not None for r in results)
        self.rewrite_utterances.add(hits, "hit")
        self.rewrite_utterances.add(len(results) - hits, "miss")

    def _report(self) -> None:
        """Re-read the flag when due (its gauge follows the store without traffic too), hand
        the tallies to Ray and set the gauges to the rewrite table this replica serves."""
        self.rewrites.refresh_flag_if_due()
        self.rewrite_requests.publish()
        self.rewrite_utterances.publish()
        tags = {"artifact": "rewrites"}
        self.metrics.served_version.set(version_number(self.rewrites.version), tags=tags)
        self.metrics.flag_enabled.set(1 if self.rewrites.enabled else 0, tags=tags)

    async def wait_until_served(self, artifact: str, version: str) -> None:
        """Return once ``version`` of ``artifact`` is served: by this replica's rewrite-table
        copy, or by the ``HybridRouter`` replica that answers ``describe``. Deployments
        following ``LATEST`` re-read it every ``latest_poll_s``; 504 when that plus
        ``RELOAD_WAIT_S`` (for the load) passes first."""
        deadline = time.monotonic() + self.settings.latest_poll_s + RELOAD_WAIT_S
        while True:
            if artifact == "rewrites":
                served = self.rewrites.version
            else:
                served = (await self.router.describe.remote())["version"]
            if served == version:
                return
            if time.monotonic() > deadline:
                raise HTTPException(504, f"the store's LATEST names {artifact} {version}, but {served} is still "
                                         "served (see the replica logs)")
            await asyncio.sleep(0.1)

    async def describe(self) -> tuple[dict, dict]:
        """The rewrite table this replica serves and what ``HybridRouter`` serves now."""
        return self.rewrites.describe(), await self.router.describe.remote()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, max_concurrent_batches=4)
    async def route(self, requests: list[dict]) -> list[dict | None]:
        """Decisions for the HTTP requests waiting in this replica, fetched with ONE
        ``HybridRouter`` call: the handle hop is paid once per batch. Nothing waits for a
        batch to fill, and up to 4 batches are in flight (one at a time made every request
        wait for the previous round trip: 94 vs 214 rps at 4 clients); the router's
        ``@serve.batch`` still decides the dynamic batches.

        A batch whose ``HybridRouter`` replica dies (or is unreachable) before answering is
        sent again, up to ``ROUTE_ATTEMPTS`` times, which the handle routes to a live replica:
        a killed replica costs its batches a retry, not an error. The dead replica may have
        journaled decisions for the first attempt; those rows reach the log (under request ids
        no client saw, so no feedback ever joins them) and are harmless to learning."""
        for attempt in range(1, ROUTE_ATTEMPTS + 1):
            try:
                return await self.router.route_many.remote(requests)
            except RayActorError as exc:
                if attempt == ROUTE_ATTEMPTS:
                    raise
                logger.warning("route: HybridRouter replica lost (%s); %d requests sent again (attempt %d)",
                               type(exc).__name__, len(requests), attempt + 1)
                await asyncio.sleep(ROUTE_RETRY_S)

    def authorize(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        """401 unless the bearer token equals the admin token; 403 when none is configured."""
        if self.admin_token is None:
            raise HTTPException(403, "the admin API is disabled: no admin token is configured")
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), self.admin_token.encode()):
            raise HTTPException(401, "missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"})

    def __del__(self):
        for task in (getattr(self, "_follower", None), getattr(self, "_reporter", None)):
            if task is not None:
                task.cancel()
