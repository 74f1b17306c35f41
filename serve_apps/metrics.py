"""The serving application's metrics: every instrument is defined here, with ``ray.util.metrics``.

Ray exports them on each node's Prometheus endpoint (``http://<node>:<MetricsExportPort>/metrics``,
the port in ``ray.nodes()``; ``ray start --metrics-export-port`` pins it) under the name given
here prefixed with ``ray_``: counters get a ``_total`` suffix, histograms ``_bucket`` / ``_sum`` /
``_count``. Ray labels every series with the process that recorded it (``WorkerId``,
``NodeAddress``, ``SessionName``, ...), so replicas never overwrite each other: sum counters over
replicas, and read gauges with ``min`` / ``max`` by their own labels. Core workers report every
``metrics_report_interval_ms`` (10 s unless ``RAY_metrics_report_interval_ms`` says otherwise).

Exported names (labels) and meaning:

- ``ray_selflearn_rewrite_requests_total``: ``/v1/rewrite`` requests answered.
- ``ray_selflearn_rewrite_utterances_total`` (``outcome``: hit, miss, off): utterances answered;
  ``off``: no lookup (flag off or no table loaded).
- ``ray_selflearn_flag_enabled`` (``artifact``: rewrites): the feature flag as served, 1 on, 0 off.
- ``ray_selflearn_served_version`` (``artifact``: rewrites, policy): the version number served
  (v000003 -> 3; 0: none loaded).
- ``ray_selflearn_route_decisions_total`` (``intent``, ``decided_by``: rp, lp): routing decisions
  by segment (top NLU intent; ``other`` when the policy does not know it) and by the model that
  acted.
- ``ray_selflearn_route_propensity_{bucket,count,sum}``: Π_HP of each chosen action.
- ``ray_selflearn_decision_log_rows_total`` (``outcome``: written, rejected, retried, spilled,
  resent, lost): decision-log rows by what became of them (``serve_apps.decision_log``).
- ``ray_selflearn_decision_log_failed_writes_total``: failed decision-log write attempts.
- ``ray_selflearn_decision_log_buffered_rows``: rows waiting in a writer's memory.
- ``ray_selflearn_request_latency_seconds_{bucket,count,sum}`` (``endpoint``: the path of the
  route that answered, ``other`` when none matched): time in the ingress app per HTTP request.

Two properties of Ray 2.60's export shape the recording. A gauge set once disappears from the
endpoint after two report intervals (Ray's agent drops gauge values that were not refreshed), so
every process re-sets its gauges each ``REPORT_S`` (``report_every``). A histogram's ``_sum`` is
rebuilt from bucket midpoints, an approximation: the dashboard reads quantiles from the buckets.

Recording is kept off the per-request budget: counters moved on every request are summed in the
process (``Tally``) and handed to Ray once a second by the ingress replica; the router records
once per ``@serve.batch`` batch. ``serve_apps/grafana/selflearn_dashboard.json`` plots them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray.util.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDARIES_S = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
PROPENSITY_BOUNDARIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
OTHER_ENDPOINT = "other"
REPORT_S = 1.0  # gauges re-set and tallies handed over this often (Ray keeps a gauge for 2 report intervals)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instruments:
    """One process's instruments (see the table in the module docstring)."""

    rewrite_requests: Counter
    rewrite_utterances: Counter
    flag_enabled: Gauge
    served_version: Gauge
    route_decisions: Counter
    route_propensity: Histogram
    decision_log_rows: Counter
    decision_log_failed_writes: Counter
    decision_log_buffered_rows: Gauge
    request_latency: Histogram


@functools.cache
def instruments() -> Instruments:
    """The instruments of this process, created on first use (a process that never records
    registers nothing)."""
    return Instruments(
        rewrite_requests=Counter("selflearn_rewrite_requests", "/v1/rewrite requests answered"),
        rewrite_utterances=Counter(
            "selflearn_rewrite_utterances",
            "utterances answered by /v1/rewrite: hit (a rewrite), miss (none), off (flag off or no table: no lookup)",
            tag_keys=("outcome",),
        ),
        flag_enabled=Gauge("selflearn_flag_enabled", "feature flag as served: 1 on, 0 off", tag_keys=("artifact",)),
        served_version=Gauge(
            "selflearn_served_version", "version number served (v000003 -> 3; 0: none loaded)", tag_keys=("artifact",)
        ),
        route_decisions=Counter(
            "selflearn_route_decisions",
            "routing decisions by segment (top NLU intent; other: unknown to the policy) and by the model that acted",
            tag_keys=("intent", "decided_by"),
        ),
        route_propensity=Histogram(
            "selflearn_route_propensity", "mixture propensity of each chosen action", boundaries=PROPENSITY_BOUNDARIES
        ),
        decision_log_rows=Counter(
            "selflearn_decision_log_rows",
            "decision-log rows: written (routing_log), rejected (contract), retried (in a failed write, kept), "
            "spilled (buffer full or closing: local fallback), resent (spilled, then written), lost",
            tag_keys=("outcome",),
        ),
        decision_log_failed_writes=Counter("selflearn_decision_log_failed_writes", "failed decision-log write attempts"),
        decision_log_buffered_rows=Gauge("selflearn_decision_log_buffered_rows", "decision-log rows waiting in memory"),
        request_latency=Histogram(
            "selflearn_request_latency_seconds",
            "time in the ingress app per HTTP request, by endpoint (the matched route's path; other: none matched)",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("endpoint",),
        ),
    )


def version_number(version: str | None) -> int:
    """The gauge value of a store version name: ``v000003`` -> 3, None (nothing loaded) -> 0."""
    return 0 if version is None else int(version.lstrip("v"))


async def report_every(report: Callable[[], None], interval_s: float = REPORT_S) -> None:
    """Call ``report`` every ``interval_s`` seconds, forever (run it as a task); a failing
    report is logged and the next one goes ahead (metrics never stop serving)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            report()
        except Exception:  # noqa: BLE001
            logger.exception("reporting metrics failed")


class Tally:
    """Increments of one counter (with at most one label), summed in this process until
    ``publish`` adds them to the Ray counter. ``add`` is a dict update; a Ray ``Counter.inc``
    with a label costs 4-8 us (measured in a Ray worker), too much for every request.
    Not thread-safe: ``add`` and ``publish`` run on one event loop."""

    def __init__(self, counter: Counter, label: str | None = None):
        self.counter = counter
        self.label = label
        self._pending: dict[str | None, float] = {}

    def add(self, amount: float = 1, value: str | None = None) -> None:
        """Count ``amount`` for label ``value`` (None for a counter without a label)."""
        self._pending[value] = self._pending.get(value, 0) + amount

    def publish(self) -> None:
        """Hand the sums to Ray's counter and start over."""
        pending, self._pending = self._pending, {}
        for value, amount in pending.items():
            if amount > 0:
                self.counter.inc(amount, tags=None if value is None else {self.label: value})


class RequestLatency:
    """ASGI middleware: each HTTP request's time in the app, observed in ``histogram`` under
    ``endpoint`` = the path of the route that answered it (``other`` when none matched: a 404,
    or a request answered before routing, such as a 413 from the body-size limit)."""

    def __init__(self, app, histogram: Histogram):
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")  # set in this scope by the router that matched it
            endpoint = getattr(route, "path", None) or OTHER_ENDPOINT
            self.histogram.observe(time.perf_counter() - began, tags={"endpoint": endpoint})
