"""Prometheus glue: bounded labels on django-prometheus's HTTP metrics, and /metrics itself."""

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_prometheus.middleware import PrometheusAfterMiddleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)


class BoundedPrometheusAfterMiddleware(PrometheusAfterMiddleware):
    """django-prometheus's after-middleware with every `method` label bounded."""

    def label_metric(
        self,
        metric: Any,
        request: HttpRequest,
        response: HttpResponse | None = None,
        **labels: str,
    ) -> Any:
        # django-prometheus 2.x labels its latency histogram with the raw request.method, so a
        # client inventing methods would mint one label value per request. Map them all through
        # its own whitelist ("<invalid method>" for the rest), as its other metrics already do.
        if "method" in labels:
            labels["method"] = self._method(request)
        return super().label_metric(metric, request, response, **labels)


def metrics_registry() -> CollectorRegistry:
    """The registry /metrics shows: every process's files when they share a directory."""
    if not settings.PROMETHEUS_MULTIPROC_DIR:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


class MetricsEndpoint:
    """ASGI: GET /metrics answered here, before Django, for Prometheus only.

    Prometheus scrapes each replica by its address (Host: 172.30.2.7:8000), which Django's
    ALLOWED_HOSTS check would refuse with 400; the endpoint is never routed from outside
    (Traefik's public entrypoint does not route it), so it needs no host check.
    """

    path = "/metrics"

    def __init__(self, app: Any) -> None:
        self.app = app
        self.registry = metrics_registry()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        body = generate_latest(self.registry)
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
