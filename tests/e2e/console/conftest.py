"""Fixtures of the end-to-end tests: a live daphne on the test database, and a browser."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import database_url_for_current_test_db
from tests.e2e.console.apiclient import NodeApi
from tests.e2e.console.browser import (
    STAFF_PASSWORD,
    STAFF_USERNAME,
    ConsoleBrowser,
    browser_missing,
    make_driver,
)
from tests.e2e.live_daphne import LiveDaphne, start_daphne, wait_ready


@pytest.fixture(scope="module")
def daphne_server_env(tiny_model_dir: Path) -> dict[str, str]:
    """Environment of the live server beyond the test process's own (override to add to it)."""
    return {
        # Plain http on loopback: with DEBUG off the session cookie would be Secure-only.
        "DEBUG": "true",
        "INFERENCE_MODEL": str(tiny_model_dir),
        "INFERENCE_ADAPTER": str(tiny_model_dir / "adapter"),
        "INFERENCE_QUANTIZATION": "none",
        "INFERENCE_THREADS": "1",
        # A loaded 2-core machine must not trip the limiter's short timeout into its fallback.
        "RATELIMIT_REDIS_TIMEOUT_MS": "1000",
        # No flusher thread: the test moves usage and 429s to Postgres itself (flush()).
        "RATELIMIT_FLUSH_SECONDS": "0",
    }


@pytest.fixture(scope="module")
def daphne_server(
    django_db_setup: None, daphne_server_env, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveDaphne]:
    """A daphne serving the whole project (the tiny model too) on the test database and Redis,
    once /readyz says it is ready. One per module (its start is most of a test's time): every
    test here is transactional, so the database is emptied after each, and clean_redis
    empties Redis before each; the server keeps no state a test reads (keys are new tokens,
    tenants new ids, sessions new cookies in a new browser profile)."""
    env = {
        "DATABASE_URL": database_url_for_current_test_db(),
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "PYTHONUNBUFFERED": "1",
        **daphne_server_env,
    }
    server = start_daphne(env, tmp_path_factory.mktemp("console-daphne") / "daphne.log")
    try:
        wait_ready(server.url)
        yield server
    finally:
        server.stop()


@pytest.fixture
def node_api(transactional_db, daphne_server: LiveDaphne, tiny_model_dir: Path) -> NodeApi:
    """The live server's API, called as a tenant's program would (the model by its name)."""
    return NodeApi(daphne_server.url, tiny_model_dir.name)


@pytest.fixture
def staff_account(transactional_db, django_user_model):
    """Staff with every permission of the tenants app: the journey reads every page and
    creates a tenant, issues, rotates and revokes a key and changes limits."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(
        STAFF_USERNAME, password=STAFF_PASSWORD, is_staff=True
    )
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="tenants"))
    return user


@pytest.fixture
def screenshots_dir(tmp_path: Path) -> Path:
    """Where steps save screenshots: CONSOLE_SCREENSHOTS (make screenshots) or a temp dir."""
    chosen = os.environ.get("CONSOLE_SCREENSHOTS")
    return Path(chosen) if chosen else tmp_path / "screenshots"


@pytest.fixture(scope="module")
def browser_ready() -> None:
    """Skip (or, under .ci/run, fail) before any server starts when Chromium is missing."""
    missing = browser_missing()
    if missing and os.environ.get("REQUIRE_BROWSER"):
        pytest.fail(missing)
    if missing:
        pytest.skip(missing)


@pytest.fixture
def console(
    browser_ready: None,
    transactional_db,
    daphne_server: LiveDaphne,
    screenshots_dir: Path,
    tmp_path: Path,
) -> Iterator[ConsoleBrowser]:
    """Headless Chromium on the live server's console."""
    driver = make_driver(tmp_path / "chromium-profile")
    try:
        yield ConsoleBrowser(driver, daphne_server.url, screenshots_dir)
    finally:
        # The last page, for a failed run (kept with the test's temp files, never in docs).
        driver.save_screenshot(str(tmp_path / "last-page.png"))
        (tmp_path / "last-page.html").write_text(driver.page_source)
        driver.quit()
