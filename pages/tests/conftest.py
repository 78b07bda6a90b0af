"""Fixtures of the console tests: signed-in staff and non-staff clients, and usage rows.

`staff_user` holds every permission of the tenants app (what the console needs to read and to
act), not superuser status, so the tests go through the same permission checks as real staff."""

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from tenants.models import ApiKey, ThrottleEvent, UsageMinute
from tenants.services import usage_minutes_add

PASSWORD = "correct horse battery staple 42"


def tenants_permissions(prefix: str = ""):
    """The tenants app's permissions whose codename starts with `prefix` ("view_": read only)."""
    return Permission.objects.filter(content_type__app_label="tenants", codename__startswith=prefix)


@pytest.fixture
def staff_user(db, django_user_model):
    user = django_user_model.objects.create_user("ada", password=PASSWORD, is_staff=True)
    user.user_permissions.set(tenants_permissions())
    return user


@pytest.fixture
def plain_user(db, django_user_model):
    return django_user_model.objects.create_user("bob", password=PASSWORD, is_staff=False)


@pytest.fixture
def staff(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def csrf_staff(staff_user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    return client


def minute_ago(minutes: int) -> datetime:
    now = timezone.now().replace(second=0, microsecond=0)
    return now - timedelta(minutes=minutes)


@pytest.fixture
def add_usage() -> Callable[..., UsageMinute]:
    def add(
        key: ApiKey,
        minutes_ago: int,
        requests: int,
        prompt: int = 0,
        completion: int = 0,
        errors: int = 0,
    ) -> UsageMinute:
        # Through the flusher's own write, so the hourly and daily rollups get the row too.
        minute = minute_ago(minutes_ago)
        values = [requests, prompt, completion, errors]
        usage_minutes_add(rows={(key.tenant_id, key.pk, minute): values})
        return UsageMinute.objects.get(api_key=key, minute=minute)

    return add


@pytest.fixture
def add_throttle() -> Callable[..., ThrottleEvent]:
    def add(key: ApiKey, minutes_ago: int, count: int, reason: str = "key-rpm", addresses=()):
        minute = minute_ago(minutes_ago)
        return ThrottleEvent.objects.create(
            tenant=key.tenant,
            api_key=key,
            reason=reason,
            minute=minute,
            count=count,
            first_seen=minute + timedelta(seconds=3),
            last_seen=minute + timedelta(seconds=57),
            sample_addresses=list(addresses),
        )

    return add


# Accounts in the roles that tenants/migrations/0005 makes (pages/tests/roles.py).
from pages.tests.roles import as_role  # noqa: E402, F401
