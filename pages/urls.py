"""The admin console's pages, mounted at /console/ by console/urls.py."""

from django.urls import path

from pages import export_views, key_views, login_views, throttle_views, views

app_name = "console"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("login/", login_views.login_view, name="login"),
    path("logout/", login_views.logout_view, name="logout"),
    path("audit/", views.audit_log, name="audit"),
    path("usage.csv", export_views.node_usage_csv, name="usage-csv"),
    path("tenants/", views.tenant_list, name="tenants"),
    path("tenants/<slug:slug>/", views.tenant_detail, name="tenant"),
    path("tenants/<slug:slug>/usage.csv", export_views.tenant_usage_csv, name="tenant-usage-csv"),
    path("tenants/<slug:slug>/limits/", views.tenant_limits, name="tenant-limits"),
    path("tenants/<slug:slug>/keys/", key_views.key_issue, name="key-issue"),
    path("tenants/<slug:slug>/keys/<str:key_id>/rotate/", key_views.key_rotate, name="key-rotate"),
    path("tenants/<slug:slug>/keys/<str:key_id>/revoke/", key_views.key_revoke, name="key-revoke"),
    path(
        "tenants/<slug:slug>/throttles/",
        throttle_views.tenant_throttles,
        name="tenant-throttles",
    ),
    path(
        "tenants/<slug:slug>/throttles.csv",
        throttle_views.tenant_throttles_csv,
        name="tenant-throttles-csv",
    ),
]
