"""Shared test helpers: key records without a database, and the exact KEYS/ARGV the limiter
sends, so in-process (lupa) and real-Redis runs drive the scripts the same way."""

from collections.abc import Mapping
from typing import Any, TypedDict

from ratelimit import limiter
from ratelimit.limits import dirty_key, lease_key, plan_for, plan_limits, throttle_key
from ratelimit.scripts import Arg
from ratelimit.tests.model import Spec
from tenants.keycache import KeyRecord
from tenants.models import LIMIT_FIELDS


def limits_dict(values: Mapping[str, int | None] | None = None) -> dict[str, int | None]:
    values = dict(values or {})
    return {name: values.get(name) for name in LIMIT_FIELDS}


class RecordFields(TypedDict, total=False):
    """make_record()'s keyword arguments, for records described as data."""

    tenant_id: int
    api_key_pk: int
    key_id: str
    tenant: Mapping[str, int | None] | None
    key: Mapping[str, int | None] | None
    burst_percent: int
    slug: str


def make_record(
    *,
    tenant_id: int = 1,
    api_key_pk: int = 1,
    key_id: str = "KEYabcdef123",
    tenant: Mapping[str, int | None] | None = None,
    key: Mapping[str, int | None] | None = None,
    burst_percent: int = 20,
    slug: str = "acme",
) -> KeyRecord:
    return KeyRecord(
        api_key_pk=api_key_pk,
        key_id=key_id,
        tenant_id=tenant_id,
        tenant_slug=slug,
        tenant_active=True,
        scopes=frozenset({"completions"}),
        tenant_limits=limits_dict(tenant),
        key_limits=limits_dict(key),
        burst_percent=burst_percent,
        expires_at=None,
        revoked=False,
        last_used_at=None,
        secret_hash="",
        previous_hash="",
    )


def specs(record: KeyRecord) -> list[Spec]:
    return [Spec(x.kind, x.limit, x.burst, x.name, x.key) for x in plan_limits(record)]


def admit_call(
    record: KeyRecord, reserve: int, lease: str, addr: str | None = None
) -> tuple[list[str], list[Any]]:
    plan = plan_for(record)
    keys = [lease_key(record.tenant_id, lease), throttle_key(record.tenant_id), *plan.keys]
    keys.append(dirty_key(record.tenant_id))
    return keys, limiter._admit_args(record, plan.packed, reserve, lease, addr)


def admission_for(record: KeyRecord, lease: str, reserve: int = 0) -> limiter.Admission:
    return limiter.Admission(
        lease_id=lease,
        reserved_tokens=reserve,
        headers={},
        failed_open=False,
        source="redis",
        tenant_id=record.tenant_id,
        api_key_pk=record.api_key_pk,
        keys=tuple(x.key for x in plan_limits(record)),
    )


def settle_call(
    record: KeyRecord, lease: str, prompt: int, completion: int
) -> tuple[list[str], list[Any]]:
    call = limiter._settle_call(admission_for(record, lease), prompt, completion)
    return call.keys, call.args


def heartbeat_call(
    record: KeyRecord, lease: str, lease_ms: int, record_ms: int
) -> tuple[list[str], list[Arg]]:
    keys = [lease_key(record.tenant_id, lease), *(x.key for x in plan_limits(record))]
    return keys, [lease, lease_ms, record_ms]


def usage_totals(flat: Mapping[Any, Any]) -> dict[str, int]:
    """Sum a usage buffer hash ({"<pk>|<minute>|r": n, ...}) per field letter."""
    totals = {"r": 0, "p": 0, "c": 0}
    for name, value in flat.items():
        name = name.decode() if isinstance(name, bytes) else name
        totals[name.rsplit("|", 1)[1]] += int(value)
    return totals
