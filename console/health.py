"""/healthz (the process is alive) and /readyz (can this replica serve?).

/readyz reports the database, Redis, the limiter and the model, but only the model decides its
status (503 until loaded, or once the engine stops): it is what a load balancer asks before
sending traffic to one replica, and Postgres or Redis trouble is shared by every replica. Taking
them all out of rotation would turn a degraded service (keys served from the cache, the
configured RATELIMIT_FAILURE_MODE) into no service at all. The body says `degraded: true` and
which dependency is failing, for people and alerts.
"""

import asyncio

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, JsonResponse

from console.redis import get_redis
from inference.services import model_status
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


async def readyz(request: HttpRequest) -> JsonResponse:
    checks = {
        "database": await _check_database(),
        "redis": await _check_redis(),
        "model": model_status(),
        # The limiter's own pool and scripts: a PING alone stayed green through NOSCRIPT outages.
        "ratelimit": await ratelimit_health(),
    }
    ready = checks["model"]["ok"]
    degraded = not all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"ready": ready, "degraded": degraded, "checks": checks}, status=200 if ready else 503
    )
