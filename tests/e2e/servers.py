"""Start and stop the real servers the end-to-end tests run (daphne, Traefik, Prometheus)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def require_binary(name: str) -> str:
    """The path of a program the tests run, or a failure that says how to get it."""
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path is None:
        hint = (
            "apt-get install prometheus"
            if name in ("prometheus", "promtool")
            else ("pip install the test extra: .venv/bin/pip install torch==2.13.0 '.[test]'")
        )
        raise RuntimeError(f"{name} is not installed ({hint}; .ci/run does it)")
    return path


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (test URLs)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie its parent (or init) has yet to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# Waits are for conditions, with deadlines far past what they take on an idle machine: the
# suite must hold at a load average of 5 on 2 cores.
def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")


@dataclass
class Server:
    """A child process with its output in a log file; stopped by its own pid."""

    name: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def assert_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.output()}")


def start(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Server:
    log = log_dir / f"{name}.log"
    handle = log.open("wb")
    process = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    return Server(name, process, log)


def wait_http(
    server: Server, url: str, status: int = 200, timeout: float = 120.0, **headers: str
) -> None:
    def ready() -> bool:
        server.assert_running()
        return http_get(url, timeout=10, **headers)[0] == status

    wait_until(ready, f"{server.name} at {url}", timeout)
