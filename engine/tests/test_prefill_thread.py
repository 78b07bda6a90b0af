"""Newcomers' encoder passes on a thread of their own beside the decoder steps
(engine/prefill.py, INFERENCE_PREFILL_THREAD): the running rows go on decoding while a pass
runs, the newcomers join after it, and every row decodes exactly as alone. The pass is held
at a gate the test opens, so the assertions are on order, never on time."""

import contextlib
import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from engine.batcher import Job
from engine.config import EngineConfig
from engine.decoding import _step_threads, run_batch, start_rows
from engine.generation import GenerationRequest
from engine.loading import LoadedModel, load_model
from engine.lora import LoraState
from engine.messages import Batch as MBatch
from engine.messages import BatchRow, Done, Events, Join, Stop
from engine.prefill import Prefill, beside_threads, start_prefill_thread
from engine.t5_decoder import T5DecoderStep, cross_caches
from engine.t5_encoder import EncoderPass
from engine.tests.test_prefill import NEWCOMER, RUNNING, Recorded, alone_tokens
from engine.worker import Worker, adapter_host

_GATES: list[threading.Event] = []


@pytest.fixture(autouse=True)
def _open_gates() -> Iterator[None]:
    """A test that fails with a pass held at its gate lets it go: the process's one prefill
    thread serves the next tests."""
    yield
    while _GATES:
        _GATES.pop().set()


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> LoadedModel:
    return load_model(str(tiny_model_dir), quantization="none")


RUNNING_TOKENS = 2000  # more than any test lets it decode: it is cancelled before


class Gate:
    """Holds every pass on the PrefillThread until opened; records who ran encoder layers."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        _GATES.append(self.open)
        self.layer_threads: list[int] = []
        self.steps: list[int] = []  # rows of each decoder step, in order
        self.steps_at_open = -1
        prepare, run, step = Prefill.prepare, EncoderPass.run, T5DecoderStep.__call__

        def gated(prefill: Prefill) -> None:
            assert self.open.wait(60)
            prepare(prefill)

        def ran(encoder: EncoderPass, layers: int) -> bool:
            before = encoder.layers_run
            done = run(encoder, layers)
            self.layer_threads += [threading.get_ident()] * (encoder.layers_run - before)
            return done

        def stepped(decoder: T5DecoderStep, tokens: torch.Tensor) -> torch.Tensor:
            self.steps.append(int(tokens.shape[0]))
            return step(decoder, tokens)

        monkeypatch.setattr(Prefill, "prepare", gated)
        monkeypatch.setattr(EncoderPass, "run", ran)
        monkeypatch.setattr(T5DecoderStep, "__call__", stepped)

    def release(self) -> None:
        self.steps_at_open = len(self.steps)
        self.open.set()


def decode_beside(
    model: LoadedModel, gate: Gate, *, open_at: int = 8, cancel_at: int = 0
) -> tuple[Recorded, Recorded]:
    """A running row; a long newcomer is admitted at the third pause and its pass (on the
    thread) is let go at pause `open_at`; cancelled at pause `cancel_at` if given. The running
    row decodes until the newcomer has ended (then it is cancelled): however slowly the
    thread is scheduled, the newcomer joins a batch that still runs."""
    running, newcomer = Recorded(model, RUNNING, RUNNING_TOKENS), Recorded(model, NEWCOMER, 8)
    pauses = 0

    def should_abort() -> bool:  # asked first at every pause, on the model thread
        nonlocal pauses
        pauses += 1
        if pauses == cancel_at:
            newcomer.cancelled = True
        if pauses == open_at:
            gate.release()
        if any(isinstance(event, Done) for event in newcomer.events):
            running.cancelled = True
        return False

    def admit(rows: Sequence[Job], urgent: bool) -> list[Job]:
        return [newcomer] if pauses == 3 and not urgent else []

    run_batch(model, [running], should_abort, admit=admit, prefill_threads=1)
    return running, newcomer


def test_the_running_row_decodes_while_a_newcomers_pass_runs_on_its_own_thread(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    running_alone = alone_tokens(model, RUNNING, 400)
    gate = Gate(monkeypatch)
    running, newcomer = decode_beside(model, gate)
    # Admitted at pause 3, held until pause 8: the running row took five steps alone
    # meanwhile (steps 3-7), and the newcomer joined only after its pass (two rows a step).
    assert gate.steps_at_open == 7
    assert gate.steps[:7] == [1] * 7
    assert gate.steps.count(2) == 8  # the newcomer's 8 tokens, beside the running row
    # The newcomer's layers ran on another thread than the model thread's (the running
    # row's own pass, whole, on the model thread at the start).
    layers = model.model.config.num_layers
    model_thread = gate.layer_threads[0]
    assert gate.layer_threads.count(model_thread) == layers
    assert len([t for t in gate.layer_threads if t != model_thread]) == layers
    assert newcomer.result.token_ids == alone_tokens(model, NEWCOMER, 8)
    tokens = running.result.token_ids
    assert running.result.finish_reason == "cancelled" and 15 <= len(tokens) <= 400
    assert tokens == running_alone[: len(tokens)]


def test_a_newcomer_cancelled_before_its_pass_began_never_runs_a_layer(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    running, newcomer = decode_beside(model, gate, open_at=6, cancel_at=5)
    assert newcomer.result.finish_reason == "cancelled"
    assert newcomer.result.completion_tokens == 0
    assert running.result.completion_tokens == 5  # cancelled at pause 6, after its newcomer
    assert all(rows == 1 for rows in gate.steps)
    # The thread found the pass given up and ran none of its layers (the model thread ran
    # the running row's pass only).
    assert len(set(gate.layer_threads)) == 1


def test_a_fault_in_a_pass_beside_fails_the_batch_and_the_thread_serves_the_next(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    width = len(model.encode(NEWCOMER))
    run = EncoderPass.run

    def faulty(encoder: EncoderPass, layers: int) -> bool:
        if encoder.padded_tokens == width:
            raise RuntimeError("encoder fault")
        return run(encoder, layers)

    monkeypatch.setattr(EncoderPass, "run", faulty)
    gate = Gate(monkeypatch)
    with pytest.raises(RuntimeError, match="encoder fault"):
        decode_beside(model, gate)
    monkeypatch.setattr(EncoderPass, "run", run)
    gate = Gate(monkeypatch)
    running, newcomer = decode_beside(model, gate)
    assert newcomer.result.token_ids == alone_tokens(model, NEWCOMER, 8)


def test_with_no_row_left_the_batch_waits_for_the_pass_and_the_newcomer_decodes(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The running row ends (4 tokens) while the newcomer's pass is held: the batch waits for
    # the pass, then decodes the newcomer alone, rather than ending without it.
    gate = Gate(monkeypatch)
    short, newcomer = Recorded(model, RUNNING, 4), Recorded(model, NEWCOMER, 8)
    pauses = 0

    def should_abort() -> bool:
        nonlocal pauses
        pauses += 1
        return False

    def release_after_the_short_row() -> None:
        deadline = time.monotonic() + 60
        while not any(isinstance(event, Done) for event in short.events):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        gate.release()

    def admit(rows: Sequence[Job], urgent: bool) -> list[Job]:
        if pauses == 2 and not urgent:
            threading.Thread(target=release_after_the_short_row, daemon=True).start()
            return [newcomer]
        return []

    run_batch(model, [short], should_abort, admit=admit, prefill_threads=1)
    assert short.result.completion_tokens == 4
    assert newcomer.result.token_ids == alone_tokens(model, NEWCOMER, 8)
    assert gate.steps[-8:] == [1] * 8


@pytest.mark.parametrize("quantization", ["none", "bf16", "torch-int8"])
def test_a_pass_on_the_thread_is_bitwise_the_pass_on_the_model_thread(
    tiny_model_dir: Path, quantization: str
) -> None:
    # Its encoder output and cross-attention caches, on 1 thread beside against 2 threads on
    # the model thread: the same bits, so a row decodes as alone whichever way it joined.
    model = load_model(str(tiny_model_dir), quantization=quantization)
    jobs: list[Job] = [Recorded(model, p, 4) for p in (NEWCOMER, RUNNING, "naïve 🙂")]
    with threads(2), torch.inference_mode():
        here = Prefill(model, start_rows(model, jobs))
        _, encoded, _, _ = here.running()
        beside = Prefill(model, start_rows(model, jobs))
        start_prefill_thread(1).submit(beside)
        assert beside.ended.wait(60) and beside.error is None
        _, encoded_beside, _, cross = beside.running()
    assert torch.equal(encoded, encoded_beside)
    assert cross is not None
    with threads(2), torch.inference_mode():
        mine = cross_caches(model.model, encoded, model.attention)
    for (keys, values), (keys_beside, values_beside) in zip(mine, cross, strict=True):
        assert torch.equal(keys, keys_beside) and torch.equal(values, values_beside)


@pytest.mark.parametrize(
    ("mode", "threads_", "device", "expected"),
    [
        ("auto", 2, "cpu", 1),
        ("auto", 8, "cpu", 4),
        ("auto", 1, "cpu", 0),  # one thread: nothing to run a pass beside on
        ("auto", 2, "cuda", 0),
        ("on", 1, "cpu", 1),
        ("off", 8, "cpu", 0),
    ],
)
def test_a_pass_beside_takes_half_the_model_threads_where_the_mode_allows(
    model: LoadedModel, mode: str, threads_: int, device: str, expected: int
) -> None:
    fake = dataclasses.replace(model, device=torch.device(device))
    assert fake.device_type == device  # what the engine's status reports follows the device
    with threads(threads_):
        assert beside_threads(mode, fake) == expected


def test_a_large_step_leaves_a_pass_beside_its_threads_and_takes_them_back() -> None:
    with threads(4):
        with _step_threads(32, beside=2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 4
        with _step_threads(32):
            assert torch.get_num_threads() == 4
        with _step_threads(4, beside=2):  # a small step runs on one thread anyway
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 4


def test_the_side_paths_row_tables_are_each_threads_own() -> None:
    # A pass beside the steps runs its rows' adapters while the model thread runs the
    # step's: neither sees the other's tables.
    state = LoraState()
    state.tables = {"decoder.x": (torch.zeros(1), torch.zeros(1))}
    seen: list[object] = []
    worker = threading.Thread(target=lambda: seen.append(state.tables))
    worker.start()
    worker.join()
    assert seen == [None]
    assert state.tables is not None


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """The calling thread's torch threads for a block, then back."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class FirstPass:
    """Records, in order, each encoder layer run: the pass's padded width and the torch
    threads it ran with."""

    def __init__(self, model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lead_width = len(model.encode(NEWCOMER))
        self.layers: list[tuple[int, int]] = []  # (padded tokens, torch threads)
        run = EncoderPass.run

        def ran(encoder: EncoderPass, layers: int) -> bool:
            before = encoder.layers_run
            done = run(encoder, layers)
            ran_now = encoder.layers_run - before
            self.layers += [(encoder.padded_tokens, torch.get_num_threads())] * ran_now
            return done

        monkeypatch.setattr(EncoderPass, "run", ran)

    @property
    def lead_layers(self) -> list[int]:
        """The torch threads of each layer of the first pass (the long prompt's)."""
        return [threads_ for width, threads_ in self.layers if width == self.lead_width]


@pytest.mark.parametrize("admits", [True, False])
def test_a_newcomer_during_the_first_pass_begins_its_own_beside_it(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch, admits: bool
) -> None:
    # The batch starts on a long prompt; a short one comes while that first pass runs. With
    # first_pass_admits it is admitted between two layers of it and its pass starts on the
    # thread (held at the gate until a step has run: so it is still under way, and the rest
    # of the first pass leaves it one of the two threads); without, the first pass runs
    # whole before anyone is asked.
    layers = model.model.config.num_layers
    lead_alone, newcomer_alone = alone_tokens(model, NEWCOMER, 6), alone_tokens(model, RUNNING, 6)
    probe = FirstPass(model, monkeypatch)
    gate = Gate(monkeypatch)
    lead, newcomer = Recorded(model, NEWCOMER, 6), Recorded(model, RUNNING, 6)
    admitted_after: list[int] = []
    pauses = 0

    def should_abort() -> bool:
        nonlocal pauses
        pauses += 1
        if gate.steps:
            gate.release()
        return False

    def admit(rows: Sequence[Job], urgent: bool) -> list[Job]:
        if urgent or admitted_after:
            return []
        admitted_after.append(len(probe.lead_layers))
        return [newcomer]

    with threads(2):
        run_batch(
            model,
            [lead],
            should_abort,
            admit=admit,
            prefill_threads=1,
            first_pass_admits=admits,
        )
    assert lead.result.token_ids == lead_alone
    assert newcomer.result.token_ids == newcomer_alone
    if admits:
        assert admitted_after == [1]  # between the first pass's first two layers
        assert probe.lead_layers == [2] + [1] * (layers - 1)
    else:
        assert admitted_after == [layers]  # after the whole first pass, at the first step
        assert probe.lead_layers == [2] * layers


def test_a_first_pass_whose_rows_all_leave_stops_at_its_next_layer(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = FirstPass(model, monkeypatch)
    lead = Recorded(model, NEWCOMER, 6)

    def should_abort() -> bool:
        lead.cancelled = True  # its client left during the first layer
        return False

    run_batch(
        model,
        [lead],
        should_abort,
        admit=lambda rows, urgent: [],
        prefill_threads=1,
        first_pass_admits=True,
    )
    assert lead.result.finish_reason == "cancelled"
    assert lead.result.completion_tokens == 0
    assert len(probe.lead_layers) == 1  # the other layers never ran


def test_an_abort_during_the_first_pass_cancels_its_rows_and_admits_nobody(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = FirstPass(model, monkeypatch)
    lead, newcomer = Recorded(model, NEWCOMER, 6), Recorded(model, RUNNING, 6)
    asked: list[bool] = []

    def admit(rows: Sequence[Job], urgent: bool) -> list[Job]:
        asked.append(urgent)
        return [newcomer]

    run_batch(model, [lead], lambda: True, admit=admit, prefill_threads=1, first_pass_admits=True)
    assert lead.result.finish_reason == "cancelled"
    assert len(probe.lead_layers) == 1
    assert asked == [] and newcomer.events == []


def test_the_model_process_admits_a_join_between_two_layers_of_the_first_pass(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model process's Worker (engine/worker.py), over a real connection: a Join already
    # waiting when the batch's first pass begins is read and admitted after that pass's
    # first layer, and both rows answer as they would alone.
    config = EngineConfig(model=str(tiny_model_dir), quantization="none", warmup=False)
    host = adapter_host(config, {})
    model = host.model
    lead_alone, newcomer_alone = alone_tokens(model, NEWCOMER, 6), alone_tokens(model, RUNNING, 6)
    probe = FirstPass(model, monkeypatch)
    admitted_after: list[int] = []
    admit = Worker.admit

    def admitting(worker: Worker, running: Sequence[Job], urgent: bool = False) -> list[Job]:
        taken = admit(worker, running, urgent)
        if taken:
            admitted_after.append(len(probe.lead_layers))
        return taken

    monkeypatch.setattr(Worker, "admit", admitting)
    server, process_end = multiprocessing.Pipe()
    for job_id, (prompt, message) in enumerate([(NEWCOMER, MBatch), (RUNNING, Join)], 1):
        request = GenerationRequest(prompt, max_tokens=6, temperature=0, ignore_eos=True)
        row = BatchRow(job_id, request, model.encode(prompt), False, time.perf_counter())
        server.send(message((row,)))
    server.send(Stop())
    with threads(2):
        Worker(process_end, host, prefill_thread="on").serve()
    done: dict[int, list[int]] = {}
    while server.poll():
        match server.recv():
            case Events(items):
                for job_id, event in items:
                    if isinstance(event, Done):
                        done[job_id] = event.result.token_ids
    assert admitted_after == [1]
    assert done == {1: lead_alone, 2: newcomer_alone}
