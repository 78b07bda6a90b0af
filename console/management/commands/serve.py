"""`manage.py serve`: daphne in N processes that share one listening socket.

One model lives in each process (a process per GPU), so a container that owns several GPUs runs
several processes. The parent binds the socket once and hands it to every daphne child, which
all accept on it; the parent only forwards signals and exits when any child exits, so the
container restarts as a whole. /metrics in any child adds up every child through
PROMETHEUS_MULTIPROC_DIR, which the parent empties before the children start: files left by an
earlier run would otherwise be added to the new counters.

A stop (SIGTERM/SIGINT) goes to every child, which drains its model (at most
INFERENCE_DRAIN_SECONDS, then the engine cancels what is left) and exits; a child still running
past that, plus STOP_MARGIN_SECONDS, is killed. A child whose model is still loading has nothing
to drain and exits at once (engine/runtime.py), however slow the load on a busy machine.
"""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

# After INFERENCE_DRAIN_SECONDS a child's engine cancels the rows left (at most 10 s more), then
# daphne closes its connections: this margin covers both.
STOP_MARGIN_SECONDS = 15.0
ASGI_APPLICATION = "console.asgi:application"


def listen(bind: str, port: int) -> socket.socket:
    """A listening IPv4 TCP socket that child processes may inherit."""
    # daphne's fd endpoint adopts AF_INET sockets only.
    sock = socket.create_server((bind, port), family=socket.AF_INET, backlog=2048)
    sock.set_inheritable(True)
    return sock


def empty_multiproc_dir(path: str) -> None:
    """Remove the previous run's metric files (only prometheus_client's *.db files)."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def daphne_command(sock: socket.socket, extra: list[str]) -> list[str]:
    # No --proxy-headers: the client address comes from core/clientaddr.py, which trusts
    # the proxy header only from TRUSTED_PROXY_ADDRESSES.
    return [sys.executable, "-m", "daphne", "--fd", str(sock.fileno()), *extra, ASGI_APPLICATION]


class Command(BaseCommand):
    help = "Serve HTTP and WebSockets with daphne in --processes processes on one socket."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="0.0.0.0")  # noqa: S104 (inside a container)
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--processes", type=int, default=settings.WEB_PROCESSES)
        parser.add_argument("--access-log", default=None, help="daphne's access log ('-')")

    def handle(self, *args: Any, **options: Any) -> None:
        processes = options["processes"]
        if processes < 1:
            raise CommandError("--processes must be at least 1.")
        if ":" in options["bind"]:
            raise CommandError("--bind takes an IPv4 address (daphne adopts IPv4 sockets only).")
        if processes > 1 and not settings.PROMETHEUS_MULTIPROC_DIR:
            raise CommandError(
                "Several processes need PROMETHEUS_MULTIPROC_DIR (a directory private to this "
                "container), or /metrics would show one process at a time."
            )
        if settings.PROMETHEUS_MULTIPROC_DIR:
            empty_multiproc_dir(settings.PROMETHEUS_MULTIPROC_DIR)
        extra = ["--access-log", options["access_log"]] if options["access_log"] else []
        with listen(options["bind"], options["port"]) as sock:
            children = [
                # The argv is our own interpreter, daphne and fixed options: no outside input.
                subprocess.Popen(daphne_command(sock, extra), pass_fds=(sock.fileno(),))  # noqa: S603
                for _ in range(processes)
            ]
            sys.exit(supervise(children, settings.INFERENCE_DRAIN_SECONDS + STOP_MARGIN_SECONDS))


def supervise(children: list[subprocess.Popen], grace: float) -> int:
    """Forward SIGTERM/SIGINT to the children; when one exits, stop the rest (killing any
    still running `grace` seconds later). Its exit code."""
    stopping: list[int] = []

    def forward(signum: int, frame: object) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    code = next(child.returncode for child in children if child.returncode is not None)
    if not stopping:
        forward(signal.SIGTERM, None)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(
                f"serve: pid {child.pid} did not stop within {grace:.0f} s; killed", file=sys.stderr
            )
            child.kill()
            child.wait()
    return 0 if stopping else (code or 1)
