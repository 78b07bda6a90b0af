"""A key refused in process gets its 429 before ninja (console/fastpath.py), and that 429 is
the one ninja's path answers, byte for byte, with the same metrics and the same audit; every
request that memory cannot decide goes the usual way."""

import asyncio
import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings
from prometheus_client import REGISTRY

from console.fastpath import DENIABLE_PATHS, CachedRefusals, may_be_refused
from console.handlers import ApiHandler, PathDispatcher
from core.errors import RateLimited
from inference.engines import engine_sync_adapters
from ratelimit import backlog, denycache, limiter
from tenants.auth import authenticate_token
from tenants.keycache import KeyRecord, key_cache
from tenants.models import Tenant
from tenants.services import IssuedKey, api_key_issue, tenant_create, tenant_set_limits

pytestmark = pytest.mark.django_db(transaction=True)

BODIES: dict[str, dict[str, Any]] = {
    "/v1/completions": {"model": "tiny", "prompt": "Hello there", "max_tokens": 8},
    "/v1/chat/completions": {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]},
    "/v1/responses": {"model": "tiny", "input": "Hi"},
}
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    limiter.reset_state()
    key_cache.clear()
    backlog.take_throttles()
    # Redis must answer here: the suite's 1 s limiter timeout (conftest.py) holds on a busy
    # machine, where the production 50 ms once timed an ADMIT out; the timeout path has tests
    # of its own.
    yield
    limiter.reset_state()
    key_cache.clear()
    backlog.take_throttles()


def scope(path: str, token: str, *extra: tuple[bytes, bytes]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"x-request-id", b"req-fastpath-test"),
            *extra,
        ],
        "client": ("192.0.2.7", 5555),
        "server": ("testserver", 80),
    }


async def call(app: Any, request_scope: dict, body: bytes) -> Answer:
    """Run one request through an ASGI app; its status, raw headers (in order) and body."""
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if incoming:
            return incoming.pop()
        await asyncio.Event().wait()  # the client stays until the answer is complete
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    await asyncio.wait_for(app(request_scope, receive, send), 30)
    start, *rest = sent
    return start["status"], start["headers"], b"".join(m.get("body", b"") for m in rest)


def ninja_path() -> PathDispatcher:
    """The API as it was before the shortcut: ApiHandler, ninja and its authentication."""
    return PathDispatcher(ApiHandler(), ASGIHandler())


async def never_called(scope: dict, receive: Any, send: Any) -> None:
    raise AssertionError("the request went past the shortcut")


def counters() -> dict[tuple[str, tuple], float]:
    """Every counter of this process's Prometheus registry but the interpreter's own (CPU
    time, garbage collections)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in REGISTRY.collect()
        if metric.type == "counter" and not metric.name.startswith(("process_", "python_"))
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def counted_since(before: dict[tuple[str, tuple], float]) -> dict[tuple[str, tuple], float]:
    """The counters that moved since `before`, and by how much."""
    return {
        name: value - before.get(name, 0.0)
        for name, value in counters().items()
        if value != before.get(name, 0.0)
    }


def audited() -> int:
    """Refusals counted for the 429 audit (ThrottleEvent) since the last call."""
    return sum(row["n"] for row in backlog.take_throttles().values())


async def flooded_key(slug: str = "flood", rpm: int = 1) -> tuple[IssuedKey, KeyRecord]:
    """A cached key whose one request is spent, refused by Redis once (so the refusal is in
    the denial cache for the next 60/rpm seconds)."""
    tenant = await sync_to_async(tenant_create)(
        slug=slug, limits={"rpm": rpm, "burst_percent": 1}, actor="test"
    )
    issued = await sync_to_async(api_key_issue)(tenant=tenant, actor="test")
    record = await authenticate_token(issued.token)
    assert record is not None
    await limiter.admit(record, tokens=1)
    with pytest.raises(RateLimited):
        await limiter.admit(record, tokens=1)
    assert denycache.holds(record)
    audited()
    return issued, record


def freeze_denials(monkeypatch: pytest.MonkeyPatch, record: KeyRecord) -> None:
    """The denial cache's clock stops half a second after the refusal, so that two answers
    to it carry the same wait (it counts down in milliseconds)."""
    frozen = denycache._denials[record.api_key_pk].made_at + 0.5
    monkeypatch.setattr(denycache, "time", SimpleNamespace(monotonic=lambda: frozen))


@pytest.mark.parametrize("path", DENIABLE_PATHS)
@override_settings(API_KEY_VERSION_POLL_SECONDS=600)
async def test_a_cached_refusal_is_answered_byte_for_byte_as_ninja_answers_it(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    issued, record = await flooded_key()
    freeze_denials(monkeypatch, record)
    body = json.dumps(BODIES[path]).encode()
    request_scope = scope(path, issued.token)
    assert may_be_refused(request_scope)
    # Ninja's path hands a started engine the adapter registry (one Postgres read, at most
    # once a poll interval) before it admits; the shortcut never does. An engine an earlier
    # test on this worker left started must not have that read fall in the slow call's count:
    # it is handed over here, again while a look fails (a Redis read that timed out on a busy
    # machine leaves the registry to the next look: the slow call's, before).
    for _ in range(20):
        if await engine_sync_adapters():
            break

    before = counters()
    slow = await call(ninja_path(), request_scope, body)
    slow_counted, slow_audited = counted_since(before), audited()

    before = counters()
    fast = await call(CachedRefusals(never_called), request_scope, body)
    fast_counted, fast_audited = counted_since(before), audited()

    assert slow[0] == 429 and json.loads(slow[2])["error"]["code"] == "rate_limit_exceeded"
    assert fast == slow  # status, every header in order, body
    names = {name.lower() for name, _ in fast[1]}
    assert {b"retry-after", b"retry-after-ms", b"x-ratelimit-remaining-requests"} <= names
    assert fast_counted == slow_counted
    assert ("ratelimit_throttled_total", (("tenant", "flood"),)) in fast_counted
    assert any(name == "django_http_responses_total_by_status_total" for name, _ in fast_counted)
    assert fast_audited == slow_audited == 1


@override_settings(API_KEY_VERSION_POLL_SECONDS=600)
async def test_the_api_key_header_and_a_longer_body_are_refused_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issued, record = await flooded_key()
    freeze_denials(monkeypatch, record)
    request_scope = scope("/v1/completions", "")
    request_scope["headers"] = [
        *(header for header in request_scope["headers"] if header[0] != b"authorization"),
        (b"X-Api-Key", issued.token.encode()),  # any case: ASGI servers may pass it on
    ]
    body = json.dumps({**BODIES["/v1/completions"], "prompt": "word " * 2000}).encode()
    assert may_be_refused(request_scope)
    slow = await call(ninja_path(), request_scope, body)
    assert await call(CachedRefusals(never_called), request_scope, body) == slow
    assert slow[0] == 429


@override_settings(API_KEY_VERSION_POLL_SECONDS=600)
async def test_a_wrong_secret_for_a_refused_key_goes_the_usual_way_to_its_401() -> None:
    issued, record = await flooded_key()
    wrong = issued.token[:-4] + ("AAAA" if not issued.token.endswith("AAAA") else "BBBB")
    request_scope = scope("/v1/completions", wrong)
    assert may_be_refused(request_scope)  # judged from the key id alone, before any hash
    status, _, body = await call(
        CachedRefusals(ninja_path()), request_scope, json.dumps(BODIES["/v1/completions"]).encode()
    )
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert audited() == 0


@override_settings(API_KEY_VERSION_POLL_SECONDS=600)
async def test_requests_memory_cannot_decide_are_not_taken() -> None:
    issued, record = await flooded_key()
    token = issued.token
    assert may_be_refused(scope("/v1/completions", token))
    other, _ = await flooded_key("other")
    denycache.clear()
    assert not may_be_refused(scope("/v1/completions", other.token))  # no refusal in process
    for request_scope in (
        {**scope("/v1/completions", token), "method": "GET"},
        scope("/v1/completions/", token),
        scope("/v1/models", token),
        {**scope("/v1/completions", token), "root_path": "/api"},
        scope("/v1/completions", "Bearer nonsense"),
    ):
        assert not may_be_refused(request_scope), request_scope


async def test_a_key_cache_due_to_poll_its_version_sends_the_request_the_usual_way() -> None:
    issued, _ = await flooded_key()
    usual: list[str] = []
    ninja = ninja_path()

    async def the_usual_way(scope: dict, receive: Any, send: Any) -> None:
        usual.append(scope["path"])
        await ninja(scope, receive, send)

    request_scope = scope("/v1/completions", issued.token)
    body = json.dumps(BODIES["/v1/completions"]).encode()
    with override_settings(API_KEY_VERSION_POLL_SECONDS=0):
        # The version could have moved (a revoked key, new limits): only an await can say.
        assert may_be_refused(request_scope)
        status, _, _ = await call(CachedRefusals(the_usual_way), request_scope, body)
    assert usual == ["/v1/completions"]  # with its body, read once already, handed on
    assert status == 429


async def test_a_key_whose_limits_changed_is_decided_by_ninja_with_its_whole_body() -> None:
    issued, record = await flooded_key()
    tenant = await Tenant.objects.aget(pk=record.tenant_id)
    await sync_to_async(tenant_set_limits)(tenant=tenant, changes={"rpm": 6000}, actor="test")
    request_scope = scope("/v1/completions", issued.token)
    body = json.dumps({**BODIES["/v1/completions"], "bogus": 1}).encode()
    with override_settings(API_KEY_VERSION_POLL_SECONDS=0):
        assert may_be_refused(request_scope)  # the record held before the change is refused
        status, _, answer = await call(CachedRefusals(ninja_path()), request_scope, body)
    # The new record is not refused: ninja parsed the body that the shortcut had read.
    assert status == 400, answer
    assert json.loads(answer)["error"]["param"] == "bogus"


@override_settings(API_KEY_VERSION_POLL_SECONDS=600)
async def test_a_refusal_that_runs_out_lets_the_next_request_through_to_redis() -> None:
    issued, record = await flooded_key(rpm=60)  # refused for about a second
    assert may_be_refused(scope("/v1/completions", issued.token))
    deadline = time.monotonic() + 120
    while denycache.holds(record):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert not may_be_refused(scope("/v1/completions", issued.token))


@override_settings(API_KEY_VERSION_POLL_SECONDS=600)
async def test_a_client_gone_before_its_body_arrived_gets_no_answer() -> None:
    issued, _ = await flooded_key()
    messages = [{"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop()

    async def send(message: dict) -> None:
        sent.append(message)

    app = CachedRefusals(never_called)
    await asyncio.wait_for(app(scope("/v1/completions", issued.token), receive, send), 30)
    assert sent == [] and audited() == 0
