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
from engine.prefill import (
    CROSS_LAYERS,
    PASS_PADDING,
    SHARED_TOKENS,
    Prefill,
    PrefillThread,
    split_passes,
)
from engine.t5_encoder import EncoderPass
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


def test_a_long_and_a_short_newcomer_admitted_together_are_encoded_apart_and_the_short_joins_first(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = trace(monkeypatch)
    gates = Gates(monkeypatch, 2)
    gates.gates[1].set()  # the short one's pass runs as soon as the thread takes it up
    running = Recorded(model, RUNNING, 2000)
    long, short = Recorded(model, NEWCOMER, 8), Recorded(model, SHORT, 8)
    widths = [len(model.encode(NEWCOMER)), len(model.encode(SHORT))]
    # The long one's pass is held after its first layer until the short one has finished.
    rest = threading.Event()
    _GATES.append(rest)
    traced = EncoderPass.run

    def held(self: EncoderPass, layers: int) -> bool:
        if self.padded_tokens == widths[0] and self.layers_run == 1:
            assert rest.wait(60)
        return traced(self, layers)

    monkeypatch.setattr(EncoderPass, "run", held)
    pauses = 0
    long_events_when_short_done = -1

    def should_abort() -> bool:  # asked first at every pause, on the model thread
        nonlocal pauses, long_events_when_short_done
        pauses += 1
        if pauses == 5:
            gates.gates[0].set()  # the long one's pass, both waiting on the thread by now
        if long_events_when_short_done < 0 and any(isinstance(e, Done) for e in short.events):
            long_events_when_short_done = len(long.events)
            rest.set()
        if all(any(isinstance(e, Done) for e in job.events) for job in (long, short)):
            running.cancelled = True
        return False

    def admit(rows: Sequence[Job], urgent: bool) -> list[Job]:
        return [long, short] if pauses == 3 and not urgent else []

    run_batch(model, [running], should_abort, admit=admit, prefill_threads=1)
    # Two passes, each of its own prompt's width: the short one was not padded to the long.
    passes = [size for kind, size in log if kind == "layer" and size in widths]
    # The long one began (admitted first); after its first layer the short one, less work
    # in all than what was left of the long one, ran whole; then the long one's other layers.
    layers = model.model.config.num_layers
    assert (layers + CROSS_LAYERS) * widths[1] < (layers - 1 + CROSS_LAYERS) * widths[0]
    assert passes == [widths[0], *[widths[1]] * layers, *[widths[0]] * (layers - 1)]
    # The short one joined and finished while the long one's pass was held: it did not wait
    # for the pass admitted before it.
    assert long_events_when_short_done == 0
    assert gates.began == 2
    assert long.result.token_ids == alone_tokens(model, NEWCOMER, 8)
    assert short.result.token_ids == alone_tokens(model, SHORT, 8)


class _Pass:
    """A stand-in for a Prefill on the PrefillThread: `layers` layers of `width` tokens, each
    logged as (name, layer) as it runs; the first held until `hold` is set."""

    def __init__(self, name: str, width: int, log: list[tuple[str, int]], layers: int = 4) -> None:
        self.name, self.width, self.layers, self.log = name, width, layers, log
        self.run_layers = 0
        self.hold = threading.Event()
        self.hold.set()
        self.begun, self.ended = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.between_layers: Any = None

    @property
    def work(self) -> int:  # as Prefill.work counts it
        return (self.layers - self.run_layers + CROSS_LAYERS) * self.width

    def prepare(self) -> None:
        while self.run_layers < self.layers:
            assert self.hold.wait(60)
            self.run_layers += 1
            self.log.append((self.name, self.run_layers))
            if self.between_layers is not None:
                self.between_layers(self)


def _order(log: list[tuple[str, int]]) -> str:
    return "".join(name for name, _ in log)


def test_on_the_thread_a_shorter_pass_goes_first_and_a_pass_is_set_aside_once_at_most() -> None:
    log: list[tuple[str, int]] = []
    thread = PrefillThread(1)
    # A long pass is under way (held in its first layer) when two shorter ones are sent.
    long, short, other = _Pass("L", 100, log), _Pass("S", 10, log), _Pass("O", 20, log)
    long.hold.clear()
    _GATES.append(long.hold)  # let go after the test, whatever happens
    thread.submit(long)  # type: ignore[arg-type]
    assert long.begun.wait(60)
    thread.submit(short)  # type: ignore[arg-type]
    thread.submit(other)  # type: ignore[arg-type]
    long.hold.set()
    thread.wait_any([other])  # type: ignore[list-item]
    assert all(p.ended.is_set() and p.error is None for p in (long, short, other))
    # After the long one's first layer the first shorter one ran whole; the second, shorter
    # too than what was left of the long one, waited: a pass is set aside once at most, and
    # the one that went first is never set aside itself.
    assert _order(log) == "L" + "SSSS" + "LLL" + "OOOO"
    assert log[:2] == [("L", 1), ("S", 1)]


def test_on_the_thread_a_waiting_pass_with_more_work_than_is_left_waits_its_turn() -> None:
    log: list[tuple[str, int]] = []
    thread = PrefillThread(1)
    first, wider = _Pass("F", 10, log), _Pass("W", 12, log)
    first.hold.clear()
    _GATES.append(first.hold)
    thread.submit(first)  # type: ignore[arg-type]
    assert first.begun.wait(60)
    thread.submit(wider)  # type: ignore[arg-type]
    first.hold.set()
    thread.wait_any([wider])  # type: ignore[list-item]
    # W's 6 x 12 tokens are more than what is left of F (5 x 10 after its first layer).
    assert _order(log) == "FFFF" + "WWWW"


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
