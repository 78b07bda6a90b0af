"""Quota status: a tenant's page shows what was used today and this month against its quotas
(Postgres' usage rows and the limiter's live counters), what is in flight now and, while a
limit refuses, when the tenant is served again; the tenants list flags tenants near (>= 80%)
or over a quota. Spending goes through the real limiter on the real Redis."""

from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from core.errors import QuotaExhausted, RateLimited
from core.redis import reset_clients
from ratelimit import limiter
from tenants.keycache import KeyRecord
from tenants.models import ApiKey, Tenant
from tenants.services import api_key_issue, tenant_create

pytestmark = pytest.mark.django_db


def record_of(key: ApiKey) -> KeyRecord:
    return KeyRecord.from_row(ApiKey.objects.select_related("tenant").get(pk=key.pk))


def spend(key: ApiKey, tokens: int) -> limiter.Admission:
    """One admitted request reserving `tokens` (its lease stays held: not settled)."""
    return async_to_sync(limiter.admit)(record_of(key), tokens=tokens)


def quoted(slug: str, **limits: int) -> ApiKey:
    tenant = tenant_create(slug=slug, limits=limits, actor="test")
    return api_key_issue(tenant=tenant, actor="test").api_key


def midnight_after(moment: datetime) -> datetime:
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1)


def test_the_page_shows_today_and_this_month_against_the_quotas(staff: Client, add_usage) -> None:
    key = quoted("acme", tokens_per_day=1000, tokens_per_month=10_000, max_inflight=4)
    add_usage(key, 1, 3, prompt=100, completion=20)  # a minute ago: today and this month
    spend(key, 300)
    quota = staff.get("/console/tenants/acme/").context["quota"]
    today, month = quota.periods
    assert (today.name, today.requests, today.tokens, today.quota) == ("today", 3, 120, 1000)
    assert today.counted == 300 and today.percent == 30  # the limiter's count is the larger
    assert (month.tokens, month.quota, month.counted, month.percent) == (120, 10_000, 300, 3)
    assert today.resets_at == midnight_after(datetime.now(UTC))
    assert quota.inflight.used == 1 and quota.inflight.limit == 4
    assert quota.served_again_at is None
    html = staff.get("/console/tenants/acme/").content.decode()
    assert 'id="not-blocked"' in html and "<strong>1</strong> of 4" in html


def test_a_spent_day_quota_says_when_the_tenant_is_served_again(staff: Client) -> None:
    key = quoted("acme", tokens_per_day=100)
    spend(key, 100)
    with pytest.raises(QuotaExhausted):
        spend(key, 1)
    response = staff.get("/console/tenants/acme/")
    quota = response.context["quota"]
    assert [limit.label for limit in quota.blocking] == ["tokens-per-day"]
    assert quota.served_again_at == midnight_after(quota.state.now)
    assert quota.periods[0].percent == 100
    html = response.content.decode()
    assert 'id="blocked"' in html and "tokens-per-day" in html
    assert quota.served_again_at.strftime("%Y-%m-%d %H:%M:%S") in html


def test_a_full_in_flight_limit_says_when_its_oldest_lease_ends_at_the_latest(
    staff: Client, settings
) -> None:
    key = quoted("acme", max_inflight=1)
    spend(key, 1)
    with pytest.raises(RateLimited):
        spend(key, 1)
    quota = staff.get("/console/tenants/acme/").context["quota"]
    assert quota.inflight.used == 1 and quota.inflight.blocked
    wait = (quota.served_again_at - quota.state.now).total_seconds()
    assert 0 < wait <= settings.RATELIMIT_LEASE_TTL_SECONDS


def test_a_spent_request_rate_says_when_the_next_request_fits(staff: Client) -> None:
    key = quoted("acme", rpm=1, burst_percent=1)
    spend(key, 1)
    with pytest.raises(RateLimited):
        spend(key, 1)
    quota = staff.get("/console/tenants/acme/").context["quota"]
    assert [limit.label for limit in quota.blocking] == ["rpm"]
    assert 0 < (quota.served_again_at - quota.state.now).total_seconds() <= 60


def test_a_tenant_without_quotas_shows_its_usage_and_no_percent(staff: Client, issued) -> None:
    quota = staff.get("/console/tenants/acme/").context["quota"]
    assert all(p.quota is None and p.percent is None and p.counted is None for p in quota.periods)
    assert quota.inflight is None and quota.served_again_at is None


def test_the_tenants_list_flags_who_is_near_or_over_a_quota(staff: Client) -> None:
    spend(quoted("near", tokens_per_day=100), 85)
    spend(quoted("over", tokens_per_month=100), 100)
    spend(quoted("calm", tokens_per_day=100), 10)
    quoted("free")  # no quota
    response = staff.get("/console/tenants/")
    percents = {t.slug: t.quota_percent for t in response.context["tenants"]}
    assert percents == {"near": 85, "over": 100, "calm": 10, "free": None}
    html = response.content.decode()
    assert "near quota 85%" in html and "over quota 100%" in html
    assert "near quota 10%" not in html


def test_the_pages_say_so_when_redis_cannot_answer(staff: Client, settings, issued) -> None:
    Tenant.objects.update(tokens_per_day=100)
    settings.RATELIMIT_REDIS_URL = "redis://127.0.0.1:7201/0"  # nothing listens there
    reset_clients()
    try:
        page = staff.get("/console/tenants/acme/")
        assert page.status_code == 200 and 'id="limiter-unknown"' in page.content.decode()
        assert staff.get("/console/tenants/").status_code == 200
    finally:
        settings.RATELIMIT_REDIS_URL = settings.REDIS_URL
        reset_clients()
