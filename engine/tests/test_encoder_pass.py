from pathlib import Path

import pytest
import torch

from engine.loading import load_model
from engine.t5_encoder import EncoderPass

PROMPTS = ["Hello café", "The model runs over the river today and tomorrow", "🙂"]


@pytest.mark.parametrize("quantization", ["none", "torch-int8", "bf16"])
@pytest.mark.parametrize("layers_per_run", [1, 2, 100])
def test_a_staged_pass_gives_bitwise_the_encoders_own_output(
    tiny_model_dir: Path, quantization: str, layers_per_run: int
) -> None:
    loaded = load_model(str(tiny_model_dir), quantization=quantization)
    inputs = loaded.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert inputs.attention_mask.min() == 0  # some rows are padded
    with torch.inference_mode():
        expected = loaded.model.get_encoder()(**inputs)[0]
        staged = EncoderPass(loaded.model, inputs.input_ids, inputs.attention_mask)
        runs = 0
        while not staged.run(layers_per_run):
            runs += 1
            assert staged.layers_run == runs * layers_per_run  # paused at a layer boundary
        got = staged.finish()
    assert runs == -(-staged.layers // layers_per_run) - 1
    assert torch.equal(got, expected)


def test_the_layers_a_budget_buys_grow_with_it_and_never_fall_to_zero(
    tiny_model_dir: Path,
) -> None:
    loaded = load_model(str(tiny_model_dir), quantization="none")
    ids = torch.ones((2, 40), dtype=torch.long)  # 80 padded tokens
    staged = EncoderPass(loaded.model, ids, torch.ones_like(ids))
    layers = staged.layers
    assert staged.layers_for(0) == layers  # no bound: the rest at once
    assert staged.layers_for(1) == 1  # at least one layer, so the pass ends
    assert staged.layers_for(80) == layers  # a whole pass over 80 tokens
    assert staged.layers_for(40) == max(1, layers // 2)
