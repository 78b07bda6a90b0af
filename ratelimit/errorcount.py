"""Errors per key and minute: a request of an authenticated key answered with an error other
than 429 (4xx validation or size, 403 scope, 404 model, 500, 503 overloaded or unavailable).

One COUNT_ERROR script call (an HINCRBY on the tenant's usage buffer, with Redis's clock and the
buffer's TTL) per error, never a Postgres write: the flusher moves the count to
UsageMinute.errors with the usage, exactly once (ratelimit/flush.py). 401s have no key to count
against and 429s are in the 429 audit already; neither is counted here.
"""

import asyncio
from functools import partial

from django.conf import settings

from ratelimit import backlog
from ratelimit.limiter import guarded, guarded_sync
from ratelimit.limits import dirty_key, usage_key
from ratelimit.scripts import COUNT_ERROR, Arg
from tenants.keycache import KeyRecord

# Tasks started by count_error_soon(): the loop keeps only weak references to tasks.
_running: set[asyncio.Task[None]] = set()


def counts_as_error(status: int) -> bool:
    """Error answers that are counted: every 4xx and 5xx but 401 (no key) and 429 (audited)."""
    return status >= 400 and status not in (401, 429)


def _call(record: KeyRecord) -> tuple[list[str], list[Arg]]:
    ttl_ms = max(1, int(settings.RATELIMIT_BUFFER_TTL_SECONDS * 1000))
    keys = [usage_key(record.tenant_id), dirty_key(record.tenant_id)]
    return keys, [f"{record.api_key_pk}|", ttl_ms]


def _ignore(_reply: object) -> None:
    return None


async def count_error(record: KeyRecord) -> None:
    """Count one error answered to this key (never raises for a Redis failure: the count then
    waits in this process's backlog for the flusher)."""
    keys, args = _call(record)
    later = partial(backlog.count_error, record.tenant_id, record.api_key_pk)
    await guarded("count_error", COUNT_ERROR, keys, args, on_reply=_ignore, fallback=later)


def _count_error_blocking(record: KeyRecord) -> None:
    keys, args = _call(record)
    later = partial(backlog.count_error, record.tenant_id, record.api_key_pk)
    guarded_sync("count_error", COUNT_ERROR, keys, args, on_reply=_ignore, fallback=later)


def count_error_soon(record: KeyRecord) -> None:
    """count_error() for synchronous code: django-ninja calls its exception handlers without
    awaiting them, inside the event loop, so the count runs as a task of that loop and the
    error response is not held up by it. Outside a loop (a thread) it runs here."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _count_error_blocking(record)
        return
    task = loop.create_task(count_error(record))
    _running.add(task)
    task.add_done_callback(_running.discard)
