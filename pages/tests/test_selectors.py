"""Selectors sum in the database; joining two row sets must never multiply either sum."""

import pytest

from pages import selectors
from tenants.services import api_key_issue

pytestmark = pytest.mark.django_db


def test_tenant_and_key_sums_do_not_multiply(issued, add_usage, add_throttle) -> None:
    second = api_key_issue(tenant=issued.api_key.tenant, name="b", actor="t").api_key
    for minutes_ago in (1, 2, 3):
        add_usage(issued.api_key, minutes_ago, 10, 5, 5, errors=1)
        add_throttle(issued.api_key, minutes_ago, 2)
    add_usage(second, 1, 1)
    add_throttle(second, 1, 7, "tenant-tpm")
    since = selectors.window("24h").start
    (tenant,) = selectors.tenants_with_usage(since)
    assert (tenant.requests, tenant.tokens, tenant.throttled, tenant.active_keys) == (31, 30, 13, 2)
    assert tenant.errors == 3
    keys = {k.key_id: k for k in selectors.tenant_keys(tenant, since)}
    first = keys[issued.api_key.key_id]
    assert (first.requests, first.tokens, first.errors, first.throttled) == (30, 30, 3, 6)
    second_row = keys[second.key_id]
    assert (second_row.requests, second_row.errors, second_row.throttled) == (1, 0, 7)
    assert selectors.throttle_reasons(tenant) == ["key-rpm", "tenant-tpm"]
