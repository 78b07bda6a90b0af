"""Newcomers' encoder passes on the PrefillThread, cut by length and queued back to back
(engine/prefill.py's split_passes, engine/decoding.py's run_batch): newcomers of unlike prompt
lengths admitted together get passes of their own, unpadded, each joining as it ends; the
next newcomers are admitted once every pass under way has begun, so theirs waits on the
thread, not for a step. Passes are held at gates the tests open: assertions are on order."""

import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.batcher import Job
from engine.decoding import _admitting, _passes, run_batch
from engine.loading import LoadedModel, load_model
from engine.messages import Done
from engine.prefill import PASS_PADDING, SHARED_TOKENS, Prefill, split_passes
from engine.tests.test_prefill import (
    NEWCOMER,
    RUNNING,
    Recorded,
    alone_tokens,
    decode,
    trace,
)
from engine.tests.test_prefill_thread import _GATES, _open_gates  # noqa: F401 - its fixture

SHORT = "A short one"


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> LoadedModel:
    return load_model(str(tiny_model_dir), quantization="none")


def _rows(lengths: list[int]) -> list[Any]:
    return [SimpleNamespace(job=SimpleNamespace(prompt_ids=[5] * n), n=n) for n in lengths]


def _lengths(passes: list[list[Any]]) -> list[list[int]]:
    return [[row.n for row in group] for group in passes]


def test_rows_of_like_lengths_share_a_pass_and_unlike_ones_get_their_own() -> None:
    # In the admission's order: 250 alone (30 beside it would pad to 500 for 280 tokens);
    # 30 and 28 together (60 padded tokens, within SHARED_TOKENS); 200 alone; two 16s; then
    # 100 and 90 (200 padded for 190, within PASS_PADDING) but not a third at 40.
    lengths = [250, 30, 28, 200, 16, 16, 100, 90, 40]
    assert _lengths(split_passes(_rows(lengths))) == [
        [250], [30, 28], [200], [16, 16], [100, 90], [40],
    ]  # fmt: skip
    assert PASS_PADDING * 190 >= 2 * 100 and PASS_PADDING * 230 < 3 * 100
    assert 2 * 30 <= SHARED_TOKENS < 2 * 250
    # Equal prompts (a request's n choices) always share one; every row is kept, in order.
    assert _lengths(split_passes(_rows([120] * 5))) == [[120] * 5]
    assert split_passes([]) == []


def test_in_pauses_newcomers_admitted_together_stay_one_pass(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each pause runs one pass's layers within its token budget: two smaller passes would
    # leave part of it unused. So without the thread a long and a short newcomer are one
    # pass, padded to the long one (and on the thread, two).
    assert _lengths(_passes(_rows([250, 30]), beside=False)) == [[250, 30]]
    assert _lengths(_passes(_rows([250, 30]), beside=True)) == [[250], [30]]
    assert _passes([], beside=False) == []
    log = trace(monkeypatch)
    long, short = Recorded(model, NEWCOMER, 4), Recorded(model, SHORT, 4)
    decode(model, budget=32, newcomers=[long, short])
    passes = {size for kind, size in log if kind == "layer"} - {len(model.encode(RUNNING))}
    assert passes == {2 * len(model.encode(NEWCOMER))}
    assert long.result.token_ids == alone_tokens(model, NEWCOMER, 4)
    assert short.result.token_ids == alone_tokens(model, SHORT, 4)


def test_the_next_newcomers_are_admitted_once_every_pass_under_way_has_begun() -> None:
    begun, waiting = (
        SimpleNamespace(begun=threading.Event()),
        SimpleNamespace(begun=threading.Event()),
    )
    begun.begun.set()
    assert _admitting([], beside=True) and _admitting([], beside=False)
    assert _admitting([begun], beside=True)  # type: ignore[list-item]
    assert not _admitting([begun, waiting], beside=True)  # type: ignore[list-item]
    assert not _admitting([begun], beside=False)  # type: ignore[list-item]  # in pauses


class Gates:
    """Holds the passes on the PrefillThread, each at its own gate in the order they begin."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.gates = [threading.Event() for _ in range(count)]
        _GATES.extend(self.gates)  # let go after the test, as test_prefill_thread's gates
        self.arrived = [threading.Event() for _ in range(count)]
        self.began = 0
        prepare = Prefill.prepare

        def gated(prefill: Prefill) -> None:
            index = self.began
            self.began += 1
            self.arrived[index].set()
            assert self.gates[index].wait(60)
            prepare(prefill)

        monkeypatch.setattr(Prefill, "prepare", gated)


def test_a_long_and_a_short_newcomer_admitted_together_are_encoded_apart_and_join_apart(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = trace(monkeypatch)
    gates = Gates(monkeypatch, 2)
    running = Recorded(model, RUNNING, 2000)
    long, short = Recorded(model, NEWCOMER, 8), Recorded(model, SHORT, 8)
    pauses = 0
    short_events_when_long_ended = -1

    def should_abort() -> bool:  # asked first at every pause, on the model thread
        nonlocal pauses, short_events_when_long_ended
        pauses += 1
        if pauses == 5:
            gates.gates[0].set()  # the long one's pass
        if short_events_when_long_ended < 0 and any(isinstance(e, Done) for e in long.events):
            short_events_when_long_ended = len(short.events)
            gates.gates[1].set()  # the short one's pass, only now
        if any(isinstance(event, Done) for event in short.events):
            running.cancelled = True
        return False

    def admit(rows: Sequence[Job], urgent: bool) -> list[Job]:
        return [long, short] if pauses == 3 and not urgent else []

    run_batch(model, [running], should_abort, admit=admit, prefill_threads=1)
    # Two passes, each of its own prompt's width: the short one was not padded to the long.
    widths = {len(model.encode(NEWCOMER)), len(model.encode(SHORT))}
    passes = {size for kind, size in log if kind == "layer"} - {len(model.encode(RUNNING))}
    assert passes == widths
    # The long one joined and finished on its own pass while the short one's was held.
    assert short_events_when_long_ended == 0
    assert long.result.token_ids == alone_tokens(model, NEWCOMER, 8)
    assert short.result.token_ids == alone_tokens(model, SHORT, 8)


def test_a_newcomer_admitted_while_a_pass_runs_queues_behind_it_on_the_thread(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    gates = Gates(monkeypatch, 2)
    gates.gates[1].set()  # the second pass runs as soon as the thread takes it up
    running = Recorded(model, RUNNING, 2000)
    first, second = Recorded(model, NEWCOMER, 4), Recorded(model, SHORT, 4)
    pauses = 0
    admitted_at = released_at = 0

    def should_abort() -> bool:
        nonlocal pauses, released_at
        pauses += 1
        if pauses == 4:
            assert gates.arrived[0].wait(60)  # the first pass has begun (held at its gate)
        if not released_at and (admitted_at or pauses == 30):
            released_at = pauses
            gates.gates[0].set()
        if all(any(isinstance(e, Done) for e in job.events) for job in (first, second)):
            running.cancelled = True
        return False

    def admit(rows: Sequence[Job], urgent: bool) -> list[Job]:
        nonlocal admitted_at
        if urgent:
            return []
        if pauses == 3:
            return [first]
        if pauses > 3 and not admitted_at:
            admitted_at = pauses
            return [second]
        return []

    run_batch(model, [running], should_abort, admit=admit, prefill_threads=1)
    # Admitted at the first pause after the first pass began, while it was still held.
    assert admitted_at == 4 and released_at > admitted_at
    assert gates.began == 2
    assert first.result.token_ids == alone_tokens(model, NEWCOMER, 4)
    assert second.result.token_ids == alone_tokens(model, SHORT, 4)
