"""The shared snapshot of key records in Redis: what Postgres last said about each key id, for
the processes that cannot ask it (stale-if-error across processes).

Every process that loads a key id from Postgres writes what it learned here, in the background
and best effort: the record of a known key (its peppered secret hashes, never a secret; its
state and limits), or an "unknown" mark. A process whose own load fails (Postgres down or
backing off) reads it before answering 503, so a replica that restarts just before an outage
still tells a valid key from a revoked one, a wrong secret or a made-up id. Postgres always
wins when it answers: this is read only when it cannot.

Bounds: a record lives API_KEY_CACHE_SECONDS + API_KEY_STALE_SECONDS after its last load, as
long as a process may serve its own copy stale; there is at most one per real key. Unknown ids
share one sorted set, trimmed on every write to API_KEY_NEGATIVE_CACHE_SIZE members and to the
in-process marks' own window, whatever an attacker sends. A key change deletes the snapshots
of the keys it touched in the same transaction that moves the version counter, and a load
that began before the change cannot write afterwards (lua/remember_key.lua), so a revoked key
is never brought back from here.
"""

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import redis
from django.conf import settings

from core.redis import get_redis
from ratelimit.scripts import Script

logger = logging.getLogger(__name__)

# Moved by every key change (tenants/keycache.py polls it); stamped on every snapshot write.
# One hash tag for all three: REMEMBER_KEY reads the version and writes a record in one script,
# and a key change moves the version and deletes records in one MULTI, which a Redis Cluster
# allows only within one hash slot.
TAG = "{keys}"
VERSION_KEY = f"auth:v1:{TAG}:version"
RECORD_PREFIX = f"auth:v1:{TAG}:snapshot:"
UNKNOWN_KEY = f"auth:v1:{TAG}:snapshot-unknown"

# A write is background work; a read holds up a request that would otherwise get a 503.
WRITE_TIMEOUT_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 0.25


def _script(name: str) -> Script[object]:
    source = (Path(__file__).resolve().parent / "lua" / f"{name}.lua").read_text()
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())  # noqa: S324


REMEMBER = _script("remember_key")
RECALL = _script("recall_key")


@dataclass(frozen=True)
class Recalled:
    """What the snapshot says about a key id: its record as JSON (None: Postgres did not know
    the id), and how many seconds ago a process learned it."""

    payload: str | None
    age: float


def _record_ttl_ms() -> int:
    return round((settings.API_KEY_CACHE_SECONDS + settings.API_KEY_STALE_SECONDS) * 1000)


def _unknown_ttl_ms() -> int:
    seconds = settings.API_KEY_NEGATIVE_CACHE_SECONDS + settings.API_KEY_STALE_SECONDS
    return round(seconds * 1000)


async def remember(key_id: str, payload: str | None, version: bytes | str | None) -> None:
    """Store what Postgres said about key_id (None: it did not know it), unless the version
    moved from `version` (the one held before the query). Never raises."""
    if payload is None and settings.API_KEY_NEGATIVE_CACHE_SIZE <= 0:
        return
    keys = (VERSION_KEY, RECORD_PREFIX + key_id, UNKNOWN_KEY)
    args = (_text(version), key_id, payload or "", _record_ttl_ms(), _unknown_ttl_ms())
    size = settings.API_KEY_NEGATIVE_CACHE_SIZE
    try:
        await asyncio.wait_for(
            REMEMBER.run(get_redis(), keys, (*args, size)), timeout=WRITE_TIMEOUT_SECONDS
        )
    except Exception as exc:  # Redis down or slow: only the next outage's fallback is lost
        # Debug only: the version poll already warns, twice a second, while Redis is down.
        logger.debug("key snapshot: cannot store a key record (%s)", type(exc).__name__)


async def recall(key_id: str) -> Recalled | None:
    """What the snapshot says about key_id, None when nothing (or Redis cannot say)."""
    keys = (RECORD_PREFIX + key_id, UNKNOWN_KEY)
    try:
        reply = await asyncio.wait_for(
            RECALL.run(get_redis(), keys, (key_id, _record_ttl_ms(), _unknown_ttl_ms())),
            timeout=READ_TIMEOUT_SECONDS,
        )
    except Exception as exc:  # Redis down too: the caller answers 503 as without a snapshot
        logger.warning("key snapshot: cannot read a key record (%s)", type(exc).__name__)
        return None
    if not isinstance(reply, list) or not reply:
        return None
    payload = _text(reply[2]) if reply[0] == 1 else None
    return Recalled(payload, int(reply[1]) / 1000)


def forget(pipe: redis.client.Pipeline, key_ids: Iterable[str]) -> None:
    """Queue the deletion of these keys' snapshots on a MULTI pipeline (the one that moves the
    version counter, so no load from before the change can write after it)."""
    ids = list(key_ids)
    for start in range(0, len(ids), 1000):  # a tenant's keys: no single giant command
        chunk = ids[start : start + 1000]
        pipe.delete(*(RECORD_PREFIX + key_id for key_id in chunk))
        pipe.zrem(UNKNOWN_KEY, *chunk)


def _text(value: object) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
