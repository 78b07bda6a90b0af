from pathlib import Path
from typing import Any

import pytest
import torch

from engine import attention, native, t5_decoder
from engine.loading import load_model
from engine.t5_decoder import T5DecoderStep

needs_kernel = pytest.mark.skipif(native.cpu_target() is None, reason="needs AVX2 with F16C")
MODES = ["torch", pytest.param("kernel", marks=needs_kernel)]

PROMPTS = ["Hello café", "The model runs over the river today", "🙂"]


@pytest.mark.parametrize(
    ("quantization", "mode"),
    [("none", "torch"), ("bf16", "torch"), pytest.param("none", "kernel", marks=needs_kernel)],
)
def test_decoder_steps_match_the_transformers_forward_also_after_dropping_rows(
    tiny_model_dir: Path, quantization: str, mode: str
) -> None:
    loaded = load_model(str(tiny_model_dir), quantization=quantization)
    model = loaded.model
    inputs = loaded.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert inputs.attention_mask.min() == 0  # some rows are padded
    tolerance = 1e-4 if quantization == "none" else 5e-2
    kernel = attention.load() if mode == "kernel" else None
    if kernel is not None:
        tolerance = 1e-2  # the caches in half precision (about 5e-4 relative each)
    with torch.inference_mode():
        encoded = model.get_encoder()(**inputs)[0]
        # capacity 2: the buffers grow twice
        ours = T5DecoderStep(model, encoded, inputs.attention_mask, capacity=2, kernel=kernel)
        mask, cache = inputs.attention_mask, None
        tokens = torch.zeros((len(PROMPTS), 1), dtype=torch.long)
        for step in range(8):
            out = model(
                encoder_outputs=(encoded,),
                attention_mask=mask,
                decoder_input_ids=tokens,
                cache=cache,
                use_cache=True,
            )
            cache, expected = out.cache, out.logits[:, -1].float()
            got = ours(tokens).float()
            assert torch.allclose(got, expected, atol=tolerance, rtol=tolerance)
            tokens = expected.argmax(-1, keepdim=True)
            if step == 3:  # the middle row ends
                rows = torch.tensor([0, 2])
                ours.keep(rows)
                cache.batch_select_indices(rows)
                encoded, mask, tokens = encoded[rows], mask[rows], tokens[rows]


def _alone(
    model: Any, tokenizer: Any, prompt: str, steps: int, kernel: attention.Kernel | None
) -> list[torch.Tensor]:
    """Each step's logits of one prompt decoded on its own (greedy)."""
    inputs = tokenizer([prompt], return_tensors="pt")
    encoded = model.get_encoder()(**inputs)[0]
    decoder = T5DecoderStep(model, encoded, inputs.attention_mask, capacity=4, kernel=kernel)
    tokens, logits = torch.zeros((1, 1), dtype=torch.long), []
    for _ in range(steps):
        logits.append(decoder(tokens)[0])
        tokens = logits[-1].argmax(-1).view(1, 1)
    return logits


LONG = " ".join(["quiet green garden, the tenant waits"] * 12)  # over 64 tokens


@pytest.mark.parametrize(
    ("mode", "slots"),
    [("torch", 1), pytest.param("kernel", 1, marks=needs_kernel)]
    + [pytest.param("kernel", 8, marks=needs_kernel)],
)
def test_rows_that_join_and_leave_get_the_logits_of_decoding_alone(
    tiny_model_dir: Path, mode: str, slots: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel's layout from one slot: the joins at step 3 grow it, and the join at step 9
    # takes the slot the leaver of step 6 freed, with that row's caches still in it. Its
    # self-attention buffers hold whole blocks of 32 columns: full at step 32, the oldest row
    # (joined at 9) lets 9 columns go, trimmed in place; full again at step 41, the oldest
    # (joined at 11) lets 2 go, too few: they double (the rows' slots copied, from 8 slots
    # some free), then trim. torch's layout doubles from 2 columns and trims at 16, 35 and 41.
    monkeypatch.setattr(t5_decoder, "SLOTS", slots)
    # torch: fp32, whose matrix products round with the batch (1.6e-5 by step 17, a column
    # taken wrong would be off by whole units). The kernel: torch-int8,
    # where every Linear and the attention are per row, so a row's logits are bitwise its own.
    quantization = "none" if mode == "torch" else "torch-int8"
    loaded = load_model(str(tiny_model_dir), quantization=quantization)
    kernel = loaded.attention
    assert (kernel is None) == (mode == "torch")
    model, tokenizer = loaded.model, loaded.tokenizer
    joins = {0: [PROMPTS[0]], 3: [PROMPTS[1], PROMPTS[2]], 9: [PROMPTS[0]], 11: [LONG]}
    # (prompt, the step it joined at) of the row that leaves at each step (a cancel, say)
    leaves = {6: (PROMPTS[0], 0), 20: (PROMPTS[1], 3), 21: (PROMPTS[2], 3), 38: (PROMPTS[0], 9)}
    steps = 44
    with torch.inference_mode():
        alone = {p: _alone(model, tokenizer, p, steps, kernel) for p in [*PROMPTS, LONG]}
        decoder: T5DecoderStep | None = None
        rows: list[tuple[str, int]] = []
        tokens = torch.zeros((0, 1), dtype=torch.long)
        for step in range(steps):
            if step in leaves:
                assert decoder is not None
                index = rows.index(leaves[step])
                kept = [i for i in range(len(rows)) if i != index]
                decoder.keep(torch.tensor(kept))
                rows, tokens = [rows[i] for i in kept], tokens[kept]
            if step in joins:
                inputs = tokenizer(joins[step], return_tensors="pt", padding=True)
                encoded = model.get_encoder()(**inputs)[0]
                if decoder is None:
                    mask = inputs.attention_mask
                    decoder = T5DecoderStep(model, encoded, mask, capacity=2, kernel=kernel)
                else:
                    decoder.extend(encoded, inputs.attention_mask)
                rows += [(prompt, step) for prompt in joins[step]]
                fresh = torch.zeros((len(joins[step]), 1), dtype=torch.long)
                tokens = torch.cat([tokens, fresh])
            assert decoder is not None
            logits = decoder(tokens)
            for index, (prompt, joined) in enumerate(rows):
                expected = alone[prompt][step - joined]
                if kernel is None:
                    assert torch.allclose(logits[index], expected, atol=1e-4, rtol=1e-4), step
                else:
                    assert torch.equal(logits[index], expected), (step, prompt)
            tokens = logits.argmax(-1, keepdim=True)
    assert decoder is not None
    # The columns written before the oldest remaining row joined (step 11) were trimmed.
    assert decoder.length == steps - 11
    if kernel is not None:
        assert decoder.capacity == 64  # doubled once, at step 41
