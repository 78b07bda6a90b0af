"""Writes for tenants and keys: each one atomic, audited with its actor, and announced to every
process's key cache after commit. Then the writes of usage and of the 429 audit, which the
rate limiter's flusher (ratelimit/flush.py) moves here from Redis in batches, exactly once."""

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone

from tenants import keycache, tokens
from tenants.models import (
    LIMIT_FIELDS,
    MAX_WEIGHT,
    SCOPES,
    AdapterUsageDay,
    AdminAction,
    ApiKey,
    Tenant,
    ThrottleEvent,
    UsageBatch,
    UsageDay,
    UsageHour,
    UsageMinute,
)
from tenants.presets import LIMIT_PRESETS, PRESET_NAMES

NAME_MAX_LENGTH = 200  # Tenant.name's max_length
SLUG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
# Changed, audited and announced together (tenant_set_limits); the scheduling weight is the
# tenant's share of the model while tenants wait for it together (engine/fairness.py).
TENANT_SETTINGS = (*LIMIT_FIELDS, "burst_percent", "scheduling_weight")


class TenantError(ValueError):
    """A tenant or key operation that cannot be done as asked (the message says why)."""


@dataclass(frozen=True)
class IssuedKey:
    """A freshly issued or rotated key; `token` exists only here and is never stored."""

    api_key: ApiKey
    token: str


def _validate_settings(changes: Mapping[str, int | None], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for name, value in changes.items():
        if name not in allowed:
            raise TenantError(f"unknown limit {name!r}; expected one of {', '.join(allowed)}")
        if name == "burst_percent":
            if not isinstance(value, int) or not 1 <= value <= 100:
                raise TenantError("burst_percent must be an integer from 1 to 100")
        elif name == "scheduling_weight":
            if not isinstance(value, int) or not 1 <= value <= MAX_WEIGHT:
                raise TenantError(f"scheduling_weight must be an integer from 1 to {MAX_WEIGHT}")
        elif value is not None and (not isinstance(value, int) or value <= 0):
            raise TenantError(f"{name} must be a positive integer, or empty for no limit")


def _audit(action: str, *, actor: str, tenant: Tenant, key_id: str = "", **data: object) -> None:
    AdminAction.objects.create(
        actor=actor,
        action=action,
        tenant=tenant,
        key_id=key_id,
        before=data.get("before"),
        after=data.get("after"),
    )


def _announce(key_ids: Iterable[str]) -> None:
    # After commit only: a process that reloads on the signal must see the committed row. The
    # keys changed lose their shared snapshot with it (tenants/keysnapshot.py).
    transaction.on_commit(partial(keycache.bump_version, list(key_ids)))


def _key_ids_of(tenant: Tenant) -> list[str]:
    return list(ApiKey.objects.filter(tenant=tenant).values_list("key_id", flat=True))


def preset_limits(name: str | None = None) -> dict[str, int | None]:
    """The limits of a named preset (tenants/presets.py; None: TENANT_DEFAULT_PRESET)."""
    name = name or settings.TENANT_DEFAULT_PRESET
    if name not in LIMIT_PRESETS:
        raise TenantError(f"unknown preset {name!r}; expected one of {', '.join(PRESET_NAMES)}")
    return dict(LIMIT_PRESETS[name])


def tenant_create(
    *,
    slug: str,
    name: str = "",
    limits: Mapping[str, int | None] | None = None,
    preset: str | None = None,
    actor: str,
) -> Tenant:
    """Create a tenant: the preset's limits (default TENANT_DEFAULT_PRESET), overridden by
    `limits` (None there: no limit). Never unlimited unless asked."""
    if not SLUG_PATTERN.match(slug or ""):
        raise TenantError("slug must be 1-64 lowercase letters, digits or hyphens")
    given = dict(limits or {})
    base = preset_limits(preset)
    limits = {**base, **given}
    _validate_settings(limits, TENANT_SETTINGS)
    # The audit names the preset only when some setting came from it.
    started_from = (
        {} if base.keys() <= given.keys() else {"preset": preset or settings.TENANT_DEFAULT_PRESET}
    )
    try:
        with transaction.atomic():
            tenant = Tenant.objects.create(slug=slug, name=name or slug, **limits)
            _audit(
                AdminAction.Action.TENANT_CREATED,
                actor=actor,
                tenant=tenant,
                after={**_settings_of(tenant), **started_from},
            )
    except IntegrityError as exc:
        raise TenantError(f"tenant {slug!r} already exists") from exc
    return tenant


def _settings_of(obj: Tenant | ApiKey) -> dict[str, int | None]:
    names = TENANT_SETTINGS if isinstance(obj, Tenant) else LIMIT_FIELDS
    return {name: getattr(obj, name) for name in names}


def tenant_set_limits(*, tenant: Tenant, changes: Mapping[str, int | None], actor: str) -> Tenant:
    """Change some of a tenant's limits; audited with before and after."""
    _validate_settings(changes, TENANT_SETTINGS)
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        before = _settings_of(tenant)
        for name, value in changes.items():
            setattr(tenant, name, value)
        tenant.save(update_fields=[*changes.keys(), "updated_at"])
        _audit(
            AdminAction.Action.LIMITS_CHANGED,
            actor=actor,
            tenant=tenant,
            before=before,
            after=_settings_of(tenant),
        )
        _announce(_key_ids_of(tenant))
    return tenant


def tenant_rename(*, tenant: Tenant, name: str, actor: str) -> Tenant:
    """Change a tenant's display name; the slug (in URLs, keys' Redis state, metrics) stays."""
    name = (name or "").strip()
    if not name or len(name) > NAME_MAX_LENGTH:
        raise TenantError(f"a name is 1-{NAME_MAX_LENGTH} characters")
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        before = tenant.name
        if name == before:
            return tenant
        tenant.name = name
        tenant.save(update_fields=["name", "updated_at"])
        _audit(
            AdminAction.Action.TENANT_RENAMED,
            actor=actor,
            tenant=tenant,
            before={"name": before},
            after={"name": name},
        )
    return tenant


def tenant_suspend(*, tenant: Tenant, actor: str, reason: str = "") -> Tenant:
    """Suspend a tenant: every key of it is refused (403 tenant_suspended) in every process
    within the key cache's version poll, open WebSockets included; usage and audit stay."""
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if tenant.suspended_at is not None:
            raise TenantError(f"tenant {tenant.slug!r} is already suspended")
        tenant.active, tenant.suspended_at = False, timezone.now()
        tenant.save(update_fields=["active", "suspended_at", "updated_at"])
        after = {"suspended_at": tenant.suspended_at.isoformat(), "reason": reason.strip()}
        _audit(AdminAction.Action.TENANT_SUSPENDED, actor=actor, tenant=tenant, after=after)
        _announce(_key_ids_of(tenant))
    return tenant


def tenant_resume(*, tenant: Tenant, actor: str) -> Tenant:
    """Resume a suspended tenant: its keys work again in every process within the poll."""
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if tenant.suspended_at is None:
            raise TenantError(f"tenant {tenant.slug!r} is not suspended")
        before = {"suspended_at": tenant.suspended_at.isoformat()}
        tenant.active, tenant.suspended_at = True, None
        tenant.save(update_fields=["active", "suspended_at", "updated_at"])
        _audit(AdminAction.Action.TENANT_RESUMED, actor=actor, tenant=tenant, before=before)
        _announce(_key_ids_of(tenant))
    return tenant


def _new_secret() -> tuple[str, str]:
    secret = tokens.new_secret()
    return secret, tokens.hash_secret(secret, settings.API_KEY_PEPPER)


def api_key_issue(
    *,
    tenant: Tenant,
    name: str = "",
    expires_in: timedelta | None = None,
    scopes: Iterable[str] | None = None,
    actor: str,
) -> IssuedKey:
    """Issue a key for a tenant; the returned token is the only copy of its secret."""
    scopes = list(scopes) if scopes is not None else list(SCOPES)
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise TenantError(f"unknown scope(s) {sorted(unknown)}; expected {', '.join(SCOPES)}")
    if expires_in is not None and expires_in <= timedelta(0):
        raise TenantError("expiry must be in the future")
    secret, secret_hash = _new_secret()
    expires_at = timezone.now() + expires_in if expires_in is not None else None
    with transaction.atomic():
        key = ApiKey.objects.create(
            tenant=tenant,
            key_id=tokens.new_key_id(),
            name=name,
            secret_hash=secret_hash,
            last4=secret[-4:],
            scopes=scopes,
            expires_at=expires_at,
        )
        _audit(
            AdminAction.Action.KEY_ISSUED,
            actor=actor,
            tenant=tenant,
            key_id=key.key_id,
            after={
                "name": name,
                "scopes": scopes,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
        _announce([key.key_id])
    return IssuedKey(key, tokens.format_token(settings.API_KEY_PREFIX, key.key_id, secret))


def api_key_rotate(*, api_key: ApiKey, grace: timedelta, actor: str) -> IssuedKey:
    """Give a key a new secret; the old one keeps working for `grace` (0: stops at once)."""
    if grace < timedelta(0):
        raise TenantError("grace must not be negative")
    secret, secret_hash = _new_secret()
    now = timezone.now()
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=api_key.pk)
        if key.revoked_at is not None:
            raise TenantError(f"key {key.key_id} is revoked and cannot be rotated")
        # A second rotation inside a grace period ends the older secret's grace right away.
        key.previous_hash = key.secret_hash if grace > timedelta(0) else ""
        key.previous_valid_until = now + grace if grace > timedelta(0) else None
        key.secret_hash, key.last4, key.rotated_at = secret_hash, secret[-4:], now
        key.save(
            update_fields=[
                "previous_hash",
                "previous_valid_until",
                "secret_hash",
                "last4",
                "rotated_at",
            ]
        )
        _audit(
            AdminAction.Action.KEY_ROTATED,
            actor=actor,
            tenant=key.tenant,
            key_id=key.key_id,
            after={"grace_seconds": int(grace.total_seconds())},
        )
        _announce([key.key_id])
    return IssuedKey(key, tokens.format_token(settings.API_KEY_PREFIX, key.key_id, secret))


def api_key_revoke(*, api_key: ApiKey, actor: str) -> ApiKey:
    """Revoke a key at once, including any secret still in its rotation grace."""
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=api_key.pk)
        if key.revoked_at is not None:
            raise TenantError(f"key {key.key_id} is already revoked")
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        _audit(AdminAction.Action.KEY_REVOKED, actor=actor, tenant=key.tenant, key_id=key.key_id)
        _announce([key.key_id])
    return key


def api_key_set_limits(*, api_key: ApiKey, changes: Mapping[str, int | None], actor: str) -> ApiKey:
    """Set or clear a key's own limits (checked together with its tenant's)."""
    _validate_settings(changes, LIMIT_FIELDS)
    with transaction.atomic():
        key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=api_key.pk)
        before = _settings_of(key)
        for name, value in changes.items():
            setattr(key, name, value)
        key.save(update_fields=list(changes.keys()))
        _audit(
            AdminAction.Action.KEY_LIMITS_CHANGED,
            actor=actor,
            tenant=key.tenant,
            key_id=key.key_id,
            before=before,
            after=_settings_of(key),
        )
        _announce([key.key_id])
    return key


# (tenant id, API key pk, UTC minute) -> [requests, prompt tokens, completion tokens, errors]
UsageRows = Mapping[tuple[int, int, datetime], Sequence[int]]

UPSERT_USAGE = (
    "INSERT INTO {table} (tenant_id, api_key_id, {bucket}, requests, prompt_tokens, "
    "completion_tokens, errors) VALUES (%s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (api_key_id, {bucket}) DO UPDATE SET "
    "requests = {table}.requests + excluded.requests, "
    "prompt_tokens = {table}.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = {table}.completion_tokens + excluded.completion_tokens, "
    "errors = {table}.errors + excluded.errors"
)


@dataclass(frozen=True)
class Refusals:
    """The 429s of one key for one reason in one UTC minute, as the limiter counted them."""

    tenant_id: int
    api_key_id: int
    reason: str
    minute: datetime
    count: int
    first_seen: datetime
    last_seen: datetime
    addresses: Sequence[str]


def usage_batch_apply(*, batch_id: str, rows: int, write: Callable[[], None]) -> bool:
    """Run `write` (a batch's usage or refusals) and mark the batch applied, in one
    transaction, once per batch id: False, with nothing written, when it was applied before."""
    with transaction.atomic():
        # Unique batch_id: a second writer of the same batch blocks here until the first
        # commits, then finds the marker and writes nothing.
        _, created = UsageBatch.objects.get_or_create(batch_id=batch_id, defaults={"rows": rows})
        if created:
            write()
    return created


def usage_batches_prune(*, applied_before: datetime) -> int:
    """Forget the markers of batches applied before then; returns how many went."""
    deleted, _ = UsageBatch.objects.filter(applied_at__lt=applied_before).delete()
    return deleted


def _truncate(moment: datetime, grain: str) -> datetime:
    moment = moment.astimezone(UTC).replace(second=0, microsecond=0)
    moment = moment.replace(minute=0)
    return moment.replace(hour=0) if grain == "day" else moment


def _rolled_up(rows: UsageRows, grain: str) -> dict[tuple[int, int, datetime], list[int]]:
    """The rows summed per (tenant, key, UTC hour or day)."""
    sums: dict[tuple[int, int, datetime], list[int]] = {}
    for (tenant_id, key_pk, minute), values in rows.items():
        bucket = sums.setdefault((tenant_id, key_pk, _truncate(minute, grain)), [0, 0, 0, 0])
        for i, value in enumerate(values):
            bucket[i] += value
    return sums


def _upsert(model: type[models.Model], column: str, rows: UsageRows) -> None:
    # The only interpolation is our own models' table and column names; every value is a
    # parameter. Sorted: concurrent writers lock shared rows in the same order (no deadlock).
    sql = UPSERT_USAGE.format(table=model._meta.db_table, bucket=column)  # noqa: S608
    adapt = connection.ops.adapt_datetimefield_value
    params = [(t, k, adapt(m), *values) for (t, k, m), values in sorted(rows.items())]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def usage_minutes_add(*, rows: UsageRows) -> None:
    """Add requests, tokens and errors to UsageMinute rows (tenant, key, minute), creating
    them, and the same sums to their UsageHour and UsageDay rows: one upsert per row."""
    # One transaction for the three grains: the rollups never disagree with the minutes. Inside
    # a batch's transaction (usage_batch_apply) no savepoint: a failure aborts the batch, and
    # the batch marker makes the rollups exactly-once along with the minutes.
    with transaction.atomic(savepoint=False):
        _upsert(UsageMinute, "minute", rows)
        _upsert(UsageHour, "hour", _rolled_up(rows, "hour"))
        _upsert(UsageDay, "day", _rolled_up(rows, "day"))


# (tenant id, adapter NAME, UTC day) -> [requests, prompt tokens, completion tokens]
AdapterUsageRows = Mapping[tuple[int, str, date], Sequence[int]]

UPSERT_ADAPTER_USAGE = (
    "INSERT INTO {table} (tenant_id, adapter, day, requests, prompt_tokens, completion_tokens) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, adapter, day) DO UPDATE SET "
    "requests = {table}.requests + excluded.requests, "
    "prompt_tokens = {table}.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = {table}.completion_tokens + excluded.completion_tokens"
)


def adapter_usage_days_add(*, rows: AdapterUsageRows) -> None:
    """Add requests and tokens to AdapterUsageDay rows (tenant, adapter, day), creating them:
    one upsert per row, in the caller's transaction (a batch's: exactly once with it)."""
    # Our own table's name only; every value is a parameter. Sorted: concurrent writers lock
    # shared rows in the same order (no deadlock).
    sql = UPSERT_ADAPTER_USAGE.format(table=AdapterUsageDay._meta.db_table)  # noqa: S608
    adapt = connection.ops.adapt_datefield_value
    params = [(t, name, adapt(day), *values) for (t, name, day), values in sorted(rows.items())]
    if not params:
        return
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.executemany(sql, params)


REBUILD_ROLLUP = (
    "INSERT INTO {table} (tenant_id, api_key_id, {grain}, requests, prompt_tokens, "
    "completion_tokens, errors) "
    "SELECT tenant_id, api_key_id, "
    "date_trunc('{grain}', minute AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', "
    "sum(requests), sum(prompt_tokens), sum(completion_tokens), sum(errors) "
    "FROM {minutes} GROUP BY 1, 2, 3"
)


def usage_rollups_rebuild() -> dict[str, int]:
    """Recompute every UsageHour and UsageDay row from the UsageMinute rows (after a restore or
    a bulk load that bypassed usage_minutes_add); returns the rows written per grain."""
    written = {}
    with transaction.atomic():
        # The minutes' table is locked against writers so no flush lands between the delete and
        # the insert (a flush waits, then adds to the rebuilt rollups).
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {UsageMinute._meta.db_table} IN SHARE MODE")
        for model, grain in ((UsageHour, "hour"), (UsageDay, "day")):
            model.objects.all().delete()
            sql = REBUILD_ROLLUP.format(
                table=model._meta.db_table, grain=grain, minutes=UsageMinute._meta.db_table
            )
            with connection.cursor() as cursor:
                cursor.execute(sql)
                written[grain] = cursor.rowcount
    return written


def throttle_events_add(*, refusals: Iterable[Refusals], keep_addresses: int) -> None:
    """Add refusals to ThrottleEvent rows (key, reason, minute), creating them: counts add
    up, first and last seen only widen, and at most `keep_addresses` distinct addresses stay."""
    # One row order for every writer: two flushers lock the rows they share in the same order.
    ordered = sorted(refusals, key=lambda r: (r.api_key_id, r.reason, r.minute))
    with transaction.atomic(savepoint=False):
        for item in ordered:
            _throttle_event_add(item, keep_addresses)


def _throttle_event_add(item: Refusals, keep: int) -> None:
    event, created = ThrottleEvent.objects.select_for_update().get_or_create(
        api_key_id=item.api_key_id,
        reason=item.reason,
        minute=item.minute,
        defaults={
            "tenant_id": item.tenant_id,
            "count": item.count,
            "first_seen": item.first_seen,
            "last_seen": item.last_seen,
            "sample_addresses": list(item.addresses[:keep]),
        },
    )
    if created:
        return
    event.count += item.count
    event.first_seen = min(event.first_seen, item.first_seen)
    event.last_seen = max(event.last_seen, item.last_seen)
    new = [a for a in item.addresses if a not in event.sample_addresses]
    event.sample_addresses = (event.sample_addresses + new)[:keep]
    event.save(update_fields=["count", "first_seen", "last_seen", "sample_addresses"])
