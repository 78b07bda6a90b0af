"""The server process sets what its imports made aside from the cyclic collector (a full
collection walked about 440,000 objects: 180-200 ms in which the event loop answered nothing)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import gc
import console.asgi
frozen = gc.get_freeze_count()
assert frozen > 100_000, frozen  # Django, channels, torch, the engine's modules
print("ok")
"""


def test_the_asgi_application_freezes_its_imports() -> None:
    # A fresh interpreter, as daphne imports it; no model is loaded (it is what comes later).
    done = subprocess.run(
        [sys.executable, "-c", CODE],
        cwd=ROOT,
        env={**os.environ, "DEBUG": "true", "INFERENCE_AUTOLOAD": "false"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
