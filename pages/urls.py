"""The admin console's pages, mounted at /console/ by console/urls.py."""

from django.urls import path

from pages import (
    adapter_views,
    export_views,
    key_views,
    lifecycle_views,
    login_views,
    throttle_views,
    user_views,
    views,
)

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
    path("tenants/<slug:slug>/rename/", lifecycle_views.tenant_rename_view, name="tenant-rename"),
    path(
        "tenants/<slug:slug>/suspend/", lifecycle_views.tenant_suspend_view, name="tenant-suspend"
    ),
    path("tenants/<slug:slug>/resume/", lifecycle_views.tenant_resume_view, name="tenant-resume"),
    path(
        "tenants/<slug:slug>/keys/<str:key_id>/limits/",
        lifecycle_views.key_limits_view,
        name="key-limits",
    ),
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
    path(
        "tenants/<slug:slug>/adapters/",
        adapter_views.tenant_adapter_grant,
        name="tenant-adapter-grant",
    ),
    # An adapter's name may hold dots ("support.v2"), which <slug:> refuses.
    path("adapters/", adapter_views.adapter_list, name="adapters"),
    path("adapters/<str:name>/", adapter_views.adapter_detail, name="adapter"),
    path("adapters/<str:name>/grants/", adapter_views.adapter_grant_view, name="adapter-grant"),
    path(
        "adapters/<str:name>/grants/<slug:slug>/revoke/",
        adapter_views.adapter_revoke_view,
        name="adapter-revoke",
    ),
    path("adapters/<str:name>/remove/", adapter_views.adapter_remove_view, name="adapter-remove"),
    path("users/", user_views.user_list, name="users"),
    path("users/<int:user_id>/role/", user_views.user_role, name="user-role"),
    path("users/<int:user_id>/active/", user_views.user_active, name="user-active"),
    path(
        "users/<int:user_id>/password-link/",
        user_views.user_password_link,
        name="user-password-link",
    ),
    path(
        "set-password/<uidb64>/<token>/",
        user_views.SetPasswordView.as_view(),
        name="set-password",
    ),
]
