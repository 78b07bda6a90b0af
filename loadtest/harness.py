"""Pieces the load-test scripts share."""

import shutil
import socket
import subprocess
import tempfile
import time


def own_redis(appendonly: bool = False) -> tuple[subprocess.Popen, str]:
    """A redis-server of the script's own on a free loopback port; (process, url)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind"]
        + ["127.0.0.1", "--save", "", "--appendonly", "yes" if appendonly else "no"]
        + ["--dir", tempfile.mkdtemp(prefix="redis-")],
        # Both streams closed: a caller's pipe must not stay open for as long as Redis lives.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.02)
    server.kill()
    raise SystemExit("redis-server did not start")
