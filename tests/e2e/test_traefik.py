"""Through the real Traefik on the project's files: routes, limits, logs, client addresses."""

import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from deploy.render import render_tree
from tests.e2e.conftest import Stack, stack_values
from tests.e2e.probe_asgi import PROBE_PATH, SSE_HOLD, SSE_PROBE_HEADER
from tests.e2e.servers import free_port, http_get, require_binary, start, wait_http, wait_until

# django_db: makes pytest-django create the test database the replicas use.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

# Tests play a client on another loopback address than Traefik's own (127.0.0.1).
CLIENT = "127.0.0.5"
SPOOF = "6.6.6.6"


def call(
    base: str, method: str, path: str, headers: dict | None = None, body: bytes | None = None
) -> tuple[int, bytes]:
    """One request sent as written (no path normalisation) from the CLIENT address."""
    url = urlsplit(base)
    assert url.hostname, base
    conn = http.client.HTTPConnection(
        url.hostname, url.port, timeout=15, source_address=(CLIENT, 0)
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_api_answers_through_traefik_with_a_key(stack: Stack, api_token: str) -> None:
    status, body = call(stack.public, "GET", "/v1/models", {"Authorization": f"Bearer {api_token}"})
    assert status == 200 and json.loads(body)["object"] == "list"
    status, _ = call(stack.public, "GET", "/v1/models", {"X-API-Key": api_token})
    assert status == 200
    status, body = call(stack.public, "GET", "/v1/models")
    assert status == 401 and json.loads(body)["error"]["code"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/healthz", 200),
        ("/static/admin/css/base.css", 200),
        ("/console/login/", 200),
        ("/admin/login/", 302),
    ],
)
def test_the_public_routes_reach_the_app(stack: Stack, path: str, expected: int) -> None:
    assert call(stack.public, "GET", path)[0] == expected


@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/metrics/",
        "/readyz",
        "/traefik/metrics",
        "/ping",
        "/v1/../metrics",
        "/static/../metrics",
        "/v1/%2e%2e/metrics",
        "/v1/..%2fmetrics",
        "//metrics",
    ],
)
def test_metrics_and_internals_are_refused_on_the_public_entrypoint(
    stack: Stack, path: str
) -> None:
    status, body = call(stack.public, "GET", path)
    assert status in (400, 404), (path, status)
    assert b"django_http" not in body and b"traefik_" not in body


def test_metrics_are_served_on_the_internal_entrypoint(stack: Stack) -> None:
    call(stack.public, "GET", "/healthz")
    status, body = http_get(f"{stack.internal}/metrics")
    assert status == 200 and b"django_http_requests_total_by_view_transport_method_total{" in body
    status, body = http_get(f"{stack.internal}/traefik/metrics")
    assert status == 200 and b'traefik_entrypoint_requests_total{code="200"' in body


def test_bodies_over_the_limit_get_413_before_the_app(stack: Stack) -> None:
    headers = {"Content-Type": "application/json"}
    status, body = call(stack.public, "POST", "/v1/models", headers, b"x" * (2 * 1024 * 1024))
    # Traefik's own 413 (plain text), not the app's JSON one: the app never saw the body.
    assert status == 413 and b"request_too_large" not in body
    status, _ = call(stack.public, "POST", "/v1/models", headers, b"x" * (256 * 1024))
    assert status not in (413, 502, 503)  # reached the app, which answers for itself


def test_credentials_never_reach_the_access_log(stack: Stack, api_token: str) -> None:
    agent = f"e2e-agent-{uuid.uuid4().hex}"
    for headers in (
        {"Authorization": f"Bearer {api_token}", "User-Agent": agent},
        {"X-API-Key": api_token, "User-Agent": agent, "Cookie": "sessionid=e2e-cookie-secret"},
    ):
        assert call(stack.public, "GET", "/v1/models", headers)[0] == 200

    def logged() -> str:
        return stack.access_log.read_text() if stack.access_log.exists() else ""

    wait_until(lambda: logged().count(agent) >= 2, "both requests in the access log", 60)
    text = logged()
    # Request headers are logged (the agent is there), just never the credentials.
    assert text.count(agent) == 2
    secret = api_token.rsplit("_", 1)[-1]
    assert secret not in text and "Bearer" not in text and "e2e-cookie-secret" not in text
    lines = [json.loads(line) for line in text.splitlines() if agent in line]
    assert all("request_Authorization" not in line for line in lines)


def probe(base: str, headers: dict | None = None) -> dict:
    status, body = call(base, "GET", PROBE_PATH, headers)
    assert status == 200, body
    return json.loads(body)


def test_traefik_overwrites_forwarded_headers_a_client_sends(stack: Stack) -> None:
    spoofed = {"X-Forwarded-For": SPOOF, "X-Real-Ip": SPOOF, "X_Forwarded_For": SPOOF}
    seen = probe(stack.public, spoofed)
    assert seen["client_address"] == CLIENT
    assert seen["x_forwarded_for"] == CLIENT and seen["x_real_ip"] == CLIENT
    # The alias would read as X-Forwarded-For to Django. Traefik deletes it
    # (aliasHeadersStrategy) and daphne drops underscored names as well: two locks, one check.
    assert "x_forwarded_for" not in seen["header_names"]


def test_the_app_ignores_forwarded_headers_from_anyone_but_the_proxy(stack: Stack) -> None:
    direct = probe(stack.replicas[0].url, {"X-Forwarded-For": SPOOF})
    assert direct["client_address"] == CLIENT


def test_requests_are_balanced_over_the_healthy_replicas_only(stack: Stack) -> None:
    pids = {probe(stack.public)["pid"] for _ in range(12)}  # a 502 would fail inside probe()
    assert pids == {replica.server.process.pid for replica in stack.replicas}
    _, body = http_get(f"{stack.internal}/traefik/metrics")
    text = body.decode()
    for replica in stack.replicas:
        assert f'traefik_service_server_up{{service="app@file",url="{replica.url}"}} 1' in text
    assert f'traefik_service_server_up{{service="app@file",url="{stack.dead_server}"}} 0' in text


def test_the_streaming_paths_skip_traefiks_buffer_but_the_app_still_says_413(
    stack: Stack,
) -> None:
    headers = {"Content-Type": "application/json"}
    big = b"x" * (2 * 1024 * 1024)
    status, body = call(stack.public, "POST", "/v1/completions", headers, big)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"


def test_a_429_through_traefik_is_audited_with_the_address_traefik_saw(
    stack: Stack, limited_token: str
) -> None:
    from ratelimit.flush import flush
    from tenants.models import ThrottleEvent

    headers = {
        "Authorization": f"Bearer {limited_token}",
        "Content-Type": "application/json",
        "X-Forwarded-For": SPOOF,
        "X-Real-Ip": SPOOF,
    }
    body = json.dumps({"model": "tiny-t5", "prompt": "hi", "max_tokens": 2}).encode()
    statuses = [call(stack.public, "POST", "/v1/completions", headers, body)[0] for _ in range(3)]
    assert 429 in statuses
    flush()
    events = list(ThrottleEvent.objects.all())
    assert events and all(event.sample_addresses == [CLIENT] for event in events)


def test_a_replica_with_a_request_in_flight_is_passed_over(stack: Stack) -> None:
    # The probe's held stream (a minute, or until this test leaves) keeps one replica busy;
    # requests sent meanwhile all go to the other, the one with fewer in flight (p2c). Round
    # robin would alternate between the two.
    url = urlsplit(stack.public)
    assert url.hostname, stack.public
    conn = http.client.HTTPConnection(
        url.hostname, url.port, timeout=60, source_address=(CLIENT, 0)
    )
    headers = {SSE_PROBE_HEADER.decode(): SSE_HOLD.decode(), "Content-Type": "application/json"}
    # No body: a POST body can get the held stream cut by Traefik (tests/e2e/test_streaming.py).
    conn.request("POST", "/v1/completions", headers=headers)
    response = conn.getresponse()  # its headers are here: it is in flight on one replica
    try:
        pids = [probe(stack.public)["pid"] for _ in range(6)]
        assert not response.isclosed()  # still in flight after the six
    finally:
        conn.close()  # the probe's stream ends when its client leaves
    assert len(set(pids)) == 1
    assert set(pids) < {replica.server.process.pid for replica in stack.replicas}


def test_readyz_is_answered_before_django_on_a_replica(stack: Stack) -> None:
    # Reached by its address, a Host that ALLOWED_HOSTS does not list: Django would say 400.
    status, body = http_get(f"{stack.replicas[0].url}/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["ready"] is True
    assert set(ready["checks"]) == {"database", "redis", "model", "ratelimit"}


# Longer than the 2 s timeout Traefik's health check had when busy replicas were taken out,
# shorter than the one it has now (deploy/traefik/dynamic/app.yml).
SLOW_READYZ_SECONDS = 3.0


class SlowReadyz(BaseHTTPRequestHandler):
    """A replica whose /readyz answers 200 after SLOW_READYZ_SECONDS; anything else at once."""

    asked = 0  # health checks received

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/readyz":
            type(self).asked += 1
            time.sleep(SLOW_READYZ_SECONDS)
        body = b"slow replica"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def slow_replica() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowReadyz)
    SlowReadyz.asked = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_replica_slow_to_answer_readyz_stays_in_rotation(
    slow_replica: str, tmp_path: Path
) -> None:
    ports = {name: free_port() for name in ("public", "internal", "prometheus", "dead")}
    values = {**stack_values([], ports, tmp_path), "APP_SERVERS": [{"url": slow_replica}]}
    render_tree(tmp_path / "config", values)
    config = tmp_path / "config" / "traefik" / "traefik.yml"
    traefik = start("traefik-slow", [require_binary("traefik"), f"--configFile={config}"], tmp_path)
    internal = f"http://127.0.0.1:{ports['internal']}"
    try:
        wait_http(traefik, f"{internal}/ping")
        # Traefik checks a server only after its previous check ended: at the fourth, three
        # slow checks are over, each of which the old timeout would have failed.
        wait_until(lambda: SlowReadyz.asked >= 4, "four health checks", timeout=120)
        metrics = http_get(f"{internal}/traefik/metrics")[1].decode()
        assert f'traefik_service_server_up{{service="app@file",url="{slow_replica}"}} 1' in metrics
        assert "Health check failed" not in traefik.output()
        # Still in rotation: the public entrypoint reaches it.
        assert call(f"http://127.0.0.1:{ports['public']}", "GET", "/v1/x") == (200, b"slow replica")
    finally:
        traefik.stop()
