"""The WebSocket protocol at /ws/v1/completions against the live node."""

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.api.conftest import Customer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/ws/v1/completions"


async def frames_until(ws, predicate, seconds: float = 30.0) -> list[dict]:
    seen: list[dict] = []
    async with asyncio.timeout(seconds):
        while not seen or not predicate(seen[-1]):
            seen.append(json.loads(await ws.recv()))
    return seen


def create(request_id: str, **params: object) -> str:
    return json.dumps(
        {
            "type": "completion.create",
            "id": request_id,
            "prompt": "Tell a story.",
            "max_tokens": 16,
            "temperature": 0,
            **params,
        }
    )


async def test_it_streams_a_completion_after_header_auth(api_server, customer: Customer) -> None:
    headers = {"Authorization": f"Bearer {customer.token}"}
    async with connect(ws_url(api_server), additional_headers=headers) as ws:
        await ws.send(create("a"))
        frames = await frames_until(ws, lambda f: f["type"] in ("completion.done", "error"))
    assert frames[0]["type"] == "completion.started" and frames[0]["id"] == "a"
    assert frames[0]["ratelimit"]["x-ratelimit-limit-requests"] == "6000"
    deltas = [f for f in frames if f["type"] == "completion.delta"]
    done = frames[-1]
    assert done["type"] == "completion.done" and done["finish_reason"] in ("stop", "length")
    assert deltas and all(f["id"] == "a" for f in deltas)
    assert done["usage"]["completion_tokens"] >= deltas[-1]["completion_tokens"]


async def test_two_requests_share_one_socket(api_server, customer: Customer) -> None:
    async with connect(ws_url(api_server)) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": customer.token}))
        await ws.send(create("one", max_tokens=12))
        await ws.send(create("two", prompt="Something else entirely.", max_tokens=12))
        done: dict[str, dict] = {}
        text: dict[str, str] = {"one": "", "two": ""}
        async with asyncio.timeout(60):
            while len(done) < 2:
                frame = json.loads(await ws.recv())
                if frame["type"] == "completion.delta":
                    text[frame["id"]] += frame["text"]
                elif frame["type"] == "completion.done":
                    done[frame["id"]] = frame
                assert frame["type"] != "error", frame
    assert set(done) == {"one", "two"}
    # Each equals what the same request gives alone over HTTP-free greedy decoding.
    async with connect(ws_url(api_server)) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": customer.token}))
        await ws.send(create("solo", max_tokens=12))
        frames = await frames_until(ws, lambda f: f["type"] == "completion.done")
    assert "".join(f["text"] for f in frames if f["type"] == "completion.delta") == text["one"]


async def long_prompt(ws) -> str:
    """A prompt whose greedy completion runs to its max_tokens (no early end of sequence)."""
    for n in range(20):
        prompt = f"Tell story number {n}."
        await ws.send(create(f"probe{n}", prompt=prompt, max_tokens=40))
        frames = await frames_until(ws, lambda f: f["type"] == "completion.done")
        if frames[-1]["finish_reason"] == "length":
            return prompt
    raise AssertionError("no prompt ran to its max_tokens")


async def test_cancel_stops_one_request_and_bills_what_was_sent(
    api_server, customer: Customer
) -> None:
    async with connect(ws_url(api_server)) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": customer.token}))
        prompt = await long_prompt(ws)
        await ws.send(create("long", prompt=prompt, max_tokens=500))
        frames = await frames_until(ws, lambda f: f["type"] == "completion.delta")
        await ws.send(json.dumps({"type": "completion.cancel", "id": "long"}))
        frames += await frames_until(ws, lambda f: f["type"] == "completion.done")
    done = frames[-1]
    sent = [f for f in frames if f["type"] == "completion.delta"]
    assert done["finish_reason"] == "cancelled"
    assert done["usage"]["completion_tokens"] < 500
    # Billed: exactly the tokens covered by the deltas that were sent.
    assert done["usage"]["completion_tokens"] == sent[-1]["completion_tokens"]


async def test_a_bad_frame_gets_an_error_and_the_socket_stays_open(
    api_server, customer: Customer
) -> None:
    async with connect(ws_url(api_server)) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": customer.token}))
        for bad, code in [
            ("not json", "invalid_request"),
            (json.dumps([1, 2]), "invalid_request"),
            (json.dumps({"type": "nonsense", "id": "x"}), "invalid_request"),
            (create("m", max_tokens=0), "invalid_request"),
            (create("n", n=2), "unsupported_value"),
            (json.dumps({"type": "completion.cancel", "id": "ghost"}), "invalid_request"),
            (create("s", prompt="a\ud800b"), "invalid_request"),
            ("[" * 30_000, "invalid_request"),
        ]:
            await ws.send(bad)
            frame = json.loads(await ws.recv())
            assert frame["type"] == "error" and frame["error"]["code"] == code, (bad, frame)
        await ws.send(create("fine", max_tokens=3))
        frames = await frames_until(ws, lambda f: f["type"] == "completion.done")
        assert frames[-1]["id"] == "fine"


async def test_a_bad_key_gets_an_error_frame_and_close_code_4401(api_server) -> None:
    headers = {"X-API-Key": "sk_" + "A" * 12 + "_" + "B" * 40}
    async with connect(ws_url(api_server), additional_headers=headers) as ws:
        frame = json.loads(await ws.recv())
        assert frame["type"] == "error" and frame["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 4401


async def test_requests_before_auth_are_refused(api_server) -> None:
    async with connect(ws_url(api_server)) as ws:
        await ws.send(create("early"))
        frame = json.loads(await ws.recv())
    assert frame["error"]["code"] == "invalid_api_key" and frame["id"] == "early"


async def test_a_socket_runs_at_most_its_cap_at_once(api_server, customer: Customer) -> None:
    async with connect(ws_url(api_server)) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": customer.token}))
        for n in range(5):
            await ws.send(create(f"r{n}", max_tokens=300))
        frames = await frames_until(ws, lambda f: f["type"] == "error")
        assert frames[-1]["id"] == "r4"
        assert frames[-1]["error"]["code"] == "too_many_concurrent_requests"


async def test_error_frames_to_an_authenticated_socket_count_as_its_keys_errors(
    api_server, customer: Customer
) -> None:
    from asgiref.sync import sync_to_async
    from django.db.models import Sum

    from ratelimit.flush import flush
    from tenants.models import UsageMinute

    async with connect(ws_url(api_server)) as ws:  # refused before auth: no key to count
        await ws.send(create("early"))
        assert json.loads(await ws.recv())["error"]["code"] == "invalid_api_key"
    async with connect(ws_url(api_server)) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": customer.token}))
        for bad in (create("m", max_tokens=0), create("n", n=2)):
            await ws.send(bad)
            assert json.loads(await ws.recv())["type"] == "error"
        await ws.send(create("fine", max_tokens=3))
        # The consumer handles one message at a time: the errors were counted before this.
        await frames_until(ws, lambda f: f["type"] == "completion.done")
    rows = UsageMinute.objects.filter(tenant_id=customer.tenant_id)
    async with asyncio.timeout(10):  # the request settles just after its completion.done
        usage: dict = {}
        while usage.get("requests") != 1:
            await asyncio.sleep(0.05)
            await sync_to_async(flush)()
            usage = await rows.aaggregate(requests=Sum("requests"), errors=Sum("errors"))
    assert usage == {"requests": 1, "errors": 2}
