"""Live, under daphne itself: a socket whose key cannot be checked gets its error frame and a
close code daphne accepts. The consumer tests (WebsocketCommunicator) take any code; daphne lets
an application close only with 1000 or 3000-4999 and raised on RFC 6455's 1013, so the client
got a dropped socket (found by the chaos run: a well-behaved client whose address the swarm's
bad keys had blocked)."""

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import database_url_for_current_test_db
from tests.e2e.api.conftest import Customer
from tests.e2e.live_daphne import LiveDaphne, start_daphne

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MADE_UP = "sk_" + "A" * 12 + "_" + "B" * 40  # well formed, no such key


@pytest.fixture(scope="module")
def strict_server(api_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    """A production daphne (no model: none is needed) whose addresses may fail one
    authentication a minute. Its own SECRET_KEY keeps its failure counts apart from the
    other servers' (the counters are keyed by an HMAC of the address under it)."""
    from django.conf import settings

    env = {
        "DEBUG": "false",
        "API_KEY_PEPPER": settings.API_KEY_PEPPER,  # the session's keys hash under it
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DATABASE_URL": database_url_for_current_test_db(),
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "PYTHONUNBUFFERED": "1",
        "INFERENCE_AUTOLOAD": "false",
        "RATELIMIT_FLUSH_SECONDS": "0",
        "API_AUTH_FAILURES_PER_MINUTE": "1",
    }
    server = start_daphne(env, tmp_path_factory.mktemp("strict-server") / "daphne.log")
    try:
        yield server
    finally:
        server.stop()


def fail_authentication(server: LiveDaphne) -> int:
    request = urllib.request.Request(  # noqa: S310 - the test's own server
        f"{server.url}/v1/models", headers={"Authorization": f"Bearer {MADE_UP}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_a_valid_key_from_a_blocked_address_gets_an_error_frame_and_close_4429(
    strict_server: LiveDaphne, customer: Customer
) -> None:
    assert fail_authentication(strict_server) == 401  # the address's one failure, spent
    url = strict_server.url.replace("http://", "ws://") + "/ws/v1/completions"
    headers = {"Authorization": f"Bearer {customer.token}"}  # valid, not cached there yet
    async with connect(url, additional_headers=headers) as ws:
        frame = json.loads(await ws.recv())
        assert frame["type"] == "error" and frame["error"]["code"] == "rate_limit_exceeded"
        assert "failed authentications" in frame["error"]["message"]
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 4429
    assert "invalid close code" not in strict_server.log_text()
