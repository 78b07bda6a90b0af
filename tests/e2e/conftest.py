"""The real stack, outside containers: two daphne replicas, Traefik and Prometheus.

Traefik and Prometheus run on the project's own files from deploy/, rendered by deploy/render.py
with loopback addresses as the only difference from compose (see docs/deploy.md). Everything is
started once per session, on ports the OS hands out, and stopped by pid at the end.
"""

import json
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.render import render_tree
from tests.e2e.servers import (
    REPO,
    Server,
    free_port,
    http_get,
    require_binary,
    start,
    wait_http,
    wait_until,
)

# Traefik health-checks the replicas here, as compose does: 503 until the model is loaded.
HEALTH_PATH = "/readyz"
# The queue bound the rules are rendered with (deploy/prometheus/tests/alerts.test.yml needs 10).
INFERENCE_MAX_QUEUE = 10
# The replicas listen here, an address Django's ALLOWED_HOSTS does not list: as in compose,
# where Prometheus and Traefik reach each replica by an address no one lists.
REPLICA_HOST = "127.0.0.2"


@dataclass
class Replica:
    """One daphne process serving the app (with the e2e probe route)."""

    server: Server
    port: int
    metrics_dir: Path

    @property
    def url(self) -> str:
        return f"http://{REPLICA_HOST}:{self.port}"


@dataclass
class Stack:
    """Where the running servers listen."""

    replicas: list[Replica]
    public: str
    internal: str
    prometheus: str
    dead_server: str
    traefik: Server
    access_log: Path
    config_dir: Path


def manage(env: dict[str, str], *args: str) -> str:
    """Run a management command as the deployment would; its stdout."""
    result = subprocess.run(  # noqa: S603 (our own manage.py)
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def app_env(django_db_setup: None, e2e_dir: Path, tiny_model_dir: Path) -> dict[str, str]:
    """The environment of every app process: production settings on the test database."""
    import os

    from conftest import database_url_for_current_test_db

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DATABASE_URL": database_url_for_current_test_db(),
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "API_KEY_PEPPER": secrets.token_urlsafe(48),
        # The public host (tests reach Traefik at 127.0.0.1) and localhost for health checks.
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Traefik reaches the replicas from 127.0.0.1; tests play clients from 127.0.0.5.
        "TRUSTED_PROXY_HEADER": "X-Forwarded-For",
        "TRUSTED_PROXY_ADDRESSES": "127.0.0.1",
        "STATIC_ROOT": str(e2e_dir / "static"),
        # No flusher thread: these servers outlive many tests that inspect Redis's buffers.
        "RATELIMIT_FLUSH_SECONDS": "0",
        # The tiny random T5 stands in for flan-t5-base (same code path, a few MB).
        "INFERENCE_MODEL": str(tiny_model_dir),
        "INFERENCE_ADAPTER": str(tiny_model_dir / "adapter"),
        "INFERENCE_MODEL_NAME": "tiny-t5",
        "INFERENCE_QUANTIZATION": "none",
        "INFERENCE_THREADS": "1",
        # Two replicas and the tests share 2 cores: a slow event loop is not a Redis outage.
        "RATELIMIT_REDIS_TIMEOUT_MS": "1000",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    manage(env, "collectstatic", "--noinput", "-v0")
    return env


@pytest.fixture(scope="module")
def api_token(app_env: dict[str, str], django_db_blocker) -> Iterator[str]:
    """A tenant and a key made by the real commands (committed, visible to the replicas)."""
    slug = f"e2e-{uuid.uuid4().hex[:8]}"
    manage(app_env, "create_tenant", slug, "--rpm", "6000", "--tpm", "1000000")
    yield manage(app_env, "issue_key", slug, "--name", "e2e")
    from django.core.management import call_command

    # The commands committed their rows; empty the test database as a transactional test would.
    with django_db_blocker.unblock():
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture(scope="module")
def limited_token(app_env: dict[str, str], api_token: str) -> str:
    """A key of a tenant allowed one request at a time per minute (its second gets 429)."""
    slug = f"e2e-tight-{uuid.uuid4().hex[:8]}"
    manage(app_env, "create_tenant", slug, "--rpm", "1", "--burst", "1")
    return manage(app_env, "issue_key", slug, "--name", "tight")


def completion(base: str, token: str, host: str = "", **params: object) -> tuple[int, bytes]:
    """POST /v1/completions to the tiny model; (status, body). `host`: a Host header to send
    (a replica is reached by an address ALLOWED_HOSTS does not list, as in compose)."""
    body = json.dumps({"model": "tiny-t5", "prompt": "Say something.", "max_tokens": 8, **params})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if host:
        headers["Host"] = host
    request = urllib.request.Request(  # noqa: S310 (test URLs)
        f"{base}/v1/completions", data=body.encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_replica(n: int, app_env: dict[str, str], e2e_dir: Path) -> Replica:
    port, metrics_dir = free_port(), e2e_dir / f"metrics-{n}"
    metrics_dir.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "daphne", "-b", REPLICA_HOST, "-p", str(port)]
    server = start(
        f"daphne-{n}",
        [*argv, "tests.e2e.probe_asgi:application"],
        e2e_dir,
        env={**app_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    return Replica(server, port, metrics_dir)


@pytest.fixture(scope="session")
def replicas(app_env: dict[str, str], e2e_dir: Path) -> Iterator[list[Replica]]:
    """Two app replicas, each with its own metrics directory (as two containers would)."""
    started = [start_replica(n, app_env, e2e_dir) for n in (1, 2)]
    try:
        for replica in started:
            # Django, then the model process's torch import and warm-up: minutes at a load of 15.
            wait_http(replica.server, f"{replica.url}{HEALTH_PATH}", timeout=300, Host="localhost")
        yield started
    finally:
        for replica in started:
            replica.server.stop()


def stack_values(replicas: list[Replica], ports: dict[str, int], e2e_dir: Path) -> dict:
    """The render values of the tests: loopback addresses where compose has container names."""
    config = e2e_dir / "config"
    return {
        "TRAEFIK_PUBLIC_ADDRESS": f"127.0.0.1:{ports['public']}",
        "TRAEFIK_INTERNAL_ADDRESS": f"127.0.0.1:{ports['internal']}",
        "TRAEFIK_TRUSTED_FORWARDERS": [],
        "TRAEFIK_DYNAMIC_DIR": str(config / "traefik" / "dynamic"),
        "TRAEFIK_ACCESS_LOG": str(e2e_dir / "access.log"),
        # A third server that never answers: the health check must keep traffic off it.
        "APP_SERVERS": [{"url": replica.url} for replica in replicas]
        + [{"url": f"http://127.0.0.1:{ports['dead']}"}],
        "APP_HEALTH_PATH": HEALTH_PATH,
        "APP_DNS_SD": [],
        "APP_STATIC_TARGETS": [{"targets": [f"{REPLICA_HOST}:{r.port}" for r in replicas]}],
        "TRAEFIK_METRICS_TARGETS": [f"127.0.0.1:{ports['internal']}"],
        "PROMETHEUS_SELF_TARGETS": [f"127.0.0.1:{ports['prometheus']}"],
        "INFERENCE_MAX_QUEUE": INFERENCE_MAX_QUEUE,
        # No Alertmanager behind the session's Prometheus (tests/e2e/test_alerting.py has one).
        "ALERTMANAGER_TARGETS": [],
    }


def dead_server_marked_down(internal: str, dead: str) -> bool:
    status, body = http_get(f"{internal}/traefik/metrics", timeout=10)
    wanted = f'traefik_service_server_up{{service="app@file",url="{dead}"}} 0'
    return status == 200 and wanted in body.decode()


@pytest.fixture(scope="session")
def stack(replicas: list[Replica], e2e_dir: Path) -> Iterator[Stack]:
    """Traefik on the rendered project files, in front of the replicas."""
    # The dead server's port stays bound (never listening) for the whole session, so that no
    # server started later can take it and come alive behind Traefik.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    ports = {name: free_port() for name in ("public", "internal", "prometheus")}
    ports["dead"] = dead.getsockname()[1]
    config = e2e_dir / "config"
    render_tree(config, stack_values(replicas, ports, e2e_dir))
    traefik = start(
        "traefik",
        [require_binary("traefik"), f"--configFile={config / 'traefik' / 'traefik.yml'}"],
        e2e_dir,
    )
    running = Stack(
        replicas=replicas,
        public=f"http://127.0.0.1:{ports['public']}",
        internal=f"http://127.0.0.1:{ports['internal']}",
        prometheus=f"http://127.0.0.1:{ports['prometheus']}",
        dead_server=f"http://127.0.0.1:{ports['dead']}",
        traefik=traefik,
        access_log=e2e_dir / "access.log",
        config_dir=config,
    )
    try:
        wait_http(traefik, f"{running.internal}/ping")
        wait_http(traefik, f"{running.public}/healthz")
        wait_until(
            lambda: dead_server_marked_down(running.internal, running.dead_server),
            "Traefik's health check to mark the dead server down",
        )
        yield running
    finally:
        traefik.stop()
        dead.close()


@pytest.fixture(scope="session")
def prometheus(stack: Stack, e2e_dir: Path) -> Iterator[Server]:
    """The real Prometheus on the rendered project configuration and rules."""
    address = stack.prometheus.removeprefix("http://")
    server = start(
        "prometheus",
        [
            require_binary("prometheus"),
            f"--config.file={stack.config_dir / 'prometheus' / 'prometheus.yml'}",
            f"--storage.tsdb.path={e2e_dir / 'tsdb'}",
            f"--web.listen-address={address}",
        ],
        e2e_dir,
    )
    try:
        wait_http(server, f"{stack.prometheus}/-/ready")
        yield server
    finally:
        server.stop()
