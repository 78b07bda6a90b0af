"""The model's OpenMP threads sleep when idle instead of spinning (engine/__init__.py)."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from engine.runtime import Engine

ROOT = Path(__file__).resolve().parents[2]


def _policy(code: str, **env: str) -> str:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    }
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{code}; import engine, os; print(os.environ.get('OMP_WAIT_POLICY'))",
        ],
        env={**environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_the_engine_makes_idle_openmp_threads_sleep_unless_the_operator_chose() -> None:
    assert _policy("pass") == "PASSIVE"
    assert _policy("pass", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    assert _policy("pass", GOMP_SPINCOUNT="1000") == "None"


def test_the_model_process_starts_with_the_passive_policy(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(process=True)
    pid = engine.status()["model_process"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"OMP_WAIT_POLICY=PASSIVE" in environ
