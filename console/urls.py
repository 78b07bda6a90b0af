from django.contrib import admin
from django.urls import include, path

from console import health
from console.api import api
from pages.login_views import admin_login_redirect

urlpatterns = [
    path("v1/", api.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # Before admin.site.urls: the admin's login is the console's throttled one.
    path("admin/login/", admin_login_redirect, name="admin-login"),
    path("admin/", admin.site.urls),
    path("console/", include("pages.urls")),
    # /metrics is served before Django by console.metrics.MetricsEndpoint (console/asgi.py);
    # Traefik never routes it from the public entrypoint.
]
# Errors under /v1 (404s included) are JSON: console.middleware.ApiJsonErrorsMiddleware.
