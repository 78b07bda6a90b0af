"""The per-process cache of API key records, and how changes reach every process.

A hot key costs no query: its record (hashes, state, limits) stays in process memory for at most
API_KEY_CACHE_SECONDS. Every write that matters (revoke, rotate, expire, limits, tenant state,
an adapter granted or revoked: a record carries its tenant's adapter names) increments one Redis
counter after its transaction commits; each process reads that counter at
most every API_KEY_VERSION_POLL_SECONDS and drops its whole cache when it moved. So a change is
seen everywhere within about half a second, and within the cache TTL even if Redis is down.

A request never waits on Postgres for a key its process knows: a record whose TTL ran out is
served while one background load refreshes it (stale-while-revalidate), and while Postgres
cannot answer it keeps being served for up to API_KEY_STALE_SECONDS (stale-if-error). A failed
or slow load (over API_KEY_LOAD_TIMEOUT_SECONDS) makes the process leave Postgres alone for
API_KEY_DB_BACKOFF_SECONDS. A key never seen before waits for its load; when Postgres cannot
answer, the shared snapshot in Redis (tenants/keysnapshot.py) says what any process last
learned of it, as stale as this process's own copy could be, and only when that says nothing
either does it get 503 service_unavailable, never a 500. Every load writes that snapshot. A
version change still drops everything at once, and deletes the changed keys' snapshots: what
was revoked is not served stale.

Anyone can send well-formed tokens with made-up key ids, so what they cost is bounded: an id
Postgres does not know is remembered in its own LRU of at most API_KEY_NEGATIVE_CACHE_SIZE ids
for API_KEY_NEGATIVE_CACHE_SECONDS (issuing a key bumps the version, which forgets them all, so
a new key works at once even if its id was probed before), and concurrent requests for one
uncached id share one query (single flight). Known records stay until a version change: they
are bounded by the rows of ApiKey. Failed authentications per client address are limited
before any lookup (tenants/auth.py, ratelimit/authfail.py).
"""

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import partial

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import F
from django.utils import timezone

from core.errors import DependencyUnavailable
from core.redis import get_redis, get_sync_redis
from tenants import keysnapshot, metrics
from tenants.keysnapshot import VERSION_KEY as VERSION_KEY
from tenants.models import AdapterGrant, ApiKey

logger = logging.getLogger(__name__)

_DATETIMES = ("expires_at", "last_used_at", "previous_valid_until")


@dataclass(frozen=True)
class KeyRecord:
    """What a process needs to verify a key and admit its requests, cached per key_id."""

    api_key_pk: int
    key_id: str
    tenant_id: int
    tenant_slug: str
    tenant_active: bool
    scopes: frozenset[str]
    tenant_limits: dict[str, int | None]
    key_limits: dict[str, int | None]
    burst_percent: int
    expires_at: datetime | None
    revoked: bool
    last_used_at: datetime | None
    secret_hash: str = field(repr=False)
    previous_hash: str = field(repr=False)
    previous_valid_until: datetime | None = None
    scheduling_weight: int = 1  # the tenant's share when tenants wait for the model together
    # The names of the adapters granted to the tenant (`model: NAME`; tenants/adapters.py).
    adapters: frozenset[str] = frozenset()

    @classmethod
    def from_row(cls, key: ApiKey, adapters: Iterable[str] = ()) -> "KeyRecord":
        tenant = key.tenant
        return cls(
            api_key_pk=key.pk,
            key_id=key.key_id,
            tenant_id=tenant.pk,
            tenant_slug=tenant.slug,
            tenant_active=tenant.active,
            scopes=frozenset(key.scopes or ()),
            tenant_limits=tenant.limits(),
            key_limits=key.limit_overrides(),
            burst_percent=tenant.burst_percent,
            expires_at=key.expires_at,
            revoked=key.revoked_at is not None,
            last_used_at=key.last_used_at,
            secret_hash=key.secret_hash,
            previous_hash=key.previous_hash,
            previous_valid_until=key.previous_valid_until,
            scheduling_weight=tenant.scheduling_weight,
            adapters=frozenset(adapters),
        )

    def to_json(self) -> str:
        """The record for the shared snapshot: the peppered hashes it holds, never a secret."""
        data: dict[str, object] = asdict(self)
        data["scopes"] = sorted(self.scopes)
        data["adapters"] = sorted(self.adapters)
        for name in _DATETIMES:
            value = getattr(self, name)
            data[name] = value.isoformat() if value is not None else None
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, payload: str) -> "KeyRecord":
        data = json.loads(payload)
        data["scopes"] = frozenset(data["scopes"])
        # A snapshot written before adapters were recorded has none.
        data["adapters"] = frozenset(data.get("adapters", ()))
        for name in _DATETIMES:
            if data[name] is not None:
                data[name] = datetime.fromisoformat(data[name])
        return cls(**data)

    def usable_at(self, now: datetime) -> bool:
        return not (self.revoked or not self.tenant_active or self._expired(now))

    def suspended_but_usable_at(self, now: datetime) -> bool:
        """Whether only the tenant's suspension keeps this key from being usable."""
        return not self.tenant_active and not self.revoked and not self._expired(now)

    def _expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def valid_hashes(self, now: datetime) -> tuple[str, ...]:
        """The current hash, plus the previous one while its rotation grace lasts."""
        if self.previous_hash and self.previous_valid_until and self.previous_valid_until > now:
            return (self.secret_hash, self.previous_hash)
        return (self.secret_hash,)


class KeyCache:
    """key_id -> record of a known key, or a short-lived "unknown" mark; dropped by version."""

    def __init__(self) -> None:
        # Known keys only (revoked ones too): bounded by the rows of ApiKey.
        self._entries: dict[str, tuple[KeyRecord, float]] = {}
        # Ids Postgres did not know -> when it said so, least recently asked first. Anyone can
        # make up ids, so this is bounded in size and age (API_KEY_NEGATIVE_CACHE_*).
        self._unknown: OrderedDict[str, float] = OrderedDict()
        # The records a version change dropped (bounded like _entries): they still vouch that a
        # secret was once this key's (last_known), never that it is valid now.
        self._previous: dict[str, KeyRecord] = {}
        # The version counter as Redis returns it (only ever compared for equality).
        self._version: bytes | str | None = None
        self._checked_at = float("-inf")
        self._db_down_until = float("-inf")
        self._refreshing: dict[str, asyncio.Task] = {}
        self._loading: dict[str, asyncio.Task] = {}

    def clear(self) -> None:
        """Forget everything, the last seen version included."""
        self._forget_records()
        self._previous.clear()
        self._version = None
        self._checked_at = float("-inf")
        self._db_down_until = float("-inf")
        for task in self._refreshing.values():
            task.cancel()
        self._refreshing.clear()

    def _forget_records(self) -> None:
        self._entries.clear()
        self._unknown.clear()
        # Loads under way may have read rows from before the change: later requests start
        # their own (those already waiting still get theirs, nothing stores it: see _fill).
        self._loading.clear()

    async def get(self, key_id: str) -> KeyRecord | None:
        """The record of key_id, None when Postgres does not know it; 503 when it cannot say."""
        await self._sync_version()
        hit, record = self._cached(key_id)
        if hit:
            return record
        # An id Postgres said it did not know, longer ago than the negative cache keeps such
        # marks: asked again, but while Postgres cannot answer it stays unknown (a 401, as
        # before the outage), as a known key's stale record stays valid (stale-if-error).
        was_unknown = key_id in self._unknown
        try:
            if time.monotonic() < self._db_down_until:
                raise self._unavailable()
            return await self._load_shared(key_id)
        except DependencyUnavailable:
            if was_unknown:
                metrics.stale_key_records.inc()
                return None
            # Never seen here (a process that just restarted): what another process learned
            # from Postgres, as stale as this one's own copy could be (keysnapshot.py).
            found, record = await self._recall(key_id)
            if not found:
                metrics.key_lookups_unavailable.inc()
                raise
            metrics.stale_key_records.inc()
            return record

    def last_known(self, key_id: str) -> KeyRecord | None:
        """The last record this process held for key_id, however old or invalidated (to tell a
        secret that was once valid from a guess; never to accept a key)."""
        entry = self._entries.get(key_id)
        return entry[0] if entry is not None else self._previous.get(key_id)

    async def get_cached(self, key_id: str) -> KeyRecord | None:
        """The record of a key this process already knows, never a query (None otherwise)."""
        await self._sync_version()
        return self._cached(key_id)[1]

    def cached_now(self, key_id: str) -> KeyRecord | None:
        """get_cached() without an await, for a caller that must not wait: None also while the
        version counter is due for its poll (the caller then takes get_cached(), which polls)."""
        if time.monotonic() - self._checked_at >= settings.API_KEY_VERSION_POLL_SECONDS:
            return None
        return self._cached(key_id)[1]

    def _cached(self, key_id: str) -> tuple[bool, KeyRecord | None]:
        """(hit, record) from memory alone; None with a hit is a known-unknown id."""
        entry = self._entries.get(key_id)
        now = time.monotonic()
        if entry is None:
            return self._known_unknown(key_id, now), None
        age = now - entry[1]
        if age < settings.API_KEY_CACHE_SECONDS:
            return True, entry[0]
        if age < settings.API_KEY_CACHE_SECONDS + settings.API_KEY_STALE_SECONDS:
            # Past its TTL: served while one background load per key refreshes it, so no
            # request ever waits on Postgres for a key this process knows.
            if now < self._db_down_until:
                metrics.stale_key_records.inc()
            else:
                self._refresh_in_background(key_id)
            return True, entry[0]
        return False, None

    def _known_unknown(self, key_id: str, now: float) -> bool:
        """A fresh "unknown" mark; an old one is kept (see get()) up to API_KEY_STALE_SECONDS
        more, within the size bound."""
        learned = self._unknown.get(key_id)
        if learned is None:
            return False
        age = now - learned
        if age >= settings.API_KEY_NEGATIVE_CACHE_SECONDS:
            if age >= settings.API_KEY_NEGATIVE_CACHE_SECONDS + settings.API_KEY_STALE_SECONDS:
                del self._unknown[key_id]
            return False
        self._unknown.move_to_end(key_id)
        return True

    async def _load_shared(self, key_id: str) -> KeyRecord | None:
        """Single flight: concurrent requests for one uncached id wait for one query."""
        task = self._loading.get(key_id)
        # A task of another event loop (async_to_sync in tests) cannot be awaited from this one.
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.create_task(self._fill(key_id))
            self._loading[key_id] = task
            task.add_done_callback(partial(self._loaded, key_id))
        try:
            # Shielded: a client that goes away must not cancel the load the others wait for.
            return await asyncio.shield(task)
        except (DatabaseError, TimeoutError):
            raise self._unavailable() from None

    def _loaded(self, key_id: str, task: asyncio.Task) -> None:
        if self._loading.get(key_id) is task:  # not a newer load started after a version change
            del self._loading[key_id]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone away

    async def _fill(self, key_id: str) -> KeyRecord | None:
        version = self._version
        record = await self._load(key_id)
        if self._version == version:  # a change seen meanwhile emptied the cache: keep it so
            self._store(key_id, record)
            _share(key_id, record, version)
        return record

    def _store(self, key_id: str, record: KeyRecord | None, learned: float | None = None) -> None:
        """Keep what Postgres said about key_id, as of `learned` (monotonic; default now)."""
        learned = time.monotonic() if learned is None else learned
        if record is not None:
            self._unknown.pop(key_id, None)
            self._entries[key_id] = (record, learned)
            return
        self._entries.pop(key_id, None)  # a deleted row is now as unknown as a made-up id
        if settings.API_KEY_NEGATIVE_CACHE_SIZE <= 0:
            return
        self._unknown[key_id] = learned
        self._unknown.move_to_end(key_id)
        while len(self._unknown) > settings.API_KEY_NEGATIVE_CACHE_SIZE:
            self._unknown.popitem(last=False)

    async def _recall(self, key_id: str) -> tuple[bool, KeyRecord | None]:
        """(found, record) from the shared snapshot; found with None is a known-unknown id.
        Kept here at its true age, so this process serves it no longer than its own copy."""
        version = self._version
        recalled = await keysnapshot.recall(key_id)
        if recalled is None:
            return False, None
        try:
            payload = recalled.payload
            record = KeyRecord.from_json(payload) if payload is not None else None
        except (ValueError, TypeError, KeyError) as exc:  # written by another release
            logger.warning("key cache: unreadable key snapshot (%s)", type(exc).__name__)
            return False, None
        if self._version == version:  # a change seen meanwhile emptied the cache: keep it so
            self._store(key_id, record, time.monotonic() - recalled.age)
        return True, record

    async def _load(self, key_id: str) -> KeyRecord | None:
        try:
            return await asyncio.wait_for(
                _load_record(key_id), timeout=settings.API_KEY_LOAD_TIMEOUT_SECONDS
            )
        except (DatabaseError, TimeoutError) as exc:
            self._db_down_until = time.monotonic() + settings.API_KEY_DB_BACKOFF_SECONDS
            metrics.key_load_failures.inc()
            logger.warning("key cache: cannot load key records (%s)", type(exc).__name__)
            raise

    def _refresh_in_background(self, key_id: str) -> None:
        if key_id not in self._refreshing:
            self._refreshing[key_id] = asyncio.create_task(self._refresh(key_id))

    async def _refresh(self, key_id: str) -> None:
        version = self._version
        try:
            record = await self._load(key_id)
        except (DatabaseError, TimeoutError):
            metrics.stale_key_records.inc()
            return
        finally:
            self._refreshing.pop(key_id, None)
        if self._version == version:  # a change seen meanwhile emptied the cache: keep it so
            self._store(key_id, record)
            _share(key_id, record, version)

    @staticmethod
    def _unavailable() -> DependencyUnavailable:
        return DependencyUnavailable(
            "API keys cannot be checked right now; please retry shortly.",
            headers={"Retry-After": str(max(1, round(settings.API_KEY_DB_BACKOFF_SECONDS)))},
        )

    def preload(self, limit: int) -> int:
        """Load up to `limit` key records at once, most recently used first (synchronous: call
        it from a thread at start-up). A replica that starts, or restarts, knows its clients'
        keys before Postgres next goes away. Returns how many it loaded."""
        if limit <= 0:
            return 0
        try:
            version = get_sync_redis().get(VERSION_KEY)
        except Exception:  # Redis down: the first request's version check will decide
            version = None
        try:
            rows = list(
                ApiKey.objects.select_related("tenant").order_by(
                    F("last_used_at").desc(nulls_last=True), "-pk"
                )[:limit]
            )
            granted = _granted_adapters({key.tenant_id for key in rows})
        except DatabaseError as exc:
            logger.warning("key cache: cannot preload key records (%s)", type(exc).__name__)
            return 0
        finally:
            close_old_connections()
        now = time.monotonic()
        for key in rows:
            record = KeyRecord.from_row(key, granted.get(key.tenant_id, ()))
            self._entries.setdefault(key.key_id, (record, now))
        if version is not None and self._version is None:
            self._version, self._checked_at = version, now
        return len(rows)

    async def _sync_version(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < settings.API_KEY_VERSION_POLL_SECONDS:
            return
        # Mark first: concurrent requests in this loop then skip the poll instead of piling up.
        self._checked_at = now
        try:
            version = await get_redis().get(VERSION_KEY)
        except Exception as exc:  # Redis down: the cache TTL still bounds staleness.
            logger.warning("key cache: cannot read the version counter (%s)", type(exc).__name__)
            return
        if version != self._version:
            self._version = version
            self._previous = {key_id: entry[0] for key_id, entry in self._entries.items()}
            self._forget_records()


# Not thread-sensitive: a load stuck on an unreachable Postgres must not hold up the one shared
# thread that every other synchronous database call of this process waits for.
@sync_to_async(thread_sensitive=False)
def _load_record(key_id: str) -> KeyRecord | None:
    try:
        key = ApiKey.objects.select_related("tenant").filter(key_id=key_id).first()
        if key is None:
            return None
        return KeyRecord.from_row(key, _granted_adapters({key.tenant_id}).get(key.tenant_id, ()))
    finally:
        close_old_connections()


def _granted_adapters(tenant_ids: Iterable[int]) -> dict[int, list[str]]:
    """The names of the adapters granted to each of these tenants (one query)."""
    granted: dict[int, list[str]] = {}
    rows = AdapterGrant.objects.filter(tenant_id__in=list(tenant_ids))
    for tenant_id, name in rows.values_list("tenant_id", "adapter__name"):
        granted.setdefault(tenant_id, []).append(name)
    return granted


key_cache = KeyCache()


def preload_in_background() -> threading.Thread | None:
    """Fill the key cache from Postgres off the event loop (API_KEY_PRELOAD records; 0: off)."""
    if settings.API_KEY_PRELOAD <= 0:
        return None
    thread = threading.Thread(
        target=key_cache.preload, args=(settings.API_KEY_PRELOAD,), name="key-preload", daemon=True
    )
    thread.start()
    return thread


_snapshot_tasks: set[asyncio.Task] = set()


def _share(key_id: str, record: KeyRecord | None, version: bytes | str | None) -> None:
    """Write what Postgres just said to the shared snapshot, in the background: a request never
    waits on it, and a Redis that cannot take it costs nothing but the fallback."""
    payload = record.to_json() if record is not None else None
    task = asyncio.create_task(keysnapshot.remember(key_id, payload, version))
    _snapshot_tasks.add(task)  # held until done: the loop keeps only weak references
    task.add_done_callback(_snapshot_tasks.discard)


def bump_version(key_ids: Iterable[str] = ()) -> None:
    """Tell every process to drop its cached key records, and drop the shared snapshots of the
    keys the change touched (call after commit)."""
    try:
        # One MULTI: a load from before the change writes its snapshot either before this (and
        # it is deleted here) or after (and finds the version moved: lua/remember_key.lua).
        pipe = get_sync_redis().pipeline(transaction=True)
        # A random value, not a counter: a Redis restart can never replay an old version.
        pipe.set(VERSION_KEY, uuid.uuid4().hex)
        keysnapshot.forget(pipe, key_ids)
        pipe.execute()
    except Exception as exc:  # Redis down: caches still expire after API_KEY_CACHE_SECONDS.
        logger.warning("key cache: cannot bump the version counter (%s)", type(exc).__name__)


_last_used_marks: dict[str, datetime] = {}


_touch_tasks: set[asyncio.Task] = set()


async def touch_last_used(record: KeyRecord) -> None:
    """Record use coarsely: at most one UPDATE per key per resolution window per process, in
    the background (a request never waits on it, and an unreachable Postgres costs no error)."""
    now = timezone.now()
    resolution = settings.API_KEY_LAST_USED_RESOLUTION_SECONDS
    seen = _last_used_marks.get(record.key_id) or record.last_used_at
    if seen is not None and (now - seen).total_seconds() < resolution:
        return
    _last_used_marks[record.key_id] = now
    task = asyncio.create_task(_write_last_used(record.api_key_pk, now, resolution))
    _touch_tasks.add(task)  # held until done: the loop keeps only weak references
    task.add_done_callback(_touch_tasks.discard)


async def _write_last_used(api_key_pk: int, now: datetime, resolution: int) -> None:
    cutoff = now - timedelta(seconds=resolution)
    try:
        # The filter makes concurrent processes write at most once per window between them.
        await _update_last_used(api_key_pk, cutoff, now)
    except DatabaseError as exc:
        logger.warning("key cache: cannot record last use (%s)", type(exc).__name__)


@sync_to_async(thread_sensitive=False)
def _update_last_used(api_key_pk: int, cutoff: datetime, now: datetime) -> None:
    try:
        ApiKey.objects.filter(pk=api_key_pk).exclude(last_used_at__gte=cutoff).update(
            last_used_at=now
        )
    finally:
        close_old_connections()
