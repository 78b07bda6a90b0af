"""One T5 decoder step for a batch, on the model's own modules but without transformers'
per-step machinery (mask building, cache objects, module wrappers): about 8% more tokens/s on
the CPU at 16 rows (docs/benchmarks.md). The maths is T5's (transformers' modeling_t5 with
the eager attention path); tests compare its logits with the transformers forward.

Its caches are its own: the self-attention keys and values of every layer in preallocated
buffers (doubled when full), and the cross-attention keys and values computed once from the
encoder output. Rows leave the batch with `keep()` and join it with `extend()`.

Rows that join a running batch share one column clock (TGI's layout): every step writes one
column for every row; a row that joined at column c masks the columns before c. T5's relative
position bias depends only on the distance between key and query, and on the shared clock a
row's distances are its own ones shifted, so one bias serves every row and a row's logits are
those of decoding it alone. Columns no row needs any more are trimmed when the buffers fill,
so a steady flow of rows does not grow them forever.

With engine/attention.py's kernel (an 8-bit model on the CPU) the caches are half precision,
the self-attention keys are kept transposed in blocks of columns (slots, heads, columns / 32,
head width, 32: attention.Kernel.blocked), each row's self-attention caches sit in a slot of
the buffers (freed when it leaves, taken by a newcomer: no other row's caches are copied;
trimmed in place, or doubled then trimmed), its cross-attention caches stay where its
encoder pass made them (attention.RowCaches: a join copies nothing), and each layer's attention
is one kernel call over each row's own columns instead of a mask (the cross-attention padding
bias is then unused and not kept up).
"""

from typing import Any

import torch
from torch import Tensor

from engine.attention import HALF_MAX, Kernel, RowCaches

# Slots the kernel's layout starts with (INFERENCE_MAX_BATCH's default); it doubles when full.
SLOTS = 32
# When the kernel's self-attention buffers fill, the columns before the oldest row's start are
# dropped in place if that frees at least 1/ROOM of them; else the buffers double.
ROOM = 4

# Each layer's cross-attention keys (rows, heads, head width, positions: transposed) and values
# (rows, heads, positions, head width) of some rows' encoder output.
CrossCaches = list[tuple[Tensor, Tensor]]


def split_heads(states: Tensor, heads: int, head_dim: int) -> Tensor:
    """(rows, positions, heads x head width) as (rows, heads, positions, head width)."""
    rows, positions, _ = states.shape
    return states.view(rows, positions, heads, head_dim).transpose(1, 2)


def cross_caches(model: Any, encoded: Tensor, kernel: Kernel | None = None) -> CrossCaches:
    """The cross-attention keys and values of every decoder layer for `encoded`, as the step
    keeps them (half precision and clamped for the kernel); run wherever the rows' encoder
    pass ran (engine/prefill.py), with their adapters' tables in use."""
    config = model.config

    def split(states: Tensor) -> Tensor:
        return split_heads(states, config.num_heads, config.d_kv)

    def store(states: Tensor) -> Tensor:
        if kernel is None:
            return states.contiguous()
        return states.clamp(-HALF_MAX, HALF_MAX).to(torch.float16).contiguous()

    caches = []
    for block in model.get_decoder().block:
        attention = block.layer[1].EncDecAttention
        # Stored as plain contiguous matrices (keys already transposed): batched matmuls on
        # transposed views are several times slower on the CPU.
        keys = store(split(attention.k(encoded)).transpose(2, 3))
        caches.append((keys, store(split(attention.v(encoded)))))
    return caches


class T5DecoderStep:
    """Call with the last token of each row; returns each row's next-token logits."""

    def __init__(
        self,
        model: Any,
        encoded: torch.Tensor,
        mask: torch.Tensor,
        capacity: int,
        kernel: Kernel | None = None,
        cross: CrossCaches | None = None,
    ) -> None:
        """cross: the rows' cross-attention caches if made already (cross_caches)."""
        config = model.config
        self.model, self.kernel = model, kernel
        # The caches' type (the kernel's keys are in blocks of columns: Kernel.blocked).
        self.cache_dtype = torch.float16 if kernel else encoded.dtype
        self.lm_head = model.lm_head
        self.decoder = model.get_decoder()
        self.blocks = list(self.decoder.block)
        self.heads, self.head_dim = config.num_heads, config.d_kv
        self.output_scale = config.d_model**-0.5 if config.scale_decoder_outputs else None
        rows, dtype = encoded.shape[0], encoded.dtype
        self.cross_bias = _padding_bias(mask, dtype)
        # Each row's prompt length: T5's padding is on the right, so its columns are 0..length.
        self.cross_length = mask.sum(dim=1).to(torch.long)
        cross = cross or cross_caches(model, encoded, kernel)
        # The kernel's layout: each row's cross-attention caches stay where its pass made them
        # (RowCaches, read by address); torch's: one padded tensor a layer.
        self.cross: CrossCaches = [] if kernel else cross
        self.cross_rows = RowCaches.made(cross) if kernel else None
        # The kernel's layout starts with SLOTS slots (untouched memory costs nothing).
        pool = max(rows, SLOTS) if kernel else rows
        if kernel:  # whole blocks of the kernel's key columns
            capacity = -(-max(1, capacity) // kernel.key_block) * kernel.key_block
        shape = (pool, self.heads, max(1, capacity), self.head_dim)
        key_shape = self._key_shape(shape)
        self.keys = [encoded.new_empty(key_shape, dtype=self.cache_dtype) for _ in self.blocks]
        self.values = [encoded.new_empty(shape, dtype=self.cache_dtype) for _ in self.blocks]
        self.length = 0  # the shared column clock: columns written so far
        # A step's column bound for the kernel's self-attention (every row's end).
        self._ends = torch.zeros(0, dtype=torch.long)
        # The column each row joined at (all 0 in a batch nobody joined: then no mask).
        self.starts = torch.zeros(rows, dtype=torch.long, device=encoded.device)
        self.joined = False  # some row starts after column 0 (read every step: a plain bool)
        # The kernel's layout: each row's caches sit in a slot of the buffers (row r in
        # slot[r]); a row that leaves frees its slot and a newcomer takes a free one, so rows
        # come and go without copying the others' caches (torch's layout compacts instead).
        self.slot = torch.arange(rows, dtype=torch.long, device=encoded.device)
        self.free: list[int] = list(range(rows, pool))

    def _key_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The self-attention keys' shape for values of this shape (slots, H, columns, D):
        the same in torch's layout, (slots, H, columns / B, D, B) in the kernel's."""
        if self.kernel is None:
            return shape
        slots, heads, columns, width = shape
        block = self.kernel.key_block
        return (slots, heads, columns // block, width, block)

    @property
    def capacity(self) -> int:
        """The columns the self-attention buffers hold."""
        return int(self.values[0].shape[2])

    @property
    def rows(self) -> int:
        return int(self.starts.shape[0])

    def _split(self, states: torch.Tensor) -> torch.Tensor:
        return split_heads(states, self.heads, self.head_dim)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.length == self.capacity:
            self._make_room()
        position = self.length
        hidden = self.decoder.embed_tokens(tokens)
        bias = self._self_bias(hidden.device, position)
        if self.kernel is not None:  # the kernel's column bounds, the same in every layer
            self._ends = torch.full((self.rows,), position + 1, dtype=torch.long)
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

    def _self_bias(self, device: torch.device, position: int) -> Tensor:
        # The query sits at column `position`, the keys at columns 0..position: distances
        # -position..0 whatever the row's own start, so one bias for all rows ...
        first = self.blocks[0].layer[0].SelfAttention
        bias: Tensor = first.compute_bias(1, position + 1, device=device, past_seen_tokens=position)
        if self.kernel is not None:  # (heads, columns): each row's start is its first column
            return bias.reshape(self.heads, position + 1).contiguous()
        if not self.joined:
            return bias
        # ... and each row masks the columns before its start (written by other rows' steps).
        columns = torch.arange(position + 1, device=device)
        before = (columns[None, :] < self.starts[:, None])[:, None, None, :]
        return torch.where(before, torch.finfo(bias.dtype).min, bias)

    def _self_attention(
        self, index: int, layer: Any, hidden: Tensor, bias: Tensor, position: int
    ) -> Tensor:
        attention = layer.SelfAttention
        normed = layer.layer_norm(hidden)
        end = position + 1
        if self.kernel is not None:
            rows = hidden.shape[0]
            shape = (rows, self.heads, self.head_dim)
            key, value = attention.k(normed).reshape(shape), attention.v(normed).reshape(shape)
            self.kernel.store(
                key.contiguous(),
                value.contiguous(),
                self.keys[index],
                self.values[index],
                self.slot,
                position,
            )
            query = attention.q(normed).reshape(shape).contiguous()
            out = self._attend(query, self.keys[index], self.values[index], bias, self._ends)
            projected: Tensor = attention.o(out)
            return hidden + projected
        self.keys[index][:, :, position:end] = self._split(attention.k(normed))
        self.values[index][:, :, position:end] = self._split(attention.v(normed))
        keys, values = self.keys[index][:, :, :end], self.values[index][:, :, :end]
        # T5 does not scale the scores; the relative position bias carries the positions.
        scores = torch.matmul(self._split(attention.q(normed)), keys.transpose(2, 3)) + bias
        attended: Tensor = attention.o(self._merge(torch.softmax(scores, dim=-1), values))
        return hidden + attended

    def _cross_attention(self, index: int, layer: Any, hidden: Tensor) -> Tensor:
        attention = layer.EncDecAttention
        if self.kernel is not None and self.cross_rows is not None:
            query = attention.q(layer.layer_norm(hidden))
            query = query.reshape(-1, self.heads, self.head_dim).contiguous()
            threads = torch.get_num_threads()
            out = self.kernel.run_rows(query, self.cross_rows, index, self.cross_length, threads)
            crossed: Tensor = attention.o(out.view(out.shape[0], 1, self.heads * self.head_dim))
            return hidden + crossed
        keys, values = self.cross[index]
        query = self._split(attention.q(layer.layer_norm(hidden)))
        scores = torch.matmul(query, keys) + self.cross_bias
        attended: Tensor = attention.o(self._merge(torch.softmax(scores, dim=-1), values))
        return hidden + attended

    def _attend(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor,
        bias: Tensor | None,
        ends: Tensor,
    ) -> Tensor:
        """The kernel over each row's self-attention columns, its start to `ends`; (rows, 1,
        heads * head width)."""
        assert self.kernel is not None  # noqa: S101 - called only in the kernel's layout
        threads = torch.get_num_threads()
        out = self.kernel.run(query, keys, values, bias, self.slot, self.starts, ends, threads)
        return out.view(out.shape[0], 1, self.heads * self.head_dim)

    def _merge(self, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(weights, values).transpose(1, 2)
        return out.reshape(out.shape[0], out.shape[1], self.heads * self.head_dim)

    def _make_room(self) -> None:
        # The buffers are full: drop the columns before every row's start (lazily, here, so
        # a leave or a join costs no copy), and double the buffers only if that frees none.
        offset = int(self.starts.min()) if self.rows else self.length
        capacity = self.capacity
        kept = self.length - offset
        if self.kernel is not None:
            # The kernel's layout: the rows' columns move to the front of their own slots in
            # place (new buffers would fault in fresh pages while every stream waits), when
            # that frees a ROOM-th of them at least (else they would fill again soon); else
            # the buffers double (the rows' slots copied whole to the front of new ones) and
            # then the columns move.
            if ROOM * kept > (ROOM - 1) * capacity:
                self._double_slots(capacity)
            for keys, values in zip(self.keys, self.values, strict=True):
                self.kernel.shift(keys, values, self.slot, offset, kept)
            self.length = kept
            self._set_starts(self.starts - offset)
            return
        if offset == 0:
            capacity *= 2  # doubling: a row that runs long costs a few copies, not one a step
        for caches in (self.keys, self.values):
            for index, old in enumerate(caches):
                shape = list(old.shape)
                shape[2] = capacity  # torch's layout: (rows, H, columns, D), keys and values
                new = old.new_empty(shape)
                new.narrow(2, 0, kept).copy_(old.narrow(2, offset, kept))
                caches[index] = new
        self.length -= offset
        self._set_starts(self.starts - offset)

    def _double_slots(self, capacity: int) -> None:
        """The kernel's buffers with twice the columns, the rows' slots copied to the front."""
        slots = self.slot
        for index, (keys, values) in enumerate(zip(self.keys, self.values, strict=True)):
            shape = (values.shape[0], self.heads, 2 * capacity, self.head_dim)
            more_keys, more_values = keys.new_empty(self._key_shape(shape)), values.new_empty(shape)
            front = more_keys.narrow(2, 0, keys.shape[2])
            front.index_copy_(0, slots, keys.index_select(0, slots))
            more_values.narrow(2, 0, capacity).index_copy_(0, slots, values.index_select(0, slots))
            self.keys[index], self.values[index] = more_keys, more_values

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indices) in every cache."""
        self.cross_length = self.cross_length[rows]
        if self.kernel is not None:  # the leavers' slots are freed; nothing is copied
            if self.cross_rows is not None:
                self.cross_rows = self.cross_rows.kept(rows)
            kept = self.slot[rows]
            self.free += sorted(set(self.slot.tolist()) - set(kept.tolist()))
            self.slot = kept
            self._set_starts(self.starts[rows])
            return
        self.cross_bias = self.cross_bias[rows]
        self.cross = [(keys[rows], values[rows]) for keys, values in self.cross]
        self.keys = [self._filled_rows(keys, rows, 2) for keys in self.keys]
        self.values = [self._filled_rows(values, rows, 2) for values in self.values]
        self._set_starts(self.starts[rows])

    def _filled_rows(self, cache: Tensor, rows: Tensor, axis: int) -> Tensor:
        # Copy only the filled columns: the rest of a fresh buffer stays untouched memory.
        kept = cache.new_empty((len(rows), *cache.shape[1:]))
        kept.narrow(axis, 0, self.length).copy_(cache.narrow(axis, 0, self.length)[rows])
        return kept

    def extend(
        self, encoded: torch.Tensor, mask: torch.Tensor, cross: CrossCaches | None = None
    ) -> None:
        """Add rows (their encoder output and mask; their cross-attention caches if made
        already) that start decoding at the next step."""
        new_cross = cross or cross_caches(self.model, encoded, self.kernel)
        if self.kernel is not None:
            self._extend_slots(encoded, mask, new_cross)
            return
        width = max(encoded.shape[1], self.cross_bias.shape[-1])
        bias = _padding_bias(mask, encoded.dtype)
        self.cross_length = torch.cat([self.cross_length, mask.sum(dim=1).to(torch.long)])
        lowest = torch.finfo(encoded.dtype).min
        self.cross_bias = torch.cat([_pad_last(b, width, lowest) for b in (self.cross_bias, bias)])
        joined = []
        for (keys, values), (new_keys, new_values) in zip(self.cross, new_cross, strict=True):
            keys = torch.cat([_pad_last(keys, width), _pad_last(new_keys, width)])
            values = torch.cat([_pad_columns(values, width), _pad_columns(new_values, width)])
            joined.append((keys, values))
        self.cross = joined
        self.keys = [self._fresh_rows(keys, encoded.shape[0]) for keys in self.keys]
        self.values = [self._fresh_rows(values, encoded.shape[0]) for values in self.values]
        start = torch.full((encoded.shape[0],), self.length, dtype=torch.long)
        self._set_starts(torch.cat([self.starts, start.to(self.starts.device)]))

    def _extend_slots(self, encoded: Tensor, mask: Tensor, new_cross: CrossCaches) -> None:
        # The kernel reads only a row's own columns: a newcomer's slot keeps whatever its last
        # holder left there (its self-attention columns before its start) without harm, so
        # nothing is cleared; its cross-attention caches stay where its pass made them.
        count = encoded.shape[0]
        missing = count - len(self.free)
        if missing > 0:
            pool = self.keys[0].shape[0]
            self._grow_slots(max(2 * pool, pool + missing))
        taken, self.free = self.free[:count], self.free[count:]
        slots = torch.tensor(taken, dtype=torch.long, device=self.slot.device)
        assert self.cross_rows is not None  # noqa: S101 - the kernel's layout has them
        self.cross_rows = self.cross_rows.joined(RowCaches.made(new_cross))
        self.cross_length = torch.cat([self.cross_length, mask.sum(dim=1).to(torch.long)])
        self.slot = torch.cat([self.slot, slots])
        start = torch.full((count,), self.length, dtype=torch.long)
        self._set_starts(torch.cat([self.starts, start.to(self.starts.device)]))

    def _grow_slots(self, slots: int) -> None:
        """More slots, the new ones free (the buffers copied once)."""
        pool = self.keys[0].shape[0]
        self.free += list(range(pool, slots))
        more = slots - pool
        self.keys = [torch.cat([k, k.new_empty((more, *k.shape[1:]))]) for k in self.keys]
        self.values = [torch.cat([v, v.new_empty((more, *v.shape[1:]))]) for v in self.values]

    def _set_starts(self, starts: Tensor) -> None:
        self.starts = starts
        self.joined = bool(starts.any())

    def _fresh_rows(self, cache: Tensor, count: int) -> Tensor:
        # Zeros, not empty memory, in the columns the newcomers mask: a masked score's weight
        # is exactly 0, but 0 times a NaN left in uninitialized memory is NaN.
        fresh = cache.new_zeros((count, *cache.shape[1:]))
        return torch.cat([cache, fresh])


def _padding_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    # Padded encoder positions get the most negative value, as transformers' masks do.
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _pad_last(tensor: Tensor, width: int, value: float | Tensor = 0.0) -> Tensor:
    """Pad the last dimension to `width` (cross keys: masked by the bias, so zeros do)."""
    missing = width - tensor.shape[-1]
    if missing == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, missing), value=float(value))


def _pad_columns(tensor: Tensor, width: int) -> Tensor:
    """Pad the encoder positions (the next-to-last dimension) of cross values to `width`."""
    missing = width - tensor.shape[-2]
    if missing == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, 0, missing))
