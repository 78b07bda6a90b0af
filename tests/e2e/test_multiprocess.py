"""Several daphne processes in one container: /metrics adds them all up; a stop is prompt."""

import json
import os
import signal
import socket
import sys
from pathlib import Path

import psutil
import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from tests.e2e.servers import Server, alive, free_port, http_get, start, wait_http, wait_until

# django_db: makes pytest-django create the test database the processes use.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

HEALTHZ = (
    "django_http_requests_total_by_view_transport_method_total"
    '{method="GET",transport="http",view="healthz"}'
)


def healthz_count(base: str) -> float:
    for line in http_get(f"{base}/metrics")[1].decode().splitlines():
        if line.startswith(HEALTHZ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_two_daphne_processes_sharing_a_directory_report_their_sum(
    app_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**app_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    ports = [free_port(), free_port()]
    servers = [
        start(
            f"daphne-{port}",
            [sys.executable, "-m", "daphne", "-p", str(port), "console.asgi:application"],
            tmp_path,
            env,
        )
        for port in ports
    ]
    try:
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for server, base in zip(servers, bases, strict=True):
            wait_http(server, f"{base}/healthz")  # one request each while waiting
        before = healthz_count(bases[0])
        for _ in range(3):
            http_get(f"{bases[0]}/healthz")
        for _ in range(5):
            http_get(f"{bases[1]}/healthz")
        # Either process answers for both: 8 more requests, whichever one is asked.
        assert healthz_count(bases[0]) == before + 8
        assert healthz_count(bases[1]) == before + 8
    finally:
        for server in servers:
            server.stop()


def test_serve_runs_several_processes_on_one_socket_and_starts_from_clean_metrics(
    app_env: dict[str, str], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale run")
    port = free_port()
    env = {**app_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    argv = [sys.executable, "manage.py", "serve", "--bind", "127.0.0.1", "--port", str(port)]
    server = start("serve", [*argv, "--processes", "2"], tmp_path, env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(server, f"{base}/healthz")
        assert not (metrics_dir / "counter_999999.db").exists()
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        wait_until(lambda: len(children.read_text().split()) == 2, "two daphne children")
        before = healthz_count(base)
        for _ in range(10):
            http_get(f"{base}/healthz", Connection="close")
        assert healthz_count(base) == before + 10
        server.process.send_signal(signal.SIGTERM)
        # Generous: a stop takes seconds, but the machine may be busy. What must hold is that
        # every child stopped by itself (serve kills one only past the drain's grace).
        assert server.process.wait(timeout=STOP_WAIT_SECONDS) == 0
        assert "did not stop" not in server.output()
    finally:
        server.stop()


# Far longer than a stop takes, far shorter than the drain the test configures (a stop that
# waited for the model to load would wait that long).
STOP_WAIT_SECONDS = 90
DRAIN_SECONDS = 600


def children_of(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children()]


def model_processes(server: Server) -> list[int]:
    """The model process of each daphne child of `serve`."""
    return [pid for child in children_of(server.process.pid) for pid in children_of(child)]


def test_serve_stops_at_once_while_its_models_are_still_loading(
    app_env: dict[str, str], tmp_path: Path
) -> None:
    # A model whose download never ends: the "hub" accepts connections and never answers.
    hub = socket.create_server(("127.0.0.1", 0))
    (tmp_path / "metrics").mkdir()
    env = {
        **app_env,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "INFERENCE_MODEL": "e2e/never-arrives",
        "INFERENCE_ADAPTER": "",
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}",
        "HF_HOME": str(tmp_path / "hf"),
        "INFERENCE_DRAIN_SECONDS": str(DRAIN_SECONDS),
    }
    port = free_port()
    argv = [sys.executable, "manage.py", "serve", "--bind", "127.0.0.1", "--port", str(port)]
    server = start("serve-loading", [*argv, "--processes", "2"], tmp_path, env)
    started: list[int] = []  # the daphne children and their model processes
    try:
        wait_http(server, f"http://127.0.0.1:{port}/healthz")
        # Both children are loading their model: each has started its model process.
        wait_until(lambda: len(model_processes(server)) == 2, "two model processes", 120)
        loading = model_processes(server)
        started = [*children_of(server.process.pid), *loading]
        status, body = http_get(f"http://127.0.0.1:{port}/readyz", Host="localhost")
        assert (status, json.loads(body)["checks"]["model"]["state"]) == (503, "loading")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=STOP_WAIT_SECONDS) == 0
        assert "did not stop" not in server.output()
        # The loads were ended, not left running.
        wait_until(lambda: not any(alive(pid) for pid in loading), "the loads to end")
    finally:
        server.stop()
        for pid in started:  # only if the test failed: they would wait out the whole drain
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        hub.close()


def test_serve_refuses_several_processes_without_a_metrics_directory() -> None:
    with override_settings(PROMETHEUS_MULTIPROC_DIR=""), pytest.raises(CommandError):
        call_command("serve", processes=2)
