"""The engine's life in a real server process: loaded by console/asgi.py, drained on SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import database_url_for_current_test_db

ROOT = Path(__file__).resolve().parents[2]


def server_env(tiny_model_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "INFERENCE_MODEL": str(tiny_model_dir),
        "INFERENCE_QUANTIZATION": "none",
        "INFERENCE_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_importing_the_asgi_app_does_not_load_the_model_when_autoload_is_off(
    tiny_model_dir: Path,
) -> None:
    code = (
        "import sys, console.asgi; from inference import engines; print(engines.model_status());"
        "print('model code:', sorted({'torch', 'transformers', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=server_env(tiny_model_dir, INFERENCE_AUTOLOAD="false"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "'state': 'not_loaded'" in out.stdout
    assert "model code: []" in out.stdout  # engine/model.py: the server imports none of it


def wait_ready(port: int, server: subprocess.Popen[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "daphne exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:  # noqa: S310
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("the node never became ready")


@pytest.mark.django_db(transaction=True)
def test_daphne_loads_the_model_at_start_and_drains_it_on_sigterm(tiny_model_dir: Path) -> None:
    port = free_port()
    env = server_env(tiny_model_dir, DATABASE_URL=database_url_for_current_test_db())
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(
        [*command, "console.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready(port, server)
        # The model lives in a model process (INFERENCE_MODEL_PROCESS's default): the serving
        # process never loads torch (about 290 MiB resident and 2.5 s of imports it spared).
        libraries = Path(f"/proc/{server.pid}/maps").read_text()
        assert "libtorch" not in libraries and "libtorch" in model_process_maps(server.pid)
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0
    assert "inference model ready" in output
    assert "draining the inference engine" in output


def model_process_maps(server_pid: int) -> str:
    """The memory map of the serving process's one child, the model process."""
    # Each thread lists the children it started (the model thread starts this one).
    tasks = Path(f"/proc/{server_pid}/task").glob("*/children")
    children = [pid for task in tasks for pid in task.read_text().split()]
    assert len(children) == 1, children
    return Path(f"/proc/{children[0]}/maps").read_text()
