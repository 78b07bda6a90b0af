"""Newcomers' encoder passes cut at layer boundaries (EngineConfig.prefill_step_tokens): the
encoder work between two decoder steps stays within the budget, and the rows still decode
exactly as alone. run_batch is driven directly, so the order of encoder layers and decoder
steps can be read; assertions are on order, never on time."""

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from engine.batcher import Job, Scheduler, prefill_fits, prefill_group_limit
from engine.decoding import run_batch
from engine.fairness import FairQueue
from engine.generation import GenerationRequest, GenerationResult
from engine.loading import LoadedModel, load_model
from engine.messages import Done, Event
from engine.t5_decoder import T5DecoderStep
from engine.t5_encoder import EncoderPass

RUNNING = "The model runs over the river today"
NEWCOMER = " ".join(["quiet green garden, the tenant waits"] * 6)  # a long prompt


class Recorded(Job):
    """A job whose events are kept (no event loop here)."""

    def __init__(self, model: LoadedModel, prompt: str, max_tokens: int, tenant: str = "") -> None:
        request = GenerationRequest(
            prompt, max_tokens=max_tokens, temperature=0, ignore_eos=True, tenant=tenant
        )
        super().__init__(request, model.encode(prompt), record=False)
        self.events: list[Event] = []

    def send(self, event: Event) -> None:
        super().send(event)  # no event loop: only marks the job answering
        self.events.append(event)

    @property
    def result(self) -> GenerationResult:
        done = [event for event in self.events if isinstance(event, Done)]
        assert len(done) == 1
        return done[0].result


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> LoadedModel:
    return load_model(str(tiny_model_dir), quantization="none")


def trace(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """("step", rows) for each decoder step and ("layers", padded tokens) for each encoder
    layer, in the order they ran."""
    log: list[tuple[str, int]] = []
    step, run = T5DecoderStep.__call__, EncoderPass.run

    def stepped(self: T5DecoderStep, tokens: torch.Tensor) -> torch.Tensor:
        log.append(("step", int(tokens.shape[0])))
        return step(self, tokens)

    def ran(self: EncoderPass, layers: int) -> bool:
        before = self.layers_run
        done = run(self, layers)
        log.extend([("layer", self.padded_tokens)] * (self.layers_run - before))
        return done

    monkeypatch.setattr(T5DecoderStep, "__call__", stepped)
    monkeypatch.setattr(EncoderPass, "run", ran)
    return log


def decode(
    model: LoadedModel,
    budget: int,
    cancel_newcomer: bool = False,
    newcomers: Sequence[Recorded] = (),
) -> list[Recorded]:
    """A running row; a long newcomer (or `newcomers`, admitted together) joins at the third
    pause (cancelled at the next one)."""
    running = Recorded(model, RUNNING, 24)
    joining = list(newcomers) or [Recorded(model, NEWCOMER, 8)]
    pauses = 0

    def should_abort() -> bool:  # asked first at every pause
        nonlocal pauses
        pauses += 1
        if cancel_newcomer and pauses == 4:
            for newcomer in joining:
                newcomer.cancelled = True
        return False

    def admit(rows: Sequence[Job], urgent: bool) -> list[Job]:
        return list(joining) if pauses == 3 and not urgent else []

    run_batch(model, [running], should_abort, admit=admit, prefill_step_tokens=budget)
    return [running, *joining]


def layers_between_steps(log: list[tuple[str, int]]) -> list[list[int]]:
    gaps: list[list[int]] = [[]]
    for kind, size in log:
        if kind == "step":
            gaps.append([])
        else:
            gaps[-1].append(size)
    return gaps


def test_a_long_newcomer_is_encoded_a_layer_at_a_time_between_the_running_rows_steps(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = [job.result for job in decode(model, budget=0)]
    log = trace(monkeypatch)
    running, newcomer = decode(model, budget=1)
    layers = model.model.config.num_layers
    gaps = layers_between_steps(log)
    passes = [gap for gap in gaps[1:] if gap]  # the first gap is the running row's own pass
    assert len(passes) == layers  # one layer per pause: no pause ran the newcomer's pass whole
    assert all(len(gap) == 1 for gap in passes)
    # The running row went on decoding while the newcomer was encoded (one row per step).
    first_layer = next(i for i, gap in enumerate(gaps) if i and gap)
    assert [log_rows for kind, log_rows in log if kind == "step"][first_layer] == 1
    # Token for token what each gives when the newcomer's pass runs whole.
    assert [job.result.token_ids for job in (running, newcomer)] == [r.token_ids for r in alone]


def test_a_budget_that_covers_the_pass_runs_it_whole(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = trace(monkeypatch)
    running, newcomer = decode(model, budget=len(model.encode(NEWCOMER)))
    passes = [gap for gap in layers_between_steps(log)[1:] if gap]
    assert len(passes) == 1 and len(passes[0]) == model.model.config.num_layers
    assert newcomer.result.completion_tokens == 8 and running.result.completion_tokens == 24


def test_a_newcomer_cancelled_while_it_is_encoded_ends_cancelled_and_never_decodes(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = trace(monkeypatch)
    running, newcomer = decode(model, budget=1, cancel_newcomer=True)
    assert newcomer.result.finish_reason == "cancelled"
    assert newcomer.result.completion_tokens == 0
    assert running.result.completion_tokens == 24
    # Its pass stopped where the cancel found it, and no step ever ran two rows.
    width = len(model.encode(NEWCOMER))
    newcomer_layers = [size for kind, size in log if kind == "layer" and size == width]
    assert 1 <= len(newcomer_layers) < model.model.config.num_layers
    assert all(rows == 1 for kind, rows in log if kind == "step")


def test_a_group_of_newcomers_is_bounded_so_one_of_its_layers_fits_between_two_steps() -> None:
    assert prefill_group_limit(1024, 32, 12) == 384  # 32 tokens through 12 layers
    assert prefill_group_limit(256, 32, 12) == 256  # the setting, when it is smaller
    assert prefill_group_limit(0, 32, 12) == 384
    assert prefill_group_limit(1024, 0, 12) == 1024  # whole passes: the setting alone
    assert not prefill_fits(2, 200, prefill_group_limit(1024, 32, 12))


def test_an_urgent_newcomer_is_encoded_whole_while_another_pass_is_under_way(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tenant headroom's rows (Scheduler.take_joiners(urgent=True)) do not wait for the
    # pass under way: they are encoded whole at the next pause, between two of its layers.
    alone = [job.result.token_ids for job in decode(model, budget=0)]
    log = trace(monkeypatch)
    running = Recorded(model, RUNNING, 24)
    newcomer = Recorded(model, NEWCOMER, 8)
    urgent = Recorded(model, "A quiet tenant asks one thing", 4)
    pauses = 0

    def should_abort() -> bool:
        nonlocal pauses
        pauses += 1
        return False

    def admit(rows: Sequence[Job], is_urgent: bool) -> list[Job]:
        if is_urgent:
            # Offered once the long pass is under way, with its row among the holders.
            return [urgent] if pauses == 4 and newcomer in rows else []
        return [newcomer] if pauses == 3 else []

    run_batch(model, [running], should_abort, admit=admit, prefill_step_tokens=1)
    layers = model.model.config.num_layers
    long, short = len(model.encode(NEWCOMER)), len(model.encode(urgent.request.prompt))
    encoder_work = [size for kind, size in log if kind == "layer"]
    # The long pass's first layer, the urgent pass whole, then the long pass's other layers.
    first_long = encoder_work.index(long)
    assert encoder_work[first_long + 1 : first_long + 1 + layers] == [short] * layers
    assert encoder_work[first_long + 1 + layers :] == [long] * (layers - 1)
    assert urgent.result.completion_tokens == 4
    assert urgent.result.token_ids == alone_tokens(model, urgent.request.prompt, 4)
    assert [job.result.token_ids for job in (running, newcomer)] == alone


def test_with_the_scheduler_a_tenant_skips_another_tenants_pass_that_has_begun(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scheduler's own admission in run_batch, rows free and no flood: tenant a's long
    # newcomer begins its pass (cut per layer); tenant b arrives after it began, with no row
    # waiting, and is urgent (_Room.behind): its pass runs whole at the next pause, between
    # two layers of a's. Without the rule b waits for a's pass to end and is then cut too.
    log = trace(monkeypatch)
    scheduler = Scheduler(
        max_batch=8, max_wait_ms=0, max_queue=8, tenant_headroom=1, queue=FairQueue[Job]()
    )
    running = Recorded(model, RUNNING, 24, tenant="a")
    newcomer = Recorded(model, NEWCOMER, 8, tenant="a")
    quiet = Recorded(model, "A quiet tenant asks one thing", 4, tenant="b")
    scheduler.put(newcomer)  # taken at the first pause
    pauses = 0

    def should_abort() -> bool:
        nonlocal pauses
        pauses += 1
        if pauses == 2:  # the newcomer's pass ran one layer
            scheduler.put(quiet)
        return False

    run_batch(model, [running], should_abort, admit=scheduler.take_joiners, prefill_step_tokens=1)
    layers = model.model.config.num_layers
    long, short = len(newcomer.prompt_ids), len(quiet.prompt_ids)
    encoder_work = [size for kind, size in log if kind == "layer"]
    first_long = encoder_work.index(long)
    assert encoder_work[first_long:] == [long] + [short] * layers + [long] * (layers - 1)
    assert quiet.result.token_ids == alone_tokens(model, quiet.request.prompt, 4)
    assert newcomer.result.completion_tokens == 8


def alone_tokens(model: LoadedModel, prompt: str, max_tokens: int) -> list[int]:
    job = Recorded(model, prompt, max_tokens)
    run_batch(model, [job], lambda: False)
    return job.result.token_ids
