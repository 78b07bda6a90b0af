"""Prometheus glue for the Django side: bounded labels on django-prometheus's HTTP metrics."""

from typing import Any

from django.http import HttpRequest, HttpResponse
from django_prometheus.middleware import PrometheusAfterMiddleware


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
