"""Ending a model process's start from another thread (Engine.stop while the model loads)."""

import threading
from pathlib import Path

import pytest

from engine.generation import ModelLoadError
from engine.remote import ModelProcess
from engine.testing import tiny_config


def test_a_start_cancelled_before_the_spawn_kills_the_process_it_spawns(
    tiny_model_dir: Path,
) -> None:
    remote = ModelProcess(tiny_config(tiny_model_dir, process=True))
    remote.cancel_start()  # the stop came between creating the handle and the spawn
    with pytest.raises(ModelLoadError):
        remote.start()
    assert remote.process is not None
    assert remote.process.wait(timeout=60) is not None  # killed, not left loading


def test_a_start_cancelled_while_loading_ends_it(tiny_model_dir: Path) -> None:
    remote = ModelProcess(tiny_config(tiny_model_dir, process=True))
    outcome: list[BaseException] = []

    def start() -> None:
        try:
            remote.start()
        except BaseException as exc:  # noqa: BLE001 - the outcome is the assertion
            outcome.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    while remote.process is None and thread.is_alive():
        thread.join(0.01)
    remote.cancel_start()
    thread.join(120)
    assert not thread.is_alive()
    assert remote.process is not None and remote.process.wait(timeout=60) is not None
    # Killed before its model was ready: the start failed (or, on a fast machine, it had
    # finished loading first and then the process was killed under it).
    assert not outcome or isinstance(outcome[0], ModelLoadError)


def test_a_model_process_ends_when_its_server_process_is_gone(tmp_path: Path) -> None:
    # A stand-in server process starts a real model process (engine.worker, which waits for
    # its configuration) and is SIGKILLed. A third process keeps the server's end of the
    # connection open, so the model process sees no end of file (as when it is stuck in a
    # download): it must notice its parent is gone and end on its own.
    import os
    import signal
    import subprocess
    import sys
    import time

    from engine.remote import _python_path

    script = (
        "import os, socket, subprocess, sys, time\n"
        "ours, theirs = socket.socketpair()\n"
        "child = subprocess.Popen([sys.executable, '-m', 'engine.worker', str(theirs.fileno()),"
        " str(os.getpid())], pass_fds=(theirs.fileno(),))\n"
        "holder = subprocess.Popen(['sleep', '600'], pass_fds=(ours.fileno(),))\n"
        "print(child.pid, holder.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": _python_path()}
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    assert server.stdout is not None
    model_pid, holder_pid = map(int, server.stdout.readline().split())
    try:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _running(model_pid):
            time.sleep(0.1)
        assert not _running(model_pid)
    finally:
        for pid in (model_pid, holder_pid):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
