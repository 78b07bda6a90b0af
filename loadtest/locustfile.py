"""The chaos run's swarm: well-behaved tenants, a hostile one, invalid keys, oversized prompts and
WebSocket users, against the stack `make loadtest` brings up (loadtest/chaos/).

Run by loadtest/chaos/__main__.py, which passes CHAOS_CONFIG: a JSON file with the seeded tokens
(from the seed step, never hard-coded), the phases and the path of the records file. Every
request writes one JSON line there (what the report checks: status, latency, the tokens the
client received, the X-Request-Id that finds it in Traefik's access log). The shape: a baseline
of the well-behaved users alone, then the swarm of all of them.
"""

import json
import os
import random
import time
import uuid
from typing import Any

import websocket
from locust import FastHttpUser, LoadTestShape, User, between, events, task
from locust.env import Environment

CONFIG = json.loads(open(os.environ["CHAOS_CONFIG"]).read())  # noqa: SIM115, PTH123
SEED = CONFIG["seed"]
KEYS = SEED["keys"]
MODEL = CONFIG["model"]
MAX_TOKENS = CONFIG["max_tokens"]
_records = open(CONFIG["records"], "a", buffering=1)  # noqa: SIM115, PTH123 (line-buffered)

TOPICS = [
    "the quarterly sales report",
    "a customer's complaint about a late delivery",
    "the new onboarding process for engineers",
    "our data retention policy",
    "the outage of the payment service last Tuesday",
    "a product launch in three European markets",
    "the results of the employee survey",
    "a contract renewal with a logistics partner",
]
TEMPLATES = [
    "Summarize in one sentence: {topic} was discussed at length, and the team agreed on next "
    "steps, owners and a date for the follow-up meeting.",
    "Translate to German: We will send you an update about {topic} by the end of the week.",
    "Answer the question. What are the main risks of {topic}?",
    "Write a short, polite reply to an email about {topic}.",
    "Classify the sentiment (positive, neutral, negative): I am not happy with {topic}.",
    "List three questions a manager should ask about {topic}.",
    "Extract the key dates from this note about {topic}: kickoff on March 3, review on April 14, "
    "final sign-off on May 30, with a retrospective two weeks later.",
]


def prompt() -> str:
    return random.choice(TEMPLATES).format(topic=random.choice(TOPICS))


def record(**fields: object) -> None:
    _records.write(json.dumps(fields) + "\n")


def headers(token: str, request_id: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "X-Request-Id": request_id,
    }


def parse_sse(body: bytes) -> tuple[dict | None, bool]:
    """The usage object of a stream (include_usage) and whether it ended with [DONE]."""
    usage, done = None, False
    for line in body.split(b"\n"):
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            done = True
        elif data.startswith(b"{"):
            chunk = json.loads(data)
            usage = chunk.get("usage") or usage
    return usage, done


class ApiUser(FastHttpUser):
    abstract = True
    kind = "api"

    def completion(
        self, key: str, token: str, body: dict, stream: bool = False, kind: str = ""
    ) -> None:
        request_id = f"chaos-{uuid.uuid4().hex}"
        payload = json.dumps(body).encode() if isinstance(body, dict) else body
        started = time.time()
        entry: dict = {"kind": kind or self.kind, "key": key, "id": request_id, "t0": started}
        try:
            with self.client.post(
                "/v1/completions",
                # locust's annotation leaves out bytes, which its docstring and client take.
                data=payload,  # type: ignore[arg-type]
                headers=headers(token, request_id),
                stream=stream,
                catch_response=True,
                name=kind or self.kind,
            ) as response:
                entry["status"] = response.status_code
                if stream and response.status_code == 200:
                    chunks, first = [], None
                    while chunk := response.stream.read(4096):
                        first = first or time.time()
                        chunks.append(chunk)
                    usage, done = parse_sse(b"".join(chunks))
                    entry["ttfb"] = (first or time.time()) - started
                    entry["complete"] = done and usage is not None
                    entry["usage"] = usage
                else:
                    text = response.content or b""
                    entry["ttfb"] = time.time() - started
                    if response.status_code == 200:
                        answer = json.loads(text)
                        entry["usage"] = answer.get("usage")
                        entry["complete"] = True
                        # The node's own split: waiting for a batch, then generating.
                        for field, header in (("queue_ms", "x-queue-time-ms"),
                                              ("inference_ms", "x-inference-time-ms")):  # fmt: skip
                            if response.headers.get(header):
                                entry[field] = float(response.headers[header])
                    else:
                        entry["code"] = _error_code(text)
                response.success()  # the report judges, not Locust
        except Exception as exc:  # the stream was cut (a killed replica)
            entry["complete"] = False
            entry["exception"] = type(exc).__name__
        entry["dt"] = time.time() - started
        record(**entry)


def _error_code(text: bytes) -> str | None:
    try:
        return json.loads(text)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def well_behaved_body(stream: bool) -> dict:
    body = {"model": MODEL, "prompt": prompt(), "max_tokens": MAX_TOKENS, "temperature": 0.7}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


class RestUser(ApiUser):
    """A well-behaved client: non-streaming completions within its tenant's limits."""

    kind = "rest"
    fixed_count = CONFIG["users"]["rest"]
    wait_time = between(*CONFIG["well_behaved_wait"])
    keys = ("acme-web", "acme-batch", "globex-app", "initech-app")

    @task
    def complete(self) -> None:
        key = random.choice(self.keys)
        self.completion(key, KEYS[key]["token"], well_behaved_body(False))


class SseUser(ApiUser):
    """A well-behaved client streaming with Server-Sent Events."""

    kind = "sse"
    fixed_count = CONFIG["users"]["sse"]
    wait_time = between(*CONFIG["well_behaved_wait"])
    keys = ("acme-web", "globex-app")

    @task
    def stream(self) -> None:
        key = random.choice(self.keys)
        self.completion(key, KEYS[key]["token"], well_behaved_body(True), stream=True)


class HostileUser(ApiUser):
    """Mallory's clients: as fast as they can, far past the tenant's limits."""

    kind = "hostile"
    weight = CONFIG["users"]["hostile"]
    wait_time = between(*CONFIG["hostile_wait"])

    @task
    def flood(self) -> None:
        key = random.choice(("mallory-1", "mallory-2", "mallory-3"))
        self.completion(key, KEYS[key]["token"], well_behaved_body(False))


class InvalidKeyUser(ApiUser):
    """Clients with malformed, unknown, wrongly-signed or revoked keys."""

    kind = "invalid"
    weight = CONFIG["users"]["invalid"]
    wait_time = between(*CONFIG["abuse_wait"])

    @task
    def knock(self) -> None:
        token = random.choice(SEED["invalid_tokens"])
        self.completion("invalid", token, well_behaved_body(False))


class OversizedUser(ApiUser):
    """A real key sending what must be refused: prompts past the model's context, bodies past
    the 1 MiB limit, absurd max_tokens."""

    kind = "oversized"
    weight = CONFIG["users"]["oversized"]
    wait_time = between(*CONFIG["abuse_wait"])
    key = "initech-oversized"

    @task
    def too_long_prompt(self) -> None:
        body = {"model": MODEL, "prompt": " ".join([prompt()] * 120), "max_tokens": 8}
        self.completion(self.key, KEYS[self.key]["token"], body, kind="oversized_prompt")

    @task
    def too_big_body(self) -> None:
        body = {"model": MODEL, "prompt": "x" * (1_200_000), "max_tokens": 8}
        self.completion(self.key, KEYS[self.key]["token"], body, kind="oversized_body")

    @task
    def absurd_max_tokens(self) -> None:
        body = {"model": MODEL, "prompt": prompt(), "max_tokens": 10_000_000}
        self.completion(self.key, KEYS[self.key]["token"], body, kind="oversized_max_tokens")


# The HTTP status the same error has on the REST API (error frames carry only the code).
WS_ERROR_STATUS = {
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "too_many_concurrent_requests": 429,
    "overloaded": 503,
    "model_unavailable": 503,
    "service_unavailable": 503,
    "internal_error": 500,
}


class WsUser(FastHttpUser):
    """A well-behaved client on one WebSocket, one completion at a time."""

    fixed_count = CONFIG["users"]["ws"]
    wait_time = between(*CONFIG["well_behaved_wait"])
    key = "acme-ws"

    def on_start(self) -> None:
        self.ws: websocket.WebSocket | None = None
        self.conn_id: str | None = None

    def on_stop(self) -> None:
        if self.ws is not None:
            self.ws.close()

    def _connect(self) -> None:
        assert self.host is not None  # locust refuses to start a user without one
        url = self.host.replace("http://", "ws://") + "/ws/v1/completions"
        request_id = f"chaos-ws-{uuid.uuid4().hex}"
        started = time.time()
        try:
            self.ws = websocket.create_connection(
                url,
                timeout=120,
                header=[
                    f"Authorization: Bearer {KEYS[self.key]['token']}",
                    f"X-Request-Id: {request_id}",
                ],
            )
            status, self.conn_id = 101, request_id
        except websocket.WebSocketBadStatusException as exc:
            status, self.ws = exc.status_code, None
        except OSError as exc:
            status, self.ws = 0, None
            record(kind="ws_connect", key=self.key, id=request_id, t0=started, status=0,
                   exception=type(exc).__name__, dt=time.time() - started)  # fmt: skip
            return
        record(kind="ws_connect", key=self.key, id=request_id, t0=started, status=status,
               dt=time.time() - started)  # fmt: skip

    @task
    def complete(self) -> None:
        if self.ws is None:
            self._connect()
            if self.ws is None:
                return
        request_id = uuid.uuid4().hex[:16]
        started = time.time()
        entry: dict = {"kind": "ws", "key": self.key, "id": request_id, "t0": started}
        entry["conn"] = self.conn_id
        frame: dict[str, object] = {"type": "completion.create", "id": request_id}
        frame["prompt"] = prompt()
        frame |= {"max_tokens": MAX_TOKENS, "temperature": 0.7}
        try:
            self.ws.send(json.dumps(frame))
            while True:
                message = json.loads(self.ws.recv())
                # An error frame without an id is the socket's own (its key could not be
                # checked: the server closes it next): this request's answer too.
                socket_error = message["type"] == "error" and message.get("id") is None
                if message.get("id") != request_id and not socket_error:
                    continue
                if message["type"] == "completion.started":
                    entry["ttfb"] = time.time() - started
                elif message["type"] == "completion.done":
                    entry |= {"status": 200, "usage": message["usage"], "complete": True}
                    break
                elif message["type"] == "error":
                    error: dict[str, Any] = message.get("error") or {}  # OpenAI's error object
                    code: str | None = error.get("code")
                    entry |= {"status": WS_ERROR_STATUS.get(code or "", 400), "code": code}
                    entry["complete"] = False
                    if socket_error:
                        self.ws.close()
                        self.ws = None  # the next task connects again
                    break
        except Exception as exc:  # the socket dropped (a killed replica)
            entry |= {"status": 200, "complete": False, "exception": type(exc).__name__}
            self.ws = None
        entry["dt"] = time.time() - started
        record(**entry)


class ChaosShape(LoadTestShape):
    """The baseline (well-behaved users alone), then the swarm (everyone)."""

    phases = CONFIG["phases"]
    well_behaved = (RestUser, SseUser, WsUser)
    everyone = (RestUser, SseUser, WsUser, HostileUser, InvalidKeyUser, OversizedUser)

    def __init__(self) -> None:
        super().__init__()
        self.marked: set[str] = set()

    def _mark(self, name: str) -> None:
        if name not in self.marked:
            self.marked.add(name)
            record(event="phase", name=name, t=time.time())

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        elapsed = self.get_run_time()
        baseline, swarm = self.phases["baseline_s"], self.phases["swarm_s"]
        small = sum(CONFIG["users"][name] for name in ("rest", "sse", "ws"))
        if elapsed < baseline:
            self._mark("baseline")
            return small, small, list(self.well_behaved)
        if elapsed < baseline + swarm:
            self._mark("swarm")
            return CONFIG["users"]["total"], self.phases["spawn_rate"], list(self.everyone)
        self._mark("end")
        return None


@events.quitting.add_listener
def _close_records(environment: Environment, **kwargs: object) -> None:
    _records.flush()
