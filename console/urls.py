from django.contrib import admin
from django.urls import include, path

from console import health
from console.api import api

urlpatterns = [
    path("v1/", api.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("console/", include("console.pages_urls")),
    # /metrics; Traefik never routes it from the public entrypoint.
    path("", include("django_prometheus.urls")),
]
