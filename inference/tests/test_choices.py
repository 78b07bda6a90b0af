"""Several choices in one request: a list of prompts (texts or token ids) and n, with their
log-probabilities, through the REST API in-process on the real engine (tiny model)."""

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from prometheus_client import REGISTRY

from engine.runtime import Engine
from inference.consumers import CompletionConsumer
from inference.engines import served_model_id
from inference.schemas import MAX_CHOICES, MAX_PROMPTS
from tenants.services import IssuedKey, api_key_issue, tenant_create

pytestmark = pytest.mark.django_db(transaction=True)

PROMPTS = ["Hello café", "The model runs over the river today", "naïve"]


async def post(token: str, path: str = "/v1/completions", **params: Any):
    body = {"model": served_model_id(), "max_tokens": 6, **params}
    return await AsyncClient().post(
        path, body, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )


async def ok(token: str, path: str = "/v1/completions", **params: Any) -> dict[str, Any]:
    response = await post(token, path, **params)
    assert response.status_code == 200, response.json()
    body: dict[str, Any] = response.json()
    return body


async def sse(token: str, path: str = "/v1/completions", **params: Any) -> list[Any]:
    """The stream's events, parsed ([DONE] as the string)."""
    response = await post(token, path, stream=True, **params)
    assert response.status_code == 200
    raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


@pytest.fixture
def engine(installed: Callable[[Engine], Engine], make_engine: Callable[..., Engine]) -> Engine:
    return installed(make_engine(max_batch=16, max_wait_ms=5))


def batches() -> float:
    return REGISTRY.get_sample_value("inference_batch_size_count") or 0.0


async def test_a_list_of_prompts_answers_one_choice_each_in_order(
    engine: Engine, issued: IssuedKey
) -> None:
    before = batches()
    body = await ok(issued.token, prompt=PROMPTS, temperature=0)
    assert batches() == before + 1  # decoded together
    alone = [await ok(issued.token, prompt=p, temperature=0) for p in PROMPTS]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["text"] for c in body["choices"]] == [a["choices"][0]["text"] for a in alone]
    assert [c["finish_reason"] for c in body["choices"]] == [
        a["choices"][0]["finish_reason"] for a in alone
    ]
    # Usage sums the prompts (each once) and the choices.
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert body["usage"][key] == sum(a["usage"][key] for a in alone)


async def test_token_id_prompts_are_the_texts_they_encode(
    engine: Engine, issued: IssuedKey, tokenizer
) -> None:
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS]
    texts = await ok(issued.token, prompt=PROMPTS, temperature=0)
    as_ids = await ok(issued.token, prompt=ids, temperature=0)
    assert as_ids["choices"] == texts["choices"] and as_ids["usage"] == texts["usage"]
    one = await ok(issued.token, prompt=ids[1], temperature=0)  # a single list of ids
    assert one["choices"][0]["text"] == texts["choices"][1]["text"]
    size = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)
    response = await post(issued.token, prompt=[ids[0], [size]])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt" and str(size) in error["message"]


async def test_n_choices_come_prompt_by_prompt_each_its_own_draw(
    engine: Engine, issued: IssuedKey
) -> None:
    params: dict[str, Any] = {"temperature": 1.0, "seed": 11, "max_tokens": 10}
    body = await ok(issued.token, prompt=PROMPTS[:2], n=3, **params)
    choices = body["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    # Choice j of prompt i is index i * n + j, drawn with seed + j: the same as asked alone.
    for i, prompt in enumerate(PROMPTS[:2]):
        for j in range(3):
            alone = await ok(issued.token, prompt=prompt, **{**params, "seed": 11 + j})
            assert choices[i * 3 + j]["text"] == alone["choices"][0]["text"]
    assert len({c["text"] for c in choices[:3]}) > 1  # the draws differ
    completion = sum(len(c["text"]) >= 0 for c in choices)
    assert completion == 6 and body["usage"]["completion_tokens"] >= 6
    greedy = await ok(issued.token, prompt=PROMPTS[1], n=2, temperature=0)
    assert greedy["choices"][0]["text"] == greedy["choices"][1]["text"]


async def test_chat_n_and_logprobs_with_top_logprobs(engine: Engine, issued: IssuedKey) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    body = await ok(
        issued.token,
        "/v1/chat/completions",
        messages=messages,
        n=2,
        logprobs=True,
        top_logprobs=20,
        temperature=0,
    )
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        content = choice["logprobs"]["content"]
        assert "".join(t["token"] for t in content) == choice["message"]["content"]
        for token in content:
            assert token["bytes"] == list(token["token"].encode())
            tops = [t["logprob"] for t in token["top_logprobs"]]
            assert len(tops) == 20 and tops == sorted(tops, reverse=True)
            assert token["logprob"] == tops[0]  # greedy: the most likely token
            assert math.isfinite(token["logprob"]) and token["logprob"] <= 0
    plain = await ok(issued.token, "/v1/chat/completions", messages=messages, logprobs=True)
    assert all(t["top_logprobs"] == [] for t in plain["choices"][0]["logprobs"]["content"])
    without = await ok(issued.token, "/v1/chat/completions", messages=messages)
    assert without["choices"][0]["logprobs"] is None


async def test_completion_logprobs_in_the_legacy_shape(engine: Engine, issued: IssuedKey) -> None:
    body = await ok(issued.token, prompt=PROMPTS, logprobs=5, temperature=0, max_tokens=8)
    for choice in body["choices"]:
        logprobs = choice["logprobs"]
        tokens = logprobs["tokens"]
        assert "".join(tokens) == choice["text"]
        assert len(logprobs["token_logprobs"]) == len(tokens) == len(logprobs["text_offset"])
        assert logprobs["text_offset"] == [len("".join(tokens[:i])) for i in range(len(tokens))]
        for chosen, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
            assert 1 <= len(top) <= 5 and chosen == max(top.values())
    zero = await ok(issued.token, prompt="Hello", logprobs=0)
    assert zero["choices"][0]["logprobs"]["top_logprobs"] is None
    assert len(zero["choices"][0]["logprobs"]["token_logprobs"]) >= 1


async def test_out_of_range_values_are_refused_naming_the_parameter(
    engine: Engine, issued: IssuedKey
) -> None:
    chat = "/v1/chat/completions"
    messages = [{"role": "user", "content": "Hi"}]
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/completions", {"prompt": "Hi", "logprobs": 6}, "logprobs"),
        ("/v1/completions", {"prompt": ["Hi"] * (MAX_PROMPTS + 1)}, "prompt"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": [[]]}, "prompt"),
        ("/v1/completions", {"prompt": ["Hi"] * 4, "n": MAX_CHOICES // 4 + 1}, "n"),
        ("/v1/completions", {"prompt": "Hi", "n": 2, "best_of": 3}, "best_of"),
        (chat, {"messages": messages, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (chat, {"messages": messages, "top_logprobs": 2}, "top_logprobs"),
        (chat, {"messages": messages, "n": 0}, "n"),
    ]
    for path, params, param in cases:
        response = await post(issued.token, path, **params)
        assert response.status_code == 400, (params, response.json())
        assert response.json()["error"]["param"] == param, (params, response.json())
    assert (await post(issued.token, prompt="Hi", n=2, best_of=2)).status_code == 200


async def test_a_stream_carries_each_choices_index_and_finish_and_one_usage(
    engine: Engine, issued: IssuedKey
) -> None:
    params: dict[str, Any] = {"prompt": PROMPTS[:2], "n": 2, "temperature": 0, "logprobs": 2}
    whole = await ok(issued.token, **params)
    events = await sse(issued.token, stream_options={"include_usage": True}, **params)
    assert events[-1] == "[DONE]"
    usage, chunks = events[-2], events[:-2]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    texts: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        index = choice["index"]
        assert index not in finishes  # nothing after a choice's finish chunk
        if choice["finish_reason"]:
            finishes[index] = choice["finish_reason"]
            continue
        texts[index] = texts.get(index, "") + choice["text"]
        logprobs = choice["logprobs"]
        # Offsets run on through the choice's text, chunk after chunk.
        assert logprobs["text_offset"][:1] in ([], [len("".join(tokens.get(index, [])))])
        tokens.setdefault(index, []).extend(logprobs["tokens"])
    assert sorted(finishes) == [0, 1, 2, 3]
    for choice in whole["choices"]:
        assert texts.get(choice["index"], "") == choice["text"]
        assert finishes[choice["index"]] == choice["finish_reason"]
        assert tokens.get(choice["index"], []) == choice["logprobs"]["tokens"]


async def test_a_chat_stream_opens_every_choice_with_its_role(
    engine: Engine, issued: IssuedKey
) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    events = await sse(issued.token, "/v1/chat/completions", messages=messages, n=3, logprobs=True)
    chunks = [event for event in events[:-1]]
    roles = [c["choices"][0]["index"] for c in chunks if "role" in c["choices"][0]["delta"]]
    assert roles == [0, 1, 2]
    finished = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1, 2]
    for chunk in chunks:
        choice = chunk["choices"][0]
        if choice["delta"].get("content") is not None and "role" not in choice["delta"]:
            assert isinstance(choice["logprobs"]["content"], list)


async def test_admission_reserves_every_prompt_and_choice_before_any_decoding(
    engine: Engine,
) -> None:
    tenant = await sync_to_async(tenant_create)(
        slug="quota", limits={"rpm": 600, "tpm": 100_000, "tokens_per_day": 80}, actor="t"
    )
    issued = await sync_to_async(api_key_issue)(tenant=tenant, actor="t")
    # A quota admits a reservation larger than all of it only while nothing is spent: spend
    # a little first.
    assert (await post(issued.token, prompt="Hello", max_tokens=1)).status_code == 200
    before = batches()
    # One prompt and its 30 tokens fit what is left of the day's 80; four (or n=4) do not.
    for params in ({"prompt": ["Hello"] * 4}, {"prompt": "Hello", "n": 4}):
        response = await post(issued.token, max_tokens=30, **params)
        assert response.status_code == 429, response.json()
        assert response.json()["error"]["code"] == "insufficient_quota"
    assert batches() == before  # refused before anything was decoded
    assert (await post(issued.token, prompt="Hello", max_tokens=30)).status_code == 200


async def test_the_websocket_still_refuses_several_choices(
    engine: Engine, issued: IssuedKey
) -> None:
    communicator = WebsocketCommunicator(
        CompletionConsumer.as_asgi(),
        "/ws/v1/completions",
        headers=[(b"authorization", f"Bearer {issued.token}".encode())],
    )
    connected, _ = await communicator.connect()
    assert connected
    try:
        for extra, param in (({"n": 2}, "n"), ({"logprobs": 1}, "logprobs")):
            create = {"type": "completion.create", "id": "a", "prompt": "Hi", **extra}
            await communicator.send_to(text_data=json.dumps(create))
            frame = json.loads(await communicator.receive_from(timeout=30))
            assert frame["type"] == "error" and frame["error"]["param"] == param, frame
        create = {"type": "completion.create", "id": "b", "prompt": "Hi", "max_tokens": 2}
        await communicator.send_to(text_data=json.dumps(create))
        frame = json.loads(await communicator.receive_from(timeout=30))
        assert frame["type"] == "completion.started"  # the socket stays open and serves
    finally:
        await communicator.disconnect()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_leaves_cancels_every_row_and_costs_nothing(
    installed: Callable[[Engine], Engine],
    make_engine: Callable[..., Engine],
    issued: IssuedKey,
    stream: bool,
) -> None:
    from asgiref.testing import ApplicationCommunicator
    from django.core.handlers.asgi import ASGIHandler

    from console.handlers import ApiHandler, PathDispatcher
    from engine.runtime import GenerationRequest
    from inference.tests.test_gone_clients import counted_usage, leases, request_scope, wait_for

    engine = installed(make_engine(max_batch=1, max_wait_ms=0))
    busy = await engine.submit(GenerationRequest("busy", max_tokens=500, ignore_eos=True))
    iterator = aiter(busy)
    await anext(iterator)  # the model is busy with it: the request's rows wait in the queue
    body = json.dumps(
        {"model": served_model_id(), "prompt": PROMPTS[:2], "n": 2, "stream": stream}
    ).encode()
    client = ApplicationCommunicator(
        PathDispatcher(ApiHandler(), ASGIHandler()), request_scope(issued.token, body)
    )
    try:
        await client.send_input({"type": "http.request", "body": body, "more_body": False})
        await wait_for(lambda: engine.status()["queue_depth"] == 4, "its four rows to queue")
        await client.send_input({"type": "http.disconnect"})
        await wait_for(lambda: engine.status()["queue_depth"] == 0, "every row to leave")
        tenant_id = issued.api_key.tenant_id
        await wait_for(lambda: not leases(tenant_id), "its lease to be released")
        assert counted_usage(tenant_id) == []
    finally:
        busy.cancel()
        async for _ in iterator:
            pass
        await client.wait(30)
