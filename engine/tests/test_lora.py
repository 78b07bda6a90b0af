"""Per-row LoRA adapters (engine/lora.py) on the tiny model with four every-Linear adapters:
equal to peft's unmerged model, mixed batches equal single requests, the bank's LRU bound,
loads off the decoding path, removal and load failures."""

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import lora
from engine.generation import AdapterLoadError, GenerationRequest, UnknownAdapter
from engine.loading import LOAD_LOCK, load_model
from engine.lora import LoraLinear, load_adapter
from engine.runtime import Engine
from engine.testing import deltas, finish, generate, in_process_model, start_ready, tiny_config

PROMPTS = ["hello world", "the cat sat on the mat", "one two three four", "a b"]


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with adapters/1..4 (rank 4, every Linear) and adapter/ (q and v)."""
    from engine.loading import quiet_libraries
    from engine.tiny_model import make_tiny_model

    quiet_libraries()
    return make_tiny_model(tmp_path_factory.mktemp("tiny-adapters"), seed=0, adapters=4)


def registry(folder: Path, count: int = 4) -> dict[str, str]:
    return {f"t{n}": str(folder / "adapters" / str(n)) for n in range(1, count + 1)}


@pytest.fixture
def engines(adapters_dir: Path) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(**overrides: Any) -> Engine:
        engine = start_ready(tiny_config(adapters_dir, **overrides))
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.stop(10)


@pytest.fixture
def hook() -> Iterator[list[str]]:
    """Every adapter load (its folder), through the loader's test hook."""
    loads: list[str] = []
    lora.load_hook = loads.append
    yield loads
    lora.load_hook = None


def _peft(folder: Path, adapter: Path) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    with LOAD_LOCK:  # an engine may be loading its other base meanwhile
        base = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.float32)
        return PeftModel.from_pretrained(base, adapter).eval()


def _inputs(tokenizer: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}


def test_per_row_logits_equal_peft_unmerged_for_each_row_of_a_mixed_batch(
    adapters_dir: Path,
) -> None:
    loaded = load_model(str(adapters_dir), quantization="none", device="cpu", per_row=True)
    assert loaded.lora is not None
    side = loaded.lora
    names = ["1", "2", "3", "4"]
    weights = [load_adapter(n, str(adapters_dir / "adapters" / n), side, 64) for n in names]
    inputs = _inputs(loaded.tokenizer, PROMPTS)
    start = torch.full((4, 1), loaded.decoder_start_id)
    decoder_ids = torch.cat([start, torch.tensor([[5, 9, 14]] * 4)], dim=1)
    with torch.inference_mode(), side.using(side.gather(weights, "")):
        ours = loaded.model(**inputs, decoder_input_ids=decoder_ids).logits
    with torch.inference_mode():
        plain = loaded.model(**inputs, decoder_input_ids=decoder_ids).logits
    for row, name in enumerate(names):
        peft = _peft(adapters_dir, adapters_dir / "adapters" / name)
        with torch.inference_mode():
            theirs = peft(
                input_ids=inputs["input_ids"][row : row + 1],
                attention_mask=inputs["attention_mask"][row : row + 1],
                decoder_input_ids=decoder_ids[row : row + 1],
            ).logits
        torch.testing.assert_close(ours[row : row + 1], theirs, atol=1e-4, rtol=0)
        # ... and the adapter does change the logits (the test would see it missing).
        assert (plain[row] - theirs[0]).abs().max() > 1e-2


async def test_greedy_tokens_equal_peft_generate_on_the_fp32_base(
    adapters_dir: Path, engines: Callable[..., Engine]
) -> None:
    engine = engines(quantization="none")
    engine.set_adapters(registry(adapters_dir))
    peft = _peft(adapters_dir, adapters_dir / "adapters" / "2")
    for prompt in PROMPTS[:2]:
        inputs = _inputs(_tokenizer(adapters_dir), [prompt])
        with torch.inference_mode():
            expected = peft.generate(**inputs, max_new_tokens=10, do_sample=False, min_length=0)
        ours = await generate(engine, prompt, max_tokens=10, adapter="t2")
        # generate() starts with the decoder start token and stops at end of sequence.
        assert ours.token_ids == expected[0, 1:].tolist()[: len(ours.token_ids)]
        assert len(ours.token_ids) == min(10, len(expected[0]) - 1)


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


async def _alone(engine: Engine, plan: list[tuple[str, str]], **params: Any) -> list[list[int]]:
    return [
        (await generate(engine, prompt, adapter=name, max_tokens=12, **params)).token_ids
        for prompt, name in plan
    ]


async def _together(engine: Engine, plan: list[tuple[str, str]]) -> list[list[int]]:
    results = await asyncio.gather(
        *(generate(engine, prompt, adapter=name, max_tokens=12) for prompt, name in plan)
    )
    return [result.token_ids for result in results]


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
async def test_a_mixed_batch_gives_what_each_row_gives_alone(
    adapters_dir: Path, engines: Callable[..., Engine], process: bool
) -> None:
    # torch-int8 is batch-invariant: equal token for token; the default adapter rides along.
    engine = engines(
        quantization="torch-int8", adapter=str(adapters_dir / "adapter"), process=process
    )
    engine.set_adapters(registry(adapters_dir))
    names = ["t1", "t2", "t3", "t4", ""]
    plan = [(prompt, name) for prompt in PROMPTS[:2] for name in names]
    alone = await _alone(engine, plan)
    assert await _together(engine, plan) == alone
    # Each adapter (and the default) writes something of its own.
    assert len({tuple(tokens) for tokens in alone[:5]}) == 5


async def test_newcomers_encoded_beside_the_steps_take_their_own_adapters(
    adapters_dir: Path, engines: Callable[..., Engine]
) -> None:
    # Their encoder passes (and cross-attention keys and values) run on the prefill thread
    # with their adapters while the running row's step runs with its own: each thread its
    # own tables (engine/lora.py's LoraState), every row as alone.
    engine = engines(quantization="torch-int8", max_batch=8, process=True, prefill_thread="on")
    engine.set_adapters(registry(adapters_dir))
    plan = [(PROMPTS[1], "t2"), (PROMPTS[0], "t3"), (PROMPTS[1], "t4")]
    alone = await _alone(engine, plan)
    long = await engine.submit(
        GenerationRequest(PROMPTS[0], adapter="t1", max_tokens=200, temperature=0, ignore_eos=True)
    )
    iterator = await deltas(long, 2)
    assert await _together(engine, plan) == alone
    assert long.result is None  # they joined its batch
    long.cancel()
    assert (await finish(iterator, long)).finish_reason == "cancelled"


async def test_rows_of_the_bare_base_mix_with_adapted_rows(
    adapters_dir: Path, engines: Callable[..., Engine]
) -> None:
    engine = engines(quantization="torch-int8")  # no default adapter: "" is the bare base
    before = await _alone(engine, [(PROMPTS[0], "")])
    engine.set_adapters(registry(adapters_dir))
    plan = [(PROMPTS[0], name) for name in ["", "t1", "", "t3"]]
    together = await _together(engine, plan)
    assert together == await _alone(engine, plan)
    assert together[0] == together[2] == before[0]


async def test_an_empty_registry_serves_the_merged_model_without_the_side_path(
    adapters_dir: Path, engines: Callable[..., Engine]
) -> None:
    # fp32: merged and per row are one function up to rounding. On an 8-bit base they are two
    # quantizations (of W + BA, and of W beside BA), whose greedy tokens part at a near tie.
    engine = engines(quantization="none", adapter=str(adapters_dir / "adapter"))
    merged = in_process_model(engine)
    assert merged.lora is None
    assert not any(isinstance(m, LoraLinear) for m in merged.model.modules())
    expected = await _alone(engine, [(PROMPTS[1], "")])
    engine.set_adapters(registry(adapters_dir, 1))
    await generate(engine, PROMPTS[0], adapter="t1", max_tokens=2)
    assert in_process_model(engine).lora is not None
    # The default adapter per row gives what it gives merged.
    assert await _alone(engine, [(PROMPTS[1], "")]) == expected
    engine.set_adapters({})
    await _wait_for(lambda: engine._host is not None and engine._host.swap_ready)
    assert await _alone(engine, [(PROMPTS[1], "")]) == expected
    assert in_process_model(engine).lora is None


async def _wait_for(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
async def test_eviction_and_reload_under_load_keep_every_answer_right(
    adapters_dir: Path, engines: Callable[..., Engine], process: bool
) -> None:
    plan = [(prompt, f"t{n}") for n in range(1, 5) for prompt in PROMPTS[:2]] * 2
    reference = engines(quantization="torch-int8")
    reference.set_adapters(registry(adapters_dir))
    alone = await _alone(reference, plan)
    reference.stop(10)
    engine = engines(quantization="torch-int8", max_adapters=2, max_batch=4, process=process)
    engine.set_adapters(registry(adapters_dir))
    assert await _together(engine, plan) == alone
    assert await _together(engine, plan[::-1]) == alone[::-1]
    if not process:
        assert engine._host is not None
        assert len(engine._host.held()) <= 2


async def test_at_most_max_adapters_are_held_and_evicted_ones_load_again(
    adapters_dir: Path, engines: Callable[..., Engine], hook: list[str]
) -> None:
    engine = engines(quantization="torch-int8", max_adapters=2)
    engine.set_adapters(registry(adapters_dir))
    for name in ["t1", "t2", "t3", "t1"]:
        await generate(engine, PROMPTS[0], adapter=name, max_tokens=2)
        assert engine._host is not None and len(engine._host.held()) <= 2
    # t1 was the least recently used when t3 came: evicted, then loaded again.
    assert [Path(folder).name for folder in hook] == ["1", "2", "3", "1"]


async def test_a_slow_load_stalls_no_running_row(
    adapters_dir: Path, engines: Callable[..., Engine]
) -> None:
    engine = engines(quantization="torch-int8")
    engine.set_adapters(registry(adapters_dir))
    await generate(engine, PROMPTS[0], adapter="t1", max_tokens=2)  # t1 held
    release = threading.Event()
    slow = str(adapters_dir / "adapters" / "2")

    def hold(folder: str) -> None:
        if folder == slow:
            release.wait(120)

    lora.load_hook = hold
    try:
        long = await engine.submit(
            GenerationRequest(PROMPTS[1], adapter="t1", max_tokens=200, ignore_eos=True)
        )
        running = await deltas(long)
        waiting = asyncio.ensure_future(generate(engine, PROMPTS[0], adapter="t2", max_tokens=4))
        await asyncio.sleep(0.2)
        # t2 loads (blocked in the hook) while t1's row goes on getting tokens.
        for _ in range(10):
            await anext(running)
        assert not waiting.done() and not release.is_set()
        release.set()
        assert (await waiting).completion_tokens == 4
        assert (await finish(running, long)).completion_tokens == 200
    finally:
        release.set()
        lora.load_hook = None


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
async def test_a_removed_adapter_finishes_its_running_rows_then_unloads(
    adapters_dir: Path, engines: Callable[..., Engine], process: bool
) -> None:
    engine = engines(quantization="torch-int8", max_batch=1, process=process)
    engine.set_adapters(registry(adapters_dir))
    long = await engine.submit(
        GenerationRequest(PROMPTS[1], adapter="t1", max_tokens=60, ignore_eos=True)
    )
    running = await deltas(long)
    queued = await engine.submit(GenerationRequest(PROMPTS[0], adapter="t1", max_tokens=4))
    engine.set_adapters({k: v for k, v in registry(adapters_dir).items() if k != "t1"})
    with pytest.raises(UnknownAdapter):
        await queued.complete()
    with pytest.raises(UnknownAdapter):
        await engine.submit(GenerationRequest(PROMPTS[0], adapter="t1"))
    assert (await finish(running, long)).completion_tokens == 60
    assert (await generate(engine, PROMPTS[0], adapter="t2", max_tokens=3)).completion_tokens
    if not process:
        assert engine._host is not None and "t1" not in engine._host.held()


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
async def test_a_folder_that_fails_to_load_fails_only_its_rows(
    adapters_dir: Path, engines: Callable[..., Engine], tmp_path: Path, process: bool
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (bad / "adapter_model.safetensors").write_bytes(b"not safetensors")
    big = tmp_path / "big"
    big.mkdir()
    config = json.loads((adapters_dir / "adapters" / "1" / "adapter_config.json").read_text())
    (big / "adapter_config.json").write_text(json.dumps({**config, "r": 1000}))
    weights = (adapters_dir / "adapters" / "1" / "adapter_model.safetensors").read_bytes()
    (big / "adapter_model.safetensors").write_bytes(weights)
    engine = engines(quantization="torch-int8", process=process)
    engine.set_adapters({**registry(adapters_dir), "bad": str(bad), "big": str(big)})
    expected = await _alone(engine, [(PROMPTS[0], "t1")])
    outcomes = await asyncio.gather(
        generate(engine, PROMPTS[0], adapter="bad", max_tokens=4),
        generate(engine, PROMPTS[0], adapter="t1", max_tokens=12),
        generate(engine, PROMPTS[0], adapter="big", max_tokens=4),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], AdapterLoadError)
    assert str(tmp_path) not in str(outcomes[0])
    assert isinstance(outcomes[2], AdapterLoadError) and "rank" in str(outcomes[2])
    assert not isinstance(outcomes[1], BaseException)
    assert outcomes[1].token_ids == expected[0]
    assert await _alone(engine, [(PROMPTS[0], "t1")]) == expected


def test_an_adapter_of_another_shape_is_refused(adapters_dir: Path, tmp_path: Path) -> None:
    from engine.tiny_model import T5Shape, build_adapter, build_t5, build_tokenizer

    other = tmp_path / "other"
    with LOAD_LOCK:
        build_t5(other, T5Shape(d_model=32, d_ff=64, d_kv=8), build_tokenizer(0), 0)
        build_adapter(other, other / "adapter", rank=4)
    loaded = load_model(str(adapters_dir), quantization="none", device="cpu", per_row=True)
    assert loaded.lora is not None
    with pytest.raises(AdapterLoadError, match="shapes"):
        load_adapter("other", str(other / "adapter"), loaded.lora, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes' 8-bit needs a CUDA GPU")
def test_bnb_int8_rows_take_the_same_side_path(adapters_dir: Path) -> None:
    loaded = load_model(str(adapters_dir), quantization="bnb-int8", device="cuda", per_row=True)
    assert loaded.lora is not None and loaded.lora.device.type == "cuda"
    wrapped = [m for m in loaded.model.modules() if isinstance(m, LoraLinear)]
    assert wrapped and all(type(m.base).__name__ == "Linear8bitLt" for m in wrapped)
    weights = [load_adapter("1", str(adapters_dir / "adapters" / "1"), loaded.lora, 64)]
    inputs = {k: v.cuda() for k, v in _inputs(loaded.tokenizer, PROMPTS[:1]).items()}
    start = torch.full((1, 1), loaded.decoder_start_id, device="cuda")
    with torch.inference_mode(), loaded.lora.using(loaded.lora.gather(weights, "")):
        ours = loaded.model(**inputs, decoder_input_ids=start).logits.float().cpu()
    peft = _peft(adapters_dir, adapters_dir / "adapters" / "1")
    with torch.inference_mode():
        theirs = peft(**{k: v.cpu() for k, v in inputs.items()}, decoder_input_ids=start.cpu())
    # 8-bit rounding: close, not equal; the adapter's effect is far larger than the gap.
    assert (ours - theirs.logits).abs().max() < 0.25 * (theirs.logits.abs().max())


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
async def test_the_first_registration_switches_bases_while_rows_keep_decoding(
    adapters_dir: Path, engines: Callable[..., Engine], process: bool
) -> None:
    # fp32, as in the test above: the per-row default adapter is the merged one's function.
    engine = engines(quantization="none", adapter=str(adapters_dir / "adapter"), process=process)
    expected = await _alone(engine, [(PROMPTS[1], "")])
    long = await engine.submit(
        GenerationRequest(PROMPTS[0], max_tokens=120, ignore_eos=True, temperature=0.0)
    )
    running = await deltas(long)
    engine.set_adapters(registry(adapters_dir, 1))  # the per-row base loads meanwhile
    adapted = asyncio.ensure_future(generate(engine, PROMPTS[1], adapter="t1", max_tokens=12))
    plain = asyncio.ensure_future(generate(engine, PROMPTS[1], max_tokens=12))
    for _ in range(5):
        await anext(running)  # the merged base's row goes on
    assert (await finish(running, long)).completion_tokens == 120
    assert (await plain).token_ids == expected[0]
    assert (await adapted).token_ids != expected[0]
    # Once switched, the default adapter applied per row still writes what it wrote merged.
    assert await _alone(engine, [(PROMPTS[1], ""), (PROMPTS[1], "t1")]) == [
        expected[0],
        (await adapted).token_ids,
    ]
