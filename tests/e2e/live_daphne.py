"""A real daphne serving the project on a free loopback port, for end-to-end tests."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

LISTENING = re.compile(r"Listening on TCP address 127\.0\.0\.1:(\d+)")


@dataclass
class LiveDaphne:
    """A daphne child process and the URL it answers on."""

    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_daphne(env: dict[str, str], log: Path, timeout: float = 30.0) -> LiveDaphne:
    """Start daphne on port 0 (the kernel picks a free port) and wait until it listens."""
    daphne = Path(sys.executable).with_name("daphne")
    command = [str(daphne), "-b", "127.0.0.1", "-p", "0", "console.asgi:application"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Daphne logs the real port once bound; reading it avoids a probe-then-bind race.
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return LiveDaphne(process, f"http://127.0.0.1:{match.group(1)}", log)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    server = LiveDaphne(process, "", log)
    server.stop()
    raise RuntimeError(f"daphne did not start:\n{server.log_text()[-3000:]}")


def wait_ready(url: str, timeout: float = 120.0) -> None:
    """Wait until the server's /readyz says ready (database, Redis and the model)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:  # noqa: S310
                if json.load(response)["ready"]:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} never became ready")
