"""One T5 decoder step for a batch, on the model's own modules but without transformers'
per-step machinery (mask building, cache objects, module wrappers): about 8% more tokens/s on
the CPU at 16 rows (docs/benchmarks.md). The maths is T5's (transformers' modeling_t5 with
the eager attention path); tests compare its logits with the transformers forward.

Its caches are its own: the self-attention keys and values of every layer in preallocated
buffers (doubled when full), and the cross-attention keys and values computed once from the
encoder output. Rows leave the batch with `keep()`.
"""

from typing import Any

import torch
from torch import Tensor


class T5DecoderStep:
    """Call with the last token of each row; returns each row's next-token logits."""

    def __init__(
        self, model: Any, encoded: torch.Tensor, mask: torch.Tensor, capacity: int
    ) -> None:
        config = model.config
        self.lm_head = model.lm_head
        self.decoder = model.get_decoder()
        self.blocks = list(self.decoder.block)
        self.heads, self.head_dim = config.num_heads, config.d_kv
        self.output_scale = config.d_model**-0.5 if config.scale_decoder_outputs else None
        rows, dtype = encoded.shape[0], encoded.dtype
        # Padded encoder positions get the most negative value, as transformers' masks do.
        self.cross_bias = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        self.cross = [self._cross_kv(block, encoded) for block in self.blocks]
        shape = (rows, self.heads, max(1, capacity), self.head_dim)
        self.keys = [encoded.new_empty(shape) for _ in self.blocks]
        self.values = [encoded.new_empty(shape) for _ in self.blocks]
        self.length = 0

    def _split(self, states: torch.Tensor) -> torch.Tensor:
        rows, positions, _ = states.shape
        return states.view(rows, positions, self.heads, self.head_dim).transpose(1, 2)

    def _cross_kv(self, block: Any, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = block.layer[1].EncDecAttention
        # Stored as plain contiguous matrices (keys already transposed): batched matmuls on
        # transposed views are several times slower on the CPU.
        keys = self._split(attention.k(encoded)).transpose(2, 3).contiguous()
        return keys, self._split(attention.v(encoded)).contiguous()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        position = self.length
        if position == self.keys[0].shape[2]:
            self._grow()
        hidden = self.decoder.embed_tokens(tokens)
        first = self.blocks[0].layer[0].SelfAttention
        bias = first.compute_bias(1, position + 1, device=hidden.device, past_seen_tokens=position)
        for index, block in enumerate(self.blocks):
            hidden = self._self_attention(index, block.layer[0], hidden, bias, position)
            hidden = self._cross_attention(index, block.layer[1], hidden)
            feed_forward = block.layer[2]
            hidden = hidden + feed_forward.DenseReluDense(feed_forward.layer_norm(hidden))
        self.length = position + 1
        hidden = self.decoder.final_layer_norm(hidden)
        if self.output_scale is not None:
            hidden = hidden * self.output_scale
        logits: Tensor = self.lm_head(hidden)
        return logits[:, -1, :]

    def _self_attention(
        self, index: int, layer: Any, hidden: Tensor, bias: Tensor, position: int
    ) -> Tensor:
        attention = layer.SelfAttention
        normed = layer.layer_norm(hidden)
        end = position + 1
        self.keys[index][:, :, position:end] = self._split(attention.k(normed))
        self.values[index][:, :, position:end] = self._split(attention.v(normed))
        keys, values = self.keys[index][:, :, :end], self.values[index][:, :, :end]
        # T5 does not scale the scores; the relative position bias carries the positions.
        scores = torch.matmul(self._split(attention.q(normed)), keys.transpose(2, 3)) + bias
        attended: Tensor = attention.o(self._merge(torch.softmax(scores, dim=-1), values))
        return hidden + attended

    def _cross_attention(self, index: int, layer: Any, hidden: Tensor) -> Tensor:
        attention = layer.EncDecAttention
        keys, values = self.cross[index]
        query = self._split(attention.q(layer.layer_norm(hidden)))
        scores = torch.matmul(query, keys) + self.cross_bias
        attended: Tensor = attention.o(self._merge(torch.softmax(scores, dim=-1), values))
        return hidden + attended

    def _merge(self, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(weights, values).transpose(1, 2)
        return out.reshape(out.shape[0], out.shape[1], self.heads * self.head_dim)

    def _grow(self) -> None:
        # Doubling: a row that runs long costs a few copies, not one per step.
        for caches in (self.keys, self.values):
            for index, old in enumerate(caches):
                new = old.new_empty((*old.shape[:2], 2 * old.shape[2], old.shape[3]))
                new[:, :, : self.length] = old[:, :, : self.length]
                caches[index] = new

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indices) in every cache."""
        self.cross_bias = self.cross_bias[rows]
        self.cross = [(keys[rows], values[rows]) for keys, values in self.cross]
        self.keys = [self._filled_rows(keys, rows) for keys in self.keys]
        self.values = [self._filled_rows(values, rows) for values in self.values]

    def _filled_rows(self, cache: Tensor, rows: Tensor) -> Tensor:
        # Copy only the filled positions: the rest of a fresh buffer stays untouched memory.
        kept = cache.new_empty((len(rows), *cache.shape[1:]))
        kept[:, :, : self.length] = cache[rows, :, : self.length]
        return kept
