"""GET /readyz answered before Django, from state the process already holds.

A load balancer asks every replica every few seconds whether it can serve. The answer must come
in milliseconds from a replica whose two cores are busy serving (the chaos run's Traefik marked
both busy replicas down when /readyz, run through Django with three dependency checks per
request, missed its deadline), and it must never wait on Postgres or Redis: those are shared by
every replica, so a slow dependency would take them all out at once.

So `ReadinessEndpoint` answers from the model's state (inference.engines.model_status(), an
attribute read) and from the last result of `DependencyRefresher`, a thread that runs the same
checks as console/health.py every REFRESH_SECONDS, each bounded by its own timeout. Status and
body are built by console.health.readiness(): the model alone decides ready (200) or not (503);
Postgres, Redis or limiter trouble only says `degraded: true`.
"""

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from console.health import dependency_checks, readiness
from inference.engines import model_status

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
DEPENDENCIES = ("database", "redis", "ratelimit")
NOT_CHECKED = {"ok": False, "error": "not checked yet"}


class DependencyRefresher:
    """Runs `checks` every `interval` seconds on a thread of its own; `last` is the latest."""

    def __init__(
        self,
        interval: float = REFRESH_SECONDS,
        checks: Callable[[], Awaitable[dict[str, dict]]] = dependency_checks,
    ) -> None:
        self.interval = interval
        self.checks = checks
        self.last: dict[str, dict] = dict.fromkeys(DEPENDENCIES, NOT_CHECKED)
        self.rounds = 0  # completed rounds (tests wait on it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "DependencyRefresher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="readyz-refresher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        # An event loop of this thread's own: the checks' asyncio clients (core/redis.py
        # keeps one per loop) live here, and a busy server loop never delays a round.
        loop = asyncio.new_event_loop()
        try:
            while not self._stop.is_set():
                self._refresh(loop)
                self._stop.wait(self.interval)
        finally:
            loop.close()

    def _refresh(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            result = loop.run_until_complete(self.checks())
        except Exception as exc:  # a bug in a check must not end the refreshes
            logger.exception("readyz: the dependency checks failed")
            result = dict.fromkeys(DEPENDENCIES, {"ok": False, "error": type(exc).__name__})
        # One reference store: a reader on the server's loop sees the old dict or the new one.
        self.last = result
        self.rounds += 1


class ReadinessEndpoint:
    """ASGI: GET /readyz answered here, without entering Django (see the module docstring).

    No ALLOWED_HOSTS check, as for /metrics: health checks reach a replica by its address, and
    Traefik's public entrypoint never routes /readyz.
    """

    path = "/readyz"

    def __init__(self, app: Any, refresher: DependencyRefresher | None = None) -> None:
        self.app = app
        self.refresher = refresher or DependencyRefresher()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        # Started by the first health check, not at import: a process that imports the app
        # without serving it (the test suite) must not open the database pool before its test
        # database exists. Until the first round ends the dependencies say "not checked yet".
        self.refresher.start()
        status, body = readiness(model_status(), self.refresher.last)
        payload = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
