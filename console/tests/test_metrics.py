"""The app's own /metrics: bounded labels, and database and cache wrappers that really count."""

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import AsyncClient, override_settings
from prometheus_client import REGISTRY

pytestmark = pytest.mark.django_db(transaction=True)

LABEL_VALUE = re.compile(r'(\w+)="([^"]*)"')


def label_values(text: str, label: str) -> set[str]:
    """Every value `label` takes in an exposition text."""
    return {
        value
        for line in text.splitlines()
        if not line.startswith("#")
        for name, value in LABEL_VALUE.findall(line)
        if name == label
    }


async def asgi_get(
    app: Callable[..., Awaitable[None]], path: str, host: bytes
) -> tuple[int, bytes]:
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays connected until the response is sent
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [(b"host", host)]}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def scrape(client: AsyncClient | None = None) -> str:
    """/metrics as Prometheus gets it: from the ASGI endpoint in front of Django."""
    from console.asgi import application

    status, body = await asgi_get(application, "/metrics", b"172.30.2.7:8000")
    assert status == 200
    return body.decode()


async def request_unknown_paths(client: AsyncClient) -> str:
    marker = uuid.uuid4().hex
    for suffix in ("", "/deeper", "/v1/../x"):
        assert (await client.get(f"/{marker}{suffix}")).status_code == 404
    return marker


async def test_unknown_paths_add_no_label_value() -> None:
    client = AsyncClient()
    await request_unknown_paths(client)
    before = await scrape(client)
    marker = await request_unknown_paths(client)
    after = await scrape(client)
    assert marker not in after
    assert label_values(after, "view") == label_values(before, "view")
    # Every unknown path shares one bounded value.
    assert "<unnamed view>" in label_values(after, "view")


async def test_invented_methods_add_no_label_value() -> None:
    client = AsyncClient()
    marker = "M" + uuid.uuid4().hex[:12].upper()
    await client.generic(marker, "/healthz")
    text = await scrape(client)
    assert marker not in text
    assert "<invalid method>" in label_values(text, "method")


async def test_views_are_labelled_by_name_never_by_path() -> None:
    client = AsyncClient()
    await client.get("/v1/models")  # 401 without a key, but the view resolved
    text = await scrape(client)
    assert "v1:list_models" in label_values(text, "view")
    assert not any(value.startswith("/") for value in label_values(text, "view"))


def test_queries_through_the_psycopg_pool_are_counted() -> None:
    labels = {"alias": "default", "vendor": "postgresql"}
    before = REGISTRY.get_sample_value("django_db_execute_total", labels) or 0.0
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.execute("SELECT 2")
    # The pool is really in use (only the PostgreSQL backend has the attribute).
    assert getattr(connection, "pool", None) is not None
    assert REGISTRY.get_sample_value("django_db_execute_total", labels) == before + 2


def test_cache_reads_are_counted_as_hits_and_misses() -> None:
    labels = {"backend": "redis"}
    hits = REGISTRY.get_sample_value("django_cache_get_hits_total", labels) or 0.0
    misses = REGISTRY.get_sample_value("django_cache_get_misses_total", labels) or 0.0
    cache.set("metrics-test", "v", 30)
    assert cache.get("metrics-test") == "v"
    assert cache.get("metrics-test-absent") is None
    assert REGISTRY.get_sample_value("django_cache_get_hits_total", labels) == hits + 1
    assert REGISTRY.get_sample_value("django_cache_get_misses_total", labels) == misses + 1


async def test_metrics_answer_a_scrape_by_address_while_django_refuses_that_host() -> None:
    from console.asgi import application

    with override_settings(ALLOWED_HOSTS=["api.example.com"]):
        status, body = await asgi_get(application, "/metrics", b"172.30.2.7:8000")
        assert status == 200 and b"django_http_requests_before_middlewares_total" in body
        # The same Host anywhere else is Django's, and refused.
        assert (await asgi_get(application, "/healthz", b"172.30.2.7:8000"))[0] == 400
