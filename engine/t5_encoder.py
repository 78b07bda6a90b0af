"""T5's encoder over a group of prompts, run a few layers at a time.

Continuous batching encodes newcomers between two decoder steps, and everything run there
adds to the gap between the running streams' tokens. A whole encoder pass over a long prompt
costs several decoder steps, so the pass is cut at layer boundaries: each pause between two
steps runs as many layers as the step's encoder budget allows (at least one), and the
newcomers join the batch once the last layer and the final norm have run.

The maths is transformers' T5Stack.forward for an encoder (embedding, the bidirectional
mask, the blocks sharing the first block's position bias, the final norm) called block by
block, so the output is bitwise the stack's own (engine/tests/test_encoder_pass.py).
"""

from typing import Any

import torch
from torch import Tensor
from transformers.masking_utils import create_bidirectional_mask


class EncoderPass:
    """The encoder over padded prompts `ids` (with `mask`), advanced by `run()`."""

    def __init__(self, model: Any, ids: Tensor, mask: Tensor) -> None:
        encoder = model.get_encoder()
        self.encoder = encoder
        self.blocks = list(encoder.block)
        self.mask = mask
        self.padded_tokens = int(ids.numel())
        self.hidden: Tensor = encoder.dropout(encoder.embed_tokens(ids))
        self.attention_mask = create_bidirectional_mask(
            config=encoder.config, inputs_embeds=self.hidden, attention_mask=mask
        )
        self.position_bias: Tensor | None = None
        self.layers_run = 0
        self.output: Tensor | None = None

    @property
    def layers(self) -> int:
        return len(self.blocks)

    @property
    def done(self) -> bool:
        return self.output is not None

    def layers_for(self, budget: int) -> int:
        """Layers that fit `budget` encoder tokens (a layer over n padded tokens counts n /
        layers); at least one, so every pass ends; 0: no bound (the rest at once)."""
        if budget <= 0:
            return self.layers
        return max(1, budget * self.layers // max(1, self.padded_tokens))

    def run(self, layers: int) -> bool:
        """Run up to `layers` more layers (and the final norm after the last); True when the
        output is ready."""
        end = min(self.layers, self.layers_run + max(1, layers))
        for block in self.blocks[self.layers_run : end]:
            self.hidden, bias, _ = block(self.hidden, self.attention_mask, self.position_bias)
            # Every block after the first reuses the first one's relative position bias
            # (with the padding mask folded in), as T5Stack.forward does.
            self.position_bias = bias
        self.layers_run = end
        if end == self.layers and self.output is None:
            self.output = self.encoder.dropout(self.encoder.final_layer_norm(self.hidden))
            self.hidden = self.output  # the intermediate states are not needed any more
        return self.done

    def finish(self) -> Tensor:
        """Run what is left; the encoder output (rows, positions, d_model)."""
        self.run(self.layers)
        assert self.output is not None  # noqa: S101 - run() through the last layer sets it
        return self.output


def encode(model: Any, ids: Tensor, mask: Tensor) -> Tensor:
    """The whole encoder at once (the same maths as a staged pass)."""
    with torch.inference_mode():
        return EncoderPass(model, ids, mask).finish()
