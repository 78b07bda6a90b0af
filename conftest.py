"""Shared fixtures. The suite runs against real PostgreSQL and Redis (see `make test`)."""

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

# The engine fixtures (make_engine, any_engine, ...) serve the engine's tests and the API's.
pytest_plugins = ["engine.tests.fixtures"]

# Tests never reach a model hub: a hub id that is not in the local cache fails at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite's tenants are made with only the limits each test is about: no preset beneath them
# (the app processes the end-to-end tests start inherit it). Tests of the default preset set
# settings.TENANT_DEFAULT_PRESET themselves (pages/tests/test_tenant_lifecycle.py).
os.environ.setdefault("TENANT_DEFAULT_PRESET", "unlimited")

NEEDS = (
    "The test suite needs a real PostgreSQL and Redis. `make test` points at 127.0.0.1 by "
    "default; to run pytest directly, export DATABASE_URL=postgres://postgres@127.0.0.1:5432/"
    "inference_node and REDIS_URL=redis://127.0.0.1:6379/9."
)


def _worker_redis_url(url: str, worker: str) -> str:
    """REDIS_URL for a pytest-xdist worker: gw0 keeps its database, gwN takes the Nth after it,
    so that each test's flush of its database (clean_redis) touches no other worker's."""
    if not url or not worker.startswith("gw") or worker == "gw0":
        return url
    parsed = urlparse(url)
    database = int(parsed.path.strip("/") or 0) + int(worker.removeprefix("gw"))
    return parsed._replace(path=f"/{database}").geturl()


def _separate_workers() -> None:
    """Under pytest-xdist (`make test` runs three workers), each worker on its own Redis
    database; pytest-django already gives each its own test database (test_<name>_gwN).
    pytest-django has loaded the settings before this file runs, and every Redis client is
    made on first use, so the settings and the environment (inherited by the servers the
    tests start) are rewritten here, before any test."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    url = os.environ.get("REDIS_URL", "")
    moved = _worker_redis_url(url, worker)
    if moved == url:
        return
    from django.conf import settings

    os.environ["REDIS_URL"] = moved
    if os.environ.get("RATELIMIT_REDIS_URL") == url:
        os.environ["RATELIMIT_REDIS_URL"] = moved
    if settings.RATELIMIT_REDIS_URL == settings.REDIS_URL:
        settings.RATELIMIT_REDIS_URL = moved
    settings.REDIS_URL = moved
    settings.CACHES["default"]["LOCATION"] = moved
    for layer in settings.CHANNEL_LAYERS.values():
        hosts = layer.get("CONFIG", {}).get("hosts")
        if hosts == [url]:
            layer["CONFIG"]["hosts"] = [moved]


_separate_workers()


def _probe_services() -> str | None:
    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")) or not redis_url:
        return f"DATABASE_URL (PostgreSQL) and REDIS_URL must be set. {NEEDS}"
    import psycopg
    import redis

    parsed = urlparse(database_url)
    try:
        psycopg.connect(
            host=parsed.hostname,
            port=parsed.port or 5432,
            user=parsed.username or "postgres",
            password=parsed.password,
            dbname="postgres",
            connect_timeout=3,
        ).close()
    except Exception as exc:
        return (
            f"PostgreSQL at {parsed.hostname}:{parsed.port or 5432} is not reachable "
            f"({type(exc).__name__}). {NEEDS}"
        )
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis at {redis_url} is not reachable ({type(exc).__name__}). {NEEDS}"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    problem = _probe_services()
    if problem:
        pytest.exit(problem, returncode=3)
    from django.conf import settings

    # No background flusher in the test process (importing console.asgi would start one):
    # tests that move usage do it themselves, at known moments; one flusher test starts its own.
    settings.RATELIMIT_FLUSH_SECONDS = 0
    # Nor a key preload: it would open the database pool before the test database exists
    # (the servers the end-to-end tests start preload as in production).
    settings.API_KEY_PRELOAD = 0
    # Settings were read before this file (pytest-django loads them first): as set above.
    settings.TENANT_DEFAULT_PRESET = os.environ["TENANT_DEFAULT_PRESET"]
    # The limiter waits 50 ms for Redis in production, then admits by its local fallback. On a
    # busy two-core machine (mypy and three workers beside the tests) one ADMIT in a few
    # thousand took longer, and a test of Redis's exact answer got the fallback's. The tests'
    # own process, and the processes they start, wait a second unless the environment says
    # otherwise; the tests of the timeout and the fallback set their own, shorter, timeouts.
    if "RATELIMIT_REDIS_TIMEOUT_MS" not in os.environ:
        os.environ["RATELIMIT_REDIS_TIMEOUT_MS"] = "1000"
        settings.RATELIMIT_REDIS_TIMEOUT_MS = 1000


@pytest.fixture(autouse=True)
def quick_password_hashes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Passwords a test sets and checks in this process are hashed once rather than with
    PBKDF2's million rounds (about half a second each here, in most console tests).
    Not for the end-to-end tests: their users sign in to servers of their own, which keep the
    production hashers and could not read these hashes."""
    if request.node.get_closest_marker("e2e"):
        yield
        return
    from django.test import override_settings

    # override_settings, not an assignment: its signal clears the hashers Django has cached.
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


# The order `make test`'s workers take whole files in (first come, first served). Last in, the
# run's end waits for one worker alone: so the two-minute chaos smoke (its own servers, Redis and
# database) goes first; the end-to-end files stay after the unit tests (their session servers
# then live only to the end), the longest first (the files of a SHARED_SERVERS group run
# together, where the first of them comes).
RUN_FIRST = ("tests/loadtest/test_chaos_smoke.py",)
E2E_LONGEST = (
    "tests/e2e/test_prometheus.py",
    "tests/e2e/test_alerting.py",
    "tests/e2e/test_traefik.py",
    "tests/e2e/test_streaming.py",
    "tests/e2e/api/test_bad_input.py",
    "tests/e2e/test_pgbouncer.py",
    "tests/e2e/console/test_console_phone.py",
    "tests/e2e/console/test_console_roles.py",
    "tests/e2e/test_multiprocess.py",
    "tests/e2e/test_k8s_binaries.py",
    "tests/e2e/console/test_console_browser.py",
)
# Session servers that several files share (tests/e2e/conftest.py's two replicas behind Traefik,
# tests/e2e/api/conftest.py's daphne), and the files (or folder) that use them. Each worker that
# takes one of those files starts the server for itself (on a slow 2-core machine 25-70 s of
# Django, model process and Traefik start-up a time), so a group's files go to one worker, as one
# unit of work (pytest_xdist_make_scheduler). Checked at collection: a file that uses one of these
# fixtures and is not listed here is a usage error (it would start the server once more).
SHARED_SERVERS = {
    "stack": (
        "tests/e2e/test_prometheus.py",
        "tests/e2e/test_alerting.py",
        "tests/e2e/test_traefik.py",
        "tests/e2e/test_streaming.py",
    ),
    "api_server": ("tests/e2e/api/",),
}
# The fixture that starts each group's server (a test on stack or prometheus has replicas too).
GROUP_FIXTURES = {"replicas": "stack", "api_server": "api_server"}


def server_group(path: str) -> str | None:
    """The SHARED_SERVERS group a test file belongs to, if any."""
    for group, members in SHARED_SERVERS.items():
        if any(path.startswith(member) for member in members):
            return group
    return None


def check_server_groups(items: list[pytest.Item]) -> None:
    """Every file that uses a shared session server is in that server's group."""
    for item in items:
        path = item.nodeid.split("::")[0]
        for fixture in getattr(item, "fixturenames", ()):
            group = GROUP_FIXTURES.get(fixture)
            if group is not None and server_group(path) != group:
                raise pytest.UsageError(
                    f"{path} uses the session server {fixture!r}: add it to conftest.py's "
                    f"SHARED_SERVERS[{group!r}] so that its worker shares that server."
                )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `--dist loadfile` (make test): whole files per worker, and a SHARED_SERVERS
    group's files together as one unit; other modes are xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedServerScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            group = server_group(path)
            return path if group is None else f"shared server {group}"

    return SharedServerScheduling(config, log)


def _run_rank(path: str) -> tuple[int, int]:
    if path in RUN_FIRST:
        return 0, RUN_FIRST.index(path)
    if path in E2E_LONGEST:
        return 2, E2E_LONGEST.index(path)
    return (3, 0) if path.startswith("tests/") else (1, 0)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    # After pytest-django's order (database tests first), which a stable sort keeps within each
    # rank; a file's tests keep their order.
    yield
    check_server_groups(items)
    items.sort(key=lambda item: _run_rank(item.nodeid.split("::")[0]))


@pytest.fixture(scope="session", autouse=True)
def close_database_pools(django_db_setup: None) -> Iterator[None]:
    """Close psycopg pools before pytest-django drops the test database."""
    yield
    import psycopg
    from django.db import connection, connections

    for conn in connections.all():
        conn.close()
        if hasattr(conn, "close_pool"):
            conn.close_pool()
    # Async tests leave connections open in asgiref's worker thread; end them (from the
    # maintenance database, not through Django's pool) so the test database can be dropped.
    s = connection.settings_dict
    with psycopg.connect(
        host=s["HOST"] or "127.0.0.1",
        port=s["PORT"] or 5432,
        user=s["USER"],
        password=s.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    ) as maintenance:
        maintenance.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [s["NAME"]],
        )


@pytest.fixture(autouse=True)
def clean_redis() -> Iterator[None]:
    """Each test starts with an empty test Redis database, an empty key cache, a fresh
    limiter (no open breaker, no cached refusal, no backlog left by another test) and an
    adapter registry that has handed nothing to any engine yet."""
    from core.redis import get_sync_redis
    from inference.adapters import adapter_registry
    from ratelimit import limiter
    from tenants.keycache import key_cache

    get_sync_redis().flushdb()
    key_cache.clear()
    limiter.reset_state()
    adapter_registry.reset()
    yield
    key_cache.clear()
    adapter_registry.reset()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random T5 with its tokenizer (and an adapter in ./adapter), built once."""
    from engine.loading import quiet_libraries
    from engine.tiny_model import make_tiny_model

    quiet_libraries()
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture
def tenant(db):
    from tenants.services import tenant_create

    return tenant_create(slug="acme", name="Acme", limits={"rpm": 600, "tpm": 100000}, actor="test")


@pytest.fixture
def issued(tenant):
    from tenants.services import api_key_issue

    return api_key_issue(tenant=tenant, name="primary", actor="test")


def database_url_for_current_test_db() -> str:
    """The DATABASE_URL of the database the running test uses (for child processes)."""
    from django.db import connection

    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
