"""A live daphne serving the tiny model on the test database and Redis, for the API tests."""

import json
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import database_url_for_current_test_db
from tests.e2e.live_daphne import LiveDaphne, start_daphne, wait_ready


@pytest.fixture(scope="session")
def api_server(
    django_db_setup: None, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveDaphne]:
    """One daphne for the session: tiny model (with its adapter), production-like settings."""
    from django.conf import settings

    # Production settings need real secrets; this process issues the keys the server checks,
    # so both hash under the same pepper.
    settings.API_KEY_PEPPER = secrets.token_urlsafe(48)
    env = {
        "SECRET_KEY": secrets.token_urlsafe(48),
        "API_KEY_PEPPER": settings.API_KEY_PEPPER,
        "DATABASE_URL": database_url_for_current_test_db(),
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "PYTHONUNBUFFERED": "1",
        "DEBUG": "false",
        "INFERENCE_MODEL": str(tiny_model_dir),
        "INFERENCE_ADAPTER": str(tiny_model_dir / "adapter"),
        "INFERENCE_QUANTIZATION": "none",
        "INFERENCE_THREADS": "1",
        "INFERENCE_MAX_QUEUE": "64",
        # The tests move usage to Postgres themselves, at known moments.
        "RATELIMIT_FLUSH_SECONDS": "0",
        "WS_MAX_CONCURRENT": "4",
        # This machine's 2 cores are shared with the test process: a busy event loop must not
        # trip the limiter's short timeout into its fallback (that path has its own tests).
        "RATELIMIT_REDIS_TIMEOUT_MS": "1000",
    }
    server = start_daphne(env, tmp_path_factory.mktemp("api-server") / "daphne.log")
    try:
        wait_ready(server.url)
        yield server
    finally:
        server.stop()


@dataclass
class Customer:
    """A tenant with one key, as a client of the live server sees it."""

    slug: str
    token: str
    key_id: str
    tenant_id: int


@pytest.fixture
def customer(transactional_db, api_server) -> Customer:
    """A tenant with room for the tests' traffic, and one key."""
    from tenants.services import api_key_issue, tenant_create

    tenant = tenant_create(
        slug="globex",
        limits={"rpm": 6000, "tpm": 2_000_000, "max_inflight": 40, "burst_percent": 100},
        actor="test",
    )
    issued = api_key_issue(tenant=tenant, name="e2e", actor="test")
    return Customer(tenant.slug, issued.token, issued.api_key.key_id, tenant.pk)


def model_name(server: LiveDaphne) -> str:
    with urllib.request.urlopen(f"{server.url}/readyz", timeout=5) as response:  # noqa: S310
        return Path(json.load(response)["checks"]["model"]["model"]).name


def wait_for_release(tenant_id: int, timeout: float = 20.0) -> list[str]:
    """Wait until the tenant holds no lease (every request settled); what is still held."""
    from core.redis import get_sync_redis

    redis = get_sync_redis()
    deadline = time.monotonic() + timeout
    while True:
        held = [
            key.decode()
            for key in redis.scan_iter(match=f"rl:v1:{{t:{tenant_id}}}:*")
            if b":lease:" in key or (key.endswith(b":inflight") and redis.zcard(key))
        ]
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.2)


def long_prompt(server: LiveDaphne, token: str, tokens: int = 40) -> str:
    """A prompt whose greedy completion runs to `tokens` (the tiny model reaches its end of
    sequence early on many prompts)."""
    for n in range(30):
        prompt = f"Tell story number {n}."
        body = json.dumps(
            {"model": model_name(server), "prompt": prompt, "max_tokens": tokens, "temperature": 0}
        ).encode()
        request = urllib.request.Request(  # noqa: S310 (a test URL)
            f"{server.url}/v1/completions",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            if json.load(response)["choices"][0]["finish_reason"] == "length":
                return prompt
    raise AssertionError("no prompt ran to its max_tokens")
