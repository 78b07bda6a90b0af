from django.contrib import admin
from django.urls import path

from console import health
from console.api import api

urlpatterns = [
    path("v1/", api.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    # /metrics is served before Django by console.metrics.MetricsEndpoint (console/asgi.py);
    # Traefik never routes it from the public entrypoint.
]
