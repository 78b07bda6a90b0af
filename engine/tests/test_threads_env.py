"""The model's OpenMP threads sleep when idle instead of spinning (engine/__init__.py)."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

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


def test_a_step_of_few_rows_runs_on_one_thread_and_gives_the_threads_back() -> None:
    import torch

    from engine.decoding import STEP_THREADS_FROM_ROWS, _step_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _step_threads(STEP_THREADS_FROM_ROWS - 1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with _step_threads(STEP_THREADS_FROM_ROWS):
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), _step_threads(1):
            raise RuntimeError("a step that fails")
        assert torch.get_num_threads() == 2  # given back on the way out of a failure too
    finally:
        torch.set_num_threads(before)


async def test_the_engines_small_steps_run_on_one_thread_its_encoder_on_all(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import torch

    from engine import t5_decoder, t5_encoder
    from engine.testing import generate

    seen: dict[str, set[int]] = {"step": set(), "encoder": set()}
    step, run = t5_decoder.T5DecoderStep.__call__, t5_encoder.EncoderPass.run

    def record_step(self: t5_decoder.T5DecoderStep, tokens: torch.Tensor) -> torch.Tensor:
        seen["step"].add(torch.get_num_threads())
        return step(self, tokens)

    def record_run(self: t5_encoder.EncoderPass, layers: int) -> bool:
        seen["encoder"].add(torch.get_num_threads())
        return run(self, layers)

    monkeypatch.setattr(t5_decoder.T5DecoderStep, "__call__", record_step)
    monkeypatch.setattr(t5_encoder.EncoderPass, "run", record_run)
    engine = make_engine(threads=2)
    await asyncio.gather(*(generate(engine, f"row {n}", max_tokens=4) for n in range(3)))
    assert seen == {"step": {1}, "encoder": {2}}
