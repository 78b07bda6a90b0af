"""Glue between Django and the engine: the process's one engine, its lifecycle, error mapping.

Named engines.py (plural, as Django names its modules) because it holds the engine as Django
sees it: the process's one Engine (get/set/start, `/readyz`'s model_status), the served model's
names, the engine's exceptions mapped to ApiErrors, and the drain on SIGTERM. The engine itself
is the package engine/; the request's flow (admit → engine → settle → usage) is services.py.

services.py calls `engine_encode_prompt()` and `engine_submit()`; both raise core.errors
ApiErrors (Overloaded, ModelUnavailable, InvalidRequest) instead of engine exceptions.
"""

import asyncio
import atexit
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings

from core.errors import (
    AdapterUnavailable,
    ApiError,
    ContextLengthExceeded,
    GenerationError,
    InvalidRequest,
    ModelUnavailable,
    NotFound,
    Overloaded,
)
from engine.config import EngineConfig
from engine.generation import AdapterLoadError, UnknownAdapter
from engine.runtime import (
    Engine,
    EngineError,
    GenerationGroup,
    GenerationRequest,
    GenerationStream,
    InvalidGeneration,
    ModelNotReady,
    PromptTooLong,
    QueueFull,
    QueueTimeout,
    RowFailed,
)
from inference.adapters import adapter_registry

logger = logging.getLogger(__name__)

MODEL_FIX = (
    "To fix it, set INFERENCE_MODEL to a local folder holding the model (config.json, "
    "weights and tokenizer files), or put the hub model into this machine's Hugging Face "
    "cache (`huggingface-cli download google/flan-t5-base` where there is internet, then copy "
    "the cache folder over); for an offline try-out, `make run-tiny` serves a tiny random model."
)

# A 503 that the same request cannot cure by waiting: the model did not (and will not) load.
NO_RETRY = {"x-should-retry": "false"}

_engine: Engine | None = None
_started = False
# Guards creating and starting the process's engine (asgi import and tests may race).
_engine_lock = threading.Lock()


def engine_config() -> EngineConfig:
    """The engine's configuration from Django settings."""
    return EngineConfig(
        model=settings.INFERENCE_MODEL,
        adapter=settings.INFERENCE_ADAPTER,
        max_adapters=settings.INFERENCE_MAX_ADAPTERS,
        max_adapter_rank=settings.INFERENCE_MAX_ADAPTER_RANK,
        quantization=settings.INFERENCE_QUANTIZATION,
        device=settings.INFERENCE_DEVICE,
        max_batch=settings.INFERENCE_MAX_BATCH,
        scheduler=settings.INFERENCE_SCHEDULER,
        token_budget=settings.INFERENCE_TOKEN_BUDGET,
        max_prefill_tokens=settings.INFERENCE_MAX_PREFILL_TOKENS,
        prefill_step_tokens=settings.INFERENCE_PREFILL_STEP_TOKENS,
        prefill_thread=settings.INFERENCE_PREFILL_THREAD,
        tenant_headroom=settings.INFERENCE_TENANT_HEADROOM,
        max_wait_ms=settings.INFERENCE_MAX_WAIT_MS,
        max_queue=settings.INFERENCE_MAX_QUEUE,
        max_queue_wait=settings.INFERENCE_MAX_QUEUE_WAIT_SECONDS,
        threads=settings.INFERENCE_THREADS,
        nice=settings.INFERENCE_MODEL_NICE,
        cpus=settings.INFERENCE_CPUS,
        process=settings.INFERENCE_MODEL_PROCESS,
        max_input_tokens=settings.INFERENCE_MAX_INPUT_TOKENS,
        max_output_tokens=settings.INFERENCE_MAX_OUTPUT_TOKENS,
        allow_download=settings.INFERENCE_ALLOW_DOWNLOAD,
    )


def get_engine() -> Engine:
    """The process's one engine (created from settings on first use, not started)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = Engine(engine_config())
        return _engine


def set_engine(engine: Engine | None) -> Engine | None:
    """Install another engine as the process's one (tests); returns the previous one."""
    global _engine, _started
    with _engine_lock:
        previous, _engine, _started = _engine, engine, engine is not None
        return previous


def start_engine() -> Engine:
    """Start loading the model in the background (once) and drain it on shutdown."""
    global _started
    engine = get_engine()
    with _engine_lock:
        if _started:
            return engine
        _started = True
    engine.start()
    _install_drain(engine, settings.INFERENCE_DRAIN_SECONDS)
    return engine


def model_status() -> dict[str, Any]:
    """The model's readiness for /readyz: ok, state and a human reason."""
    if _engine is None or not _started:
        return {
            "ok": False,
            "state": "not_loaded",
            "model": settings.INFERENCE_MODEL,
            "detail": "the inference engine is not started in this process "
            "(it starts with the ASGI server unless INFERENCE_AUTOLOAD is off)",
        }
    status = _engine.status()
    if status["state"] == "failed":
        status["detail"] = f"{status['detail']} {MODEL_FIX}"
    return status


def require_engine() -> Engine:
    """The ready engine, or ModelUnavailable whose message says why and how to fix it."""
    engine = _engine
    # The hot path: one attribute read; the status dict is built only to explain a refusal.
    if engine is not None and _started and engine.is_ready:
        return engine
    raise _unavailable(model_status())


# Prompts longer than this are tokenized on a tokenizer thread, not on the event loop: the
# tokenizer holds the loop's thread for about 0.5 us a character (a 16,000-character prompt
# stalled every request of the process for 10-60 ms), and releases the interpreter lock while
# it works on another thread. Shorter ones cost less than the hop (about 0.1 ms).
INLINE_PROMPT_CHARS = 2048
# Two threads: a flood of long prompts queues here instead of starting a thread per request.
_tokenizer_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenizer")


async def engine_encode_prompt(text: str) -> list[int]:
    """The prompt's ids, once, on admission's side (raises ApiErrors, ContextLengthExceeded
    when too long); long prompts are encoded off the event loop."""
    engine = require_engine()
    try:
        if len(text) <= INLINE_PROMPT_CHARS:
            return engine.encode_prompt(text)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_tokenizer_pool, engine.encode_prompt, text)
    except EngineError as exc:
        raise api_error(exc) from exc


def engine_check_request(request: GenerationRequest) -> None:
    """The engine's own parameter checks (max_tokens within INFERENCE_MAX_OUTPUT_TOKENS...),
    before admission: a request the engine would refuse spends no tokens."""
    try:
        request.validate(require_engine().max_output_tokens)
    except EngineError as exc:
        raise api_error(exc) from exc


async def engine_submit(request: GenerationRequest) -> GenerationStream:
    """Queue a generation; raises Overloaded, ModelUnavailable or InvalidRequest."""
    engine = require_engine()
    try:
        return await engine.submit(request)
    except EngineError as exc:
        raise api_error(exc) from exc


async def engine_submit_group(requests: Sequence[GenerationRequest]) -> GenerationGroup:
    """Queue a request's rows together, all or none; raises as engine_submit()."""
    engine = require_engine()
    try:
        return await engine.submit_group(requests)
    except EngineError as exc:
        raise api_error(exc) from exc


def engine_token_prompt(ids: Sequence[int]) -> list[int]:
    """A token-id prompt as the model takes it (ids checked against the vocabulary, the
    end-of-sequence token added); raises ApiErrors (400, 413 when too long)."""
    try:
        return require_engine().token_prompt(ids)
    except EngineError as exc:
        raise api_error(exc) from exc


async def engine_sync_adapters() -> bool:
    """Hand the engine the adapter registry if it changed (inference/adapters.py); ready or
    not (it takes the registry while it loads); nothing without a started engine. False when
    the look failed (the next call looks again)."""
    engine = _engine
    if engine is not None and _started:
        return await adapter_registry.sync(engine)
    return True


def unknown_model(name: str) -> NotFound:
    """The 404 of a model this key cannot use: unknown, or an adapter not granted to it."""
    return NotFound(
        f"The model '{name}' does not exist; GET /v1/models lists the ones you can use.",
        param="model",
        code="model_not_found",
    )


def served_model_id() -> str:
    """The model id clients see and send: INFERENCE_MODEL_NAME, or the hub id, or for a local
    folder its name (never a filesystem path)."""
    return _model_names(settings.INFERENCE_MODEL_NAME, settings.INFERENCE_MODEL)[0]


def served_model_names() -> frozenset[str]:
    """Every name a request may use for the served model: its id, and the hub id or the
    hub id's last part (`flan-t5-base`) or the local folder's name; never a filesystem path."""
    return _model_names(settings.INFERENCE_MODEL_NAME, settings.INFERENCE_MODEL)[1]


@lru_cache(maxsize=4)
def _model_names(name: str, model: str) -> tuple[str, frozenset[str]]:
    # Cached: is_dir() is a system call, and this runs on every completion request.
    path = Path(model)
    local = path.is_dir() or path.is_absolute() or model.startswith((".", "~"))
    served = name or (path.name if local else model)
    # A request names the model, and the response echoes that name back: a server path would
    # be accepted as a model and shown to the client, so a local folder goes by its name only.
    names = {served, path.name} if local else {served, model, path.name}
    return served, frozenset(names - {""})


def api_error(exc: EngineError) -> ApiError:
    """The client-facing error for an engine exception."""
    if isinstance(exc, QueueFull):
        return Overloaded("The model is at capacity; retry shortly.", headers={"Retry-After": "1"})
    if isinstance(exc, QueueTimeout):
        # Nothing ran; the node has been busy for a while, so the retry waits a little longer.
        return Overloaded(
            "The model is at capacity: the request waited too long for its turn and did not "
            "run; retry shortly.",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, PromptTooLong):
        return ContextLengthExceeded(
            exc.limit, tokens=exc.tokens, at_least=exc.at_least, char_limit=exc.char_limit
        )
    if isinstance(exc, UnknownAdapter):
        # Removed between the key's check and the queue: as if it never existed.
        return unknown_model(exc.name)
    if isinstance(exc, AdapterLoadError):
        # The reason is for operators (the log); a client gets what happened, no server path.
        return AdapterUnavailable(
            "The adapter this request names could not be loaded on this node; retry later, or "
            "use another model."
        )
    if isinstance(exc, InvalidGeneration):
        return InvalidRequest(str(exc), param=exc.param)
    if isinstance(exc, ModelNotReady):
        return _unavailable(model_status())
    if isinstance(exc, RowFailed):
        # A fault in this request's own work, not the node's: the same request would fail
        # again, so no retry is suggested (its batch-mates were served).
        return GenerationError(
            "The model failed on this request (an error specific to it); sending it again "
            "unchanged is unlikely to help."
        )
    # The batch failed (the model or its process): another try may well succeed.
    return ModelUnavailable("The model failed on this request; retry it.")


def _unavailable(status: dict[str, Any]) -> ModelUnavailable:
    state = status.get("state")
    if state == "loading":
        return ModelUnavailable(
            "The model is still loading; retry in a few seconds.", headers={"Retry-After": "5"}
        )
    if state == "failed":
        # The reason itself (it may name server paths) is for operators, on /readyz and in
        # the log; clients get what happened and the fix. No retry can load it: the SDKs
        # retry a 503 unless told not to (x-should-retry, honoured by openai's clients).
        return ModelUnavailable(
            "The model could not be loaded on this node (its /readyz says why). " + MODEL_FIX,
            headers=NO_RETRY,
        )
    if state == "stopped":
        return ModelUnavailable("This node is shutting down; retry the request.")
    return ModelUnavailable(
        "The model is not loaded in this process (INFERENCE_AUTOLOAD is off). " + MODEL_FIX,
        headers=NO_RETRY,
    )


def _install_drain(engine: Engine, timeout: float) -> None:
    # Best effort for any server: drain when the interpreter exits normally.
    atexit.register(engine.stop, timeout)
    reactor = _running_twisted_reactor()
    if reactor is not None:
        # Twisted installs its SIGTERM/SIGINT handlers while starting; wrap them once it runs.
        reactor.callWhenRunning(_wrap_signal_handlers, engine, timeout)


def _running_twisted_reactor() -> Any | None:
    # Daphne installs the asyncio Twisted reactor before it imports the application.
    if "twisted.internet.reactor" not in sys.modules:
        return None
    from twisted.internet import reactor

    return reactor


def _wrap_signal_handlers(engine: Engine, timeout: float) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if callable(previous):
            signal.signal(signum, drain_then(engine, previous, timeout))


def drain_then(
    engine: Engine, previous: Callable[..., Any], timeout: float
) -> Callable[[int, FrameType | None], None]:
    """A signal handler: refuse new work, finish running rows, then run `previous`."""

    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: draining the inference engine (at most %.0fs)", signum, timeout)

        def drain() -> None:
            engine.stop(timeout)
            # Daphne's own handler stops the reactor only after the drain, so the event loop
            # keeps delivering the finishing rows to their clients meanwhile.
            previous(signum, frame)

        threading.Thread(target=drain, name="inference-drain", daemon=True).start()

    return handler
