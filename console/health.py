"""/healthz (the process is alive) and /readyz (database, Redis and model are ready)."""

import asyncio

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, JsonResponse

from console.redis import get_redis
from inference.services import model_status
from ratelimit.limiter import health as ratelimit_health


async def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@sync_to_async
def _check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    finally:
        connection.close()


async def _check_redis() -> dict:
    try:
        await asyncio.wait_for(get_redis().ping(), timeout=1.0)
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
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse({"ready": ready, "checks": checks}, status=200 if ready else 503)
