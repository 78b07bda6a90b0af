from pathlib import Path

import pytest
import torch

from engine.loading import load_model
from engine.t5_decoder import T5DecoderStep

PROMPTS = ["Hello café", "The model runs over the river today", "🙂"]


@pytest.mark.parametrize("quantization", ["none", "bf16"])
def test_decoder_steps_match_the_transformers_forward_also_after_dropping_rows(
    tiny_model_dir: Path, quantization: str
) -> None:
    loaded = load_model(str(tiny_model_dir), quantization=quantization)
    model = loaded.model
    inputs = loaded.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert inputs.attention_mask.min() == 0  # some rows are padded
    tolerance = 1e-4 if quantization == "none" else 5e-2
    with torch.inference_mode():
        encoded = model.get_encoder()(**inputs)[0]
        ours = T5DecoderStep(model, encoded, inputs.attention_mask, capacity=2)  # grows twice
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
