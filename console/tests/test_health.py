import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.signals import request_started
from django.test import AsyncClient

from console import health
from console.handlers import ApiHandler
from console.readiness import NOT_CHECKED, DependencyRefresher, ReadinessEndpoint
from engine.runtime import Engine
from engine.testing import start_ready, tiny_config
from inference.engines import set_engine

pytestmark = pytest.mark.django_db(transaction=True)

# Deadlines for waiting on threads and the tiny model, generous for a busy machine; the
# assertions themselves are about order, never about how fast.
WAIT_SECONDS = 60


async def test_healthz_answers_without_a_key() -> None:
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_reports_each_dependency_and_is_503_until_the_model_is_ready() -> None:
    response = await AsyncClient().get("/readyz")
    body = response.json()
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["redis"] == {"ok": True}
    assert body["checks"]["ratelimit"]["ok"] is True
    assert body["checks"]["model"]["ok"] is False
    assert response.status_code == 503 and body["ready"] is False


@pytest.fixture
def ready_engine(tiny_model_dir: Path) -> Iterator[Engine]:
    """A ready engine on the tiny model, installed as the process's one."""
    engine = start_ready(tiny_config(tiny_model_dir))
    previous = set_engine(engine)
    try:
        yield engine
    finally:
        set_engine(previous)
        engine.stop(10)


@pytest.fixture
def refresher() -> Iterator[DependencyRefresher]:
    refresher = DependencyRefresher(interval=0.2).start()
    yield refresher
    refresher.stop()


async def asgi_get(app: object, path: str) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(WAIT_SECONDS)
    body = await communicator.receive_output(WAIT_SECONDS)
    return start["status"], body["body"]


async def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


async def test_readyz_answers_200_at_once_while_postgres_does_not_answer(
    ready_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked, answer = threading.Event(), threading.Event()

    async def unreachable() -> dict:
        # A Postgres that does not answer until the test says so, then refuses (what the real
        # check reports for a refused connection).
        asked.set()
        await asyncio.to_thread(answer.wait, WAIT_SECONDS)
        return {"ok": False, "error": "OperationalError"}

    # The outage at the one function that queries, as in tenants/tests/test_keycache_outage.py.
    monkeypatch.setattr(health, "_query_database", unreachable)
    monkeypatch.setattr(health, "DEPENDENCY_TIMEOUT_SECONDS", WAIT_SECONDS)
    refresher = DependencyRefresher(interval=0.2).start()
    app = ReadinessEndpoint(ApiHandler(), refresher)
    try:
        await wait_for(asked.is_set, "the refresher to ask Postgres")
        status, body = await asgi_get(app, "/readyz")
        # Answered while the checks still wait on Postgres: the answer never waits for them.
        assert refresher.rounds == 0
        assert status == 200 and json.loads(body)["checks"]["database"] == NOT_CHECKED
        answer.set()
        await wait_for(lambda: refresher.rounds >= 1, "the first round of checks")
        status, body = await asgi_get(app, "/readyz")
    finally:
        answer.set()
        refresher.stop()
    ready = json.loads(body)
    # Shared trouble says degraded and never takes the replica out of rotation.
    assert status == 200 and ready["ready"] is True and ready["degraded"] is True
    assert ready["checks"]["database"] == {"ok": False, "error": "OperationalError"}
    assert ready["checks"]["redis"] == {"ok": True} and ready["checks"]["ratelimit"]["ok"]
    assert ready["checks"]["model"]["state"] == "ready"


async def test_readyz_is_503_once_the_model_stops_whatever_the_dependencies_say(
    ready_engine: Engine, refresher: DependencyRefresher
) -> None:
    app = ReadinessEndpoint(ApiHandler(), refresher)
    await wait_for(lambda: refresher.rounds >= 1, "the first round of checks")
    status, body = await asgi_get(app, "/readyz")
    assert status == 200 and json.loads(body)["degraded"] is False
    ready_engine.stop(10)  # a draining replica leaves rotation at once
    status, body = await asgi_get(app, "/readyz")
    ready = json.loads(body)
    assert status == 503 and ready["ready"] is False and ready["degraded"] is True
    assert ready["checks"]["model"]["state"] == "stopped"
    assert ready["checks"]["database"] == {"ok": True}


async def test_readyz_is_503_while_no_model_is_loaded(refresher: DependencyRefresher) -> None:
    previous = set_engine(None)
    try:
        status, body = await asgi_get(ReadinessEndpoint(ApiHandler(), refresher), "/readyz")
    finally:
        set_engine(previous)
    assert status == 503 and json.loads(body)["checks"]["model"]["state"] == "not_loaded"


async def test_readyz_never_enters_django(refresher: DependencyRefresher) -> None:
    app = ReadinessEndpoint(ApiHandler(), refresher)
    paths: list[str] = []

    def started(sender: object, scope: dict, **kwargs: object) -> None:
        paths.append(scope["path"])

    request_started.connect(started)
    try:
        assert (await asgi_get(app, "/readyz"))[0] == 503
        assert (await asgi_get(app, "/healthz"))[0] == 200
    finally:
        request_started.disconnect(started)
    assert paths == ["/healthz"]  # Django's handler saw /healthz, and /readyz never
