"""Per-tenant adapters through the API: GET /v1/models lists the base and the adapters granted to
the key's tenant; `model: NAME` decodes with that adapter on completions, chat, Responses and
the WebSocket; a NAME not granted is refused exactly as a model that does not exist; grants,
revokes and the registry reach every request (open sockets too) within the version poll."""

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from redis import asyncio as aredis

from engine.generation import AdapterLoadError, UnknownAdapter
from engine.runtime import Engine
from inference import adapters
from inference.adapters import AdapterRegistry
from inference.consumers import CompletionConsumer
from inference.engines import api_error, engine_config, served_model_id
from ratelimit import flush
from tenants.adapter_selectors import AdapterUsageRow, adapter_usage
from tenants.adapters import adapter_add, adapter_grant, adapter_remove, adapter_revoke
from tenants.models import Adapter, AdapterUsageDay, Tenant
from tenants.services import IssuedKey, api_key_issue, tenant_create
from tests.e2e.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30  # seconds for an answer that needs the model, on a busy machine
POLL = 0.5  # the production poll of the key and registry versions
SEEN = POLL + 0.1  # a request sent this long after a change commits must see it (< 1 s)
BODIES: dict[str, dict[str, Any]] = {
    "/v1/completions": {"prompt": "Hello there", "max_tokens": 4},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    "/v1/responses": {"input": "Hi", "max_output_tokens": 4},
}
UNKNOWN = "no-such-model"


@pytest.fixture
def served(
    settings,
    tiny_model_dir: Path,
    make_engine: Callable[..., Engine],
    installed: Callable[[Engine], Engine],
) -> Engine:
    # Adapters are checked against the served base: the tiny model here.
    settings.INFERENCE_MODEL = str(tiny_model_dir)
    settings.API_KEY_VERSION_POLL_SECONDS = POLL
    return installed(make_engine())


@pytest.fixture
def support(served: Engine, tiny_adapters: list[Path], tenant: Tenant) -> Adapter:
    """The adapter `support`, granted to acme (the `issued` key's tenant)."""
    adapter = adapter_add(name="support", path=str(tiny_adapters[0]), actor="test")
    adapter_grant(adapter=adapter, tenant=tenant, actor="test")
    return adapter


@pytest.fixture
def other_key(db) -> IssuedKey:
    """A key of a tenant granted nothing."""
    return api_key_issue(tenant=tenant_create(slug="globex", actor="test"), actor="test")


async def post(path: str, token: str, model: str) -> tuple[int, dict[str, Any]]:
    body = {**BODIES[path], "model": model}
    response = await AsyncClient().post(
        path, body, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )
    return response.status_code, response.json()


async def get(path: str, token: str) -> tuple[int, dict[str, Any]]:
    response = await AsyncClient().get(path, headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json()


def as_unknown(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The body with `name` written as UNKNOWN: what a refusal of UNKNOWN must equal."""
    swapped: dict[str, Any] = json.loads(json.dumps(body).replace(name, UNKNOWN))
    return swapped


async def model_ids(token: str) -> list[str]:
    status, body = await get("/v1/models", token)
    assert status == 200, body
    return [model["id"] for model in body["data"]]


async def test_models_lists_the_base_and_the_adapters_granted_to_the_keys_tenant(
    support, issued, other_key
) -> None:
    assert await model_ids(issued.token) == [served_model_id(), "support"]
    assert await model_ids(other_key.token) == [served_model_id()]
    status, body = await get("/v1/models/support", issued.token)
    assert (status, body) == (
        200,
        {"id": "support", "object": "model", "created": 0, "owned_by": "inference-node"},
    )
    refused = await get("/v1/models/support", other_key.token)
    unknown = await get(f"/v1/models/{UNKNOWN}", other_key.token)
    assert refused[0] == unknown[0] == 404
    assert as_unknown(refused[1], "support") == unknown[1]
    assert unknown[1]["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path", list(BODIES))
async def test_a_granted_adapter_answers_by_its_name(support, served, issued, path: str) -> None:
    status, body = await post(path, issued.token, "support")
    assert status == 200, body
    assert body["model"] == "support"
    # The engine holds the registry as the table has it.
    assert served.adapters == {"support": support.path}
    status, body = await post(path, issued.token, served_model_id())
    assert (status, body["model"]) == (200, served_model_id())


@pytest.mark.parametrize("path", list(BODIES))
async def test_an_adapter_not_granted_is_refused_exactly_as_an_unknown_model(
    support, other_key, path: str
) -> None:
    refused = await post(path, other_key.token, "support")
    unknown = await post(path, other_key.token, UNKNOWN)
    assert refused[0] == unknown[0] == 404, refused
    assert as_unknown(refused[1], "support") == unknown[1]
    assert unknown[1]["error"]["code"] == "model_not_found"


async def test_the_answer_by_name_is_that_adapters_decode_not_the_base_models(
    support: Adapter, served: Engine, issued: IssuedKey
) -> None:
    from engine.generation import GenerationRequest

    async def api_text(model: str) -> str:
        body = {"prompt": "the quiet river", "max_tokens": 8, "temperature": 0, "model": model}
        response = await AsyncClient().post(
            "/v1/completions",
            body,
            content_type="application/json",
            headers={"Authorization": f"Bearer {issued.token}"},
        )
        assert response.status_code == 200, response.json()
        text: str = response.json()["choices"][0]["text"]
        return text

    async def engine_text(adapter: str) -> str:
        request = GenerationRequest(
            prompt="the quiet river", max_tokens=8, temperature=0, adapter=adapter
        )
        return (await (await served.submit(request)).complete()).text

    by_name = await api_text("support")
    # The registry reached the engine with that request; the same request straight to it.
    assert by_name == await engine_text("support")
    assert await api_text(served_model_id()) == await engine_text("")
    # The tiny adapters are strong: another adapter writes something else.
    assert by_name != await engine_text("")


async def test_the_request_reaches_the_engine_naming_its_adapter(support, served, issued) -> None:
    assert (await post("/v1/completions", issued.token, "support"))[0] == 200
    # Behind the registry's back (its version did not move, so it is not handed again): the
    # engine itself now refuses the name, which only a request carrying adapter=support meets.
    served.set_adapters({})
    await asyncio.sleep(SEEN)
    status, body = await post("/v1/completions", issued.token, "support")
    assert status == 404 and body["error"]["code"] == "model_not_found", body
    assert as_unknown(body, "support") == (await post("/v1/completions", issued.token, UNKNOWN))[1]
    assert (await post("/v1/completions", issued.token, served_model_id()))[0] == 200


async def test_adding_and_removing_adapters_moves_the_engines_registry(
    served, tiny_adapters, tenant, issued
) -> None:
    first, second = (str(path) for path in tiny_adapters)
    one = await sync_to_async(adapter_add)(name="one", path=first, actor="t")
    await sync_to_async(adapter_add)(name="two", path=second, actor="t")
    await sync_to_async(adapter_grant)(adapter=one, tenant=tenant, actor="t")
    assert (await post("/v1/completions", issued.token, "one"))[0] == 200
    assert served.adapters == {"one": first, "two": second}
    two = await Adapter.objects.aget(name="two")
    await sync_to_async(adapter_remove)(adapter=two, actor="t")
    await asyncio.sleep(SEEN)
    assert (await post("/v1/completions", issued.token, served_model_id()))[0] == 200
    assert served.adapters == {"one": first}
    await sync_to_async(adapter_remove)(adapter=one, actor="t")
    await asyncio.sleep(SEEN)
    status, body = await post("/v1/completions", issued.token, "one")
    assert status == 404 and body["error"]["code"] == "model_not_found", body
    assert served.adapters == {}
    assert await model_ids(issued.token) == [served_model_id()]


def open_socket(token: str) -> WebsocketCommunicator:
    return WebsocketCommunicator(
        CompletionConsumer.as_asgi(),
        "/ws/v1/completions",
        headers=[(b"authorization", f"Bearer {token}".encode())],
    )


async def ask(communicator: WebsocketCommunicator, request_id: str, model: str) -> dict[str, Any]:
    """Send a create frame naming `model`; its done or error frame."""
    frame = {"type": "completion.create", "id": request_id, "prompt": "Hi", "max_tokens": 4}
    await communicator.send_to(text_data=json.dumps({**frame, "model": model}))
    while True:
        answer: dict[str, Any] = json.loads(await communicator.receive_from(timeout=WAIT))
        if answer["type"] in ("completion.done", "error") and answer.get("id") == request_id:
            return answer


async def test_the_websocket_decodes_with_a_granted_adapter_and_refuses_others(
    support, issued, other_key
) -> None:
    granted = open_socket(issued.token)
    assert (await granted.connect(timeout=WAIT))[0]
    done = await ask(granted, "r1", "support")
    assert done["type"] == "completion.done", done
    await granted.disconnect()
    other = open_socket(other_key.token)
    assert (await other.connect(timeout=WAIT))[0]
    refused, unknown = await ask(other, "r1", "support"), await ask(other, "r1", UNKNOWN)
    assert refused["type"] == "error" and refused["error"]["code"] == "model_not_found"
    assert as_unknown(refused, "support") == unknown
    await other.disconnect()


async def test_a_grant_and_a_revoke_reach_an_open_socket_within_a_second(
    served, tiny_adapters, tenant, issued
) -> None:
    adapter = await sync_to_async(adapter_add)(name="late", path=str(tiny_adapters[1]), actor="t")
    communicator = open_socket(issued.token)
    assert (await communicator.connect(timeout=WAIT))[0]
    before = await ask(communicator, "before", "late")
    assert before["type"] == "error" and before["error"]["code"] == "model_not_found"
    await sync_to_async(adapter_grant)(adapter=adapter, tenant=tenant, actor="t")
    await asyncio.sleep(SEEN)
    granted = await ask(communicator, "granted", "late")
    assert granted["type"] == "completion.done", granted
    await sync_to_async(adapter_revoke)(adapter=adapter, tenant=tenant, actor="t")
    await asyncio.sleep(SEEN)
    revoked = await ask(communicator, "revoked", "late")
    assert revoked["type"] == "error" and revoked["error"]["code"] == "model_not_found", revoked
    # The socket stays open for the base model.
    assert (await ask(communicator, "base", served_model_id()))["type"] == "completion.done"
    await communicator.disconnect()


async def test_usage_is_counted_per_adapter_and_day_once_flushed(support, issued, tenant) -> None:
    answers = [await post(path, issued.token, "support") for path in BODIES]
    assert (await post("/v1/completions", issued.token, served_model_id()))[0] == 200
    assert (await post("/v1/completions", issued.token, UNKNOWN))[0] == 404
    await sync_to_async(flush.flush)()
    prompt = completion = 0
    for status, body in answers:
        assert status == 200, body
        usage = body["usage"]
        prompt += usage.get("prompt_tokens", usage.get("input_tokens", 0))
        completion += usage.get("completion_tokens", usage.get("output_tokens", 0))
    today = datetime.now(UTC).date()
    rows = await sync_to_async(adapter_usage)(start=today, end=today)
    assert rows == [AdapterUsageRow(today, "acme", "support", 3, prompt, completion)]
    assert await AdapterUsageDay.objects.acount() == 1


def test_the_engines_adapter_errors_map_to_a_404_and_a_503_without_a_path() -> None:
    unknown = api_error(UnknownAdapter("gone"))
    assert (unknown.status, unknown.code, unknown.param) == (404, "model_not_found", "model")
    assert "The model 'gone' does not exist" in unknown.message
    failed = api_error(AdapterLoadError("adapter_model.safetensors at /srv/adapters/x is corrupt"))
    assert (failed.status, failed.type, failed.code) == (503, "server_error", "service_unavailable")
    assert "/srv" not in failed.message and "could not be loaded" in failed.message


def test_the_engines_configuration_reads_no_database(django_assert_num_queries) -> None:
    # A database read there once left an end-to-end child process without tables.
    with django_assert_num_queries(0):
        engine_config()


async def test_a_look_at_the_registry_that_fails_says_so_and_the_next_one_looks_again(
    monkeypatch: pytest.MonkeyPatch,
    settings,
    make_engine: Callable[..., Engine],
    tiny_model_dir: Path,
    tiny_adapters: list[Path],
) -> None:
    settings.INFERENCE_MODEL = str(tiny_model_dir)  # adapters are checked against the base
    settings.API_KEY_VERSION_POLL_SECONDS = 600  # the next look would otherwise wait this long
    await sync_to_async(adapter_add)(name="one", path=str(tiny_adapters[0]), actor="t")
    engine, registry = make_engine(), AdapterRegistry()
    with monkeypatch.context() as patched:  # Redis away for the first look
        unreachable = aredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
        patched.setattr(adapters, "get_redis", lambda *_: unreachable)
        assert await registry.sync(engine) is False
    assert engine.adapters == {}  # the look failed: nothing handed
    # Redis back: the next look reads at once (not a poll interval later) and hands it over.
    assert await registry.sync(engine) is True
    assert engine.adapters == {"one": str(tiny_adapters[0])}
    assert await registry.sync(engine) is True  # within the interval: current
