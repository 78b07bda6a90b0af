"""The engine with its model in a model process of its own (EngineConfig.process): what only that
mode has. The behaviour both modes share runs in test_engine.py for each (make_any_engine)."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from django.test import override_settings
from prometheus_client import REGISTRY

from engine.runtime import Engine, GenerationFailed, GenerationRequest, ModelNotReady
from engine.testing import generate, tiny_config
from inference import engines

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["Hello café", "The model runs over the river today and tomorrow", "🙂 東京", "a"]


def model_pid(engine: Engine) -> int:
    pid = engine.status().get("model_process")
    assert isinstance(pid, int) and pid != os.getpid()
    return pid


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


async def test_the_model_process_decodes_exactly_what_the_model_thread_does(
    make_engine: Callable[..., Engine],
) -> None:
    thread, process = make_engine(), make_engine(process=True)
    assert "engine.worker" in " ".join(psutil.Process(model_pid(process)).cmdline())
    assert thread.status().get("model_process") is None
    for prompt in PROMPTS:
        for params in ({"temperature": 0.0}, {"temperature": 0.9, "seed": 7, "top_p": 0.8}):
            here = await generate(thread, prompt, max_tokens=20, **params)
            there = await generate(process, prompt, max_tokens=20, **params)
            assert (there.token_ids, there.text, there.finish_reason, there.prompt_tokens) == (
                here.token_ids,
                here.text,
                here.finish_reason,
                here.prompt_tokens,
            )
    assert process.count_tokens(PROMPTS[1]) == thread.count_tokens(PROMPTS[1])


def test_priority_and_cpus_apply_to_the_model_process_not_the_server(
    make_engine: Callable[..., Engine],
) -> None:
    cpu = min(os.sched_getaffinity(0))
    base = os.getpriority(os.PRIO_PROCESS, 0)
    engine = make_engine(process=True, nice=5, cpus=(cpu,))
    pid = model_pid(engine)
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, base + 5)
    assert os.sched_getaffinity(pid) == {cpu}
    assert os.getpriority(os.PRIO_PROCESS, 0) == base
    # The serving process's own threads, the engine's included, keep the process's priority.
    threads = [t.native_id for t in threading.enumerate() if t.native_id is not None]
    assert all(os.getpriority(os.PRIO_PROCESS, tid) == base for tid in threads)


async def test_a_killed_model_process_fails_its_batch_and_is_started_again(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(process=True)
    first = model_pid(engine)
    failed = REGISTRY.get_sample_value("inference_requests_total", {"result": "failed"}) or 0.0
    stream = await engine.submit(GenerationRequest(PROMPTS[1], max_tokens=400, ignore_eos=True))
    deltas = stream.__aiter__()
    await deltas.__anext__()  # it is decoding
    os.kill(first, signal.SIGKILL)
    with pytest.raises(GenerationFailed, match="model process exited"):
        async for _ in deltas:
            pass
    status = engine.status()
    assert (status["ok"], status["state"]) == (False, "loading")
    assert "exit code -9" in status["detail"]
    with pytest.raises(ModelNotReady, match="still loading"):
        await engine.submit(GenerationRequest(PROMPTS[0]))
    assert REGISTRY.get_sample_value("inference_requests_total", {"result": "failed"}) == failed + 1
    assert await asyncio.to_thread(engine.wait_ready, 60)
    assert model_pid(engine) != first and gone(first)
    assert (await generate(engine, PROMPTS[0], max_tokens=3)).completion_tokens > 0


def test_a_model_process_that_dies_between_batches_is_replaced_without_a_request(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(process=True)
    first = model_pid(engine)
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: engine.status()["state"] == "loading", 30)  # /readyz says so
    assert wait_for(lambda: engine.status().get("model_process") not in (None, first), 60)
    assert engine.wait_ready(60)


def test_a_model_that_cannot_load_fails_the_engine_with_the_same_reason(tmp_path: Path) -> None:
    details = []
    for process in (False, True):
        engine = Engine(tiny_config(tmp_path / "missing", process=process))
        engine.start()
        assert engine.wait_ready(60) is False
        status = engine.status()
        assert (status["ok"], status["state"]) == (False, "failed")
        details.append(status["detail"])
        engine.stop(5)
    assert details[0] == details[1] and "missing" in details[1]


def test_stopping_the_engine_ends_the_model_process(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(process=True)
    pid = model_pid(engine)
    assert engine.stop(10) is True
    assert gone(pid)


def test_the_model_process_ends_when_the_server_is_killed(tiny_model_dir: Path) -> None:
    script = (
        "from engine.testing import start_ready, tiny_config\n"
        f"engine = start_ready(tiny_config({str(tiny_model_dir)!r}, process=True))\n"
        "print(engine.status()['model_process'], flush=True)\n"
        "import time; time.sleep(120)\n"
    )
    server = subprocess.Popen(  # noqa: S603 - our own script
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        pid = int(server.stdout.readline())
        assert not gone(pid)
        server.send_signal(signal.SIGKILL)  # no clean-up of any kind
        server.wait(10)
        assert wait_for(lambda: gone(pid), 15), "the model process outlived its server"
    finally:
        server.kill()


def test_the_django_setting_turns_the_model_process_on(settings) -> None:
    assert settings.INFERENCE_MODEL_PROCESS is True  # the default
    assert engines.engine_config().process is True
    with override_settings(INFERENCE_MODEL_PROCESS=False):
        assert engines.engine_config().process is False
