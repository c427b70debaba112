"""Prometheus metrics of ``mmrank serve`` (``GET /metrics``), through ``prometheus_client`` — an optional
extra: ``pip install "mmrank[metrics]"``. Without it ``/metrics`` answers 501 saying so, and everything
else works.

Each app has its own registry (several apps in one process never share or clash). Metric names:

* ``mmrank_requests_total{route, status}`` — HTTP requests answered (route is the endpoint path, or
  ``other`` for unknown paths so that scanners cannot blow up the label set); status ``499`` is a client
  that disconnected before its answer.
* ``mmrank_request_duration_seconds{route}`` — latency histogram (whole request, body read included).
* ``mmrank_documents_scored_total`` — documents that got a score.
* ``mmrank_document_errors_total`` — documents that could not be read (ranked last or failing their
  request).
* ``mmrank_errors_total{kind}`` — refused or failed requests by kind: ``bad_request`` (400), ``auth`` (401),
  ``not_found`` (404), ``body_timeout`` (408), ``too_large`` (413), ``invalid`` (422), ``busy`` (503),
  ``internal`` (500), ``client_disconnected``.
* ``mmrank_queue_depth`` — requests waiting for (or in) the model thread.
* ``mmrank_requests_in_progress`` — requests being handled.
* ``mmrank_model_calls_total`` / ``mmrank_merged_requests_total`` — model calls made, and requests that
  shared a call with others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

MISSING_MESSAGE = ("/metrics needs the prometheus_client package: pip install 'mmrank[metrics]' "
                   "(or pip install prometheus-client), then restart the server")

ERROR_KINDS = {400: "bad_request", 401: "auth", 404: "not_found", 408: "body_timeout", 413: "too_large",
               422: "invalid", 499: "client_disconnected", 500: "internal", 503: "busy"}

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class Metrics:
    """The server's metrics; every method is a cheap no-op when prometheus_client is not installed."""

    def __init__(self, routes: set[str], queue_depth: Callable[[], float], model_calls: Callable[[], float],
                 merged: Callable[[], float]):
        self.routes = routes
        self.enabled = available()
        if not self.enabled:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter("mmrank_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self._latency = Histogram("mmrank_request_duration_seconds", "Request latency (body read included)",
                                  ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self._documents = Counter("mmrank_documents_scored", "Documents that got a score", registry=r)
        self._document_errors = Counter("mmrank_document_errors", "Documents that could not be read", registry=r)
        self._errors = Counter("mmrank_errors", "Refused or failed requests by kind", ["kind"], registry=r)
        in_progress = Gauge("mmrank_requests_in_progress", "Requests being handled", registry=r)
        self._in_progress = in_progress
        Gauge("mmrank_queue_depth", "Requests waiting for (or in) the model thread",
              registry=r).set_function(queue_depth)
        _CallbackCounter("mmrank_model_calls_total", "Model calls made", model_calls, r)
        _CallbackCounter("mmrank_merged_requests_total", "Requests that shared a model call with others",
                         merged, r)

    # ------------------------------------------------------------------ recording
    def route_label(self, path: str) -> str:
        return path if path in self.routes else "other"

    def observe(self, path: str, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        route = self.route_label(path)
        self._requests.labels(route, str(status)).inc()
        self._latency.labels(route).observe(seconds)
        if status >= 400 and route != "other" and route != "/metrics":
            self._errors.labels(ERROR_KINDS.get(status, f"http_{status}")).inc()

    def documents_scored(self, n: int) -> None:
        if self.enabled and n:
            self._documents.inc(n)

    def document_errors(self, n: int) -> None:
        if self.enabled and n:
            self._document_errors.inc(n)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST



class MetricsMiddleware:
    """ASGI middleware: counts every HTTP request by route and status and times it."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        metrics = self.metrics
        if scope["type"] != "http" or not metrics.enabled:
            await self.app(scope, receive, send)
            return
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        metrics._in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics._in_progress.dec()
            metrics.observe(scope.get("path", ""), status["code"], time.perf_counter() - t0)


class _CallbackCounter:
    """A counter whose value is read from the server's own counters at scrape time."""

    def __init__(self, name: str, documentation: str, value: Callable[[], float], registry: Any):
        self.name, self.documentation, self.value = name, documentation, value
        registry.register(self)

    def describe(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily

        return [CounterMetricFamily(self.name.removesuffix("_total"), self.documentation)]

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily

        return [CounterMetricFamily(self.name.removesuffix("_total"), self.documentation, value=self.value())]
