"""The model process sets its long-lived objects aside from the cyclic collector (a full
collection walked them all: a pause of about 200 ms in every running stream), and a base swap
gives the old model's back."""

import subprocess
import sys
from pathlib import Path

from engine.loading import load_model
from engine.remote import ModelProcess, _python_path
from engine.testing import tiny_config

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter: freezing is process-wide, and pytest's own process must not keep
# every later test's cycles.
SWAP = """
import gc, weakref
from engine.model import settle_heap

class Model:  # a reference cycle, as modules and configs make
    def __init__(self):
        self.me = self

old = Model()
alive = weakref.ref(old)
frozen = settle_heap()
assert frozen > 1000, frozen  # the interpreter's and the imports' objects, at least
assert gc.get_freeze_count() == frozen
del old  # the base swap drops it: only the collector could free a cycle
gc.collect()
assert alive() is not None, "a frozen cycle is never collected"
again = settle_heap(release=True)
assert alive() is None, "the swap's settle_heap let the old model go"
assert again > 1000
print("ok")
"""


def test_settle_heap_freezes_and_a_release_lets_the_dropped_go() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SWAP],
        cwd=ROOT,
        env={"PYTHONPATH": _python_path()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_model_process_is_ready_with_its_heap_frozen_and_tells_its_models_bytes(
    tiny_model_dir: Path,
) -> None:
    remote = ModelProcess(tiny_config(tiny_model_dir, process=True))
    loaded = remote.start()
    try:
        # torch, transformers, the model's modules: far more than a bare interpreter's.
        assert remote.heap_frozen > 50_000
        here = load_model(str(tiny_model_dir), quantization="none")  # tiny_config's fp32
        assert loaded.model_bytes == here.model_bytes > 0
        assert loaded.cache_token_bytes == here.cache_token_bytes > 0
        assert loaded.device_type == here.device_type == "cpu"  # the facade's, from the facts
    finally:
        remote.stop()
