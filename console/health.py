"""/healthz (the process is alive) and /readyz (can this replica serve?).

/readyz reports the database, Redis, the limiter and the model, but only the model decides its
status (503 until loaded, or once the engine stops): it is what a load balancer asks before
sending traffic to one replica, and Postgres or Redis trouble is shared by every replica. Taking
them all out of rotation would turn a degraded service (keys served from the cache, the
configured RATELIMIT_FAILURE_MODE) into no service at all. The body says `degraded: true` and
which dependency is failing, for people and alerts.

Servers answer /readyz before Django (console/readiness.py), with the dependency checks from a
background refresher: a replica busy on two cores must still answer its health check in
milliseconds, and a health check that waited on Postgres or Redis would take every replica out
together. The view here runs the same checks per request, for Django's test client.
"""

import asyncio

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, JsonResponse

from core.redis import get_redis
from inference.engines import model_status
from ratelimit.limiter import health as ratelimit_health


async def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


DEPENDENCY_TIMEOUT_SECONDS = 1.0


# Not thread-sensitive: a connect hanging on an unreachable Postgres must not hold the shared
# thread the process's other synchronous database work waits on.
@sync_to_async(thread_sensitive=False)
def _query_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    finally:
        connection.close()


async def _check_database() -> dict:
    try:
        return await asyncio.wait_for(_query_database(), timeout=DEPENDENCY_TIMEOUT_SECONDS)
    except TimeoutError:
        return {"ok": False, "error": "TimeoutError"}


async def _check_redis() -> dict:
    try:
        await asyncio.wait_for(get_redis().ping(), timeout=DEPENDENCY_TIMEOUT_SECONDS)
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}


async def dependency_checks() -> dict[str, dict]:
    """Postgres, Redis and the limiter, checked at once (each bounded by its timeout)."""
    database, redis, ratelimit = await asyncio.gather(
        _check_database(),
        _check_redis(),
        # The limiter's own pool and scripts: a PING alone stayed green through NOSCRIPT outages.
        ratelimit_health(),
    )
    return {"database": database, "redis": redis, "ratelimit": ratelimit}


def readiness(model: dict, dependencies: dict[str, dict]) -> tuple[int, dict]:
    """The /readyz status and body: ready is the model's state alone (see the docstring)."""
    checks = {
        "database": dependencies["database"],
        "redis": dependencies["redis"],
        "model": model,
        "ratelimit": dependencies["ratelimit"],
    }
    ready = bool(model["ok"])
    degraded = not all(check["ok"] for check in checks.values())
    return (200 if ready else 503), {"ready": ready, "degraded": degraded, "checks": checks}


async def readyz(request: HttpRequest) -> JsonResponse:
    status, body = readiness(model_status(), await dependency_checks())
    return JsonResponse(body, status=status)
