"""Prometheus metrics at ``/metrics``: request latency by route template (never by raw path,
which carries patient ids), and the service's state read from the store at scrape time
(ingestion, queue depth, twin sync lag, alerts), so that every worker gives the same answer.

With several workers, prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
set by the edge before the workers start) adds up the request histograms of all workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medtwin.store import schema as t
from medtwin.store.alerts import alerts
from medtwin.store.snapshots import twin_snapshots

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "unmatched"  # requests no route matched (404s, probes): one label, not their paths


def route_template(scope: Scope) -> str:
    """The template of the route that served ``scope`` (``/patients/{patient_id}/timeline``),
    or :data:`UNMATCHED`; mounted apps (the dashboard) count as their mount path."""
    route = scope.get("route")
    path = getattr(route, "path", None) or getattr(route, "path_format", None)
    if isinstance(path, str) and path:
        return path
    root = scope.get("app_root_path") or ""
    return root if root else UNMATCHED


class RequestMetrics:
    """ASGI middleware: one latency observation per HTTP request, labelled by method, route
    template and status class."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.histogram.labels(scope.get("method", "?"), route_template(scope),
                                  f"{status // 100}xx").observe(time.perf_counter() - start)


class StoreCollector(Collector):
    """The store's state as metrics, read at scrape time (cached ``ttl`` seconds): the same
    answer from every worker and replica."""

    def __init__(self, engine: Engine, *, ttl: float = 5.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._cached: list[GaugeMetricFamily | CounterMetricFamily] = []

    def describe(self) -> list[GaugeMetricFamily]:
        """Nothing up front: families are read from the store when collected."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The families as of at most ``ttl`` seconds ago."""
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                try:
                    self._cached = self._read()
                except Exception as exc:  # a scrape must answer even when the store does not
                    log.error("metrics: the store could not be read: %s", type(exc).__name__)
                    up = GaugeMetricFamily("medtwin_store_up", "Whether the store answered.")
                    up.add_metric([], 0.0)
                    return iter([up])
                self._at = time.monotonic()
            return iter(self._cached)

    def _read(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        e, s = t.events, twin_snapshots
        with self.engine.connect() as conn:
            by_kind = conn.execute(select(e.c.kind, func.count()).group_by(e.c.kind)).all()
            dead = conn.scalar(select(func.count()).select_from(t.dead_letters)) or 0
            jobs = conn.execute(select(t.jobs.c.status, func.count())
                                .group_by(t.jobs.c.status)).all()
            by_severity = conn.execute(select(alerts.c.severity, func.count())
                                       .group_by(alerts.c.severity)).all()
            head = conn.scalar(select(func.max(e.c.seq))) or 0
            cutoff = conn.scalar(select(func.max(s.c.data_cutoff)))
            oldest = (conn.scalar(select(func.min(e.c.recorded_at))
                                  .where(e.c.seq > cutoff, e.c.kind == "observation"))
                      if cutoff is not None else None)
        up = GaugeMetricFamily("medtwin_store_up", "Whether the store answered.")
        up.add_metric([], 1.0)
        stored = CounterMetricFamily("medtwin_events_stored", "Events stored, by kind "
                                     "(rate() of kind=observation is the ingestion rate).",
                                     labels=["kind"])
        for kind, n in by_kind:
            stored.add_metric([str(kind)], float(n))
        dl = CounterMetricFamily("medtwin_dead_letters", "Messages refused into the "
                                 "dead-letter table.")
        dl.add_metric([], float(dead))
        queue = GaugeMetricFamily("medtwin_jobs", "Jobs by status (queued + running: the "
                                  "queue depth).", labels=["status"])
        for status, n in jobs:
            queue.add_metric([str(status)], float(n))
        raised = CounterMetricFamily("medtwin_alerts_raised", "Alerts raised, by severity.",
                                     labels=["severity"])
        for sev, n in by_severity:
            raised.add_metric([str(sev)], float(n))
        lag_events = GaugeMetricFamily("medtwin_twin_sync_lag_events", "Events stored after "
                                       "the newest twin snapshot's data cut-off.")
        lag_events.add_metric([], float(max(0, head - (cutoff or 0))) if cutoff is not None
                              else 0.0)
        lag = GaugeMetricFamily("medtwin_twin_sync_lag_seconds", "Age of the oldest reading "
                                "not yet assimilated by a twin (0 when in step or no twin).")
        lag.add_metric([], max(0.0, (datetime.now(UTC) - oldest).total_seconds())
                       if oldest is not None else 0.0)
        return [up, stored, dl, queue, raised, lag_events, lag]


def install(app: FastAPI, engine: Engine, *, multiprocess_dir: str | None = None) -> None:
    """Measure every request and serve ``/metrics`` (no identity needed: it carries no
    patient data; restrict it at the proxy). ``multiprocess_dir``: the directory of
    prometheus_client's multiprocess mode when the service runs several workers."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir:
        # values of every worker come from the files in the directory; this app's histogram
        # writes its own file there (registered nowhere, or it would be counted twice)
        scrape = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(scrape, path=multiprocess_dir)
        histogram = Histogram("medtwin_http_request_duration_seconds", "Request latency by "
                              "route template.", ["method", "route", "status"],
                              buckets=LATENCY_BUCKETS, registry=None)
        registry = scrape
    else:
        histogram = Histogram("medtwin_http_request_duration_seconds", "Request latency by "
                              "route template.", ["method", "route", "status"],
                              buckets=LATENCY_BUCKETS, registry=registry)
    registry.register(StoreCollector(engine))
    app.add_middleware(RequestMetrics, histogram=histogram)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
