"""Every event and model-process message crosses a multiprocessing Connection pickled: each type
must come back from a pickle round trip unchanged, and each type must be sampled here."""

import dataclasses
import inspect
import pickle

import pytest

from engine import messages
from engine.config import EngineConfig
from engine.generation import (
    AdapterLoadError,
    GenerationRequest,
    GenerationResult,
    InvalidGeneration,
    QueueTimeout,
    RowFailed,
    UnknownAdapter,
)
from engine.messages import (
    Abort,
    Batch,
    BatchDone,
    BatchRow,
    Cancel,
    Configure,
    Delta,
    Done,
    Events,
    Failed,
    Join,
    LoadFailed,
    ModelFacts,
    Ready,
    SetAdapters,
    Stop,
    TokenLogprob,
)

RESULT = GenerationResult(
    text="Hi.",
    prompt_tokens=3,
    completion_tokens=2,
    finish_reason="stop",
    queue_seconds=0.01,
    first_token_seconds=0.02,
    generation_seconds=0.03,
    token_ids=[7, 1],
)
REQUEST = GenerationRequest("Hello", max_tokens=5, stop=("\n",), seed=3, prompt_ids=(8, 1))
ROW = BatchRow(4, REQUEST, [8, 1], False, 12.5)
FACTS = ModelFacts('{"model": {}}', "cpu", "none", 0, 1, 0, 512, 1.5)

LOGPROB = TokenLogprob(7, "Hi", -0.25, (TokenLogprob(7, "Hi", -0.25), TokenLogprob(9, " Yo", -2.0)))

SAMPLES = [
    Delta("Hi", 1),
    Delta("", 2, (LOGPROB, TokenLogprob(1, "", -9999.0))),
    LOGPROB,
    Done(RESULT),
    Failed(QueueTimeout("The request waited 31.0s in the queue.")),
    Failed(AdapterLoadError("Adapter 'acme' could not be read (OSError).")),
    Failed(UnknownAdapter("acme")),
    Configure(EngineConfig(model="/models/tiny", cpus=(0, 1), process=True), 20),
    Configure(EngineConfig(model="/models/tiny"), 20, (("acme", "/adapters/acme"),)),
    SetAdapters((("acme", "/adapters/acme"), ("beta", "/adapters/beta"))),
    ROW,
    Batch((ROW, BatchRow(5, GenerationRequest("Bye"), [9, 1], True, 13.0))),
    Join((ROW,)),
    Cancel(4),
    Abort(),
    Stop(),
    FACTS,
    Ready(FACTS),
    LoadFailed("no such model"),
    Events(((4, Delta("Hi", 1)), (4, Done(RESULT)), (5, Failed(RowFailed("It failed."))))),
    Events(((6, Failed(InvalidGeneration("seed", "seed must be an integer."))),), (0.01, 0.02)),
    BatchDone(None),
    BatchDone(1 << 30),
]


def _comparable(value: object) -> object:
    """The value with its exceptions as (type, args, attributes): they compare by identity."""
    if isinstance(value, BaseException):
        return type(value), value.args, vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return type(value), tuple(_comparable(getattr(value, f.name)) for f in fields)
    if isinstance(value, tuple | list):
        return type(value), tuple(_comparable(item) for item in value)
    return value


@pytest.mark.parametrize("message", SAMPLES, ids=lambda message: type(message).__name__)
def test_each_message_survives_a_pickle_round_trip_unchanged(message: object) -> None:
    copy = pickle.loads(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301
    assert type(copy) is type(message)
    assert _comparable(copy) == _comparable(message)


def test_every_message_type_is_sampled() -> None:
    # A type added to engine/messages.py without a sample here would go unchecked.
    defined = {
        cls
        for _, cls in inspect.getmembers(messages, inspect.isclass)
        if cls.__module__ == messages.__name__ and dataclasses.is_dataclass(cls)
    }
    assert defined == {type(message) for message in SAMPLES}
