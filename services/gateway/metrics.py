"""Prometheus metrics: request latency, jobs by state, queue depth (``GET /metrics``).

Each app has its own registry (tests build several apps in one process). Job counts and queue
depths are read when Prometheus scrapes, so they are never stale and cost nothing in between.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.db.jobs import STATUSES
from services.db.models import Job
from services.gateway.errors import ApiError

if TYPE_CHECKING:
    from services.ops.context import ServiceContext


class ServiceCollector(Collector):
    """Collects ``midre_jobs{status}`` and ``midre_queue_depth{queue}`` at scrape time."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("midre_jobs", "Jobs by status (all tenants)", labels=["status"])
        try:
            with self.ctx.sessions() as session:
                counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            for status in STATUSES:
                jobs.add_metric([status], float(counts.get(status, 0)))
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB blinked
            pass
        yield jobs
        depth = GaugeMetricFamily("midre_queue_depth", "Messages waiting per queue", labels=["queue"])
        for queue, count in self.ctx.dispatcher.queue_depths().items():
            depth.add_metric([queue], float(count))
        yield depth


def _route_template(request: Request) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), so labels stay few."""
    route = request.scope.get("route")
    if route is not None and getattr(route, "path", None):
        return str(route.path)
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match == Match.FULL and getattr(route, "path", None):
            return str(route.path)
    return "unmatched"


class LatencyMiddleware:
    """Pure ASGI middleware timing each HTTP request (cheaper than ``BaseHTTPMiddleware``)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            request = Request(scope)
            self.histogram.labels(scope["method"], _route_template(request), str(status)).observe(
                time.perf_counter() - start
            )


@dataclass(frozen=True)
class Registries:
    """``aggregate``: series without tenant data (anyone who reaches ``/metrics``); ``tenant``: series
    labelled with job or key ids (only with the operator's ``MIDRE_METRICS_TOKEN``)."""

    aggregate: CollectorRegistry
    tenant: CollectorRegistry


def install_metrics(app: FastAPI, ctx: ServiceContext) -> Registries:
    """Add the latency middleware and the ``/metrics`` route to ``app``.

    Without ``MIDRE_METRICS_TOKEN``, ``/metrics`` shows only aggregate series (no job or key ids);
    with it, ``/metrics`` needs ``Authorization: Bearer <token>`` and shows every series.
    """
    registry = CollectorRegistry()
    tenant_registry = CollectorRegistry()
    token = ctx.settings.metrics_token
    latency = Histogram(
        "midre_http_request_duration_seconds",
        "HTTP request latency by route template",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
    registry.register(ServiceCollector(ctx))

    app.add_middleware(LatencyMiddleware, histogram=latency)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        body = generate_latest(registry)
        if token:
            given = request.headers.get("authorization", "").partition(" ")[2].strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise ApiError(401, "unauthorized", "/metrics needs the operator's MIDRE_METRICS_TOKEN",
                               headers={"WWW-Authenticate": "Bearer"})
            body += generate_latest(tenant_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Registries(registry, tenant_registry)
