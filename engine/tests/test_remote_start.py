"""Ending a model process's start from another thread (Engine.stop while the model loads)."""

import threading
from pathlib import Path

import pytest

from engine.loading import ModelLoadError
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
